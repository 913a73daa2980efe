"""Scenes: band choice, masks, stretch, dates, chip windows and their WGS84 footprints, on ../shared/data."""
import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin, xy
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from helpers import SHARED_DATA_DIR
from indexer.errors import IndexerError, UnreadableImage
from indexer.scenes import chip_geometry, chip_windows, iter_chips, open_scene, read_chip, scene_date

# rasterio 1.4 itself still multiplies Affine by tuples (windows.bounds, from_origin) under affine 3.
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rasterio")

NAIP_NAME = "naip/m_4709963_se_14_1_20090818.tif"  # 934 x 724


@pytest.fixture(scope="module")
def data_dir():
    """The real rasters; skipped on a developer's machine without them, a failure under CI."""
    if not SHARED_DATA_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the shared test data is not at {SHARED_DATA_DIR} (CI must have it)", pytrace=False)
        pytest.skip(f"the shared test data is not at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


def write_raster(path, pixels, *, crs="EPSG:32614", nodata=None, **profile):
    """pixels (bands, h, w) written as a GeoTIFF with 10 m pixels somewhere in UTM 14N."""
    count, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=pixels.dtype,
                       crs=crs, transform=from_origin(500000, 5200000, 10, 10), nodata=nodata, **profile) as dst:
        dst.write(pixels)
    return path


def signed_area(ring) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2


# -- chip windows --------------------------------------------------------------------------------
@pytest.mark.parametrize("size, chip_size, overlap, expected", [
    ((934, 724), 512, 0, 2 * 2),
    ((934, 724), 256, 0, 4 * 3),
    ((934, 724), 256, 128, 7 * 5),
    ((934, 724), 1024, 0, 1),
    ((512, 512), 512, 0, 1),
    ((513, 512), 512, 0, 2),
    ((100, 50), 64, 0, 2 * 1),
])
def test_chip_counts(size, chip_size, overlap, expected):
    assert len(chip_windows(*size, chip_size=chip_size, overlap=overlap)) == expected


@pytest.mark.parametrize("size, chip_size, overlap", [
    ((934, 724), 512, 0), ((934, 724), 256, 100), ((700, 300), 512, 0), ((40, 30), 512, 0), ((1000, 1000), 250, 0),
])
def test_windows_cover_the_scene_shifted_inward_without_duplicates(size, chip_size, overlap):
    width, height = size
    windows = chip_windows(width, height, chip_size=chip_size, overlap=overlap)
    assert len(set(windows)) == len(windows)
    covered = np.zeros((height, width), bool)
    for col, row, w, h in windows:
        assert (w, h) == (min(chip_size, width), min(chip_size, height))  # full-size, never padded
        assert 0 <= col and col + w <= width and 0 <= row and row + h <= height
        covered[row:row + h, col:col + w] = True
    assert covered.all()


def test_naip_512_chips_shift_inward_at_the_right_and_bottom():
    assert chip_windows(934, 724, chip_size=512) == [(0, 0, 512, 512), (422, 0, 512, 512),
                                                     (0, 212, 512, 512), (422, 212, 512, 512)]
    assert chip_windows(934, 724, chip_size=256, overlap=128)[:7] == [(c, 0, 256, 256) for c in
                                                                      (0, 128, 256, 384, 512, 640, 678)]


@pytest.mark.parametrize("chip_size, overlap", [(256, 256), (256, -1), (256, 300), (0, 0)])
def test_bad_overlap_or_chip_size_is_refused(chip_size, overlap):
    with pytest.raises(IndexerError):
        chip_windows(934, 724, chip_size=chip_size, overlap=overlap)


def test_iter_chips_on_naip_reads_every_window(data_dir):
    run = iter_chips(data_dir / NAIP_NAME, chip_size=256, overlap=128)
    chips = list(run)
    assert [chip.window for chip in chips] == chip_windows(934, 724, chip_size=256, overlap=128)
    assert (run.kept, run.skipped) == (35, 0)
    assert all(chip.rgb.shape == (256, 256, 3) and chip.rgb.dtype == np.uint8 for chip in chips)


# -- geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, crs_kind", [(NAIP_NAME, "EPSG:26914"), ("rasterio/rgb1.tif", "wkt"),
                                            ("rasterio/shade.tif", "EPSG:3857")])
