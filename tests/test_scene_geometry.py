"""Where scenes lie on the ground when projections misbehave: a geostationary disk's space, a rotated grid."""
import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from indexer.pipeline import ChipOptions
from indexer.scenes import chip_geometry, chip_windows, native_gsd, open_scene, part_geometry

# rasterio 1.4 itself still multiplies Affine by tuples (windows.bounds, from_origin, a dataset's bounds, whose
# warning names our line) under affine 3.
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

GEOS = "+proj=geos +h=35785831 +lon_0=0 +a=6378169 +b=6356583.8 +sweep=y +units=m +no_defs"  # MSG SEVIRI
DISK_HALF_WIDTH = 5570248.0  # metres from the sub-satellite point to the full-disk grid's edge


def write_full_disk(path, size=256):
    """A geostationary full disk, space (outside the earth's outline) as nodata 0, as SEVIRI's are delivered."""
    pixels = np.random.default_rng(0).integers(1, 255, (3, size, size)).astype("uint8")
    rows, cols = np.mgrid[0:size, 0:size]
    pixels[:, np.hypot(cols - size / 2, rows - size / 2) > size / 2 * 0.98] = 0
    step = 2 * DISK_HALF_WIDTH / size
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs=rasterio.crs.CRS.from_proj4(GEOS), nodata=0,
                       transform=from_origin(-DISK_HALF_WIDTH, DISK_HALF_WIDTH, step, step)) as dst:
        dst.write(pixels)
    return path


def test_chips_off_the_disk_have_no_place_and_nothing_infinite(tmp_path):
    scene = open_scene(write_full_disk(tmp_path / "msg_20200101.tif"))
    assert scene.wgs84_bounds is None  # the grid's corners are in space
    geometries = {window: chip_geometry(scene, window) for window in chip_windows(256, 256, chip_size=64)}
    corner, centre = geometries[(0, 0, 64, 64)], geometries[(64, 64, 64, 64)]
    assert corner["footprint"] is None and corner["centroid"] is None
    assert all(math.isfinite(v) for v in corner["bounds"])  # in the scene's own CRS it still has its window
    assert len(centre["footprint"][0]) >= 5 and -60 < centre["centroid"][0] < 0 < centre["centroid"][1] < 60
    json.dumps([scene.as_record(), *geometries.values()], allow_nan=False)  # SQLite's JSON has no NaN or Infinity


def test_a_part_of_a_chip_off_the_disk_has_no_place(tmp_path):
    """Told in PROJ's own words the geostationary CRS makes GDAL raise for points in space, not answer inf."""
    bounds = [-DISK_HALF_WIDTH, 0.7 * DISK_HALF_WIDTH, -0.7 * DISK_HALF_WIDTH, DISK_HALF_WIDTH]
    for crs in (GEOS, open_scene(write_full_disk(tmp_path / "disk.tif")).crs):
        part = part_geometry({"bounds": bounds, "crs": crs}, (0, 0, 32, 32), (64, 64))
        assert part == {"footprint": None, "centroid": None, "wgs84_bounds": None}


def test_a_full_disk_scene_is_indexed_beside_other_scenes(index, tmp_path, shared_data_dir, open_store):
    folder = tmp_path / "in"
    folder.mkdir()
    write_full_disk(folder / "msg_20200101.tif")
    naip = shared_data_dir / "naip" / "m_4709963_se_14_1_20200831.tif"
    summary = index([folder, naip], tmp_path / "s", chips=ChipOptions(chip_size=64, min_valid=0))
    assert summary["failed"] == 0 and summary["scenes"] == 2
    store = open_store(tmp_path / "s")
    geos = {path: json.loads(store.image(row["id"])["geo"]) for path, row in store.images_by_path().items()}
    disk = {path: geo for path, geo in geos.items() if "msg_" in path}
    assert len(disk) == 16 and len(geos) > 16  # every window of the disk, and NAIP's chips with them
    placeless = [geo for geo in disk.values() if geo["footprint"] is None]
    assert placeless and all(geo["wgs84_bounds"] is None and geo["centroid"] is None for geo in placeless)
    assert any("msg_" in chip["path"] for chip in store.chips_at(0.0, 0.0))  # the sub-satellite point


