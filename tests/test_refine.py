"""Scene search refinements and GeoJSON export, on hand-made results and on real NAIP chips."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import cli
from indexer.errors import IndexerError
from indexer.refine import Refinement, away_from, combined_search, parse_bbox, parse_dates, refine, to_geojson


def hit(rank, *, scene="a.tif", window=(0, 0, 256, 256), date="2015-06-01", bounds=(10.0, 50.0, 10.1, 50.1)):
    west, south, east, north = bounds
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"rank": rank, "id": rank, "score": 1 - rank / 100, "path": f"{scene}#{rank}", "scene": scene,
            "window": list(window), "geo": {"date": date, "wgs84_bounds": list(bounds), "footprint": [ring],
                                             "centroid": [(west + east) / 2, (south + north) / 2], "crs": "EPSG:4326"}}


def test_overlapping_chips_of_one_scene_collapse_to_the_best():
    results = [hit(1, window=(0, 0, 256, 256)), hit(2, window=(128, 0, 256, 256)), hit(3, window=(256, 0, 256, 256)),
               hit(4, scene="b.tif", window=(0, 0, 256, 256))]
    kept = refine(results, Refinement(), k=10)
    assert [h["id"] for h in kept] == [1, 3, 4]
    assert [h["rank"] for h in kept] == [1, 2, 3]
    assert len(refine(results, Refinement(dedupe=False), k=10)) == 4
    assert [h["id"] for h in refine(results, Refinement(), k=2)] == [1, 3]


def test_plain_images_pass_dedupe_untouched():
    plain = [{"rank": r, "id": r, "score": 0.5, "path": f"{r}.jpg"} for r in (1, 2)]
    assert refine(plain, Refinement(), k=5) == plain


@pytest.mark.parametrize("bbox, ids", [((10.05, 50.05, 11, 51), [1]), ((20, 20, 21, 21), []),
                                       ((-180, -90, 180, 90), [1, 2])])
def test_bbox_keeps_chips_whose_footprint_touches_it(bbox, ids):
    results = [hit(1), hit(2, scene="b.tif", bounds=(12.0, 40.0, 12.1, 40.1))]
    assert [h["id"] for h in refine(results, Refinement(bbox=bbox), k=5)] == ids


@pytest.mark.parametrize("dates, ids", [(("2015-01-01", "2015-12-31"), [1, 3]), (("2016-01-01", ""), [2]),
                                        (("", "2014-12-31"), [4]), (("1985-06-01", "1985-06-30"), [4])])
def test_dates_are_inclusive_and_a_bare_year_covers_its_year(dates, ids):
    results = [hit(1), hit(2, scene="b", date="2018-07-16"), hit(3, scene="c", date="2015"),
               hit(4, scene="d", date="1985"), hit(5, scene="e", date=None)]
    assert [h["id"] for h in refine(results, Refinement(dates=dates), k=9)] == ids


def test_exclude_the_query_scene():
    results = [hit(1), hit(2, scene="b.tif")]
    assert [h["id"] for h in refine(results, Refinement(exclude_scene="a.tif"), k=5)] == [2]


def test_geojson_is_an_rfc7946_feature_collection():
    collection = to_geojson({"query": {"id": 9, "path": "q"}, "results": [hit(1), {"rank": 2, "id": 2, "score": 0.4,
                                                                                   "path": "x.jpg"}]})
    assert collection["type"] == "FeatureCollection"
    located, plain = collection["features"]
    ring = located["geometry"]["coordinates"][0]
    assert located["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    assert area > 0  # counter-clockwise exterior ring
    assert located["properties"]["rank"] == 1 and located["properties"]["date"] == "2015-06-01"
    assert plain["geometry"] is None
    assert json.loads(json.dumps(collection)) == collection


def test_a_footprint_across_the_antimeridian_is_split_in_two_as_rfc7946_asks():
    """Drawn as one ring from 179.5 to -179.5, a GIS spans the globe the long way round."""
    across = {"rank": 1, "id": 1, "score": 0.9, "path": "s.tif#0,0,50,50", "scene": "s.tif", "window": [0, 0, 50, 50],
              "geo": {"footprint": [[[179.5, -16.5], [-179.5, -16.5], [-179.5, -16.0], [179.5, -16.0],
                                     [179.5, -16.5]]]}}
    geometry = to_geojson({"query": {"id": 9}, "results": [across]})["features"][0]["geometry"]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    west, east = (polygon[0] for polygon in geometry["coordinates"])
    assert {lon for lon, _ in west} == {179.5, 180.0} and {lon for lon, _ in east} == {-180.0, -179.5}
    for ring in (west, east):
        assert ring[0] == ring[-1] and {lat for _, lat in ring} == {-16.5, -16.0}
        assert sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) > 0  # still counter-clockwise


def test_cli_writes_geojson_of_real_chips(index, shared_data_dir, tmp_path):
    from indexer.pipeline import ChipOptions

    index([shared_data_dir / "naip"], tmp_path / "s", chips=ChipOptions(chip_size=256))
    out = tmp_path / "hits.geojson"
    result = CliRunner().invoke(cli, ["search", "--id", "5", "--store", str(tmp_path / "s"), "-k", "6",
                                      "--exclude-scene", "--geojson", str(out), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    collection = json.loads(out.read_text())
    assert [f["id"] for f in collection["features"]] == [h["id"] for h in answer["results"]]
    assert len(collection["features"]) == 6
    query_scene = answer["query"]["scene"]
    assert all(f["properties"]["scene"] != query_scene for f in collection["features"])
    for feature in collection["features"]:
        lon, lat = feature["properties"]["centroid"]
        assert -99.2 < lon < -99.1 and 47.0 < lat < 47.05

    # two query chips of different scenes: both scenes are left out, and the GeoJSON names both examples
    other = next(f["id"] for f in collection["features"] if f["properties"]["scene"] != query_scene)
    result = CliRunner().invoke(cli, ["search", "--id", "5", "--id", str(other), "--store", str(tmp_path / "s"),
                                      "-k", "6", "--exclude-scene", "--geojson", str(out), "--json"])
    assert result.exit_code == 0, result.output
    examples = json.loads(result.output)["query"]["examples"]
    scenes = {example["scene"] for example in examples}
    assert len(scenes) == 2
    collection = json.loads(out.read_text())
    assert len(collection["features"]) == 6
    assert not scenes & {f["properties"]["scene"] for f in collection["features"]}
    assert [example["id"] for example in collection["query"]["examples"]] == [5, other]
    assert not any("geo" in example for example in collection["query"]["examples"])


@pytest.mark.parametrize("text, expected", [
    ("2015,2016", ("2015-01-01", "2016-12-31")), (",2015", ("", "2015-12-31")), ("2015-02,", ("2015-02-01", "")),
    ("2016-02,2016-02", ("2016-02-01", "2016-02-29")), (" 2015 , 2016-07-04 ", ("2015-01-01", "2016-07-04")),
    ("", None), (None, None)])
def test_dates_parse_to_whole_periods(text, expected):
    assert parse_dates(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("2020,2010", "run backwards"), ("garbage,", "is not a date"), ("2015-13,", "is not a date"),
    ("2015-02-30,", "is not a date"), (",", "neither FROM nor TO"), ("2015", "not FROM,TO")])
def test_bad_dates_are_refused(text, fragment):
    with pytest.raises(IndexerError, match=fragment):
        parse_dates(text)


@pytest.mark.parametrize("text, fragment", [
    ("0,10,5,5", "runs backwards: its south is above its north"), ("10,0,5,5", "across the antimeridian"),
    ("0,0,200,5", "not in degrees"), ("0,-95,5,5", "not in degrees"), ("0,0,5", "not four numbers"),
    ("a,b,c,d", "not four numbers")])
def test_bad_boxes_are_refused(text, fragment):
    with pytest.raises(IndexerError, match=fragment):
        parse_bbox(text)


def test_a_box_parses_to_its_four_numbers():
    assert parse_bbox(" -99.2, 47, -99.1,47.1 ") == (-99.2, 47.0, -99.1, 47.1)
    assert parse_bbox("") is None and parse_bbox(None) is None


def test_cli_refuses_a_backwards_box_before_opening_anything(tmp_path):
    backwards = CliRunner().invoke(cli, ["search", "--id", "1", "--store", str(tmp_path / "none"),
                                         "--bbox", "0,10,5,5"])
    assert backwards.exit_code == 2 and "south is above its north" in backwards.stderr


def test_a_bare_year_as_the_end_keeps_all_of_that_year():
    results = [hit(1, date="2015-06-01"), hit(2, scene="b", date="2016-01-01")]
    assert [h["id"] for h in refine(results, Refinement(dates=parse_dates(",2015")), k=9)] == [1]


def test_cli_dates_are_checked_and_an_emptied_list_says_why(index, shared_data_dir, tmp_path):
    from indexer.pipeline import ChipOptions

    store_dir = tmp_path / "s"
    index([shared_data_dir / "naip"], store_dir, chips=ChipOptions(chip_size=512))
    backwards = CliRunner().invoke(cli, ["search", "--id", "1", "--store", str(store_dir), "--dates", "2020,2010"])
    assert backwards.exit_code == 2 and "run backwards" in backwards.stderr
    future = CliRunner().invoke(cli, ["search", "--id", "1", "--store", str(store_dir), "--dates", "2090,"])
    assert future.exit_code == 0 and "no indexed image passes the filters" in future.stdout


# -- several examples ---------------------------------------------------------------------------
class BruteForceStore:
    """store.search over unit vectors by brute force, each image a chip of a few overlapping scenes."""

    def __init__(self, vectors, hits):
        self.vectors, self.hits = vectors, hits

    def search(self, query, *, k, exclude_ids=()):
        scores = self.vectors @ query
        order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in set(exclude_ids)][:k]
        return [dict(self.hits[i], rank=rank, score=float(scores[i])) for rank, i in enumerate(order, 1)]


def chip_store(seed, count=300):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hits = [{"id": i, "path": f"chip{i}", "scene": f"s{i % 3}", "window": [int(rng.integers(0, 6)) * 64, 0, 128, 128],
             "geo": {"date": f"{2010 + i % 8}-06-01"}} for i in range(count)]
    return BruteForceStore(vectors, hits), rng


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("refinement", [Refinement(dedupe=False), Refinement(),
                                        Refinement(dates=("2012-01-01", "2014-12-31")),
                                        Refinement(exclude_scene=("s0", "s2"), dedupe=False)],
                         ids=["plain", "dedupe", "dates+dedupe", "two-scenes-out"])
def test_any_of_several_examples_is_the_brute_force_ranking_by_best_score(seed, refinement):
    store, rng = chip_store(seed)
    examples = rng.normal(size=(3, 8)).astype(np.float32)
    examples /= np.linalg.norm(examples, axis=1, keepdims=True)
    best = (store.vectors @ examples.T).max(axis=1)
    ranking = [dict(store.hits[i], score=float(best[i])) for i in np.argsort(-best, kind="stable")]
    expected = refine(ranking, refinement, k=7)
    found = combined_search(store, examples, k=7, refinement=refinement, combine="any")
    assert [(h["id"], h["rank"]) for h in found] == [(h["id"], h["rank"]) for h in expected]
    assert [h["score"] for h in found] == pytest.approx([h["score"] for h in expected])


def test_any_looks_past_each_examples_first_k_when_chips_collapse():
    """e1's top 2 are overlapping chips A, B; its third, C, beats e2's best D once B collapses into A."""
    scores = {"A": (0.9, 0.1), "B": (0.8, 0.1), "C": (0.75, 0.1), "D": (0.1, 0.7), "E": (0.1, 0.6)}
    windows = {"A": 0, "B": 64, "C": 256, "D": 0, "E": 256}
    hits = [{"id": i, "path": name, "scene": "s" if name in "ABC" else "t", "window": [windows[name], 0, 128, 128]}
            for i, name in enumerate(scores)]
    store = BruteForceStore(np.array(list(scores.values()), dtype=np.float32), hits)
    found = combined_search(store, np.eye(2, dtype=np.float32), k=2, refinement=Refinement(), combine="any")
    assert [h["path"] for h in found] == ["A", "C"]


def test_the_mean_of_several_examples_is_searched_as_one_direction():
    store, rng = chip_store(0)
    examples = store.vectors[[4, 9]]
    centre = examples.mean(axis=0) / np.linalg.norm(examples.mean(axis=0))
    found = combined_search(store, examples, k=5, refinement=Refinement(dedupe=False), exclude=[4, 9])
    order = [i for i in np.argsort(-(store.vectors @ centre)) if i not in (4, 9)][:5]
    assert [h["id"] for h in found] == order
    assert found[0]["score"] == pytest.approx(float(store.vectors[order[0]] @ centre), abs=1e-6)


def test_examples_that_cancel_out_or_an_unknown_combination_are_refused():
    store, _ = chip_store(0)
    with pytest.raises(IndexerError, match="cancel out"):
        combined_search(store, [store.vectors[0], -store.vectors[0]], k=3, refinement=Refinement())
    with pytest.raises(IndexerError, match="not one of mean, any"):
        combined_search(store, store.vectors[:2], k=3, refinement=Refinement(), combine="median")


# -- images the results should not look like -----------------------------------------------------
def unit(vector) -> np.ndarray:
    return vector / np.linalg.norm(vector, axis=-1, keepdims=True)


def test_unlike_moves_each_direction_away_as_rocchio_does():
    rng = np.random.default_rng(3)
    directions, unlike = unit(rng.normal(size=(2, 8))), unit(rng.normal(size=(3, 8)))
    moved = away_from(directions, unlike, weight=0.25)
    assert np.allclose(moved, unit(directions - 0.25 * unlike.mean(axis=0)), atol=1e-6)
    assert np.allclose(np.linalg.norm(moved, axis=1), 1, atol=1e-6)
    assert ((moved @ unlike.mean(axis=0)) < (directions @ unlike.mean(axis=0))).all()  # farther from them
    assert np.allclose(away_from(directions, unlike, weight=0), directions, atol=1e-6)
    with pytest.raises(IndexerError, match="between 0 and 1"):
        away_from(directions, unlike, weight=1.5)
    with pytest.raises(IndexerError, match="cancel out"):
        away_from(directions[:1], directions[:1], weight=1)


@pytest.mark.parametrize("combine", ["mean", "any"])
def test_a_search_unlike_some_images_is_the_brute_force_ranking_of_the_moved_query(combine):
    store, _ = chip_store(5)
    examples, unlike = store.vectors[[3, 8]], store.vectors[[20, 41]]
    directions = unit(examples.mean(axis=0))[None] if combine == "mean" else examples
    moved = unit(directions - 0.25 * unlike.mean(axis=0))
    best = (store.vectors @ moved.T).max(axis=1)
    order = [i for i in np.argsort(-best, kind="stable") if i not in (20, 41)][:6]
    found = combined_search(store, examples, k=6, refinement=Refinement(dedupe=False), exclude=[20, 41],
                            combine=combine, unlike=unlike)
    assert [h["id"] for h in found] == order
    assert [h["score"] for h in found] == pytest.approx([float(best[i]) for i in order], abs=1e-6)
    plain = combined_search(store, examples, k=6, refinement=Refinement(dedupe=False), combine=combine)
    assert [h["id"] for h in plain] != order  # it changed the answer


def test_results_unlike_an_image_look_less_like_it(ui_store_dir, ui_ids):
    """Through the API on real chips: the results move away from the image given as unlike, which is left out.
    The plain query's best k without that image maximise q·x, the moved query's q·x − w·n·x: so the moved ones'
    summed closeness n·x to it can only be lower, and is where they differ."""
    from indexer import api

    store = api.open_store(ui_store_dir)

    def closeness(hits, avoided):
        return sum(float(store.vector(hit["id"]) @ store.vector(avoided)) for hit in hits)

    changed = 0
    for query in sorted(ui_ids.values())[::3]:
        avoided = api.search(store, query, k=2)["results"][1]["id"]  # its nearest neighbour: a look it shares
        plain = combined_search(store, store.vector(query), k=6, exclude=[avoided], refinement=Refinement())
        shifted = api.search(store, query, k=6, unlike=[avoided], unlike_weight=0.5)
        assert avoided not in [hit["id"] for hit in shifted["results"]]
        assert shifted["query"]["unlike"][0]["id"] == avoided and shifted["query"]["unlike_weight"] == 0.5
        assert shifted["query"]["examples"][0]["id"] == query
        assert closeness(shifted["results"], avoided) <= closeness(plain, avoided) + 1e-5
        changed += {hit["id"] for hit in shifted["results"]} != {hit["id"] for hit in plain}
    assert changed
    store.close()