def test_chip_lon_lat_match_rasterio(data_dir, name, crs_kind):
    path = data_dir / name
    scene = open_scene(path)
    assert scene.crs == crs_kind if crs_kind != "wkt" else scene.crs.startswith("PROJCS[")
    with rasterio.open(path) as ds:
        for window in chip_windows(scene.width, scene.height, chip_size=256, overlap=64):
            col, row, w, h = window
            geometry = chip_geometry(scene, window)
            cols, rows = [col, col + w, col + w, col, col + w / 2], [row, row, row + h, row + h, row + h / 2]
            xs, ys = xy(ds.transform, rows, cols, offset="ul")  # 4 corners, then the centre
            lons, lats = warp_transform(ds.crs, "EPSG:4326", xs, ys)
            ring = geometry["footprint"][0]
            assert len(ring) == 5 and ring[0] == ring[-1]
            assert signed_area(ring) > 0  # counter-clockwise in lon/lat (RFC 7946)
            expected = sorted(zip(lons[:4], lats[:4]))
            assert np.allclose(sorted(map(tuple, ring[:4])), expected, rtol=0, atol=1e-6)
            assert np.allclose(geometry["centroid"], [lons[4], lats[4]], rtol=0, atol=1e-6)
            assert np.allclose(geometry["bounds"], window_bounds(Window(*window), ds.transform), rtol=0, atol=1e-6)


def test_wgs84_bounds_contain_every_chip_footprint(data_dir):
    scene = open_scene(data_dir / NAIP_NAME)
    west, south, east, north = scene.wgs84_bounds
    assert -99.2 < west < east < -99.1 and 47.0 < south < north < 47.1  # North Dakota
    for window in chip_windows(scene.width, scene.height, chip_size=256):
        for lon, lat in chip_geometry(scene, window)["footprint"][0]:
            assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9


# -- band choice and masks -----------------------------------------------------------------------
@pytest.mark.parametrize("name, bands, band_source, mask_source", [
    ("rasterio/RGB.byte.tif", (1, 2, 3), "colorinterp", "nodata"),
    ("rasterio/RGBA.byte.tif", (1, 2, 3), "colorinterp", "alpha"),
    ("rasterio/world.rgb.tif", (1, 2, 3), "colorinterp", "none"),
    (NAIP_NAME, (1, 2, 3), "default", "nodata"),
    ("landsat/1985.tif", (1, 2, 3), "default", "nodata"),
    ("rasterio/shade.tif", (1,), "grey", "nodata"),
])
def test_band_choice_and_mask_source(data_dir, name, bands, band_source, mask_source):
    scene = open_scene(data_dir / name)
    assert (scene.bands, scene.band_source, scene.mask_source) == (bands, band_source, mask_source)
    record = json.loads(json.dumps(scene.as_record()))
    assert record["bands"] == list(bands) and record["band_source"] == band_source


def test_band_override_changes_the_channel_order(data_dir):
    path = data_dir / NAIP_NAME
    window = (100, 100, 256, 256)
    default, _ = read_chip(path, open_scene(path), window)
    override_scene = open_scene(path, bands=(3, 2, 1))
    swapped, _ = read_chip(path, override_scene, window)
    assert override_scene.band_source == "override"
    assert not np.array_equal(default, swapped)
    assert np.array_equal(swapped, default[..., ::-1])
    nir, _ = read_chip(path, open_scene(path, bands=(4, 1, 2)), window)
    with rasterio.open(path) as ds:
        assert np.array_equal(nir[..., 0], ds.read(4, window=Window(*window)))


@pytest.mark.parametrize("bands", [(0, 1, 2), (1, 2, 5), (1, 2)])
def test_band_override_out_of_range_is_refused(data_dir, bands):
    with pytest.raises(IndexerError, match="bands"):
        open_scene(data_dir / NAIP_NAME, bands=bands)


@pytest.mark.parametrize("stretch", [(98, 2), (-1, 98), (2, 101)])
def test_bad_stretch_is_refused(data_dir, stretch):
    with pytest.raises(IndexerError, match="stretch"):
        open_scene(data_dir / NAIP_NAME, stretch=stretch)