def write_rotated(path, degrees=30.0, pixel=10.0, size=300):
    """A 10 m grid in UTM 33N turned `degrees` on the ground (a rotated geotransform)."""
    turn = math.radians(degrees)
    transform = Affine(pixel * math.cos(turn), -pixel * math.sin(turn), 500000,
                       -pixel * math.sin(turn), -pixel * math.cos(turn), 5000000)
    pixels = np.random.default_rng(2).integers(0, 255, (3, size, size)).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(pixels)
    return path


def test_a_rotated_grid_has_its_pixels_true_size(index, tmp_path, open_store):
    scene = write_rotated(tmp_path / "rot_20200102.tif")
    assert native_gsd(open_scene(scene)) == pytest.approx(10.0)
    index([scene], tmp_path / "s", chips=ChipOptions(chip_size=100, gsd=10.0))
    store = open_store(tmp_path / "s")
    rows = [store.image(row["id"]) for row in store.images_by_path().values()]
    assert {(row["width"], row["height"]) for row in rows} == {(100, 100)} and len(rows) == 9


def _geo_by_window(store) -> dict:
    rows = store.images([row["id"] for row in store.images_by_path().values()])
    return {row["path"].rsplit("#", 1)[1]: row["geo"] for row in rows.values()}


def test_a_chip_holding_a_pole_is_found_there_and_its_neighbours_reach_past_their_corners(index, tmp_path,
                                                                                          open_store):
    """An Antarctic scene (EPSG:3031, 100 m) with the South Pole in one chip: its four corners circle the pole
    at -89.8 and never reach it, so `--at 0,-90` found nothing; a chip beside it bulges past its corners."""
    from click.testing import CliRunner

    from indexer.cli import cli
    from indexer.plan import ChipOptions as Chips

    scenes_dir = tmp_path / "in"
    scenes_dir.mkdir()
    pixels = np.random.default_rng(0).integers(1, 255, (3, 1024, 1024)).astype("uint8")
    with rasterio.open(scenes_dir / "ant_20200101.tif", "w", driver="GTiff", width=1024, height=1024, count=3,
                       dtype="uint8", crs="EPSG:3031", transform=from_origin(-60000, 60000, 100, 100)) as dst:
        dst.write(pixels)  # the pole at pixel (600, 600): in window 512,512,256,256
    index([scenes_dir], tmp_path / "store", chips=Chips(chip_size=256))
    store = open_store(tmp_path / "store")
    geo = _geo_by_window(store)
    assert geo["512,512,256,256"]["wgs84_bounds"][:3] == [-180.0, -90.0, 180.0]
    assert -89.8 < geo["512,512,256,256"]["wgs84_bounds"][3] < -89.7
    found = CliRunner().invoke(cli, ["search", "--at", "0,-90", "--store", str(tmp_path / "store"), "--json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["query"]["id"] == store.images_by_path()[
        str(scenes_dir / "ant_20200101.tif") + "#512,512,256,256"]["id"]
    # the chip above it: 0..25.6 km north of the pole in y, its nearest edge 3.4 km from the pole at (0, 9000 m)
    beside = geo["512,256,256,256"]["wgs84_bounds"]
    assert beside[1] < -89.917  # the edge's point nearest the pole, south of the corners (-89.885)


def test_a_chip_half_the_globe_wide_keeps_its_side(index, shared_data_dir, tmp_path, open_store):
    """world.rgb.tif in 256 px chips: the eastern one spans 0..180 E, and its corners alone (0 and 180, half a
    turn apart) put it at -180..0."""
    from indexer.plan import ChipOptions as Chips

    index([shared_data_dir / "rasterio" / "world.rgb.tif"], tmp_path / "store", chips=Chips(chip_size=256))
    bounds = {window: geo["wgs84_bounds"] for window, geo in _geo_by_window(open_store(tmp_path / "store")).items()}
    assert bounds["256,0,256,256"] == [0.0, -90.0, 180.0, 90.0]
    assert bounds["0,0,256,256"] == [-180.0, -90.0, 0.0, 90.0]


def write_antarctic(path):
    """EPSG:3031 at 100 m, 1024 px: the South Pole at pixel (600, 600), in the 256 px chip at 512,512."""
    pixels = np.random.default_rng(0).integers(1, 255, (3, 1024, 1024)).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=3, dtype="uint8",
                       crs="EPSG:3031", transform=from_origin(-60000, 60000, 100, 100)) as dst:
        dst.write(pixels)
    return open_scene(path)


