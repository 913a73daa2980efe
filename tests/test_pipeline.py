"""Indexing end to end: counts, self-search, incremental reruns, changed, touched and deleted files."""
import json
import os
import shutil

import faiss
import numpy as np
import pytest
import torch

from helpers import all_vectors, ids_by_path
from indexer import api
from indexer.errors import IndexerError
from indexer.images import scan_sources


def test_summary_counts(indexed, chip_paths):
    assert indexed["indexed"] == len(chip_paths) == 12
    assert (indexed["skipped"], indexed["removed"], indexed["failed"]) == (0, 0, 0)
    assert indexed["seconds"] > 0
    assert indexed["images_per_second"] > 0


def test_every_image_finds_itself_first(indexed, store_dir, open_store):
    store = open_store(store_dir)
    ids = sorted(ids_by_path(store).values())
    assert len(ids) == 12
    for image_id in ids:
        answer = api.search(store, image_id, k=3)
        assert answer["query"]["id"] == image_id
        first = answer["results"][0]
        assert first["id"] == image_id
        assert first["score"] >= 0.999
        assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3]
        assert answer["results"][1]["score"] <= first["score"]


def test_exclude_self(indexed, store_dir, open_store):
    store = open_store(store_dir)
    image_id = min(ids_by_path(store).values())
    results = api.search(store, image_id, k=5, exclude_self=True)["results"]
    assert len(results) == 5
    assert image_id not in [hit["id"] for hit in results]


def test_query_by_file_finds_itself(indexed, store_dir, chip_paths, embedder, open_store):
    store = open_store(store_dir)
    ids = ids_by_path(store)
    for path in chip_paths[:4]:
        first = api.search(store, path, k=3, embedder=embedder)["results"][0]
        assert first["id"] == ids[str(path)]
        assert first["path"] == str(path)
        assert first["score"] >= 0.999


def test_stored_vector_equals_query_vector(indexed, store_dir, chip_paths, embedder, open_store):
    """Indexing and querying must decode and preprocess a file the same way."""
    store = open_store(store_dir)
    image_id = ids_by_path(store)[str(chip_paths[3])]
    query = api.embed_image(chip_paths[3], embedder).global_vectors[0].numpy()
    np.testing.assert_allclose(store.vector(image_id), query, atol=1e-5)
    assert np.linalg.norm(store.vector(image_id)) == pytest.approx(1.0, abs=1e-5)


def test_catalogue_rows_describe_the_files(indexed, store_dir, chip_paths, open_store):
    store = open_store(store_dir)
    row = store.image(ids_by_path(store)[str(chip_paths[0])])
    stat = chip_paths[0].stat()
    assert (row["width"], row["height"]) == (128, 128)
    assert row["size"] == stat.st_size
    assert row["mtime"] == stat.st_mtime
    assert len(row["sha256"]) == 64


def test_rerun_changes_nothing(index, indexed, chips_dir, store_dir, open_store):
    store = open_store(store_dir)
    before = all_vectors(store)
    store.close()

    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["skipped"], summary["removed"], summary["failed"]) == (0, 12, 0, 0)
    store = open_store(store_dir)
    after = all_vectors(store)
    assert before.keys() == after.keys()
    for image_id, vector in before.items():
        np.testing.assert_array_equal(after[image_id], vector)
    assert store.index.ntotal == 12


def test_changed_file_is_reembedded_under_its_id(index, indexed, chip_paths, chips_dir, store_dir, write_image,
                                                  open_store):
    store = open_store(store_dir)
    target = chip_paths[5]
    image_id = ids_by_path(store)[str(target)]
    old_vector = store.vector(image_id)
    store.close()

    write_image(target, size=(96, 80), seed=7)  # a JPEG again, other pixels and size
    os.utime(target, (target.stat().st_atime, target.stat().st_mtime + 10))
    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["skipped"], summary["removed"]) == (1, 11, 0)
    store = open_store(store_dir)
    assert ids_by_path(store)[str(target)] == image_id
    row = store.image(image_id)
    assert (row["width"], row["height"]) == (96, 80)
    assert not np.allclose(store.vector(image_id), old_vector)
    assert store.index.ntotal == 12
    first = api.search(store, image_id, k=1)["results"][0]
    assert (first["id"], first["score"] >= 0.999) == (image_id, True)


