"""Search results for scenes: collapse overlapping chips, filter by place and date, and GeoJSON export."""
import calendar
import re
from itertools import chain
from dataclasses import dataclass, replace
from datetime import date

import numpy as np

from store.store import check_k

from .errors import IndexerError
from .geojson import footprint_geometry

_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")


@dataclass(frozen=True)
class Refinement:
    """What to do to a ranked result list before it is shown; the defaults change plain-image results not at all."""

    dedupe: bool = True  # overlapping chips of one scene: keep the best-ranked
    bbox: tuple | None = None  # (west, south, east, north) in WGS84; chips whose footprint touches it
    dates: tuple | None = None  # (from, to) full ISO dates or '', inclusive (parse_dates makes them)
    exclude_scene: str | tuple | None = None  # the query's own scene (or the scenes of several examples)

    @property
    def active(self) -> bool:
        return self.dedupe or self.bbox is not None or self.dates is not None or self.exclude_scene is not None


def refine(results: list[dict], refinement: Refinement, *, k: int) -> list[dict]:
    """The first k results that pass, re-ranked from 1."""
    kept: list[dict] = []
    for hit in results:
        if _passes(hit, refinement) and not (refinement.dedupe and _overlaps_kept(hit, kept)):
            kept.append(dict(hit, rank=len(kept) + 1))
            if len(kept) == k:
                break
    return kept


def refined_search(store, vector, *, k: int, exclude=(), refinement: Refinement) -> list[dict]:
    """store.search, fetching more neighbours until k pass the refinement or the store runs out."""
    k = check_k(k)
    if not refinement.active:
        return store.search(vector, k=k, exclude_ids=exclude)
    fetch = k * 4
    while True:
        found = store.search(vector, k=fetch, exclude_ids=exclude)
        results = refine(found, refinement, k=k)
        if len(results) == k or len(found) < fetch:
            return results
        fetch *= 4


COMBINES = ("mean", "any")
# Relevance feedback after Rocchio: the query moves away from what it should not look like by a quarter of the
# weight it gives its own examples (the textbook beta = 0.75, gamma = 0.15 weigh negatives at a fifth).
UNLIKE_WEIGHT = 0.25


def away_from(directions, unlike, *, weight: float = UNLIKE_WEIGHT) -> np.ndarray:
    """Query directions (n, D) moved away from the mean of the `unlike` unit vectors (m, D): each
    d − weight·mean(unlike), made unit length: Rocchio's query, with the examples' mean direction for theirs."""
    directions = np.atleast_2d(np.asarray(directions, dtype=np.float32))
    unlike = np.atleast_2d(np.asarray(unlike, dtype=np.float32))
    if not 0 <= weight <= 1:
        raise IndexerError(f"the unlike weight {weight} must be between 0 and 1")
    moved = directions - weight * unlike.mean(axis=0)
    lengths = np.linalg.norm(moved, axis=1, keepdims=True)
    if (lengths < 1e-6).any():
        raise IndexerError("the examples and the images they should not look like cancel out: give other ones, or "
                           "a lower unlike weight")
    return moved / lengths


def combined_search(store, vectors, *, k: int, exclude=(), refinement: Refinement, combine: str = "mean",
                    unlike=None, unlike_weight: float = UNLIKE_WEIGHT) -> list[dict]:
    """Neighbours of one or several examples' unit vectors (n, D).

    'mean' searches the examples' mean direction: what they have in common (the usual way to query by several
    examples of one kind of place). 'any' ranks every image by its best score against any one example, so
    examples of different looks each bring their own neighbours; a score is then that best cosine similarity.
    `unlike` (m, D): images the results should not look like; every example moves away from them (away_from),
    and scores are cosines to the moved examples.
    """
    if combine not in COMBINES:
        raise IndexerError(f"combine {combine!r} is not one of {', '.join(COMBINES)}")
    k = check_k(k)
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if len(vectors) > 1 and combine == "mean":
        centre = vectors.mean(axis=0)
        length = float(np.linalg.norm(centre))
        if length < 1e-6:
            raise IndexerError("the examples cancel out (their mean is zero): search with fewer of them, "
                               "or rank by any one of them (combine 'any')")
        vectors = (centre / length)[None]
    if unlike is not None and len(unlike):  # every direction searched moves away from them
        vectors = away_from(vectors, unlike, weight=unlike_weight)
    if len(vectors) == 1:
        return refined_search(store, vectors[0], k=k, exclude=exclude, refinement=refinement)
    # An image whose best example is e and that is missing from e's list scores at most that list's last score:
    # the merged ranking is complete above the highest such last score. Overlapping chips collapse once, on it.
    undeduped = replace(refinement, dedupe=False)
    fetch = k
    while True:
        lists = [refined_search(store, vector, k=fetch, exclude=exclude, refinement=undeduped)
                 for vector in vectors]
        best: dict[int, dict] = {}
        for hit in chain.from_iterable(lists):
            if hit["id"] not in best or hit["score"] > best[hit["id"]]["score"]:
                best[hit["id"]] = hit
        cut = [found[-1]["score"] for found in lists if len(found) == fetch]  # lists that may go on
        certain = [hit for hit in best.values() if not cut or hit["score"] > max(cut)]
        certain.sort(key=lambda hit: (-hit["score"], hit["id"]))
        results = refine(certain, Refinement(dedupe=refinement.dedupe), k=k)
        if len(results) == k or not cut:
            return results
        fetch *= 4


def _passes(hit: dict, refinement: Refinement) -> bool:
    geo = hit.get("geo") or {}
    excluded = refinement.exclude_scene
    if excluded and hit.get("scene") in ((excluded,) if isinstance(excluded, str) else excluded):
        return False
    if refinement.bbox is not None and not _touches(geo.get("wgs84_bounds"), refinement.bbox):
        return False
    if refinement.dates is not None and not _in_dates(geo.get("date"), refinement.dates):
        return False
    return True


