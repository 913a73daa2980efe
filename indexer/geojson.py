"""GeoJSON geometry for chip footprints: a footprint across the antimeridian split in two, as RFC 7946 asks."""
import math

from .footprints import is_cap, unwrapped


def footprint_geometry(footprint) -> dict | None:
    """A footprint (the catalogue's one closed ring of [lon, lat], longitudes in -180..180) as a GeoJSON geometry:
    a Polygon, or where the ring crosses the antimeridian (its longitudes jump from near 180 to near -180) a
    MultiPolygon of its parts east and west of it (RFC 7946 3.1.9): drawn whole, a GIS would span the globe. A
    footprint holding a pole, which runs from -180 to 180 and along the pole, is a Polygon as it is."""
    if not footprint:
        return None
    ring = footprint[0][:-1]  # open: the last point repeats the first
    if is_cap(ring) or not any(abs(end[0] - start[0]) > 180 for start, end in zip(ring, ring[1:] + ring[:1])):
        return {"type": "Polygon", "coordinates": footprint}  # no side jumps across the antimeridian
    lons = unwrapped([lon for lon, _ in ring])  # continuous, crossing 180 (sides are short: 90 degrees at most)
    turns = 360 * math.floor((min(lons) + 180) / 360)  # its westmost point in -180..180
    continuous = [[lon - turns, lat] for lon, (_, lat) in zip(lons, ring)]
    west = _clipped(continuous, keep_below=True)
    east = [[lon - 360, lat] for lon, lat in _clipped(continuous, keep_below=False)]
    parts = [[part + [part[0]]] for part in (west, east) if len(part) >= 3]
    return {"type": "MultiPolygon", "coordinates": parts}


def _clipped(ring: list, *, keep_below: bool) -> list:
    """The open ring cut at longitude 180 (Sutherland-Hodgman against one line), the side below or above it kept;
    the turn of the ring is kept too."""
    def inside(point):
        return point[0] <= 180 if keep_below else point[0] >= 180

    kept = []
    for start, end in zip(ring, ring[1:] + ring[:1]):
        if inside(start):
            kept.append(start)
        if inside(start) != inside(end):  # the edge crosses 180: where, by its latitude there
            share = (180 - start[0]) / (end[0] - start[0])
            kept.append([180.0, start[1] + share * (end[1] - start[1])])
    return kept