def test_same_size_new_content_is_reembedded(index, tmp_path, write_image, open_store):
    """BMPs of one size have one byte count: only the hash can tell that the content changed."""
    folder = tmp_path / "bmps"
    paths = [write_image(folder / f"{n}.bmp", size=(48, 48), seed=n) for n in range(3)]
    store_dir = tmp_path / "store"
    index([folder], store_dir)
    size = paths[0].stat().st_size

    write_image(paths[0], size=(48, 48), seed=99)
    os.utime(paths[0], (1_000_000_000, 1_000_000_000))
    assert paths[0].stat().st_size == size
    summary = index([folder], store_dir)

    assert (summary["indexed"], summary["skipped"]) == (1, 2)


def test_touched_file_is_skipped_and_remembered(index, indexed, chip_paths, chips_dir, store_dir, open_store,
                                                monkeypatch):
    target = chip_paths[2]
    new_mtime = target.stat().st_mtime + 1000
    os.utime(target, (new_mtime, new_mtime))

    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["skipped"]) == (0, 12)
    store = open_store(store_dir)
    assert store.images_by_path()[str(target)]["mtime"] == new_mtime
    store.close()

    # The new mtime is remembered: the next run needs no hash at all.
    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr("indexer.plan.file_sha256", no_hashing)
    assert index([chips_dir], store_dir)["skipped"] == 12


def test_a_file_replaced_by_a_folder_of_its_name_leaves_and_what_the_folder_holds_comes_in(
        index, indexed, chip_paths, chips_dir, store_dir, open_store):
    from PIL import Image

    from store import UnknownImage

    store = open_store(store_dir)
    gone = ids_by_path(store)[str(chip_paths[0])]
    store.close()
    chip_paths[0].unlink()
    chip_paths[0].mkdir()  # a folder named like the image it replaces
    inside = chip_paths[0] / "inside.jpg"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(inside)

    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["removed"], summary["failed"]) == (1, 1, 0)
    store = open_store(store_dir)
    with pytest.raises(UnknownImage):
        store.image(gone)
    assert str(inside) in ids_by_path(store) and store.count_images() == 12
    store.close()


def test_deleted_files_leave_catalogue_vectors_and_index(index, indexed, chip_paths, chips_dir, store_dir,
                                                         open_store):
    from store import UnknownImage

    store = open_store(store_dir)
    gone = [ids_by_path(store)[str(p)] for p in chip_paths[:2]]
    store.close()
    for path in chip_paths[:2]:
        path.unlink()

    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["skipped"], summary["removed"]) == (0, 10, 2)
    store = open_store(store_dir)
    assert store.count_images() == 10
    for image_id in gone:
        with pytest.raises(UnknownImage):
            store.image(image_id)
        with pytest.raises(UnknownImage):
            store.vector(image_id)
        with pytest.raises(UnknownImage):
            store.patch_features(image_id)
    assert store.index.ntotal == 10
    assert faiss.read_index(str(store_dir / "index.faiss")).ntotal == 10  # the file on disk, too
    survivor = ids_by_path(store)[str(chip_paths[5])]
    found = {hit["id"] for hit in api.search(store, survivor, k=12)["results"]}
    assert found.isdisjoint(gone)
    assert len(found) == 10


def test_new_file_gets_a_new_id_never_a_reused_one(index, indexed, chip_paths, chips_dir, store_dir, open_store):
    store = open_store(store_dir)
    highest = max(ids_by_path(store).values())
    store.close()
    chip_paths[-1].unlink()
    index([chips_dir], store_dir)
    shutil.copy2(chip_paths[0], chips_dir / "copy.jpg")

    summary = index([chips_dir], store_dir)

    assert summary["indexed"] == 1
    store = open_store(store_dir)
    assert ids_by_path(store)[str((chips_dir / "copy.jpg").absolute())] > highest