def test_one_band_raster_is_grey_on_three_channels(data_dir, tmp_path):
    # shade.tif holds only 0 (shadow) and 255, and declares 255 nodata: 88 % of it is masked.
    path = data_dir / "rasterio/shade.tif"
    scene = open_scene(path)
    window = (768, 0, 256, 256)
    rgb, valid = read_chip(path, scene, window)
    with rasterio.open(path) as ds:
        band = ds.read(1, window=Window(*window))
    assert rgb.shape == (256, 256, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert valid == pytest.approx((band != 255).mean()) and 0.1 < valid < 0.5
    ramp = np.tile(np.arange(200, dtype=np.uint8), (50, 1))[None]  # (1, 50, 200)
    grey_path = write_raster(tmp_path / "grey.tif", ramp)
    grey, _ = read_chip(grey_path, open_scene(grey_path), (0, 0, 200, 50))
    assert all(np.array_equal(grey[..., channel], ramp[0]) for channel in range(3))


def test_nodata_corners_are_skipped_and_the_centre_kept(data_dir):
    path = data_dir / "rasterio/RGB.byte.tif"  # 791 x 718, rotated Landsat footprint with 0 borders
    scene = open_scene(path)
    with rasterio.open(path) as ds:
        corner, corner_valid = read_chip(ds, scene, (0, 0, 200, 200))
        _, centre_valid = read_chip(ds, scene, (295, 259, 200, 200))
        expected = (ds.read(window=Window(0, 0, 200, 200)) != 0).any(axis=0).mean()
    assert corner_valid < 0.5 and centre_valid > 0.99
    assert corner_valid == pytest.approx(expected)
    run = iter_chips(path, chip_size=200, min_valid=0.5)
    kept = {chip.window for chip in run}
    assert run.skipped > 0 and run.kept == len(kept) and run.kept + run.skipped == len(run.windows)
    assert (0, 0, 200, 200) not in kept and (200, 200, 200, 200) in kept
    assert all(chip.valid_fraction >= 0.5 for chip in run)


def write_masked(path, pixels, mask, *, internal=True, **profile):
    """pixels (bands, h, w) with a per-dataset mask band (255 valid, 0 not): inside the TIFF, or a .msk sidecar."""
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal):
        write_raster(path, pixels, **profile)
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(mask)
    return path


def test_internal_mask_of_a_jpeg_cog_is_the_mask(data_dir, tmp_path):
    # Lossy JPEG leaves no exact nodata value, so such COGs carry an internal mask instead (NAIP's own style).
    with rasterio.open(data_dir / NAIP_NAME) as ds:
        pixels = ds.read([1, 2, 3], window=Window(0, 0, 512, 256))  # (3, 256, 512), real imagery
    mask = np.full((256, 512), 255, np.uint8)
    mask[:, :320] = 0  # the left 320 columns are outside the acquisition; their pixels stay non-zero
    path = write_masked(tmp_path / "cog.tif", pixels, mask, compress="jpeg", photometric="ycbcr", tiled=True,
                        blockxsize=256, blockysize=256)
    scene = open_scene(path)
    assert (scene.mask_source, scene.nodata) == ("mask", None)
    rgb, valid = read_chip(path, scene, (256, 0, 256, 256))
    assert valid == pytest.approx(0.75)  # columns 256..319 masked, 320..511 valid
    assert not rgb[:, :64].any() and rgb[:, 64:].any()
    run = iter_chips(path, chip_size=256, min_valid=0.5)
    assert [chip.window for chip in run] == [(256, 0, 256, 256)] and run.skipped == 1
    assert [chip.window for chip in iter_chips(path, chip_size=256, min_valid=0.8)] == []
    # the threshold itself is kept: --min-valid 1 keeps whole chips, 0 keeps every chip
    assert [chip.window for chip in iter_chips(path, chip_size=256, min_valid=0.75)] == [(256, 0, 256, 256)]
    assert [chip.window for chip in iter_chips(path, chip_size=256, min_valid=0)] == [(0, 0, 256, 256),
                                                                                    (256, 0, 256, 256)]


