"""One writer per store: an advisory lock on STORE/write.lock that the kernel drops when its holder dies."""
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .catalogue import now_iso
from .errors import StoreBusy, StoreError

log = logging.getLogger(__name__)

LOCK_NAME = "write.lock"
_held: dict[str, list] = {}  # lock path -> [fd, holders]: a process may open one store for writing more than once


def acquire_write_lock(store_dir) -> str:
    """Take the store's write lock or raise StoreBusy naming the holder; returns the key for release."""
    key = os.path.realpath(Path(store_dir) / LOCK_NAME)
    if key in _held:
        _held[key][1] += 1
        return key
    try:
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:  # a read-only mount or folder: it can be searched, not written
        raise StoreError(f"cannot write the store at {store_dir} ({error.strerror or error}); "
                         "it can still be searched") from None
    try:
        _flock_soon(fd)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise _busy(store_dir, holder) from None
    except OSError as error:  # a file system without locks (some network mounts): go on, unprotected
        log.warning("cannot lock %s (%s): make sure only one run writes this store at a time", key, error)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}).encode())
    _held[key] = [fd, 1]
    return key


def _flock_soon(fd: int, *, tries: int = 5) -> None:
    """The exclusive lock, or BlockingIOError when it stays held: a few tries over 0.1 s, as another run's
    check_not_busy holds it shared for an instant."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.025)


def check_not_busy(store_dir) -> None:
    """Raise StoreBusy, as acquire_write_lock would, when another process writes the store now: a run asks before
    its (possibly minutes-long) model load, and takes the lock itself after it."""
    key = os.path.realpath(Path(store_dir) / LOCK_NAME)
    if key in _held:
        return
    try:
        fd = os.open(key, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no store or no lock file yet, or not readable: the run itself will say
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared, and dropped at once: only asks
    except BlockingIOError:
        raise _busy(store_dir, _holder(fd)) from None
    except OSError:  # no locks on this file system: the run warns when it takes its own
        pass
    finally:
        os.close(fd)


def release_write_lock(key: str) -> None:
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.close(entry[0])  # closing the last descriptor releases the lock


def _busy(store_dir, holder: str) -> StoreBusy:
    return StoreBusy(f"another lookalike run is writing the store at {store_dir} ({holder}); wait for it to finish, "
                     "or use another --store")


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


def _forget_in_child() -> None:
    """A forked child (a decode worker) closes its copies: a lock must not outlive its writer in an orphan.
    Closing a copy leaves the parent's lock in place (flock belongs to the shared open file description)."""
    for fd, _ in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