def test_list_file_sources(index, chip_paths, tmp_path, open_store):
    listing = tmp_path / "list.txt"
    listing.write_text("# two chips\n" + "\n".join(str(p) for p in chip_paths[:2]) + "\n\n")
    summary = index([listing], tmp_path / "store")
    assert summary["indexed"] == 2
    assert scan_sources([listing]) == chip_paths[:2]


def test_sources_are_normalised_so_one_file_is_one_image(chip_paths, tmp_path, monkeypatch):
    folder = chip_paths[0].parent
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    dotted = os.path.relpath(folder, tmp_path / "work")  # ../<folder name>
    assert dotted.startswith("..")
    assert scan_sources([dotted]) == scan_sources([folder]) == sorted(chip_paths)
    assert scan_sources([f"{dotted}/{chip_paths[0].name}"]) == [chip_paths[0]]


def test_lists_from_other_tools_and_with_folders(chip_paths, tmp_path):
    folder = chip_paths[0].parent
    with_bom = tmp_path / "bom.txt"
    with_bom.write_text(f"{chip_paths[1]}\n", encoding="utf-8-sig")  # as Windows' Notepad may save it
    assert scan_sources([with_bom]) == [chip_paths[1]]
    latin = tmp_path / "latin.txt"
    latin.write_bytes(f"{folder}/caf\xe9.jpg\n".encode("latin-1"))
    with pytest.raises(IndexerError, match="latin.txt is not UTF-8 text"):
        scan_sources([latin])
    with_folder = tmp_path / "folders.txt"
    with_folder.write_text(f"{folder}\n")  # a folder listed is walked as a folder given on the command line is
    assert scan_sources([with_folder]) == sorted(chip_paths)


def test_a_link_named_directly_is_read_even_when_its_folder_came_first(chip_paths, tmp_path):
    folder = chip_paths[0].parent
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(chip_paths[0].read_bytes())
    (folder / "link.jpg").symlink_to(elsewhere)
    from indexer.images import OutsideLink

    walked = scan_sources([folder])
    assert any(isinstance(p, OutsideLink) for p in walked)  # found by walking: not followed
    for order in ([folder, folder / "link.jpg"], [folder / "link.jpg", folder]):
        assert not any(isinstance(p, OutsideLink) for p in scan_sources(order)), order


def test_parallel_decode_workers_give_the_same_vectors(index, chips_dir, tmp_path, open_store):
    index([chips_dir], tmp_path / "serial", workers=0)
    index([chips_dir], tmp_path / "parallel", workers=1, batch_size=5)
    serial, parallel = open_store(tmp_path / "serial"), open_store(tmp_path / "parallel")
    serial_ids, parallel_ids = ids_by_path(serial), ids_by_path(parallel)
    assert serial_ids.keys() == parallel_ids.keys()
    for path, image_id in serial_ids.items():
        np.testing.assert_allclose(parallel.vector(parallel_ids[path]), serial.vector(image_id), atol=1e-5)


