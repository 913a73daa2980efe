"""Where a pixel window lies on the ground: its WGS84 outline from points along its edges, its box and centre."""
import math
from functools import lru_cache

from rasterio.crs import CRS
from rasterio.transform import Affine, xy
from rasterio.warp import transform as warp_transform

WGS84 = "EPSG:4326"
EDGE_POINTS = 16  # per window edge: a projected edge bows out between its corners (most near a pole)
# A point along an edge stays in the footprint where the straight line between its neighbours would be off by more
# than this many of the window's pixels; most chips keep their four corners alone, so their records stay small.
TOLERANCE_PX = 1.0
LONGEST_SIDE = 90.0  # degrees of longitude: a footprint's side longer than this is cut, its direction kept
NOWHERE = {"footprint": None, "centroid": None, "wgs84_bounds": None}


def window_outline(crs, transform, window) -> dict:
    """{footprint, centroid, wgs84_bounds} of a window (col, row, width, height) of a grid (`crs`, `transform`: its
    affine's 6 numbers): a closed counter-clockwise ring of [lon, lat] in -180..180 (RFC 7946), the centre's
    [lon, lat], and [west, south, east, north] (west > east across the antimeridian) as `--at` and `--bbox` search.
    A window holding a pole reaches it: its ring runs along its edge from -180 to 180 and closes along the pole,
    and its box spans every longitude. All None where a point of the outline does not project (off a
    geostationary disk)."""
    col, row, width, height = window
    cols, rows = _edge_points(window, _edge_positions(width, height))  # counter-clockwise on a north-up grid
    projected = _projected(crs, transform, cols + [col + width / 2], rows + [row + height / 2])  # and the centre
    if projected is None:
        return dict(NOWHERE)
    lons, lats = projected
    ring, centroid = list(zip(lons[:-1], lats[:-1])), [wrapped(lons[-1]), lats[-1]]
    pole = _pole_at(crs, tuple(transform), window)
    if pole and pole[3]:  # inside
        box = [-180.0, min(lats), 180.0, 90.0] if pole[0] > 0 else [-180.0, -90.0, 180.0, max(lats)]
        return {"footprint": [_cap(ring, pole[0])], "centroid": centroid, "wgs84_bounds": box}
    if pole:  # on an edge or a corner
        return _wedge(crs, transform, window, pole, centroid=centroid)
    if _signed_area(ring) < 0:  # a grid whose rows run south to north: turned, still from its first corner
        ring = ring[:1] + ring[:0:-1]
    kept = _simplified(ring, tolerance=TOLERANCE_PX / max(width, height))
    footprint = [[wrapped(lon), lat] for lon, lat in kept]
    west, east = _west_east(lons[:-1])
    return {"footprint": [footprint + [footprint[0]]], "centroid": centroid,
            "wgs84_bounds": [west, min(lats[:-1]), east, max(lats[:-1])]}


def _west_east(lons: list) -> tuple[float, float]:
    """(west, east) in -180..180 of continuous longitudes (west > east across the antimeridian; all of them for
    a whole turn)."""
    west, east = min(lons), max(lons)
    return (-180.0, 180.0) if east - west >= 360 else (wrapped(west), wrapped(east))


def lon_lat(crs, xs, ys) -> tuple:
    """(lons, lats) of the points, or (None, None) unless every one is finite. PROJ answers a point outside its
    projection's domain with inf, or GDAL raises (its CPLE errors are no RasterioError), as the CRS is told."""
    try:
        lons, lats = warp_transform(crs, WGS84, xs, ys)
    except Exception:  # GDAL's CPLE errors are no RasterioError, and rasterio keeps them private
        return None, None
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        return None, None
    return lons, lats


def wrapped(lon: float) -> float:
    """A longitude in -180 .. 180 (180 itself stays 180)."""
    return lon if -180 <= lon <= 180 else (lon + 180) % 360 - 180


def unwrapped(lons: list) -> list:
    """Longitudes of points along a line, each moved by whole turns to lie within half a turn of the one before:
    continuous across the antimeridian (points a few degrees apart at most), so a window up to the whole globe
    wide keeps its side (0..180 is not taken for -180..0). Geographic data in 0..360 comes out in -180..180."""
    out = [wrapped(lons[0])]
    for lon in lons[1:]:
        out.append(lon + 360 * round((out[-1] - lon) / 360))
    return out


