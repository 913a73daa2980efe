"""`lookalike export`: the store's vectors and catalogue as plain files, whole or not at all."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import cli
from store import Store, StoreError
from store.export import export_store


def test_export_writes_every_vector_with_its_row(index, shared_data_dir, store_dir, tmp_path):
    from indexer.pipeline import ChipOptions

    scenes = sorted((shared_data_dir / "naip").glob("*.tif"))[:2]
    index(scenes, store_dir, chips=ChipOptions(chip_size=512))
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "out"), "--store", str(store_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    store = Store.open(store_dir)
    assert summary["images"] == store.count_images() == 8 and summary["dim"] == store.dim
    vectors = np.load(tmp_path / "out" / "vectors.npy")
    rows = [json.loads(line) for line in (tmp_path / "out" / "images.jsonl").read_text().splitlines()]
    assert vectors.shape == (8, store.dim) and vectors.dtype == np.float32 and len(rows) == 8
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    for row, vector in zip(rows, vectors):
        np.testing.assert_array_equal(vector, store.vector(row["id"]))
        catalogued = store.image(row["id"])
        assert row["path"] == catalogued["path"] and row["window"] == json.loads(catalogued["window"])
        assert row["date"] and len(row["wgs84_bounds"]) == 4 and "sha256" not in row
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["images"] == 8 and provenance["model"] == store.provenance["model"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_export_gives_a_whole_files_sha256_and_copies_share_it(index, chips_dir, chip_paths, store_dir, tmp_path):
    import hashlib
    import shutil

    shutil.copy2(chip_paths[0], chips_dir / "again.jpg")
    index([chips_dir], store_dir)
    assert CliRunner().invoke(cli, ["export", str(tmp_path / "out"), "--store", str(store_dir)]).exit_code == 0
    rows = {row["path"]: row for row in map(json.loads, (tmp_path / "out" / "images.jsonl").read_text().splitlines())}
    assert len(rows) == len(chip_paths) + 1
    for path in chip_paths:
        assert rows[str(path)]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rows[str(chips_dir / "again.jpg")]["sha256"] == rows[str(chip_paths[0])]["sha256"]


def test_export_refuses_a_folder_with_something_in_it_and_leaves_it_alone(indexed, store_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an empty folder"):
        export_store(Store.open(store_dir), taken)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    assert export_store(Store.open(store_dir), tmp_path / "empty")["images"] > 0  # an empty folder is filled


def test_a_failed_export_leaves_nothing(indexed, store_dir, tmp_path, monkeypatch):
    from store import export

    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_described", broken)
    before = set(tmp_path.iterdir())
    with pytest.raises(StoreError, match=r"cannot write the export into .*out \(No space left on device\)"):
        export_store(Store.open(store_dir), tmp_path / "out")
    assert set(tmp_path.iterdir()) == before  # no out/, no partial folder


def test_vectors_written_to_a_full_disk_are_one_line_and_leave_nothing(indexed, store_dir, tmp_path, monkeypatch):
    """vectors.npy was a memory-mapped file: a page that found the disk full killed the process with SIGBUS, no
    message, its partial folder left filling the disk. Written, it fails as a write does."""
    from store import export

    opened = open

    def onto_a_full_disk(path, mode="r", *args, **kwargs):
        return opened("/dev/full", mode, *args, **kwargs) if Path(path).name == export.VECTORS_NAME else \
            opened(path, mode, *args, **kwargs)

    monkeypatch.setattr(export, "open", onto_a_full_disk, raising=False)
    before = set(tmp_path.iterdir())
    with pytest.raises(StoreError, match=r"\(No space left on device\)"):
        export_store(Store.open(store_dir), tmp_path / "out")
    assert set(tmp_path.iterdir()) == before
    monkeypatch.undo()
    export_store(Store.open(store_dir), tmp_path / "out")  # and written whole, it loads as before
    vectors = np.load(tmp_path / "out" / "vectors.npy")
    assert vectors.dtype == np.float32 and vectors.shape[0] == len((tmp_path / "out" / "images.jsonl").read_text(
        ).splitlines())


def test_export_into_a_place_that_cannot_be_written_is_one_clear_error(indexed, store_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: the kernel's own folder refuses even root
            locked = Path("/proc")
        with pytest.raises(StoreError, match=f"cannot write into {locked}"):
            export_store(Store.open(store_dir), locked / "out")
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_export_into_the_current_folder_or_through_a_link(indexed, store_dir, tmp_path, monkeypatch):
    """'.' is refused in one line (it said 'Invalid argument: .'); a link to an empty folder fills that folder
    (it said 'Not a directory')."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    result = CliRunner().invoke(cli, ["export", ".", "--store", str(store_dir)])
    assert result.exit_code == 1 and "is the current folder" in result.output and not os.listdir(".")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert export_store(Store.open(store_dir), tmp_path / "link")["images"] > 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target" / "vectors.npy").is_file()