def test_uint8_transport_gives_the_same_vectors_and_patch_features(index, embedder, chips_dir, tmp_path, open_store,
                                                                    monkeypatch):
    """The workers hand over uint8 pixels that the embedder normalises on its device; through a real decode
    worker that must store exactly what float32 pixels normalised in the worker store."""
    seen = []
    real_embed = type(embedder).embed
    monkeypatch.setattr(type(embedder), "embed",
                        lambda self, pixels, **kw: (seen.append(pixels.dtype), real_embed(self, pixels, **kw))[1])
    index([chips_dir], tmp_path / "uint8", workers=1, batch_size=4)
    assert seen and set(seen) == {torch.uint8}  # the default
    seen.clear()
    monkeypatch.setattr(type(embedder), "takes_uint8", False)
    index([chips_dir], tmp_path / "float", workers=1, batch_size=4)
    assert seen and set(seen) == {torch.float32}
    floats, uint8s = open_store(tmp_path / "float"), open_store(tmp_path / "uint8")
    float_ids, uint8_ids = ids_by_path(floats), ids_by_path(uint8s)
    assert float_ids == uint8_ids
    for image_id in float_ids.values():
        np.testing.assert_array_equal(uint8s.vector(image_id), floats.vector(image_id))
        np.testing.assert_array_equal(uint8s.patch_features(image_id), floats.patch_features(image_id))


@pytest.mark.parametrize("pooling, factor", [("cls", 1), ("mean", 1), ("cls+mean", 2)])
def test_pooling_is_recorded_in_the_store(index, model_dir, load_embedder, chip_paths, tmp_path, open_store,
                                          pooling, factor):
    embedder = load_embedder(model_dir, pooling=pooling)
    index(chip_paths[:3], tmp_path / "store", embedder=embedder)
    store = open_store(tmp_path / "store")
    assert store.provenance["pooling"] == pooling
    assert store.dim == factor * 32
    assert store.info()["pooling"] == pooling
    image_id = min(ids_by_path(store).values())
    assert store.vector(image_id).shape == (factor * 32,)
    assert api.search(store, image_id, k=1)["results"][0]["id"] == image_id


def test_real_scenes_are_cut_into_chips_and_empty_chips_skipped(index, shared_data_dir, tmp_path, open_store):
    sources = [shared_data_dir / "naip" / "m_4709963_se_14_1_20090818.tif",  # 934 x 724, 4 bands, no RGB tags
               shared_data_dir / "rasterio" / "RGBA.byte.tif",  # 791 x 718, alpha
               shared_data_dir / "rasterio" / "shade.tif"]  # 1024 x 1024, 1 band, mostly nodata
    summary = index(sources, tmp_path / "store")

    assert (summary["scenes"], summary["failed"]) == (3, 0)
    store = open_store(tmp_path / "store")
    rows = [store.image(r["id"]) for r in store.images_by_path().values()]
    by_scene = {}
    for row in rows:
        by_scene.setdefault(os.path.basename(row["scene"]), []).append(row)
    assert len(by_scene["m_4709963_se_14_1_20090818.tif"]) == 4  # 2 x 2 chips of 512, shifted inward
    assert {(r["width"], r["height"]) for r in rows} == {(512, 512)}
    assert "shade.tif" not in by_scene  # every chip under --min-valid 0.5
    assert summary["skipped_chips"] >= 4
    assert summary["indexed"] == len(rows) == 4 + len(by_scene.get("RGBA.byte.tif", []))
    geo = json.loads(by_scene["m_4709963_se_14_1_20090818.tif"][0]["geo"])
    assert geo["crs"] == "EPSG:26914" and geo["date"] == "2009-08-18" and geo["band_source"] == "default"
    assert -100 < geo["centroid"][0] < -99 and 47 < geo["centroid"][1] < 47.1


def test_a_model_on_a_two_core_cpu_gets_no_decode_worker(monkeypatch):
    """Its forward keeps both cores busy: a worker beside it slowed the indexer (bench/results/cpu/workers-xeon-768/)."""
    from indexer import pipeline

    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)
    assert pipeline.default_workers("cpu") == 0 and pipeline.default_workers(torch.device("cpu")) == 0
    assert pipeline.default_workers("cuda") == 1 and pipeline.default_workers() == 1  # a GPU's model, or not said
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 16)
    assert pipeline.default_workers("cpu") == 8 and pipeline.default_workers("cuda") == 8
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)
    # a plugged-in backbone's own name for its device is no torch device: it keeps the workers it had
    assert pipeline.default_workers("auto") == 1 and pipeline.default_workers(object()) == 1