def test_sidecar_mask_leaves_masked_values_out_of_the_stretch(tmp_path):
    pixels = np.tile(np.linspace(1000, 2000, 200, dtype=np.uint16), (3, 100, 1))  # (3, 100, 200) ramp
    pixels[:, :, :100] = 65000  # masked garbage far above the valid range
    mask = np.zeros((100, 200), np.uint8)
    mask[:, 100:] = 255
    path = write_masked(tmp_path / "u16.tif", pixels, mask, internal=False)
    assert Path(f"{path}.msk").exists()
    scene = open_scene(path)
    assert scene.mask_source == "mask"
    assert all(1000 <= low < high <= 2000 for low, high in scene.stretch)
    rgb, valid = read_chip(path, scene, (0, 0, 200, 100))
    assert valid == pytest.approx(0.5) and not rgb[:, :100].any() and rgb[:, 100:].max() == 255


def test_alpha_band_is_the_mask(data_dir):
    path = data_dir / "rasterio/RGBA.byte.tif"
    scene = open_scene(path)
    window = (0, 0, 300, 300)
    rgb, valid = read_chip(path, scene, window)
    with rasterio.open(path) as ds:
        alpha = ds.read(4, window=Window(*window))
    assert scene.bands == (1, 2, 3) and rgb.shape == (300, 300, 3)
    assert valid == pytest.approx((alpha > 0).mean()) and 0 < valid < 0.9
    assert not rgb[alpha == 0].any()  # masked pixels are black


