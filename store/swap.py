"""Swapping a rebuilt store in for the live one atomically, and opening whichever store is live right now.

The swap exchanges the two directories in one step with Linux renameat2(RENAME_EXCHANGE): a reader opening
DIR sees the old store or the new one, never a missing or half-made one. Where the kernel or the file system
lacks the exchange (not Linux, some network file systems) the fallback is two renames, old away then new in,
with a moment between them in which DIR does not exist; `open_live` waits that moment out.
"""
import ctypes
import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from .catalogue import CATALOGUE_NAME
from .errors import StoreError, StoreNotFound
from .indexing import generation as _generation
from .store import Store

log = logging.getLogger(__name__)
generation = _generation  # swap.generation, as readers and the page know it (defined beside the index it stamps)

AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1


class ExchangeUnsupported(StoreError):
    """This system cannot exchange two directories in one step."""


def exchange(a: Path, b: Path) -> None:
    """Atomically swap the names of two existing paths (renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise ExchangeUnsupported("this C library has no renameat2")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise ExchangeUnsupported(f"renameat2(RENAME_EXCHANGE) is not supported here ({os.strerror(code)})")
        raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def _sync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def previous_dir_for(live_dir: Path) -> Path:
    return live_dir.with_name(live_dir.name + ".previous")


def swap_in(live_dir, staged_dir, *, keep_previous: bool = True) -> Path | None:
    """Make the store in `staged_dir` the one at `live_dir`; the old one goes to DIR.previous (or away).

    Returns where the old store now is (None when there was none, or it was removed).
    """
    live_dir, staged_dir = Path(os.path.abspath(live_dir)), Path(os.path.abspath(staged_dir))  # "." has no name
    if not (staged_dir / CATALOGUE_NAME).is_file():
        raise StoreNotFound(f"no store to swap in at {staged_dir}")
    previous_dir = previous_dir_for(live_dir)
    if previous_dir.is_symlink():  # a link put there (or left by an older rebuild through a link): only it goes
        previous_dir.unlink()
    elif previous_dir.exists():
        shutil.rmtree(previous_dir)  # the one before last: readers have long moved on from it
    if not live_dir.exists():
        os.rename(staged_dir, live_dir)
        _sync_dir(live_dir.parent)
        return None
    try:
        exchange(live_dir, staged_dir)
    except ExchangeUnsupported as error:
        log.warning("%s: swapping with two renames (DIR is missing for a moment)", error)
        os.rename(live_dir, previous_dir)
        os.rename(staged_dir, live_dir)
    else:
        os.rename(staged_dir, previous_dir)  # staged_dir now holds the old store
    _sync_dir(live_dir.parent)
    if not keep_previous:
        shutil.rmtree(previous_dir, ignore_errors=True)
        return None
    return previous_dir


def _catalogue_inode(store_dir: Path) -> int | None:
    try:
        return (store_dir / CATALOGUE_NAME).stat().st_ino
    except OSError:
        return None


def open_live(store_dir, *, wait_s: float = 5.0) -> Store:
    """Open the store at `store_dir` with its index loaded, both from the same store even during a swap."""
    store_dir = Path(store_dir)
    deadline = time.monotonic() + wait_s
    while True:
        before = _catalogue_inode(store_dir)
        try:
            store = Store.open(store_dir)
        except StoreNotFound:
            if before is None and time.monotonic() < deadline and previous_dir_for(store_dir).exists():
                time.sleep(0.02)  # the two-rename fallback's moment without a store
                continue
            raise
        store.index  # noqa: B018 - read the index file now, next to the catalogue it belongs to
        if _catalogue_inode(store_dir) == before or time.monotonic() > deadline:
            return store
        store.close()  # swapped while opening: the index may be the new store's, open again


def recorded_runs(store: Store) -> list[dict]:
    """Every indexing run's settings (sources, chip options, ...), oldest first."""
    rows = store.db.execute("SELECT id, settings FROM runs ORDER BY id").fetchall()
    return [dict(json.loads(settings or "{}"), run_id=run_id) for run_id, settings in rows]


def last_chip_options(runs: list[dict]) -> dict:
    """The chip options (bands, stretch, size, ...) of the newest of `runs` that recorded any; {} when none did."""
    return next((run["chips"] for run in reversed(runs) if run.get("chips")), None) or {}
