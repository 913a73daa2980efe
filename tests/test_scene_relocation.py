"""A sidecar that moves a scene on the ground (a GeoTransform in .aux.xml, a world file) re-places its chips: same
ids, same vectors, new footprints; no model pass. A sidecar that changes the pixels too cuts the scene again."""
import rasterio
from helpers import CountingEmbedder

from indexer.pipeline import ChipOptions
from indexer.preview import preview_run
from indexer.scenes import open_scene

CHIPS = ChipOptions(chip_size=256)
SHIFT_M = 20_000  # east: far past a chip's 1.28 km, so no chip of the moved scene covers its old places


def georeference(scene, *, east: float = 0.0, pixel: float | None = None, nodata: int | None = None) -> None:
    """An .aux.xml beside `scene` giving it another GeoTransform (GDAL takes it over the TIFF's own)."""
    with rasterio.open(scene) as source:
        gt = list(source.transform.to_gdal())
    gt[0] += east
    if pixel is not None:
        gt[1], gt[5] = pixel, -pixel
    bands = "" if nodata is None else "".join(
        f'<PAMRasterBand band="{band}"><NoDataValue>{nodata}</NoDataValue></PAMRasterBand>' for band in range(1, 5))
    (scene.parent / f"{scene.name}.aux.xml").write_text(
        f"<PAMDataset><GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>{bands}</PAMDataset>")


def chips_of(store, scene) -> dict:
    return {row["path"]: row["id"] for row in store.images_by_path().values() if row["scene"] == str(scene)}


def test_a_scene_moved_on_the_ground_keeps_its_chips_and_takes_new_places(embedder, index, naip_dir, store_dir,
                                                                         open_store):
    index([naip_dir], store_dir, chips=CHIPS)
    scene = sorted(naip_dir.glob("*.tif"))[0]
    store = open_store(store_dir)
    before = chips_of(store, scene)
    old = store.images(before.values())
    vectors = {image_id: store.vector(image_id) for image_id in before.values()}
    patches = {image_id: store.patch_features(image_id) for image_id in before.values()}
    transform = open_scene(scene).transform
    georeference(scene, east=SHIFT_M)
    assert open_scene(scene).transform[2] == transform[2] + SHIFT_M  # GDAL reads the sidecar's
    counting = CountingEmbedder(embedder)

    again = index([naip_dir], store_dir, chips=CHIPS, embedder=counting)

    assert counting.images == 0
    assert (again["indexed"], again["removed"], again["relocated"], again["skipped"]) == (0, 0, 12, 24)
    store = open_store(store_dir)
    assert chips_of(store, scene) == before  # the same chips, ids and all
    new = store.images(before.values())
    for image_id in before.values():
        was, now = old[image_id]["geo"], new[image_id]["geo"]
        assert now["bounds"] == [was["bounds"][0] + SHIFT_M, was["bounds"][1], was["bounds"][2] + SHIFT_M,
                                 was["bounds"][3]]
        assert now["centroid"][0] > was["centroid"][0] + 0.2  # 20 km east, at 47° N about 0.26° of longitude
        assert {key: now[key] for key in ("valid_fraction", "date", "native_gsd", "stretch")} == \
               {key: was[key] for key in ("valid_fraction", "date", "native_gsd", "stretch")}
    for image_id in before.values():
        assert (store.vector(image_id) == vectors[image_id]).all()
        assert (store.patch_features(image_id) == patches[image_id]).all()
    # the place index follows: the chip is found where it lies now, and no longer where it lay
    some = next(iter(before.values()))
    here = {chip["id"] for chip in store.chips_at(*new[some]["geo"]["centroid"])}
    there = {chip["id"] for chip in store.chips_at(*old[some]["geo"]["centroid"])}
    assert some in here and some not in there
    assert there  # the other years' chips of that place are still there

    rerun = index([naip_dir], store_dir, chips=CHIPS)
    assert (rerun["indexed"], rerun["removed"], rerun["relocated"], rerun["skipped"]) == (0, 0, 0, 36)


def test_the_dry_run_counts_relocated_chips(index, naip_dir, store_dir):
    index([naip_dir], store_dir, chips=CHIPS)
    georeference(sorted(naip_dir.glob("*.tif"))[1], east=SHIFT_M)

    plan = preview_run([naip_dir], store_dir, chips=CHIPS)

    assert (plan["embed"], plan["relocated"], plan["removed"], plan["skipped"]) == (0, 12, 0, 24)
    assert index([naip_dir], store_dir, chips=CHIPS)["relocated"] == 12  # the dry run wrote nothing


def test_a_sidecar_that_moves_the_scene_and_changes_its_pixels_cuts_it_again(index, naip_dir, store_dir):
    index([naip_dir], store_dir, chips=CHIPS)
    georeference(sorted(naip_dir.glob("*.tif"))[2], east=SHIFT_M, nodata=255)

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["relocated"], again["removed"], again["indexed"]) == (0, 12, 12)


def test_a_new_pixel_size_changes_the_windows_of_a_chip_size_in_metres(index, naip_dir, store_dir, open_store):
    """With --gsd a window covers chip_size x gsd metres: a new pixel size cuts other windows, embedded anew."""
    chips = ChipOptions(chip_size=128, gsd=10.0)
    index([naip_dir], store_dir, chips=chips)
    scene = sorted(naip_dir.glob("*.tif"))[0]
    before = set(chips_of(open_store(store_dir), scene))
    georeference(scene, pixel=4.0)

    again = index([naip_dir], store_dir, chips=chips)

    after = set(chips_of(open_store(store_dir), scene))
    assert again["relocated"] == 0 and again["removed"] == len(before) and again["indexed"] == len(after)
    assert not before & after  # 320-pixel windows now, not 256


def test_a_pixel_size_change_without_gsd_keeps_the_windows(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=CHIPS)
    scene = sorted(naip_dir.glob("*.tif"))[0]
    georeference(scene, pixel=4.0)

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["indexed"], again["relocated"]) == (0, 12)
    geo = open_store(store_dir).images(chips_of(open_store(store_dir), scene).values())
    assert {chip["geo"]["native_gsd"] for chip in geo.values()} == {4.0}


def test_scenes_recorded_before_pixel_digests_are_cut_again_when_moved(index, naip_dir, store_dir, open_store):
    """A scene recorded by an older lookalike has no digest of its pixels: a move on the ground cuts it again."""
    index([naip_dir], store_dir, chips=CHIPS)
    store = open_store(store_dir)
    with store.db.conn:
        store.db.execute("UPDATE scenes SET pixels = NULL")
    georeference(sorted(naip_dir.glob("*.tif"))[0], east=SHIFT_M)

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["relocated"], again["removed"], again["indexed"]) == (0, 12, 12)