def _touches(bounds, bbox) -> bool:
    if not bounds or bounds[1] > bbox[3] or bounds[3] < bbox[1]:
        return False
    if (bounds[1] <= -90 and bbox[1] <= -90) or (bounds[3] >= 90 and bbox[3] >= 90):
        return True  # both reach a pole, where every longitude meets
    return any(_meet(span, other) for span in _spans(bounds[0], bounds[2]) for other in _spans(bbox[0], bbox[2]))


def _meet(span: tuple[float, float], other: tuple[float, float]) -> bool:
    """Whether two longitude intervals share a meridian: 180 and -180 are one."""
    (west, east), (other_west, other_east) = span, other
    return (west <= other_east and east >= other_west) or (east >= 180 and other_west <= -180) or \
        (west <= -180 and other_east >= 180)


def _spans(west: float, east: float) -> list[tuple[float, float]]:
    """Longitude intervals of a box: two when it crosses the antimeridian (west > east)."""
    return [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]


def empty_results_note(*, filtered: bool) -> str:
    """Why a search of a store that holds images came back empty."""
    if filtered:
        return "no indexed image passes the filters (place, dates, same scene): loosen them to see neighbours"
    return "no other image in the store to compare with"


def parse_lonlat(text: str) -> tuple[float, float]:
    """'LON,LAT' in WGS84 degrees -> (lon, lat)."""
    try:
        lon, lat = (float(part) for part in text.split(","))
    except ValueError:
        raise IndexerError(f"{text!r} is not LON,LAT (two numbers, e.g. -99.15,47.02)") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise IndexerError(f"{text!r} is not a longitude,latitude in degrees (-180..180, -90..90)")
    return lon, lat


def parse_bbox(text: str | None) -> tuple | None:
    """'WEST,SOUTH,EAST,NORTH' in WGS84 degrees -> the four numbers; None for no text."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise IndexerError(f"the lon/lat box {text!r} is not four numbers west,south,east,north")
    west, south, east, north = values
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
        raise IndexerError(f"the lon/lat box {text!r} is not in degrees (longitudes -180..180, latitudes -90..90)")
    if south > north:
        raise IndexerError(f"the lon/lat box {text!r} runs backwards: its south is above its north")
    if west > east:
        raise IndexerError(f"the lon/lat box {text!r} has its west east of its east: a box across the antimeridian "
                           "is not supported, search each side of it")
    return values


def parse_dates(text: str | None) -> tuple | None:
    """'FROM,TO' (either may be empty; YYYY, YYYY-MM or YYYY-MM-DD) -> full ISO dates, FROM at the start of its
    year or month and TO at the end of its, so that ',2015' keeps all of 2015; None for no text."""
    if text is None or not text.strip():
        return None
    if text.count(",") != 1:
        raise IndexerError(f"the dates {text!r} are not FROM,TO (either may be empty)")
    low, high = (_full_date(part.strip(), text, end=end) for part, end in zip(text.split(","), (False, True)))
    if low and high and low > high:
        raise IndexerError(f"the dates {text!r} run backwards: FROM is after TO")
    if not low and not high:
        raise IndexerError(f"the dates {text!r} name neither FROM nor TO")
    return low, high


def _full_date(part: str, text: str, *, end: bool) -> str:
    if not part:
        return ""
    match = _PARTIAL_DATE.fullmatch(part)
    try:
        if match is None:
            raise ValueError
        year, month, day = int(match[1]), int(match[2] or (12 if end else 1)), match[3]
        day = int(day) if day else calendar.monthrange(year, month)[1] if end else 1
        return date(year, month, day).isoformat()
    except ValueError:
        raise IndexerError(f"{part!r} in the dates {text!r} is not a date such as 2015, 2015-07 or 2015-07-31") \
            from None


def _in_dates(date: str | None, dates: tuple) -> bool:
    if not date:
        return False
    start = date if len(date) == 10 else (date + "-01-01")[:10]
    end = date if len(date) == 10 else (date + "-12-31")[:10]
    low, high = dates
    return (not low or end >= low) and (not high or start <= high)


def _overlaps_kept(hit: dict, kept: list[dict]) -> bool:
    if not hit.get("scene"):
        return False
    return any(other.get("scene") == hit["scene"] and windows_overlap(hit["window"], other["window"])
               for other in kept)


def windows_overlap(one, other) -> bool:
    """Whether two (col, row, width, height) windows of one scene share pixels."""
    col, row, width, height = one
    o_col, o_row, o_width, o_height = other
    return col < o_col + o_width and o_col < col + width and row < o_row + o_height and o_row < row + height


def to_geojson(answer: dict) -> dict:
    """A search answer as an RFC 7946 FeatureCollection: footprints (WGS84, counter-clockwise, split at the
    antimeridian) and properties.

    A result with no footprint (a plain image) keeps its place in the list with a null geometry.
    """
    features = []
    for hit in answer["results"]:
        geo = hit.get("geo") or {}
        footprint = geo.get("footprint")
        properties = {key: hit.get(key) for key in ("rank", "id", "score", "path", "scene", "window")}
        properties.update(date=geo.get("date"), centroid=geo.get("centroid"), crs=geo.get("crs"))
        features.append({"type": "Feature", "id": hit["id"],
                         "geometry": footprint_geometry(footprint),
                         "properties": properties})
    query = {key: value for key, value in answer["query"].items() if key != "geo"}
    if "examples" in query:  # several examples
        query["examples"] = [{key: value for key, value in example.items() if key != "geo"}
                             for example in query["examples"]]
    return {"type": "FeatureCollection", "features": features, "query": query}
