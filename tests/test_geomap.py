"""The result map's footprints near the antimeridian: drawn as the small shapes they are, beside the query."""
from ui import geomap


def chip(west: float, east: float, south: float = 0.0, north: float = 1.0) -> dict:
    """A catalogue footprint (one closed ring, longitudes in -180..180) of a chip from `west` to `east`."""
    ring = [[west, north], [east, north], [east, south], [west, south], [west, north]]
    return {"footprint": [ring]}


def spans(rows: list[dict]) -> list[float]:
    return [max(p[0] for p in row["polygon"]) - min(p[0] for p in row["polygon"]) for row in rows]


def test_a_chip_across_the_antimeridian_is_drawn_small():
    query = {"geo": chip(179.5, -179.5)}
    hit = {"id": 1, "rank": 1, "score": 0.9, "geo": chip(179.8, -179.2, 1.0, 2.0)}
    rows = geomap.footprint_rows([query], [hit], vmin=0.0, vmax=1.0)
    assert spans(rows) == [1.0, 1.0]  # not 359 degrees the long way round
    view = geomap.view_of(rows)
    assert 179.5 <= view.longitude <= 180.8 and view.zoom > 5


def test_results_across_180_from_the_query_are_drawn_beside_it():
    query = {"geo": chip(179.0, 179.9)}
    east = {"id": 1, "rank": 1, "score": 0.9, "geo": chip(-179.9, -179.0)}  # 0.2 degrees east of the query
    far = {"id": 2, "rank": 2, "score": 0.8, "geo": chip(10.0, 11.0)}  # far away: left where it is
    rows = geomap.footprint_rows([query], [east, far], vmin=0.0, vmax=1.0)
    lons = {row["rank"]: sorted({p[0] for p in row["polygon"]}) for row in rows}
    assert lons == {0: [179.0, 179.9], 1: [180.1, 181.0], 2: [10.0, 11.0]}


def test_rings_away_from_the_antimeridian_are_unchanged():
    ring = chip(-3.5, -2.5, 51.0, 52.0)["footprint"][0]
    assert geomap.drawn_ring(ring) == ring
    assert geomap.drawn_ring(ring, near=-3.0) == ring
    assert geomap.drawn_ring(ring, near=170.0) == ring  # nearer as it is than a turn away


def test_a_chip_holding_a_pole_is_drawn_as_it_is():
    """Its ring runs from -180 to 180 and back along the pole: unwrapped, it would fold onto itself."""
    cap = [[-180.0, -89.8], [0.0, -89.9], [180.0, -89.8], [180.0, -90.0], [-180.0, -90.0], [-180.0, -89.8]]
    assert geomap.drawn_ring(cap, near=10.0) == cap


def test_results_inside_a_query_holding_a_pole_stay_where_they_are():
    """Moved beside the cap's first longitude (180), a result at -152..-45 was drawn a turn off, at 208..315."""
    cap = [[180.0, -89.8], [0.0, -89.9], [-180.0, -89.8], [-180.0, -90.0], [180.0, -90.0], [180.0, -89.8]]
    hit = {"id": 1, "rank": 1, "score": 0.9, "geo": chip(-152.0, -45.0, -89.9, -89.7)}
    rows = geomap.footprint_rows([{"geo": {"footprint": [cap]}}], [hit], vmin=0.0, vmax=1.0)
    assert sorted({p[0] for p in rows[0]["polygon"]}) == [-152.0, -45.0]
