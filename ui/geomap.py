"""The map of a scene search: query and result footprints (pydeck), the layer data built by plain functions."""
import math
import zlib

import pydeck
import streamlit as st

from indexer.footprints import is_cap, unwrapped

from . import heatmaps


def footprint_rows(query_items: list[dict], hits: list[dict], *, vmin: float, vmax: float) -> list[dict]:
    """One row per footprint for a PolygonLayer: results coloured by score on the page's colour ramp, then
    the query's (each of its examples') outlined. Each outline is drawn continuous (see `drawn_ring`), beside the
    query's first when it has one."""
    rings = [item["geo"]["footprint"][0] for item in query_items if (item.get("geo") or {}).get("footprint")]
    # the longitude of the query's first outline's first point (none for one holding a pole: every longitude)
    near = rings[0][0][0] if rings and not is_cap(rings[0]) else None
    rows = []
    for hit in hits:
        geo = hit.get("geo") or {}
        if not geo.get("footprint"):
            continue
        colour = heatmaps.colourize([[hit["score"]]], vmin=vmin, vmax=vmax)[0][0].tolist()
        rows.append({"polygon": drawn_ring(geo["footprint"][0], near=near), "fill": colour + [150],
                     "line": [255, 255, 255, 220],
                     "label": f"#{hit['rank']} · {hit['score']:.4f} · {geo.get('date') or ''}", "rank": hit["rank"]})
    for item in query_items:
        geo = item.get("geo") or {}
        if geo.get("footprint"):
            rows.append({"polygon": drawn_ring(geo["footprint"][0], near=near), "fill": [0, 0, 0, 0],
                         "line": [255, 0, 0, 255], "label": "query", "rank": 0})
    return rows


def drawn_ring(ring: list, *, near: float | None = None) -> list:
    """A footprint ring as the map draws it: each longitude unwrapped from the one before, so a chip across the
    antimeridian stays a small shape (179.5 to 180.5) instead of a band the long way round the globe; the ring
    then moved by whole turns to lie nearest the longitude `near` (the query's), so a result just across 180
    from the query is drawn beside it. The map's projection takes longitudes past 180 as they are. A ring holding
    a pole (from -180 to 180 and along the pole) is drawn as it is."""
    if is_cap(ring):
        return ring
    points = [[lon, lat] for lon, (_, lat) in zip(unwrapped([lon for lon, _ in ring]), ring)]
    if near is not None:
        middle = (min(p[0] for p in points) + max(p[0] for p in points)) / 2
        turns = round((middle - near) / 360)
        points = [[lon - 360 * turns, lat] for lon, lat in points]
    return points


def view_of(rows: list[dict]) -> pydeck.ViewState:
    lons = [p[0] for row in rows for p in row["polygon"]]
    lats = [p[1] for row in rows for p in row["polygon"]]
    span = max(max(lons) - min(lons), max(lats) - min(lats), 1e-4)
    zoom = max(1, min(18, 8.5 - math.log2(span)))  # about the whole span on a ~700 px map
    return pydeck.ViewState(longitude=(min(lons) + max(lons)) / 2, latitude=(min(lats) + max(lats)) / 2, zoom=zoom)


BASEMAPS = {"carto": pydeck.map_styles.CARTO_LIGHT}


def result_map(query_items: list[dict], hits: list[dict], *, vmin: float, vmax: float, basemap: str | None = None):
    """Draws the map; returns the rank of a result footprint the user clicked, or None.

    No base layer unless `basemap` names one: a base layer makes every viewer's browser fetch tiles
    from a third party, which `lookalike serve --basemap carto` asks for explicitly.
    """
    rows = footprint_rows(query_items, hits, vmin=vmin, vmax=vmax)
    if not rows:
        return None
    layer = pydeck.Layer(
        "PolygonLayer", rows, id="footprints", get_polygon="polygon", get_fill_color="fill",
        get_line_color="line", line_width_min_pixels=2, pickable=True, auto_highlight=True,
    )
    deck = pydeck.Deck(layers=[layer], initial_view_state=view_of(rows), tooltip={"text": "{label}"},
                       map_provider="carto" if basemap else None, map_style=BASEMAPS.get(basemap))
    # One map per page of results: a click on another page's (or another query's) map must not carry over
    shown = zlib.crc32(",".join(str(hit["id"]) for hit in hits).encode())
    event = st.pydeck_chart(deck, on_select="rerun", selection_mode="single-object", key=f"result-map-{shown}",
                            height=360)
    picked = (getattr(event, "selection", None) or {}).get("objects", {}).get("footprints") or []
    rank = picked[0].get("rank") if picked else None
    return rank or None