def is_cap(ring) -> bool:
    """Whether a footprint ring holds a pole: it runs the whole way round, from -180 to 180 along the pole."""
    return any(lon == -180 and abs(lat) == 90 for lon, lat in ring) \
        and any(lon == 180 and abs(lat) == 90 for lon, lat in ring)


def _simplified(ring: list, *, tolerance: float) -> list:
    """The open ring (4 edges of EDGE_POINTS points, from a corner) with the points each edge's straight line
    would miss by no more than `tolerance` of the ring's size left out (Douglas-Peucker per edge, each axis
    measured against the ring's own span in it: a ring as a map draws it, in longitude and latitude, fitted to the
    map's box); corners always kept, and no side longer than LONGEST_SIDE degrees of longitude."""
    lons, lats = [lon for lon, _ in ring], [lat for _, lat in ring]
    lon_span, lat_span = (max(lons) - min(lons)) or 1.0, (max(lats) - min(lats)) or 1.0
    unit = [(lon / lon_span, lat / lat_span) for lon, lat in ring]
    kept = []
    for start in range(0, len(ring), EDGE_POINTS):
        edge = [start + i for i in range(EDGE_POINTS)] + [(start + EDGE_POINTS) % len(ring)]
        points, edge_lons = [unit[i] for i in edge], [ring[i][0] for i in edge]
        kept += [ring[edge[i]] for i in _kept_indices(points, edge_lons, 0, EDGE_POINTS, tolerance=tolerance)]
    return kept


def _kept_indices(edge: list, lons: list, first: int, last: int, *, tolerance: float) -> list:
    """Indices from `first` (kept) up to `last` (not included) of the edge's points (`lons`: their longitudes)
    to keep."""
    if last - first < 2:
        return [first]
    (x0, y0), (x1, y1) = edge[first], edge[last]
    chord = math.hypot(x1 - x0, y1 - y0) or 1e-300
    furthest, index = max((abs((x1 - x0) * (y0 - y) - (x0 - x) * (y1 - y0)) / chord, i)
                          for i, (x, y) in enumerate(edge[first + 1:last], start=first + 1))
    if furthest <= tolerance:
        if abs(lons[last] - lons[first]) <= LONGEST_SIDE:
            return [first]
        index = (first + last) // 2  # straight but long: cut in the middle, so its direction stays plain
    return _kept_indices(edge, lons, first, index, tolerance=tolerance) \
        + _kept_indices(edge, lons, index, last, tolerance=tolerance)


def _cap(ring: list, pole: int) -> list:
    """The footprint of a window holding a pole (1 north, -1 south): its edge, which every meridian crosses once,
    from -180 to 180 by longitude, closed along the pole; counter-clockwise."""
    edge = sorted((wrapped(lon), lat) for lon, lat in ring)
    (west, west_lat), (east, east_lat) = edge[0], edge[-1]
    share = (180 - east) / ((west + 360 - east) or 1)
    at_180 = east_lat + share * (west_lat - east_lat)  # the edge's latitude where it crosses the antimeridian
    edge = [[-180.0, at_180]] + [[lon, lat] for lon, lat in edge if abs(lon) < 180] + [[180.0, at_180]]
    if pole > 0:  # along the edge eastwards, then back west along the North Pole
        return edge + [[180.0, 90.0], [-180.0, 90.0], edge[0]]
    edge.reverse()  # along the edge westwards, then back east along the South Pole
    return edge + [[-180.0, -90.0], [180.0, -90.0], edge[0]]


def _pole_at(crs, transform: tuple, window) -> tuple | None:
    """(sign, col, row, inside) of a pole (1 north, -1 south) at pixel (col, row) in the window or on its edge
    (inside False), else None."""
    col, row, width, height = window
    near = _on_edge_tolerance(window)
    for sign, pixel_col, pixel_row in _poles_in_pixels(crs, transform):
        if col - near <= pixel_col <= col + width + near and row - near <= pixel_row <= row + height + near:
            inside = col + near < pixel_col < col + width - near and row + near < pixel_row < row + height - near
            return sign, pixel_col, pixel_row, inside
    return None


