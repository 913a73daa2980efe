"""Storage faults: a save that fails (a full disk), a reader on a disk that is full, a store of a newer lookalike,
a catalogue cut short: one line each, and nothing already indexed lost or changed."""
import os
import sqlite3

import pytest

from helpers import only_unchanging_catalogues_open
from store import Store
from store import catalogue as catalogue_module
from store import faiss_index
from store.errors import StoreError

FAISS_FULL_DISK = ("Error in void faiss::write_index(const Index*, IOWriter*) at /project/faiss/faiss/impl/"
                   "index_write.cpp:910: write error in {path}: 4014 != 4864 (No space left on device)")


def test_an_index_save_that_fails_is_one_line_and_leaves_the_saved_index_alone(indexed, store_dir, monkeypatch):
    saved = (store_dir / "index.faiss").read_bytes()
    lib = faiss_index.require_faiss()
    index = lib.read_index(str(store_dir / "index.faiss"))

    def full_disk(index, writer):
        raise RuntimeError(FAISS_FULL_DISK.format(path=store_dir / "index.faiss.tmp"))

    monkeypatch.setattr(lib, "write_index", full_disk)
    with pytest.raises(StoreError) as raised:
        faiss_index.write_index_atomic(index, store_dir / "index.faiss")

    assert str(raised.value) == f"cannot save the index {store_dir / 'index.faiss'} (No space left on device)"
    assert not (store_dir / "index.faiss.tmp").exists()
    assert (store_dir / "index.faiss").read_bytes() == saved


def test_an_index_save_whose_writes_the_disk_refuses_leaves_the_saved_index_alone(indexed, store_dir):
    """The kernel's own 'no space left': the file being written is /dev/full. faiss's own writer met it only on
    closing, printed it, and the empty file replaced the index."""
    saved = (store_dir / "index.faiss").read_bytes()
    index = faiss_index.require_faiss().read_index(str(store_dir / "index.faiss"))
    (store_dir / "index.faiss.tmp").symlink_to("/dev/full")  # every write fails with ENOSPC

    with pytest.raises(StoreError) as raised:
        faiss_index.write_index_atomic(index, store_dir / "index.faiss")

    assert str(raised.value) == f"cannot save the index {store_dir / 'index.faiss'} (No space left on device)"
    assert not os.path.lexists(store_dir / "index.faiss.tmp")
    assert (store_dir / "index.faiss").read_bytes() == saved


def test_a_run_that_fails_reports_its_own_error_when_closing_it_fails_too(index, chips_dir, store_dir, embedder,
                                                                         monkeypatch, caplog):
    """On a full disk the catalogue's write fails first, then the index's save in the clean-up: the first error is
    the one the user needs; the second goes to the log."""
    from indexer import pipeline

    class Refused(Exception):
        pass

    def failing_embed(*args, **kwargs):
        raise Refused("database or disk is full")

    def failing_save(self):
        raise StoreError("cannot save the index (No space left on device)")

    monkeypatch.setattr(pipeline, "_embed", failing_embed)
    monkeypatch.setattr(Store, "finish_index", failing_save)
    with pytest.raises(Refused, match="database or disk is full"):
        index([chips_dir], store_dir)
    assert "could not be closed either: cannot save the index" in caplog.text


def as_if_the_disk_were_full(monkeypatch):
    only_unchanging_catalogues_open(monkeypatch, "disk I/O error")


def test_a_reader_opens_a_catalogue_it_cannot_share_on_a_full_disk_read_only(indexed, store_dir, monkeypatch,
                                                                             open_store):
    for message in ("disk I/O error", "database or disk is full", "attempt to write a readonly database"):
        assert catalogue_module._unwritable(sqlite3.OperationalError(message)), message
    assert not catalogue_module._unwritable(sqlite3.OperationalError("database is locked"))
    store = open_store(store_dir)
    expected = [hit["id"] for hit in store.search(store.vector(1), k=3)]
    store.close()
    as_if_the_disk_were_full(monkeypatch)

    reader = open_store(store_dir)
    assert [hit["id"] for hit in reader.search(reader.vector(1), k=3)] == expected


def test_a_store_of_an_older_schema_on_a_full_disk_says_it_needs_writing(indexed, store_dir, monkeypatch,
                                                                         open_store):
    """Its schema is brought up to date when it is opened, which a full disk does not allow: the message must
    say so, not that this lookalike cannot read version 1."""
    db = sqlite3.connect(store_dir / "catalogue.db")
    with db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()  # the last connection: the WAL is written into the file
    as_if_the_disk_were_full(monkeypatch)

    with pytest.raises(StoreError) as raised:
        Store.open(store_dir)
    assert str(raised.value) == (f"cannot read the catalogue {store_dir / 'catalogue.db'} (disk I/O error): it was "
                                 "written by an older lookalike, and bringing it up to date needs writing")
    monkeypatch.undo()
    assert open_store(store_dir).count_images() == 12  # room again: brought up to date and read


def test_a_store_of_a_newer_schema_is_refused_and_left_as_it_was(indexed, store_dir):
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        db.execute("DROP TABLE index_pending")  # a table the newer schema would not have
    for open_ in (Store.open, lambda folder: Store.create(folder, provenance={"model": "m"})):
        with pytest.raises(StoreError, match="store schema version 3 is not the 2 this lookalike reads"):
            open_(store_dir)
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert "index_pending" not in tables and "images" in tables


def test_a_catalogue_cut_short_is_called_damaged_with_the_way_back(indexed, store_dir):
    path = store_dir / "catalogue.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 4)  # a copy that stopped a quarter of the way

    with pytest.raises(StoreError) as raised:
        Store.open(store_dir)
    assert str(raised.value).startswith(f"the catalogue {path} is damaged (")
    assert "restore catalogue.db from a backup" in str(raised.value)
