"""Byte-for-byte copies of embedded files take their twin's vector and patch features, with no forward pass."""
import json
import shutil
import time

import numpy as np
from click.testing import CliRunner

from helpers import CountingEmbedder, ids_by_path
from indexer import writer as writer_module
from indexer.cli import cli


def _copies_of(paths, folder):
    folder.mkdir()
    for number, path in enumerate(paths):
        shutil.copy2(path, folder / f"copy{number}-{path.name}")
    return sorted(folder.iterdir())


def _assert_twins(store, ids, original, copy):
    assert ids[str(copy)] != ids[str(original)]
    assert np.array_equal(store.vector(ids[str(copy)]), store.vector(ids[str(original)]))
    assert np.array_equal(store.patch_features(ids[str(copy)]), store.patch_features(ids[str(original)]))


def test_copies_within_one_run_are_embedded_once(index, chips_dir, chip_paths, store_dir, embedder, open_store):
    # three copies, one sorting beside its original in the same batch, the others batches away
    copies = _copies_of(chip_paths[:3], chips_dir / "dup")
    counting = CountingEmbedder(embedder)

    summary = index([chips_dir], store_dir, embedder=counting, batch_size=4)

    assert counting.images == len(chip_paths)
    assert (summary["indexed"], summary["copied"]) == (len(chip_paths) + 3, 3)
    store = open_store(store_dir)
    ids = ids_by_path(store)
    for original, copy in zip(chip_paths[:3], copies):
        _assert_twins(store, ids, original, copy)
    assert store.index.ntotal == len(chip_paths) + 3
    hits = {hit["id"]: hit["score"] for hit in store.search(store.vector(ids[str(copies[0])]), k=3)}
    assert hits[ids[str(copies[0])]] > 0.999 and hits[ids[str(chip_paths[0])]] > 0.999
    run = store.db.execute("SELECT indexed, copied FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    assert tuple(run) == (len(chip_paths) + 3, 3)


def test_a_later_run_copies_from_the_store(index, indexed, chips_dir, chip_paths, store_dir, embedder, open_store,
                                           write_image):
    copies = _copies_of(chip_paths[4:6], chips_dir.parent / "elsewhere")
    new = write_image(chips_dir.parent / "elsewhere" / "new.png", size=(64, 64), seed=3)
    counting = CountingEmbedder(embedder)

    summary = index([chips_dir, chips_dir.parent / "elsewhere"], store_dir, embedder=counting)

    assert counting.images == 1  # only the new picture
    assert (summary["indexed"], summary["copied"], summary["skipped"]) == (3, 2, len(chip_paths))
    store = open_store(store_dir)
    ids = ids_by_path(store)
    for original, copy in zip(chip_paths[4:6], copies):
        _assert_twins(store, ids, original, copy)
    assert str(new) in ids


def test_a_changed_file_with_another_files_bytes_keeps_its_id(index, indexed, chip_paths, chips_dir, store_dir,
                                                             embedder, open_store):
    before = ids_by_path(open_store(store_dir))
    shutil.copyfile(chip_paths[1], chip_paths[0])  # chip 0 now holds chip 1's bytes
    counting = CountingEmbedder(embedder)

    summary = index([chips_dir], store_dir, embedder=counting)

    assert counting.images == 0 and (summary["indexed"], summary["copied"]) == (1, 1)
    store = open_store(store_dir)
    assert ids_by_path(store) == before
    _assert_twins(store, before, chip_paths[1], chip_paths[0])


def test_the_old_bytes_of_a_file_changed_in_the_same_run_are_embedded_again(index, indexed, chip_paths, chips_dir,
                                                                          store_dir, embedder, open_store,
                                                                          write_image):
    store = open_store(store_dir)
    old_vector = store.vector(ids_by_path(store)[str(chip_paths[0])])
    moved_out = chips_dir.parent / "kept-elsewhere.jpg"
    shutil.copy2(chip_paths[0], moved_out)  # the old bytes live on under a new name...
    write_image(chip_paths[0], size=(64, 64), seed=9)  # ...while their indexed file changes
    counting = CountingEmbedder(embedder)

    summary = index([chips_dir, moved_out], store_dir, embedder=counting, batch_size=1)

    # the changed file's row may be rewritten before the newcomer's turn: its old vector is no twin to trust
    assert counting.images == 2 and summary["copied"] == 0
    ids = ids_by_path(store)
    assert np.allclose(store.vector(ids[str(moved_out)]), old_vector, atol=1e-5)


def test_a_copy_waits_for_its_twin_still_being_written(index, chip_paths, tmp_path, embedder, open_store,
                                                      monkeypatch):
    folder = tmp_path / "pair"
    folder.mkdir()
    shutil.copy2(chip_paths[0], folder / "a.jpg")
    shutil.copy2(chip_paths[0], folder / "b.jpg")
    write = writer_module.StoreWriter._write

    def slow_write(self, item):
        time.sleep(0.3)  # the loop sends b's batch while a's is still unwritten
        write(self, item)

    monkeypatch.setattr(writer_module.StoreWriter, "_write", slow_write)
    counting = CountingEmbedder(embedder)

    summary = index([folder], tmp_path / "store", embedder=counting, batch_size=1)

    assert counting.images == 1 and summary["copied"] == 1
    store = open_store(tmp_path / "store")
    ids = ids_by_path(store)
    _assert_twins(store, ids, folder / "a.jpg", folder / "b.jpg")


def test_the_cli_says_how_many_were_copies(chips_dir, chip_paths, model_dir, tmp_path):
    _copies_of(chip_paths[:2], chips_dir / "dup")
    args = ["index", str(chips_dir), "--store", str(tmp_path / "store"), "--model", str(model_dir),
            "--dtype", "float32", "--device", "cpu", "--workers", "0"]
    text = CliRunner().invoke(cli, args + ["--rebuild"])
    assert text.exit_code == 0, text.output
    assert f"indexed {len(chip_paths) + 2} (2 of them copies of images already embedded: no model pass)" in text.output
    answer = CliRunner().invoke(cli, args + ["--rebuild", "--json"])
    summary = json.loads(answer.output)
    assert (summary["indexed"], summary["copied"]) == (len(chip_paths) + 2, 2)
    # throughput counts the model's work only: 12 images, not 14 (seconds are rounded to the millisecond)
    assert abs(summary["images_per_second"] * summary["seconds"] - len(chip_paths)) < 0.5