def _wedge(crs, transform, window, pole: tuple, *, centroid) -> dict:
    """Outline and box of a window with a pole on its edge or at a corner (a polar grid cut into chips that meet
    at the pole): from the pole along the window's edge all the way round back to it, closed along the pole
    between the longitudes of the edge's two sides there; every point kept."""
    sign, pole_col, pole_row, _ = pole
    col, row, width, height = window
    perimeter, start = 2 * (width + height), _along(window, pole_col, pole_row)
    steps = sorted({(position - start) % perimeter for position in _edge_positions(width, height)} - {0.0})
    projected = _projected(crs, transform, *_edge_points(window, [(start + step) % perimeter for step in steps]))
    if projected is None:
        return dict(NOWHERE)
    lons, lats = projected
    ring = [[lon, lat] for lon, lat in zip(lons, lats)] + [[lons[-1], 90.0 * sign], [lons[0], 90.0 * sign]]
    if _signed_area(ring) < 0:
        ring.reverse()
    west, east = _west_east(lons)
    footprint = [[wrapped(lon), lat] for lon, lat in ring]
    box = [west, min(lats), east, 90.0] if sign > 0 else [west, -90.0, east, max(lats)]
    return {"footprint": [footprint + [footprint[0]]], "centroid": centroid, "wgs84_bounds": box}


def _projected(crs, transform, cols: list, rows: list) -> tuple | None:
    """(longitudes, continuous from the first point's; latitudes) of the grid's pixel points (col, row), or None
    where one does not project."""
    xs, ys = xy(Affine(*transform), rows, cols, offset="ul")
    lons, lats = lon_lat(crs, list(map(float, xs)), list(map(float, ys)))
    if lons is None:
        return None
    return unwrapped([float(lon) for lon in lons]), [float(lat) for lat in lats]


def _edge_points(window, positions: list) -> tuple[list, list]:
    """(cols, rows) of the points at `positions` along the window's outline."""
    cols, rows = zip(*(_edge_point(window, position) for position in positions))
    return list(cols), list(rows)


def _edge_positions(width: float, height: float) -> list:
    """Distances along the window's outline (counter-clockwise on a north-up grid, from its top-left corner) of
    EDGE_POINTS points per edge, the corners among them."""
    lengths = [height, width, height, width]
    starts = [sum(lengths[:i]) for i in range(4)]
    return [start + length * i / EDGE_POINTS for start, length in zip(starts, lengths) for i in range(EDGE_POINTS)]


def _on_edge_tolerance(window) -> float:
    """How far (in pixels) from the window's edge a pole still counts as on it: rounding in its projection."""
    return 1e-9 * max(window[2], window[3])


def _along(window, pixel_col: float, pixel_row: float) -> float:
    """The distance along the outline (as _edge_positions counts it) of a point on the window's edge."""
    col, row, width, height = window
    near = _on_edge_tolerance(window)
    if abs(pixel_col - col) <= near:
        return pixel_row - row
    if abs(pixel_row - (row + height)) <= near:
        return height + pixel_col - col
    if abs(pixel_col - (col + width)) <= near:
        return height + width + row + height - pixel_row
    return 2 * height + width + col + width - pixel_col


def _edge_point(window, position: float) -> tuple:
    """(col, row) of the point at `position` along the outline."""
    col, row, width, height = window
    if position < height:
        return col, row + position
    if position < height + width:
        return col + position - height, row + height
    if position < 2 * height + width:
        return col + width, row + height - (position - height - width)
    return col + width - (position - 2 * height - width), row


@lru_cache(maxsize=64)
def _poles_in_pixels(crs: str, transform: tuple) -> tuple:
    """(sign, col, row) of each pole that projects onto the grid: once per grid, not per window; none for a grid
    of degrees, where a pole is a whole edge, which the points along the edges reach already."""
    if CRS.from_user_input(crs).is_geographic:
        return ()
    found = []
    for sign in (1, -1):
        try:
            (x,), (y,) = warp_transform(WGS84, crs, [0.0], [90.0 * sign])
        except Exception:  # a CRS the pole is outside of (GDAL's CPLE errors are private to rasterio)
            continue
        if all(map(math.isfinite, (x, y))):
            found.append((sign, *(~Affine(*transform) @ (x, y))))
    return tuple(found)


def _signed_area(ring) -> float:
    """Shoelace area of an open ring: positive when counter-clockwise."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1])) / 2
