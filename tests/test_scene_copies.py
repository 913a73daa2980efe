"""A scene copied beside its embedded original: its chips take the original chips' vectors, with no model pass."""
import shutil

import numpy as np

from helpers import CountingEmbedder
from indexer.pipeline import ChipOptions
from indexer.preview import preview_run
from indexer.scenes import open_scene

CHIPS = ChipOptions(chip_size=256)


def chips_by_key(store, scene):
    rows = {path: row for path, row in store.images_by_path().items() if row["scene"] == str(scene)}
    details = store.images([row["id"] for row in rows.values()])
    return {path.rsplit("#", 1)[1]: details[row["id"]] for path, row in rows.items()}


def test_a_copied_scene_takes_its_twins_chips(index, embedder, naip_dir, store_dir, open_store, tmp_path):
    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    copy = naip_dir / "second folder" / "m_4709963_se_14_1_20230704.tif"  # another date in its name
    copy.parent.mkdir()
    shutil.copy(original, copy)  # a new time, the same bytes
    assert preview_run([naip_dir], store_dir, chips=CHIPS)["copies"] == 12

    counting = CountingEmbedder(embedder)
    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert counting.images == 0
    assert (summary["indexed"], summary["copied"], summary["skipped"], summary["removed"]) == (12, 12, 36, 0)
    store = open_store(store_dir)
    twins, copies = chips_by_key(store, original), chips_by_key(store, copy)
    assert copies.keys() == twins.keys()
    for window, chip in copies.items():
        twin = twins[window]
        assert chip["id"] != twin["id"] and chip["path"] == f"{copy}#{window}"
        assert np.array_equal(store.vector(chip["id"]), store.vector(twin["id"]))
        assert np.array_equal(store.patch_features(chip["id"]), store.patch_features(twin["id"]))
        assert chip["geo"]["footprint"] == twin["geo"]["footprint"]
        assert chip["geo"]["valid_fraction"] == twin["geo"]["valid_fraction"]
        assert chip["geo"]["date"] == open_scene(copy).date
    assert open_store(store_dir).index.ntotal == 48
    assert store.scenes_by_path()[str(copy)]["sha256"] == store.scenes_by_path()[str(original)]["sha256"]

    again = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)
    assert (again["indexed"], again["skipped"], counting.images) == (0, 48, 0)


def test_a_twin_cut_again_in_the_same_run_lends_nothing(index, embedder, naip_dir, store_dir):
    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    copy = naip_dir / "copy.tif"
    shutil.copy(original, copy)
    with open(original, "ab") as handle:  # the original changes: its chips are removed and embedded again
        handle.write(b"\0" * 16)

    counting = CountingEmbedder(embedder)
    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert counting.images == 24 and summary["copied"] == 0
    assert (summary["indexed"], summary["removed"]) == (24, 12)


def test_an_unfinished_twin_lends_nothing(index, embedder, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    store = open_store(store_dir)
    first_chip = next(row for row in store.images_by_path().values() if row["scene"] == str(original))
    store.remove_images([first_chip["id"]])  # as after a run cut short
    shutil.copy(original, naip_dir / "copy.tif")

    counting = CountingEmbedder(embedder)
    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert (counting.images, summary["copied"], summary["indexed"]) == (13, 0, 13)


def test_a_copy_that_reads_differently_is_embedded(index, embedder, naip_dir, store_dir):
    """The same bytes with a nodata value of its own in an .aux.xml: other chips, so the model sees them."""
    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    copy = shutil.copy(original, naip_dir / "copy.tif")
    (naip_dir / "copy.tif.aux.xml").write_text("<PAMDataset>{}</PAMDataset>".format("".join(
        f'<PAMRasterBand band="{band}"><NoDataValue>255</NoDataValue></PAMRasterBand>' for band in range(1, 5))))
    assert open_scene(copy).nodata == 255

    counting = CountingEmbedder(embedder)
    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert (counting.images, summary["copied"], summary["indexed"]) == (12, 0, 12)


def test_a_scene_is_read_whole_only_when_a_recorded_scene_starts_with_its_bytes(index, embedder, naip_dir,
                                                                                 store_dir, open_store, monkeypatch):
    """Same-sized tiles are common: a new scene of a recorded scene's size is told apart by its first 64 KiB."""
    from indexer import scene_copies

    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    store = open_store(store_dir)
    assert store.scenes_by_path()[str(original)]["head_sha256"]  # recorded while its chips were embedded
    with store.db.conn:
        store.db.execute("UPDATE scenes SET head_sha256 = 'another start'")
    shutil.copy(original, naip_dir / "copy.tif")
    hashed = []
    real_sha256 = scene_copies.file_sha256
    monkeypatch.setattr(scene_copies, "file_sha256", lambda path: hashed.append(path) or real_sha256(path))

    counting = CountingEmbedder(embedder)
    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert (hashed, counting.images, summary["copied"]) == ([], 12, 0)


def test_a_new_scene_is_read_once_for_many_candidates(index, naip_dir, store_dir, open_store, monkeypatch):
    """A folder of same-sized tiles gives a new scene many candidates: its first bytes are read once."""
    from indexer import scene_copies

    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    store = open_store(store_dir)
    with store.db.conn:  # every recorded scene now has the original's size: three candidates
        store.db.execute("UPDATE scenes SET size = ?", [original.stat().st_size])
    copy = shutil.copy(original, naip_dir / "copy.tif")
    heads = []
    real_head = scene_copies.head_sha256
    monkeypatch.setattr(scene_copies, "head_sha256", lambda path: heads.append(str(path)) or real_head(path))

    index([naip_dir], store_dir, chips=CHIPS)

    assert heads == [str(copy)]


def test_a_twin_hashed_before_head_hashes_serves_at_once(index, embedder, naip_dir, store_dir, open_store):
    """A store from before the first-bytes hash: the twin's first bytes are read when a copy of its size comes."""
    index([naip_dir], store_dir, chips=CHIPS)
    original = sorted(naip_dir.glob("*.tif"))[0]
    store = open_store(store_dir)
    with store.db.conn:
        store.db.execute("UPDATE scenes SET head_sha256 = NULL")
    shutil.copy(original, naip_dir / "copy.tif")
    counting = CountingEmbedder(embedder)

    summary = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert (counting.images, summary["copied"]) == (0, 12)
