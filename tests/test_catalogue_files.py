"""What `--store` may point at besides a store of ours: another program's SQLite file, a file that is not SQLite,
an empty one, and a store that cannot be written (a read-only mount): refused or read, never changed."""
import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import uuid

import pytest

from helpers import only_unchanging_catalogues_open
from store import Store
from store import catalogue as catalogue_module
from store.errors import StoreError
from test_cli import RUN, assert_one_line_error, invoke


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_catalogue(folder):
    folder.mkdir()
    with sqlite3.connect(folder / "catalogue.db") as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('field trip, 12 May')")
    return folder / "catalogue.db"


def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path, model_dir, chips_dir):
    path = foreign_catalogue(tmp_path / "notes")
    before = digest(path)
    assert_one_line_error(invoke("info", "--store", path.parent), "another program's database",
                          "use a folder of its own")
    assert_one_line_error(invoke("search", "--id", 1, "--store", path.parent), "another program's database")
    assert_one_line_error(invoke("index", chips_dir, "--store", path.parent, "--model", model_dir, *RUN,
                                 "--workers", "0", "--no-progress"), "another program's database")
    assert digest(path) == before
    with sqlite3.connect(path) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "catalogue.db").write_text("not sqlite at all, just some words in a file")
    assert_one_line_error(invoke("info", "--store", tmp_path / "junk"), "is not a lookalike catalogue")
    with pytest.raises(StoreError, match="not a lookalike catalogue"):
        Store.create(tmp_path / "junk", provenance={"model": "m"})
    assert (tmp_path / "junk" / "catalogue.db").read_text().startswith("not sqlite")


def test_an_empty_catalogue_is_no_store_to_read_but_can_be_indexed_into(tmp_path, index, chips_dir, chip_paths):
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    (store_dir / "catalogue.db").touch()
    with pytest.raises(StoreError, match="an empty database, not a lookalike catalogue; index into the folder"):
        Store.open(store_dir)
    assert (store_dir / "catalogue.db").stat().st_size == 0
    assert index([chips_dir], store_dir)["indexed"] == len(chip_paths)


def test_the_cli_indexes_into_an_empty_catalogue_as_into_a_new_folder(tmp_path, chips_dir, chip_paths, model_dir):
    """As the refusal's own advice says: the CLI's checks before the model loads took it for a store to read."""
    import sqlite3

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    (store_dir / "catalogue.db").touch()
    run = ["--model", model_dir, "--dtype", "float32", "--device", "cpu", "--workers", "0", "--no-progress"]
    preview = invoke("index", chips_dir, "--store", store_dir, "--dry-run", "--json", *run)
    assert preview.exit_code == 0, preview.output
    assert json.loads(preview.stdout)["store_exists"] is False
    done = invoke("index", chips_dir, "--store", store_dir, "--json", *run)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["indexed"] == len(chip_paths)

    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "catalogue.db").close()  # an SQLite file with no tables: empty too
    assert invoke("index", chips_dir, "--store", other, *run).exit_code == 0


def as_if_in_a_read_only_folder(monkeypatch):
    """SQLite's answers in a read-only folder (as on a read-only mount, seen there): a WAL catalogue cannot be
    opened to write, nor read-only while it would need its shared-memory file made; only as an unchanging file."""
    only_unchanging_catalogues_open(monkeypatch, "unable to open database file")


def test_a_store_in_a_folder_that_cannot_be_written_is_searched_not_changed(indexed, store_dir, chip_paths, monkeypatch):
    store = Store.open(store_dir)
    image_id = store.image_id_for_path(str(chip_paths[3]))
    expected = [hit["id"] for hit in store.search(store.vector(image_id), k=5)]
    store.close()
    before = digest(store_dir / "catalogue.db")
    as_if_in_a_read_only_folder(monkeypatch)

    result = invoke("search", "--id", image_id, "--store", store_dir, "-k", 5, "--json")
    assert result.exit_code == 0, result.output
    assert [hit["id"] for hit in json.loads(result.stdout)["results"]] == expected
    assert invoke("info", "--store", store_dir).exit_code == 0
    assert digest(store_dir / "catalogue.db") == before


def test_indexing_into_a_store_that_cannot_be_written_is_one_line(indexed, store_dir, chips_dir, model_dir,
                                                                  monkeypatch):
    before = {path.name: digest(path) for path in store_dir.iterdir() if path.name != "write.lock"}
    real_open = os.open

    def read_only_folder(path, flags, *args, **kwargs):
        if str(path).startswith(str(store_dir.resolve())) and flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr("store.lock.os.open", read_only_folder)
    assert_one_line_error(invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN,
                                 "--workers", "0", "--no-progress"),
                          "cannot write the store", "Read-only file system", "it can still be searched")
    assert {path.name: digest(path) for path in store_dir.iterdir() if path.name != "write.lock"} == before


@pytest.fixture
def read_only_mount(tmp_path):
    """A real read-only bind mount of a folder, where this machine lets the tests make one (root, mount allowed)."""
    source, mount = tmp_path / "source", tmp_path / f"ro-{uuid.uuid4().hex[:8]}"
    source.mkdir()
    mount.mkdir()
    made = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a bind mount here: {made.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode != 0:
            pytest.skip("cannot make the bind mount read-only here")
        yield source, mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # even with a file left open in it


def test_a_store_on_a_read_only_mount_answers(read_only_mount, index, chips_dir, chip_paths, model_dir):
    source, mount = read_only_mount
    index([chips_dir], source / "store")
    store = Store.open(source / "store")
    image_id = store.image_id_for_path(str(chip_paths[5]))
    store.close()
    before = {path.name: digest(path) for path in (source / "store").iterdir()}

    result = invoke("search", "--id", image_id, "--store", mount / "store", "-k", 3, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["id"] == image_id
    assert invoke("info", "--store", mount / "store").exit_code == 0
    assert_one_line_error(invoke("index", chips_dir, "--store", mount / "store", "--model", model_dir, *RUN,
                                 "--workers", "0", "--no-progress"),
                          "cannot write the store", "it can still be searched")
    assert {path.name: digest(path) for path in (source / "store").iterdir()} == before


def test_a_new_catalogue_appears_with_its_schema(tmp_path, monkeypatch):
    """A reader polling the folder while the first run starts must never open the catalogue empty or half made:
    it is made under another name and renamed into place."""
    path = tmp_path / catalogue_module.CATALOGUE_NAME
    made = catalogue_module._make_schema
    seen = []

    def watching(db):
        seen.append(path.exists())  # what a reader looking at the folder would find meanwhile
        made(db)

    monkeypatch.setattr(catalogue_module, "_make_schema", watching)
    catalogue_module.connect(path).close()

    assert seen[0] is False  # the schema was made before the file was there to be read
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [path.name]
    reader = catalogue_module.connect(path, write=False)
    try:
        assert catalogue_module.get_meta(reader, "schema_version") == catalogue_module.SCHEMA_VERSION
    finally:
        reader.close()