# -- radiometry ----------------------------------------------------------------------------------
def test_uint16_is_stretched_by_percentiles_and_outliers_clip(tmp_path):
    height, width = 200, 300
    pixels = np.tile(np.linspace(1000, 3000, width, dtype=np.uint16), (height, 1))[None]  # (1, h, w)
    pixels = np.concatenate([pixels, pixels // 2, pixels + 500])  # (3, h, w)
    pixels[:, 10, 10] = 60000  # one outlier, far above the 98th percentile
    path = write_raster(tmp_path / "u16.tif", pixels)
    scene = open_scene(path)
    assert scene.dtype == "uint16"
    for band, (low, high) in zip(pixels, scene.stretch):
        assert (low, high) == pytest.approx(tuple(np.percentile(band, [2, 98])))
    rgb, valid = read_chip(path, scene, (0, 0, width, height))
    assert rgb.dtype == np.uint8 and valid == 1.0
    assert rgb.min() == 0 and rgb.max() == 255
    assert (rgb[10, 10] == 255).all()
    assert 100 < rgb[50, width // 2, 0] < 155  # the middle of the gradient lands mid-range
    assert np.array_equal(open_scene(path, stretch=(0, 100)).stretch[0], (1000, 60000))


def test_float_nodata_is_left_out_of_the_stretch_and_the_valid_fraction(tmp_path):
    pixels = np.random.default_rng(0).uniform(0.0, 1.0, (3, 100, 120)).astype(np.float32)
    pixels[:, :, :60] = -9999.0  # the left half is nodata
    path = write_raster(tmp_path / "f32.tif", pixels, nodata=-9999.0)
    scene = open_scene(path)
    assert scene.mask_source == "nodata" and scene.nodata == -9999.0
    assert all(0.0 <= low < high <= 1.0 for low, high in scene.stretch)
    rgb, valid = read_chip(path, scene, (0, 0, 120, 100))
    assert valid == pytest.approx(0.5)
    assert not rgb[:, :60].any() and rgb[:, 60:].max() == 255


def test_uint8_is_used_as_is(data_dir):
    path = data_dir / NAIP_NAME
    scene = open_scene(path)
    rgb, valid = read_chip(path, scene, (10, 20, 64, 32))
    with rasterio.open(path) as ds:
        assert np.array_equal(rgb, ds.read([1, 2, 3], window=Window(10, 20, 64, 32)).transpose(1, 2, 0))
    assert scene.stretch is None and valid == 1.0


# -- dates ---------------------------------------------------------------------------------------
def test_dates_from_file_names(data_dir):
    assert open_scene(data_dir / NAIP_NAME).date == "2009-08-18"
    assert open_scene(data_dir / "landsat/1985.tif").date == "1985"  # only the year is known
    assert open_scene(data_dir / "rasterio/RGB.byte.tif").date is None


def test_date_from_the_tiff_tag(tmp_path):
    path = write_raster(tmp_path / "scene.tif", np.zeros((3, 16, 16), np.uint8))
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2021:05:04 10:11:12")
    assert open_scene(path).date == "2021-05-04"


@pytest.mark.parametrize("name, tags, expected", [
    ("LC08_L1TP_044034_20200101_20200113_01_T1.tif", {}, "2020-01-01"),
    ("scene_2019-07-04.tif", {"TIFFTAG_DATETIME": "2023:01:01 00:00:00"}, "2019-07-04"),
    ("scene_20191340.tif", {}, None),  # no 13th month
    ("tile_2048.tif", {}, None),
    ("2001.tif", {}, "2001"),
    ("m_123456789012.tif", {}, None),  # digits inside a longer number are not a date
    ("1990.tif", {"TIFFTAG_DATETIME": "2021:03:04 12:00:00"}, "1990"),  # the tag is often when it was processed
    ("CAPELLA_C03_SM_GEO_HH_20210301101500_20210301101510.tif", {}, "2021-03-01"),  # YYYYMMDDhhmmss
    ("S2A_MSIL1C_20200101T103431_N0208.tif", {}, "2020-01-01"),
    ("id_20210301999999.tif", {}, None),  # no 99th hour: some other number
    ("id_2021030110150012.tif", {}, None),  # longer than a date and a time
    ("run_2024-01-02.tif", {"TIFFTAG_DATETIME": "2025:01:01 00:00:00"}, "2024-01-02"),
])
def test_scene_date_rules(name, tags, expected):
    assert scene_date(name, tags) == expected


# -- memory and errors ---------------------------------------------------------------------------
def test_reading_a_large_scene_by_windows_keeps_memory_bounded(tmp_path):
    side, block = 6000, 512
    path = tmp_path / "large.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs="EPSG:32614", transform=from_origin(500000, 5200000, 1, 1),
                       tiled=True, blockxsize=block, blockysize=block, compress="deflate") as dst:
        tile = np.broadcast_to(np.arange(block, dtype=np.uint8) % 251, (3, block, block))
        for _, window in dst.block_windows(1):
            dst.write(tile[:, :window.height, :window.width], window=window)
    full_size = side * side * 3
    # tracemalloc sees numpy's buffers (every chip and mask) but not GDAL's C block cache; the
    # chips are the part that would grow with the scene if anything read it whole.
    tracemalloc.start()
    try:
        run = iter_chips(path, chip_size=512)
        count = sum(1 for chip in run if chip.rgb.shape == (512, 512, 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 12 * 12 and run.skipped == 0
    assert peak < full_size / 4, f"peak {peak / 1e6:.1f} MB for a {full_size / 1e6:.0f} MB scene"


def test_the_stretch_reads_a_decimated_copy(tmp_path):
    side = 4096
    path = tmp_path / "large16.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype="uint16",
                       crs="EPSG:32614", transform=from_origin(500000, 5200000, 1, 1),
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
        tile = np.tile(np.arange(512, dtype=np.uint16) * 100, (512, 1))[None]
        for _, window in dst.block_windows(1):
            dst.write(tile, window=window)
    tracemalloc.start()
    try:
        scene = open_scene(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scene.stretch[0][0] < scene.stretch[0][1]
    assert peak < side * side * 2 / 4, f"peak {peak / 1e6:.1f} MB"


def test_text_named_tif_is_unreadable(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not a raster\n", encoding="utf-8")
    with pytest.raises(UnreadableImage, match="notes.tif"):
        open_scene(path)
    with pytest.raises(UnreadableImage):
        iter_chips(path)
    with pytest.raises(UnreadableImage):
        open_scene(tmp_path / "missing.tif")


def test_gdal_notes_on_odd_tiff_headers_stay_off_the_terminal(data_dir, model_dir, tmp_path):
    """The Landsat files' headers make GDAL note "TIFFReadDirectory ..." on every open: the CLI keeps such notes
    (rasterio's warnings) off stderr, and GDAL prints to the process's own stderr unless rasterio's handler is on."""
    import subprocess
    import sys

    command = [sys.executable, "-c", "from indexer.cli import main; main()", "index", str(data_dir / "landsat"),
               "--store", str(tmp_path / "store"), "--model", str(model_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "indexed" in done.stdout
    assert "TIFFReadDirectory" not in done.stderr
