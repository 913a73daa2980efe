"""A scene chip's catalogue record: where its window lies on the ground and how its pixels were read."""
import math
from functools import lru_cache

from rasterio.crs import CRS
from rasterio.transform import Affine, xy
from rasterio.warp import transform as warp_transform

from . import scenes

# The scene's fields each chip's record repeats (besides its footprint, valid share and ground sampling).
SCENE_FIELDS = ("crs", "date", "bands", "band_source", "mask_source", "stretch")


def chip_record(job, *, valid: float, stretch, gsd: float | None) -> dict:
    """A scene chip's catalogue record (`job`: a plan.Job with its scene and window): its window's place on the
    ground and how its pixels were read."""
    scene = job.scene.as_record()  # once: a deep copy of the dataclass, not one per field
    geo = dict(scenes.chip_geometry(job.scene, job.window), valid_fraction=round(valid, 4),
               **{key: scene[key] for key in SCENE_FIELDS})
    geo["wgs84_bounds"] = wgs84_bounds(job.scene, job.window) if geo["footprint"] else None
    geo["stretch_percentiles"] = list(stretch)
    geo["native_gsd"] = scenes.native_gsd(job.scene)
    geo["gsd"] = gsd or geo["native_gsd"]
    _, _, width, height = job.window  # read_chip gives the whole window, never padded or cut
    return {"path": job.path, "size": job.size, "mtime": job.mtime, "image_id": None, "sha256": None,
            "width": int(width), "height": int(height), "scene": job.scene.path, "window": list(job.window),
            "geo": geo}


EDGE_POINTS = 8  # per window edge: a projected edge bows out between its corners (most near a pole)


def wgs84_bounds(scene, window) -> list | None:
    """[west, south, east, north] of the window on the ground, for `--at` and `--bbox`: from points along its
    edges, not its corners alone (a chip near a pole bulges past them); a window holding a pole spans every
    longitude up to it (its corners never reach it). None where its outline does not project."""
    col, row, width, height = window
    steps = [i / EDGE_POINTS for i in range(EDGE_POINTS)]
    cols = [col + width * t for t in steps] + [col + width] * EDGE_POINTS \
        + [col + width * (1 - t) for t in steps] + [col] * EDGE_POINTS
    rows = [row] * EDGE_POINTS + [row + height * t for t in steps] \
        + [row + height] * EDGE_POINTS + [row + height * (1 - t) for t in steps]
    xs, ys = xy(Affine(*scene.transform), rows, cols, offset="ul")
    lons, lats = scenes.lon_lat(scene.crs, list(map(float, xs)), list(map(float, ys)))
    if lons is None:
        return None
    pole = _pole_inside(scene, window)
    if pole:
        return [-180.0, min(lats), 180.0, 90.0] if pole > 0 else [-180.0, -90.0, 180.0, max(lats)]
    west, east = _lon_range([float(lon) for lon in lons])
    return [west, float(min(lats)), east, float(max(lats))]


def _lon_range(lons: list) -> tuple[float, float]:
    """(west, east) of points along a ring, in -180..180: west > east for one across the antimeridian. Each point
    is unwrapped from the one before it (points a few degrees apart at most), so a chip up to the whole globe
    wide keeps its side (0..180 is not taken for -180..0)."""
    unwrapped = [lons[0]]
    for lon in lons[1:]:
        unwrapped.append(unwrapped[-1] + (lon - unwrapped[-1] + 180) % 360 - 180)
    west, east = min(unwrapped), max(unwrapped)
    if east - west >= 360:
        return -180.0, 180.0
    return scenes.wrapped(west), scenes.wrapped(east)


def _pole_inside(scene, window) -> int:
    """1 when the North Pole lies in the window, -1 the South Pole, else 0."""
    col, row, width, height = window
    for sign, pixel_col, pixel_row in _poles_in_pixels(scene.crs, tuple(scene.transform)):
        if col <= pixel_col <= col + width and row <= pixel_row <= row + height:
            return sign
    return 0


@lru_cache(maxsize=64)
def _poles_in_pixels(crs: str, transform: tuple) -> tuple:
    """(sign, col, row) of each pole that projects onto the scene's grid: once per scene, not per chip; none for a
    grid of degrees, where a pole is a whole edge, which the points along the edges reach already."""
    if CRS.from_user_input(crs).is_geographic:
        return ()
    found = []
    for sign in (1, -1):
        try:
            (x,), (y,) = warp_transform(scenes.WGS84, crs, [0.0], [90.0 * sign])
        except Exception:  # a CRS the pole is outside of (GDAL's CPLE errors are private to rasterio)
            continue
        if all(map(math.isfinite, (x, y))):
            found.append((sign, *(~Affine(*transform) @ (x, y))))
    return tuple(found)
