"""Sidecars beside a scene (.msk, .aux.xml): a change in how the scene reads cuts it again; statistics do not."""
import pytest

from helpers import mask_sidecar
from indexer import scenes
from indexer.pipeline import ChipOptions
from indexer.scenes import open_scene

CHIPS = ChipOptions(chip_size=256)
NODATA_AUX = "<PAMDataset>{}</PAMDataset>".format(
    "".join(f'<PAMRasterBand band="{band}"><NoDataValue>255</NoDataValue></PAMRasterBand>' for band in range(1, 5)))
STATISTICS_AUX = """<PAMDataset><PAMRasterBand band="1"><Metadata>
<MDI key="STATISTICS_MAXIMUM">255</MDI><MDI key="STATISTICS_MINIMUM">0</MDI><MDI key="STATISTICS_MEAN">96.5</MDI>
</Metadata></PAMRasterBand></PAMDataset>"""


@pytest.fixture
def opened(monkeypatch):
    """The scenes the planner opens (header reads), in order."""
    paths = []
    real_open = scenes.open_scene
    monkeypatch.setattr(scenes, "open_scene", lambda path, **kw: paths.append(str(path)) or real_open(path, **kw))
    return paths


def chips_of(store, scene):
    return {path: row for path, row in store.images_by_path().items() if row["scene"] == str(scene)}


def test_a_new_mask_sidecar_cuts_the_scene_again(index, naip_dir, store_dir, open_store, tmp_path, opened):
    index([naip_dir], store_dir, chips=CHIPS)
    scene = sorted(naip_dir.glob("*.tif"))[0]
    before = set(chips_of(open_store(store_dir), scene))
    mask_sidecar(scene, tmp_path)
    assert open_scene(scene).mask_source == "mask"  # GDAL takes the .msk over the nodata value
    opened.clear()

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert opened == [str(scene)]  # the other two scenes, sidecars unchanged, are not opened
    assert again["removed"] == 12 and again["skipped"] == 24
    store = open_store(store_dir)
    chips = chips_of(store, scene)
    assert set(chips) < before  # the masked half's chips fall under --min-valid now
    details = store.images([row["id"] for row in chips.values()]).values()
    assert {chip["geo"]["mask_source"] for chip in details} == {"mask"}
    assert again["indexed"] == len(chips) and again["skipped_chips"] == 12 - len(chips)

    opened.clear()
    rerun = index([naip_dir], store_dir, chips=CHIPS)
    assert (rerun["indexed"], rerun["removed"], rerun["skipped"], opened) == (0, 0, 36, [])


def test_a_nodata_value_set_in_aux_xml_cuts_the_scene_again(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=CHIPS)
    scene = sorted(naip_dir.glob("*.tif"))[1]
    (naip_dir / f"{scene.name}.aux.xml").write_text(NODATA_AUX)
    assert open_scene(scene).nodata == 255

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["removed"], again["indexed"], again["skipped"]) == (12, 12, 24)


def test_statistics_written_beside_a_scene_cut_nothing_again(index, naip_dir, store_dir, open_store, opened):
    """QGIS and `gdalinfo -stats` leave an .aux.xml of statistics: the scene reads the same, nothing is embedded."""
    index([naip_dir], store_dir, chips=CHIPS)
    ids = {path: row["id"] for path, row in open_store(store_dir).images_by_path().items()}
    scene = sorted(naip_dir.glob("*.tif"))[2]
    (naip_dir / f"{scene.name}.AUX.XML").write_text(STATISTICS_AUX)  # names are matched in any case
    opened.clear()

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["indexed"], again["removed"], again["skipped"]) == (0, 0, 36)
    assert opened == [str(scene)]
    assert {path: row["id"] for path, row in open_store(store_dir).images_by_path().items()} == ids
    opened.clear()
    assert index([naip_dir], store_dir, chips=CHIPS)["skipped"] == 36 and opened == []  # its sidecars recorded