def test_footprints_near_a_pole_follow_their_edges_and_the_pole_chip_covers_the_pole(tmp_path):
    """Four corners outlined these chips roughly: the pole chip as a small ring at -89.8 that never reached the
    pole, a chip beside it without the strip where its edge bulges towards the pole."""
    from indexer.footprints import is_cap
    from indexer.geojson import footprint_geometry

    scene = write_antarctic(tmp_path / "ant.tif")
    pole = chip_geometry(scene, (512, 512, 256, 256))
    ring = pole["footprint"][0]
    assert is_cap(ring) and ring[0] == ring[-1] and [-180.0, -90.0] in ring and [180.0, -90.0] in ring
    assert signed_area(ring[:-1]) > 0  # counter-clockwise, as RFC 7946 asks
    north = pole["wgs84_bounds"][3]
    assert all(-90 <= lat <= north + 1e-9 for _, lat in ring) and max(lat for _, lat in ring) == pytest.approx(north)
    assert footprint_geometry(pole["footprint"]) == {"type": "Polygon", "coordinates": pole["footprint"]}

    beside = chip_geometry(scene, (512, 256, 256, 256))
    ring = beside["footprint"][0]
    assert len(ring) > 5 and min(lat for _, lat in ring) < -89.917  # its corners stop at -89.885
    assert signed_area(ring[:-1]) > 0 and not is_cap(ring)
    assert min(lat for _, lat in ring) == pytest.approx(beside["wgs84_bounds"][1], abs=1e-3)

    record = dict(pole, crs=scene.crs)  # as the catalogue keeps it
    part = part_geometry(record, (64, 64, 64, 64), (256, 256))  # the pole at (88, 88) of the chip's picture
    assert is_cap(part["footprint"][0]) and part["wgs84_bounds"][:3] == [-180.0, -90.0, 180.0]
    off = part_geometry(record, (0, 0, 64, 64), (256, 256))
    assert not is_cap(off["footprint"][0]) and off["wgs84_bounds"][1] > -90


def test_a_chip_half_the_globe_wide_is_outlined_on_its_own_side(shared_data_dir):
    """world.rgb.tif (EPSG:4326) in 256 px chips: the eastern chip, 0..180 E, was outlined by its corners 0 and
    180, which unwrapped to -180: a polygon over the western half."""
    from indexer.geojson import footprint_geometry

    scene = open_scene(shared_data_dir / "rasterio" / "world.rgb.tif")
    east = chip_geometry(scene, (256, 0, 256, 256))["footprint"]
    assert sorted({lon for lon, _ in east[0]}) == [0.0, 90.0, 180.0]  # a side of 180 degrees cut in two
    assert footprint_geometry(east) == {"type": "Polygon", "coordinates": east}
    west = chip_geometry(scene, (0, 0, 256, 256))["footprint"]
    assert sorted({lon for lon, _ in west[0]}) == [-180.0, -90.0, 0.0]


def signed_area(ring) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1])) / 2


def test_a_part_across_the_antimeridian_keeps_its_box_west_of_east(tmp_path):
    """A UTM zone 60 chip across 180° off Fiji: its part's box runs west > east, as `--at` and `--bbox` read it."""
    with rasterio.open(tmp_path / "fiji.tif", "w", driver="GTiff", width=200, height=100, count=3, dtype="uint8",
                       crs="EPSG:32760", transform=from_origin(810_000, 8_120_000, 100, 100)) as dst:
        dst.write(np.full((3, 100, 200), 9, dtype="uint8"))
    scene = open_scene(tmp_path / "fiji.tif")
    chip = dict(chip_geometry(scene, (0, 0, 200, 100)), crs=scene.crs)
    west, south, east, north = chip["wgs84_bounds"]
    assert 179 < west < 180 and -180 < east < -179 and south < north
    part = part_geometry(chip, (50, 0, 100, 100), (200, 100))
    assert part["wgs84_bounds"][0] > part["wgs84_bounds"][2] and len(part["footprint"][0]) == 5


def write_gcp_only(path, points, *, crs="EPSG:32614", size=(512, 256)):
    """A GeoTIFF placed only by ground control points (no geotransform, no CRS of its own), as Sentinel-1 GRDs
    and scanned maps come."""
    from rasterio.control import GroundControlPoint

    width, height = size
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8") as dst:
        dst.write(np.random.default_rng(1).integers(1, 255, (3, height, width), dtype=np.uint8))
        dst.gcps = ([GroundControlPoint(row=row, col=col, x=x, y=y) for col, row, x, y in points], crs)
    return path


