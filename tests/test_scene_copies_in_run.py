"""Two copies of a scene new in the same run: one is embedded, the other's chips take its vectors once written."""
import shutil

import numpy as np

from helpers import CountingEmbedder, mask_sidecar
from indexer import pipeline, scene_copies, scenes
from indexer.pipeline import ChipOptions
from indexer.preview import preview_run
from indexer.scenes import open_scene

CHIPS = ChipOptions(chip_size=256)
NODATA_AUX = "<PAMDataset>{}</PAMDataset>".format(
    "".join(f'<PAMRasterBand band="{band}"><NoDataValue>255</NoDataValue></PAMRasterBand>' for band in range(1, 5)))


def chips_by_window(store, scene) -> dict:
    rows = {path: row for path, row in store.images_by_path().items() if row["scene"] == str(scene)}
    details = store.images([row["id"] for row in rows.values()])
    return {path.rsplit("#", 1)[1]: details[row["id"]] for path, row in rows.items()}


def second_copy(naip_dir):
    """The first scene again, in another folder under another date: both new to the store."""
    original = sorted(naip_dir.glob("*.tif"))[0]
    copy = naip_dir / "delivery 2" / "m_4709963_se_14_1_20230704.tif"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    return original, copy


def test_a_scene_twice_in_a_new_collection_is_embedded_once(index, embedder, naip_dir, store_dir, open_store):
    original, copy = second_copy(naip_dir)
    assert preview_run([naip_dir], store_dir, chips=CHIPS)["copies"] == 12
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert counting.images == 36
    assert (summary["indexed"], summary["copied"], summary["failed"]) == (48, 12, 0)
    store = open_store(store_dir)
    twins, copies = chips_by_window(store, original), chips_by_window(store, copy)
    assert copies.keys() == twins.keys() and len(copies) == 12
    for window, chip in copies.items():
        twin = twins[window]
        assert chip["id"] != twin["id"] and chip["path"] == f"{copy}#{window}"
        assert np.array_equal(store.vector(chip["id"]), store.vector(twin["id"]))
        assert np.array_equal(store.patch_features(chip["id"]), store.patch_features(twin["id"]))
        assert chip["geo"]["footprint"] == twin["geo"]["footprint"]
        assert chip["geo"]["date"] == open_scene(copy).date != twin["geo"]["date"]
    recorded = store.scenes_by_path()
    assert recorded[str(copy)]["sha256"] == recorded[str(original)]["sha256"] is not None
    assert store.index.ntotal == 48

    again = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)
    assert (again["indexed"], again["skipped"], counting.images) == (0, 48, 36)


def test_chips_too_empty_in_the_first_copy_are_too_empty_in_the_second(index, embedder, naip_dir, store_dir,
                                                                         open_store, tmp_path):
    original, copy = second_copy(naip_dir)
    mask_sidecar(original, tmp_path)  # the left half masked, in both: they read the same way
    shutil.copy(f"{original}.msk", f"{copy}.msk")
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    store = open_store(store_dir)
    kept = len(chips_by_window(store, original))
    assert 0 < kept < 12 and len(chips_by_window(store, copy)) == kept
    assert counting.images == 24 + kept and summary["copied"] == kept
    assert summary["skipped_chips"] == 2 * (12 - kept)
    assert store.skipped_chip_keys(str(copy)) == {key.replace(str(original), str(copy))
                                                  for key in store.skipped_chip_keys(str(original))}


def test_a_second_copy_that_reads_differently_is_embedded(index, embedder, naip_dir, store_dir):
    _, copy = second_copy(naip_dir)
    (copy.parent / f"{copy.name}.aux.xml").write_text(NODATA_AUX)
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert counting.images == 48 and summary["copied"] == 0


def test_tiles_of_one_size_in_other_places_are_not_read_to_compare(index, embedder, naip_dir, store_dir,
                                                                   monkeypatch):
    """A mosaic's tiles share a size but not a geotransform: no tile's bytes are hashed at planning."""
    original = sorted(naip_dir.glob("*.tif"))[0]
    tile = naip_dir / "east.tif"
    shutil.copy(original, tile)
    (naip_dir / "east.tif.aux.xml").write_text(
        "<PAMDataset><GeoTransform>500000.0, 5.0, 0.0, 5209247.0, 0.0, -5.0</GeoTransform></PAMDataset>")
    reads = []
    monkeypatch.setattr(scene_copies, "head_sha256", lambda path: reads.append(path) or "head")
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert reads == [] and counting.images == 48 and summary["copied"] == 0


def test_a_copy_whose_twin_chip_could_not_be_read_embeds_that_chip(index, embedder, naip_dir, store_dir,
                                                                   open_store, monkeypatch):
    original, copy = second_copy(naip_dir)
    real_read = scenes.read_chip
    failed = []

    def flaky(raster, scene, window):  # the first window read of the two: that of the copy embedded
        if str(scene.path) in (str(original), str(copy)) and not failed:
            failed.append(str(scene.path))
            raise OSError(5, "Input/output error")
        return real_read(raster, scene, window)

    monkeypatch.setattr(pipeline.scenes, "read_chip", flaky)
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert (summary["failed"], summary["copied"], counting.images) == (1, 11, 36)
    store = open_store(store_dir)
    other = copy if failed == [str(original)] else original
    assert len(chips_by_window(store, failed[0])) == 11 and len(chips_by_window(store, other)) == 12


def test_a_copy_left_unwritten_by_a_run_cut_short_is_copied_by_the_next(index, embedder, naip_dir, store_dir,
                                                                         open_store):
    """A run stopped before its copies were written: the copy is recorded, its chips are not; the next run
    finds its twin done and copies them."""
    original, copy = second_copy(naip_dir)
    index([naip_dir], store_dir, chips=CHIPS)
    store = open_store(store_dir)
    store.remove_images([chip["id"] for chip in chips_by_window(store, copy).values()])
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert (counting.images, summary["copied"], summary["indexed"]) == (0, 12, 12)


def test_a_copy_left_uncopied_by_a_killed_run_is_copied_when_its_twin_is_finished(index, embedder, naip_dir,
                                                                                   store_dir, open_store):
    """kill -9 while the first copy was embedded: the next run finishes it and copies the second from it, rather
    than embedding the second too."""
    import sqlite3

    original, copy = second_copy(naip_dir)
    index([naip_dir], store_dir, chips=CHIPS)  # "delivery 2/..." comes first: embedded, and the original copied
    store = open_store(store_dir)
    lost = list(chips_by_window(store, copy).values())[-5:] + list(chips_by_window(store, original).values())
    store.remove_images([chip["id"] for chip in lost])  # as if the run died before writing these
    store.save_index()
    store.close()
    with sqlite3.connect(store_dir / "catalogue.db") as db:  # nor had it hashed them (that is done as it ends)
        db.execute("UPDATE scenes SET sha256 = NULL, head_sha256 = NULL WHERE path IN (?, ?)",
                   [str(original), str(copy)])
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert counting.images == 5 and (summary["indexed"], summary["copied"]) == (17, 12)
    store = open_store(store_dir)
    twins, copies = chips_by_window(store, copy), chips_by_window(store, original)
    assert copies.keys() == twins.keys() and len(copies) == 12
    assert all(np.array_equal(store.vector(chip["id"]), store.vector(twins[window]["id"]))
               for window, chip in copies.items())