def test_scenes_recorded_without_their_sidecars_are_not_cut_again(index, naip_dir, store_dir, open_store):
    """Stores from before sidecars were recorded: opened once, taken as read the same way, then recorded."""
    index([naip_dir], store_dir, chips=CHIPS)
    for scene in naip_dir.glob("*.tif"):
        (naip_dir / f"{scene.name}.aux.xml").write_text(NODATA_AUX)
    store = open_store(store_dir)
    with store.db.conn:
        store.db.execute("UPDATE scenes SET sidecars = NULL, reading = NULL")

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["indexed"], again["removed"], again["skipped"]) == (0, 0, 36)
    recorded = open_store(store_dir).scenes_by_path()
    assert all(record["sidecars"] and record["reading"] for record in recorded.values())


def test_a_scene_whose_sidecars_did_not_change_is_not_compared_by_reading(index, naip_dir, store_dir, open_store):
    """A newer GDAL may describe the same scene another way (a CRS's spelling): with the sidecars unchanged, the
    scene is not cut again for that; a run that opens it to finish a missing chip embeds just that chip."""
    index([naip_dir], store_dir, chips=CHIPS)
    scene = sorted(naip_dir.glob("*.tif"))[0]
    store = open_store(store_dir)
    store.remove_images([row["id"] for row in chips_of(store, scene).values()][:1])
    with store.db.conn:
        store.db.execute("UPDATE scenes SET reading = 'sha256:as an older GDAL read it' WHERE path = ?", [str(scene)])

    again = index([naip_dir], store_dir, chips=CHIPS)

    assert (again["indexed"], again["removed"], again["skipped"]) == (1, 0, 35)


def test_a_mask_named_in_upper_case_weighs_in_how_the_scene_reads(naip_dir, tmp_path):
    """GDAL reads scene.tif.MSK as it reads scene.tif.msk: a change of its bytes must change the scene's reading."""
    import shutil

    from indexer.sidecars import reading_digest

    scene = sorted(naip_dir.glob("*.tif"))[0]
    mask_sidecar(scene, tmp_path)
    lower = reading_digest(open_scene(scene))
    shutil.move(f"{scene}.msk", f"{scene}.MSK")
    assert open_scene(scene).mask_source == "mask"  # GDAL takes it
    assert reading_digest(open_scene(scene)) == lower  # its bytes counted, as the lower-case one's are


def test_a_mapinfo_tab_that_places_a_plain_tiff_moves_its_chips(index, store_dir, open_store, tmp_path):
    import numpy as np
    import rasterio

    folder = tmp_path / "tab"
    folder.mkdir()
    with rasterio.open(folder / "p.tif", "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8") as dst:
        dst.write(np.random.default_rng(0).integers(1, 255, (3, 200, 300), dtype=np.uint8))

    def place(east: int) -> None:  # a MapInfo table of four control points, in UTM 14N
        corners = [(east, 5200000, 0, 0), (east + 300, 5200000, 300, 0), (east, 5199800, 0, 200),
                   (east + 300, 5199800, 300, 200)]
        points = ",\n".join(f"  ({x},{y}) ({col},{row}) Label \"Pt {n}\"" for n, (x, y, col, row) in enumerate(corners))
        (folder / "p.tab").write_text(
            "!table\n!version 300\n!charset WindowsLatin1\n\nDefinition Table\n  File \"p.tif\"\n  Type \"RASTER\"\n"
            f"{points}\n  CoordSys Earth Projection 8, 104, \"m\", -99, 0, 0.9996, 500000, 0\n  Units \"m\"\n")

    place(500000)
    assert open_scene(folder / "p.tif").transform[2] == 500000
    first = index([folder], store_dir, chips=ChipOptions(chip_size=100))
    assert first["indexed"] == 6
    place(501000)  # the table moves the scene 1 km east
    again = index([folder], store_dir, chips=ChipOptions(chip_size=100))
    assert (again["indexed"], again["relocated"]) == (0, 6)
    store = open_store(store_dir)
    rows = store.images([row["id"] for row in store.images_by_path().values()]).values()
    assert all(row["geo"]["wgs84_bounds"][0] > -98.99 for row in rows)  # east of where it was