def test_a_scene_placed_by_ground_control_points_is_cut_into_placed_chips(tmp_path):
    """Such files were indexed as plain pictures, with no place, and read whole."""
    from indexer.scenes import is_georeferenced

    grid = Affine(10, 0, 500_000, 0, -10, 5_200_000)  # UTM 14N, 10 m, north up
    corners = [(col, row, *(grid * (col, row))) for col, row in ((0, 0), (512, 0), (0, 256), (512, 256))]
    path = write_gcp_only(tmp_path / "s1_20200101.tif", corners)
    with rasterio.open(path) as dataset:
        assert dataset.crs is None and len(dataset.gcps[0]) == 4  # what the file holds
    assert is_georeferenced(path)
    scene = open_scene(path)
    assert scene.crs == "EPSG:32614" and scene.georeferencing == "gcps"
    assert np.allclose(scene.transform, tuple(grid)[:6], atol=1e-6)
    assert np.allclose(scene.bounds, (500_000, 5_197_440, 505_120, 5_200_000), atol=1e-3)
    chip = chip_geometry(scene, (256, 0, 256, 256))
    west, south, east, north = chip["wgs84_bounds"]
    assert -99.0 < west < east < -98.9 and 46.9 < south < north < 47.0  # 14N's central meridian is -99
    assert len(chip["footprint"][0]) == 5


def test_ground_control_points_in_a_line_place_nothing(tmp_path):
    from indexer.scenes import is_georeferenced

    path = write_gcp_only(tmp_path / "line.tif", [(0, 0, 500_000, 5_200_000), (256, 0, 502_560, 5_200_000),
                                                  (512, 0, 505_120, 5_200_000)])
    assert not is_georeferenced(path)
    scene = open_scene(path)
    assert scene.crs is None and scene.georeferencing is None and scene.wgs84_bounds is None


def test_a_scene_placed_by_ground_control_points_is_indexed_as_chips(index, tmp_path, open_store):
    grid = Affine(10, 0, 500_000, 0, -10, 5_200_000)
    corners = [(col, row, *(grid * (col, row))) for col, row in ((0, 0), (512, 0), (0, 256), (512, 256))]
    folder = tmp_path / "in"
    folder.mkdir()
    write_gcp_only(folder / "s1_20200101.tif", corners)
    summary = index([folder], tmp_path / "s", chips=ChipOptions(chip_size=256))
    assert summary["scenes"] == 1 and summary["failed"] == 0
    geo = _geo_by_window(open_store(tmp_path / "s"))
    assert sorted(geo) == ["0,0,256,256", "256,0,256,256"]
    assert all(g["georeferencing"] == "gcps" and g["crs"] == "EPSG:32614" and g["footprint"] for g in geo.values())
    assert geo["0,0,256,256"]["date"] == "2020-01-01"


def test_chips_meeting_at_a_pole_each_reach_it_over_their_own_longitudes(tmp_path):
    """A polar grid cut so that the pole is the corner of four chips (or the middle of two chips' edges): each was
    outlined as the whole cap, its ring through the pole point itself, folding over."""
    from indexer.footprints import is_cap, unwrapped, window_outline
    from indexer.geojson import footprint_geometry

    corner = (100, 0, -60000, 0, -100, 60000)  # EPSG:3031, 100 m: the South Pole at pixel (600, 600)
    spans = []
    for window in [(300, 300, 300, 300), (600, 300, 300, 300), (300, 600, 300, 300), (600, 600, 300, 300)]:
        outline = window_outline("EPSG:3031", corner, window)
        ring, (west, south, east, north) = outline["footprint"][0], outline["wgs84_bounds"]
        assert not is_cap(ring) and south == -90.0 and north < -89.5
        assert signed_area(ring[:-1]) > 0 and footprint_geometry(outline["footprint"])["type"] in ("Polygon",
                                                                                                   "MultiPolygon")
        assert sum(1 for _, lat in ring[:-1] if lat == -90.0) == 2  # closed along the pole, not through a point
        spans.append((east - west) % 360)
    assert spans == pytest.approx([90.0] * 4)
    edge = (100, 0, -45000, 0, -100, 60000)  # the pole at pixel (450, 600): the middle of two chips' edges
    for window in [(300, 300, 300, 300), (300, 600, 300, 300)]:
        outline = window_outline("EPSG:3031", edge, window)
        west, _, east, _ = outline["wgs84_bounds"]
        ring = outline["footprint"][0][:-1]
        assert not is_cap(ring) and (east - west) % 360 == pytest.approx(180.0)
        assert signed_area(list(zip(unwrapped([lon for lon, _ in ring]), [lat for _, lat in ring]))) > 0


def test_a_chip_over_half_the_globe_wide_is_one_polygon_and_one_across_180_is_split(shared_data_dir):
    """Footprint rings are continuous now (no side over 90 degrees): GeoJSON splits a ring where its points
    jump across 180, not wherever its longitudes span more than half the globe."""
    from indexer.footprints import window_outline
    from indexer.geojson import footprint_geometry

    globe = (1.0, 0, -180.0, 0, -1.0, 90.0)  # 1 degree per pixel
    wide = window_outline("EPSG:4326", globe, (0, 0, 224, 90))["footprint"]  # -180..44 E
    assert footprint_geometry(wide) == {"type": "Polygon", "coordinates": wide}
    across = window_outline("EPSG:4326", globe, (150, 0, 224, 90))["footprint"]  # -30 E..194 E, across 180
    geometry = footprint_geometry(across)
    assert geometry["type"] == "MultiPolygon"
    areas = [signed_area(part[0][:-1]) for part in geometry["coordinates"]]
    assert all(area > 0 for area in areas) and sum(areas) == pytest.approx(224 * 90)
    assert all(-180 <= lon <= 180 for part in geometry["coordinates"] for lon, _ in part[0])


def test_ground_control_points_across_180_in_degrees_keep_the_scene_narrow(tmp_path):
    """A Sentinel-1-like scene over Fiji placed by GCPs in EPSG:4326 from 179.75 E to 179.25 W: its fit took the
    points' longitudes as they are and spread the scene over 431 degrees."""
    points = [(col, row, 179.75 + col * 0.001 - (360 if 179.75 + col * 0.001 > 180 else 0), -16.5 - row * 0.001)
              for col, row in ((0, 0), (1000, 0), (0, 500), (1000, 500), (500, 250))]
    scene = open_scene(write_gcp_only(tmp_path / "fiji.tif", points, crs="EPSG:4326", size=(1000, 500)))
    assert scene.transform == pytest.approx((0.001, 0, 179.75, 0, -0.001, -16.5), abs=1e-9)
    west, south, east, north = chip_geometry(scene, (0, 0, 500, 500))["wgs84_bounds"]
    assert (west, east) == pytest.approx((179.75, -179.75)) and west > east


def test_ground_control_points_on_one_line_on_the_ground_place_nothing(tmp_path):
    from indexer.scenes import is_georeferenced

    points = [(0, 0, 500_000, 5_200_000), (512, 0, 505_120, 5_200_000), (0, 256, 500_000, 5_200_000),
              (512, 256, 505_120, 5_200_000)]  # the rows of pixels all on one line on the ground
    assert not is_georeferenced(write_gcp_only(tmp_path / "flat.tif", points))


def test_a_part_of_a_chip_on_a_turned_grid_is_outlined_where_it_lies(tmp_path):
    """A grid turned 20 degrees on the ground (as GCP fits of a satellite's swath are): a part's outline came from
    the chip's north-up bounding box, 88 px off."""
    from indexer.chip_records import chip_record
    from indexer.footprints import window_outline
    from indexer.plan import Job

    turned = Affine.translation(500_000, 5_200_000) @ Affine.rotation(20) @ Affine.scale(10, -10)
    with rasterio.open(tmp_path / "turned.tif", "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                       crs="EPSG:32614", transform=turned) as dst:
        dst.write(np.full((3, 512, 512), 7, dtype="uint8"))
    scene = open_scene(tmp_path / "turned.tif")
    record = chip_record(Job(path="chip", size=1, mtime=0.0, scene=scene, window=(256, 0, 256, 256)), valid=1.0,
                         stretch=(2, 98), gsd=None)
    part = part_geometry(record["geo"], (0, 0, 112, 112), (224, 224))  # the chip's picture is 224 px
    truth = window_outline(scene.crs, scene.transform, (256, 0, 128, 128))
    assert part["centroid"] == pytest.approx(truth["centroid"], abs=1e-9)
    assert part["footprint"] == [[pytest.approx(point, abs=1e-9) for point in truth["footprint"][0]]]
