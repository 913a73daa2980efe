"""Scenes through the whole product: chips in the catalogue, incremental runs, search, the CLI and the page."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from helpers import REPO_ROOT
from indexer import api
from indexer.cli import cli
from indexer.images import file_sha256
from indexer.pipeline import ChipOptions


def chip_rows(store):
    return {path: row for path, row in store.images_by_path().items() if row["scene"]}


def test_rerun_skips_every_chip_and_a_changed_scene_is_cut_again(index, naip_dir, store_dir, open_store):
    first = index([naip_dir], store_dir, chips=_chips(256))
    assert (first["scenes"], first["indexed"]) == (3, 36)  # 934 x 72x: 4 x 3 chips of 256 each

    again = index([naip_dir], store_dir, chips=_chips(256))
    assert (again["indexed"], again["skipped"], again["removed"], again["scenes"]) == (0, 36, 0, 0)

    scene = sorted(naip_dir.glob("*.tif"))[0]
    with open(scene, "ab") as handle:  # TIFF finds its data by offsets: still the same picture, other bytes
        handle.write(b"\0" * 16)
    changed = index([naip_dir], store_dir, chips=_chips(256))
    assert (changed["indexed"], changed["removed"], changed["skipped"]) == (12, 12, 24)
    assert open_store(store_dir).index.ntotal == 36


def test_a_scene_copied_with_a_new_time_is_not_cut_again(index, naip_dir, store_dir, open_store):
    """As for a plain file: a new mtime on the same bytes (a copy, a restore) is noted, not re-embedded."""
    import sqlite3

    index([naip_dir], store_dir, chips=_chips(256))
    before = {path: row["id"] for path, row in chip_rows(open_store(store_dir)).items()}
    scene = sorted(naip_dir.glob("*.tif"))[0]
    os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
    touched = index([naip_dir], store_dir, chips=_chips(256))
    assert (touched["indexed"], touched["removed"], touched["skipped"]) == (0, 0, 36)
    store = open_store(store_dir)
    rows = chip_rows(store)
    assert {path: row["id"] for path, row in rows.items()} == before  # the same ids: bookmarks still hold
    mine = [row for row in rows.values() if row["scene"] == str(scene)]
    assert len(mine) == 12 and {row["mtime"] for row in mine} == {scene.stat().st_mtime}
    api.load_indexed_image(api.search(store, mine[0]["id"], k=1)["results"][0])  # shown again, not "changed"
    store.close()

    with sqlite3.connect(store_dir / "catalogue.db") as db:  # bytes that differ under the same size and a new time
        db.execute("UPDATE scenes SET sha256 = ? WHERE path = ?", ["0" * 64, str(scene)])
    os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
    changed = index([naip_dir], store_dir, chips=_chips(256))
    assert (changed["indexed"], changed["removed"], changed["skipped"]) == (12, 12, 24)


def test_a_scene_recorded_by_an_older_lookalike_gets_its_hash(index, naip_dir, store_dir, open_store):
    import sqlite3

    index([naip_dir], store_dir, chips=_chips(256))
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("ALTER TABLE scenes DROP COLUMN sha256")  # as a store made before scenes were hashed
    scene = sorted(naip_dir.glob("*.tif"))[0]
    os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
    again = index([naip_dir], store_dir, chips=_chips(256))  # no hash to compare: cut again, as before
    assert (again["indexed"], again["removed"], again["skipped"]) == (12, 12, 24)
    store = open_store(store_dir)
    recorded = store.scenes_by_path()
    assert recorded[str(scene)]["sha256"] == file_sha256(scene)  # hashed while its chips were embedded
    others = [path for path in recorded if path != str(scene)]  # unchanged, done: hashed once by this run too
    assert [recorded[path]["sha256"] for path in others] == [file_sha256(Path(path)) for path in others]
    store.close()
    os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
    copied = index([naip_dir], store_dir, chips=_chips(256))
    assert (copied["indexed"], copied["removed"], copied["skipped"]) == (0, 0, 36)


def test_a_scene_changed_while_it_was_hashed_keeps_no_hash(index, naip_dir, store_dir, open_store, monkeypatch):
    """The hash is taken while the chips are embedded: a file that changed by then is not the one they show."""
    from indexer import plan

    scene = sorted(naip_dir.glob("*.tif"))[0]
    real = plan._digests_or_none

    def hash_then_touch(path):
        digest = real(path)
        if path == scene:
            os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
        return digest

    monkeypatch.setattr(plan, "_digests_or_none", hash_then_touch)
    index([naip_dir], store_dir, chips=_chips(256))
    recorded = open_store(store_dir).scenes_by_path()
    assert recorded[str(scene)]["sha256"] is None
    assert all(r["sha256"] for path, r in recorded.items() if path != str(scene))


def test_a_vanished_scene_loses_its_chips(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=_chips(512))
    gone = sorted(naip_dir.glob("*.tif"))[0]
    gone.unlink()
    summary = index([naip_dir], store_dir, chips=_chips(512))
    store = open_store(store_dir)
    assert summary["removed"] == 4
    assert all(row["scene"] != str(gone) for row in chip_rows(store).values())
    assert store.index.ntotal == 8


def test_a_chip_finds_itself_and_same_window_of_other_years_is_reported(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=_chips(256))
    store = open_store(store_dir)
    rows = chip_rows(store)
    hits_elsewhere = 0
    for path, row in rows.items():
        answer = api.search(store, row["id"], k=10)
        assert answer["results"][0]["id"] == row["id"] and answer["results"][0]["score"] >= 0.999
        window = path.rsplit("#", 1)[1]
        hits_elsewhere += sum(1 for hit in answer["results"][1:] if hit["path"].endswith("#" + window))
    # A baseline for the real model, not an assertion: a random tiny model knows nothing of places.
    print(f"same window from another year in the top 10: {hits_elsewhere} of {2 * len(rows)} possible")


def test_search_results_carry_window_and_lon_lat(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=_chips(512))
    store = open_store(store_dir)
    hit = api.search(store, 1, k=1)["results"][0]
    assert hit["scene"].endswith(".tif") and len(hit["window"]) == 4
    assert hit["geo"]["crs"] == "EPSG:26914" and len(hit["geo"]["footprint"][0]) == 5
    image = api.load_indexed_image(hit)
    assert image.size == (512, 512) and image.mode == "RGB"


def test_cli_chip_options(model_dir, naip_dir, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["index", str(naip_dir), "--store", str(tmp_path / "s"), "--model", str(model_dir),
                             "--dtype", "float32", "--chip-size", "512", "--overlap", "256", "--workers", "0",
                             "--no-progress", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"scenes": 3' in ok.output
    for bad in (["--overlap", "600"], ["--bands", "3,x,1"], ["--stretch", "2"], ["--stretch", "98,2"],
                ["--stretch", "0,101"], ["--bands", "1,2"], ["--bands", "0,1,2"]):
        result = runner.invoke(cli, ["index", str(naip_dir), "--store", str(tmp_path / "t"), "--model",
                                     str(model_dir), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert bad[0] in result.stderr and not (tmp_path / "t").exists()  # refused before anything is made


def test_the_page_shows_chips_with_their_place(index, naip_dir, store_dir, monkeypatch):
    index([naip_dir], store_dir, chips=_chips(512))
    monkeypatch.setenv("LOOKALIKE_STORE", str(store_dir))
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60)
    at.query_params["id"] = "2"
    at.run()
    assert not at.exception and not at.error
    captions = [c.value for c in at.caption]
    assert any("window 422,0 512×512" in c and "2009-08-18" in c for c in captions), captions


def _chips(size):
    from indexer.pipeline import ChipOptions

    return ChipOptions(chip_size=size)


def test_the_page_maps_chip_results_and_offers_geojson(index, naip_dir, store_dir, monkeypatch):
    index([naip_dir], store_dir, chips=_chips(512))
    monkeypatch.setenv("LOOKALIKE_STORE", str(store_dir))
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60)
    at.query_params["id"] = "1"
    at.run()
    assert not at.exception
    assert len(at.get("deck_gl_json_chart")) == 1
    assert "Download footprints (GeoJSON)" in [b.proto.label for b in at.get("download_button")]


def test_page_filters_leave_out_the_query_scene(index, naip_dir, store_dir, monkeypatch):
    index([naip_dir], store_dir, chips=_chips(512))
    monkeypatch.setenv("LOOKALIKE_STORE", str(store_dir))
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60)
    at.query_params["id"] = "1"
    at.run()
    at.sidebar.checkbox[2].check().run()  # "Leave out the query's own scene"
    assert not at.exception
    scenes = [c.value.split(" · ")[0] for c in at.caption if "· window" in c.value]
    assert scenes and all(not s.endswith("20090818.tif") for s in scenes)


def test_gsd_sets_the_ground_a_chip_covers(index, naip_dir, shared_data_dir, store_dir, open_store, tmp_path):
    from indexer.pipeline import ChipOptions

    # NAIP here is 5 m a pixel (EPSG:26914): 64 px chips at 10 m cover 128 native pixels of ground
    summary = index([naip_dir], store_dir, chips=ChipOptions(chip_size=64, gsd=10.0))
    store = open_store(store_dir)
    rows = [store.image(r["id"]) for r in chip_rows(store).values()]
    assert {(r["width"], r["height"]) for r in rows} == {(128, 128)}
    assert summary["indexed"] == 3 * 8 * 6  # ceil(934 / 128) x ceil(72x / 128), shifted inward
    geo = json.loads(rows[0]["geo"])
    assert geo["gsd"] == 10.0 and abs(geo["native_gsd"] - 5.0) < 1e-6

    landsat = index([shared_data_dir / "landsat" / "1985.tif"], tmp_path / "geographic",
                    chips=ChipOptions(chip_size=64, gsd=10.0))
    assert landsat["failed"] == 1  # EPSG:4326 has no metres to resample to


def test_a_run_cut_short_goes_on_with_the_missing_chips(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=_chips(256))
    store = open_store(store_dir)
    lost = sorted(chip_rows(store).values(), key=lambda r: r["id"])[-5:]
    store.remove_images([r["id"] for r in lost])  # as if the run had died before writing them
    store.save_index()

    resumed = index([naip_dir], store_dir, chips=_chips(256))
    assert (resumed["indexed"], resumed["skipped"], resumed["removed"]) == (5, 31, 0)
    assert sorted(chip_rows(open_store(store_dir))) == sorted(chip_rows(store) | {r["path"]: r for r in lost})


def test_a_scene_left_part_done_and_unhashed_by_a_killed_run_is_hashed_as_it_goes_on(index, naip_dir, store_dir,
                                                                                      open_store):
    """kill -9 leaves no hash (it is recorded as the run ends): without one, the scene's next new mtime (a copy
    back from a backup) or move would cut it all again."""
    import sqlite3

    index([naip_dir], store_dir, chips=_chips(256))
    store = open_store(store_dir)
    scene = sorted(naip_dir.glob("*.tif"))[0]
    lost = [r for r in chip_rows(store).values() if r["scene"] == str(scene)][-5:]
    store.remove_images([r["id"] for r in lost])  # as if the run had died before writing them, and before hashing
    store.save_index()
    store.close()
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("UPDATE scenes SET sha256 = NULL, head_sha256 = NULL WHERE path = ?", [str(scene)])

    resumed = index([naip_dir], store_dir, chips=_chips(256))
    assert resumed["indexed"] == 5
    assert open_store(store_dir).scenes_by_path()[str(scene)]["sha256"] == file_sha256(scene)
    os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
    touched = index([naip_dir], store_dir, chips=_chips(256))
    assert (touched["indexed"], touched["removed"], touched["skipped"]) == (0, 0, 36)


def test_a_scene_finished_but_left_unhashed_by_a_killed_run_is_hashed_by_the_next(index, naip_dir, store_dir,
                                                                                   open_store):
    """Killed after a scene's last chip was written but before the run's end recorded its hash: the next run,
    with nothing to embed, hashes it, so that a new mtime on the same bytes is only noted, not cut again."""
    import sqlite3

    index([naip_dir], store_dir, chips=_chips(256))
    scene = sorted(naip_dir.glob("*.tif"))[0]
    ids = {r["path"]: r["id"] for r in chip_rows(open_store(store_dir)).values() if r["scene"] == str(scene)}
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("UPDATE scenes SET sha256 = NULL, head_sha256 = NULL WHERE path = ?", [str(scene)])

    again = index([naip_dir], store_dir, chips=_chips(256))
    assert (again["indexed"], again["skipped"]) == (0, 36)
    assert open_store(store_dir).scenes_by_path()[str(scene)]["sha256"] == file_sha256(scene)
    os.utime(scene, (scene.stat().st_atime, scene.stat().st_mtime + 10))
    touched = index([naip_dir], store_dir, chips=_chips(256))
    assert (touched["indexed"], touched["removed"], touched["skipped"]) == (0, 0, 36)
    after = {r["path"]: r["id"] for r in chip_rows(open_store(store_dir)).values() if r["scene"] == str(scene)}
    assert after == ids  # the same chips under the same ids


def test_a_scene_an_older_lookalike_recorded_without_its_hash_is_hashed_by_the_next_run(index, naip_dir, store_dir,
                                                                                       open_store, tmp_path):
    """A scene recorded by a lookalike older than scene hashes (and than the window count): the first run since,
    with nothing to embed, hashes it, so that a move right after keeps its chips and ids. It was hashed one run
    late: the run after the upgrade only recorded the window count, and a move before the next cut it again."""
    import shutil
    import sqlite3

    scenes_dir = tmp_path / "scenes"
    scenes_dir.mkdir()
    scene = scenes_dir / sorted(naip_dir.glob("*.tif"))[0].name
    shutil.copy2(sorted(naip_dir.glob("*.tif"))[0], scene)
    index([scenes_dir], store_dir, chips=_chips(256))
    ids = sorted(r["id"] for r in chip_rows(open_store(store_dir)).values())
    with sqlite3.connect(store_dir / "catalogue.db") as db:  # what such a lookalike left: no hash, no window count
        db.execute("UPDATE scenes SET sha256 = NULL, head_sha256 = NULL, windows = NULL, georeferenced = NULL")

    upgraded = index([scenes_dir], store_dir, chips=_chips(256))
    assert (upgraded["indexed"], upgraded["skipped"]) == (0, 12)
    assert open_store(store_dir).scenes_by_path()[str(scene)]["sha256"] == file_sha256(scene)
    moved_dir = tmp_path / "moved"
    scenes_dir.rename(moved_dir)
    moved = index([moved_dir], store_dir, chips=_chips(256))
    assert (moved["indexed"], moved["removed"], moved["moved"]) == (0, 0, 12)
    assert sorted(r["id"] for r in chip_rows(open_store(store_dir)).values()) == ids


def test_a_scene_whose_chips_are_all_empty_is_not_read_again(index, shared_data_dir, store_dir):
    shade = shared_data_dir / "rasterio" / "shade.tif"  # 88 % nodata: every 512 px chip under --min-valid
    first = index([shade], store_dir)
    assert (first["indexed"], first["skipped_chips"]) == (0, 4)
    again = index([shade], store_dir)
    assert (again["indexed"], again["skipped_chips"], again["skipped"], again["scenes"]) == (0, 0, 4, 0)
    info = json.loads(CliRunner().invoke(cli, ["info", "--store", str(store_dir), "--json"]).output)
    assert (info["scenes"], info["scenes_without_chips"]) == (0, 1)  # the run said 1 scene cut: info says where
    human = CliRunner().invoke(cli, ["info", "--store", str(store_dir)]).output
    assert "scenes_without_chips: 1 (every chip skipped: too little valid data)" in human


def test_other_chip_options_cut_the_scene_again(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=_chips(512))
    summary = index([naip_dir], store_dir, chips=_chips(256))
    assert (summary["removed"], summary["indexed"]) == (12, 36)
    assert open_store(store_dir).index.ntotal == 36


def test_a_large_plain_image_is_cut_only_when_chip_size_is_given(index, tmp_path, write_image, open_store):
    from PIL import Image

    from indexer.pipeline import ChipOptions

    folder = tmp_path / "photos"
    write_image(folder / "small.jpg", size=(200, 150))
    big = write_image(folder / "big.png", size=(700, 300), seed=3)
    whole = index([folder], tmp_path / "s")
    assert (whole["indexed"], whole["scenes"]) == (2, 0)

    cut = index([folder], tmp_path / "s", chips=ChipOptions(chip_size=256, chip_plain=True))
    store = open_store(tmp_path / "s")
    chips = {path: row for path, row in store.images_by_path().items() if row["scene"] == str(big.absolute())}
    assert sorted(p.rsplit("#", 1)[1] for p in chips) == ["0,0,256,256", "0,44,256,256", "256,0,256,256",
                                                          "256,44,256,256", "444,0,256,256", "444,44,256,256"]
    assert (cut["indexed"], cut["removed"], cut["skipped"]) == (6, 1, 1)  # the whole big.png gave way
    hit = api.search(store, next(iter(chips.values()))["id"], k=1)["results"][0]
    tile = api.load_indexed_image(hit)
    col, row = hit["window"][:2]
    assert tile.size == (256, 256)
    expected = Image.open(big).convert("RGB").crop((col, row, col + 256, row + 256))
    assert np.array_equal(np.asarray(tile), np.asarray(expected))

    back = index([folder], tmp_path / "s")
    assert (back["indexed"], back["removed"]) == (1, 6)
    assert open_store(tmp_path / "s").index.ntotal == 2


def test_info_reports_each_scene_bands_crs_and_extent(index, shared_data_dir, tmp_path):
    index([shared_data_dir / "naip" / "m_4709963_se_14_1_20090818.tif", shared_data_dir / "rasterio" / "RGB.byte.tif",
           shared_data_dir / "landsat" / "1985.tif"], tmp_path / "s")
    result = CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    by_name = {os.path.basename(item["scene"]): item for item in info["scene_list"]}
    assert by_name["m_4709963_se_14_1_20090818.tif"]["band_source"] == "default"
    assert by_name["RGB.byte.tif"]["band_source"] == "colorinterp"
    assert by_name["1985.tif"]["bands"] == [1, 2, 3] and by_name["1985.tif"]["date"] == "1985"
    assert info["scenes"] == 3 and set(info["crs"]) == {"EPSG:26914", "EPSG:32618", "EPSG:4326"}
    west, south, east, north = info["wgs84_extent"]
    assert west < -99 < east and south < 47 < north  # NAIP in North Dakota, Landsat in Peru, both inside
    assert south < -8 and west < -75
    human = CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s")])
    assert "bands 1,2,3 (default)" in human.output


def test_a_scene_that_failed_under_some_options_is_tried_again_under_others(index, shared_data_dir, store_dir,
                                                                             open_store):
    scene = shared_data_dir / "landsat" / "1985.tif"  # 4 bands: band 9 does not exist
    failed = index([scene], store_dir, chips=ChipOptions(bands=(4, 3, 9)))
    assert (failed["indexed"], failed["failed"]) == (0, 1)
    again = index([scene], store_dir, chips=ChipOptions(bands=(4, 3, 9)))
    assert (again["indexed"], again["failed"], again["skipped"]) == (0, 0, 1)  # same file, same options: kept
    fixed = index([scene], store_dir, chips=ChipOptions(bands=(3, 2, 1)))
    assert fixed["indexed"] == 2 and fixed["failed"] == 0
    assert open_store(store_dir).failures() == []  # the scene reads now: its old failure is gone


def test_a_geotiff_query_is_read_whole_as_its_chips_were(index, shared_data_dir, store_dir, open_store, embedder,
                                                          model_dir, monkeypatch):
    scene = shared_data_dir / "landsat" / "1985.tif"  # 4 bands (SWIR1, NIR, red, green): Pillow cannot decode it
    index([scene], store_dir, chips=ChipOptions(chip_size=1024, bands=(3, 2, 1)))  # one chip: the whole scene
    store = open_store(store_dir)
    (hit,) = api.search(store, scene, k=1, embedder=embedder)["results"]  # the store's bands, not the default
    assert hit["path"] == f"{scene}#0,0,697,377" and hit["score"] == pytest.approx(1.0, abs=1e-4)

    monkeypatch.setenv("LOOKALIKE_STORE", str(store_dir))
    monkeypatch.setenv("LOOKALIKE_MODEL", str(model_dir))
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60).run()
    at = at.file_uploader[0].upload(scene.name, scene.read_bytes(), "image/tiff").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("score **1.0000**" in m.value for m in at.markdown)


# -- query by place -----------------------------------------------------------------------------
def test_chips_at_a_place_are_every_chip_covering_it_nearest_centre_first(index, naip_dir, store_dir, open_store):
    index([naip_dir], store_dir, chips=_chips(512))
    store = open_store(store_dir)
    rows = {row["id"]: store.image(row["id"]) for row in chip_rows(store).values()}
    geo = {image_id: json.loads(row["geo"]) for image_id, row in rows.items()}
    (west, south, east, north) = geo[1]["wgs84_bounds"]
    for lon, lat in [geo[1]["centroid"], (west + (east - west) * 0.9, south + (north - south) * 0.2)]:
        found = store.chips_at(lon, lat)
        covering = {i for i, g in geo.items() if g["wgs84_bounds"][0] <= lon <= g["wgs84_bounds"][2]
                    and g["wgs84_bounds"][1] <= lat <= g["wgs84_bounds"][3]}
        assert {chip["id"] for chip in found} == covering and 1 in covering
        assert len({chip["scene"] for chip in found}) == 3  # the same place, three years
        distances = [chip["distance_m"] for chip in found]
        assert distances == sorted(distances)
    assert store.chips_at(*geo[1]["centroid"])[0]["distance_m"] < 1
    assert store.chips_at(0.0, 0.0) == []


def test_search_at_a_place(index, naip_dir, store_dir, open_store, monkeypatch):
    index([naip_dir], store_dir, chips=_chips(512))
    store = open_store(store_dir)
    lon, lat = json.loads(store.image(6)["geo"])["centroid"]
    covering = store.chips_at(lon, lat)
    chosen = covering[0]["id"]
    runner = CliRunner()
    result = runner.invoke(cli, ["search", "--at", f"{lon},{lat}", "--store", str(store_dir), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["query"]["id"] == chosen and answer["results"][0]["id"] == chosen
    assert f"is in chip id {chosen} " in result.stderr and f"{len(covering) - 1} more cover it" in result.stderr
    nowhere = runner.invoke(cli, ["search", "--at", "10,10", "--store", str(store_dir)])
    assert nowhere.exit_code == 1 and "no indexed chip in the store covers 10.0,10.0 (its chips span" in nowhere.stderr
    for bad in ("10", "x,y", "200,0"):
        refused = runner.invoke(cli, ["search", "--at", bad, "--store", str(store_dir)])
        assert refused.exit_code == 2 and "--at" in refused.output

    monkeypatch.setenv("LOOKALIKE_STORE", str(store_dir))  # the page: the same place, picked by lon,lat
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60).run()
    at.text_input(key="place").input(f"{lon},{lat}").run()
    assert at.selectbox(key="place-match").value["id"] == chosen
    at.button(key="by-place").click().run()
    assert not at.exception and not at.error
    assert at.query_params["id"] == str(chosen)
    at.text_input(key="place").input("0,0").run()
    assert "no indexed chip covers that point" in [c.value for c in at.caption]
    at.text_input(key="place").input("north pole").run()
    assert any("is not LON,LAT" in c.value for c in at.caption)


def boxed_ids(store) -> set[int]:
    return {row[0] for row in store.db.execute("SELECT id FROM image_boxes")}


def test_the_place_index_follows_every_write_and_is_made_for_an_older_store(index, naip_dir, store_dir, open_store,
                                                                            monkeypatch, caplog):
    from store import catalogue

    index([naip_dir], store_dir, chips=_chips(512))
    store = open_store(store_dir)
    assert boxed_ids(store) == {row["id"] for row in chip_rows(store).values()}
    moved = min(boxed_ids(store))  # a chip whose bounds change in place (as a re-embedded chip's row does)
    store.db.execute("UPDATE images SET geo = json_set(geo, '$.wgs84_bounds', json('[10, 10, 10.1, 10.1]'), "
                     "'$.centroid', json('[10.05, 10.05]')) WHERE id = ?", [moved])
    store.db.conn.commit()
    assert [chip["id"] for chip in store.chips_at(10.05, 10.05)] == [moved]
    gone = sorted(naip_dir.glob("*.tif"))[0]
    gone.unlink()
    index([naip_dir], store_dir, chips=_chips(768))  # other chip options: every remaining scene cut again
    store = open_store(store_dir)
    assert boxed_ids(store) == {row["id"] for row in chip_rows(store).values()}
    lon, lat = json.loads(store.image(max(boxed_ids(store)))["geo"])["centroid"]
    expected = store.chips_at(lon, lat)
    assert expected and all(chip["scene"] != str(gone) for chip in expected)

    for name in ("image_boxes_insert", "image_boxes_update", "image_boxes_delete"):  # a store from before
        store.db.execute(f"DROP TRIGGER {name}")
    store.db.execute("DROP TABLE image_boxes")
    store.db.conn.commit()
    reopened = open_store(store_dir)
    assert boxed_ids(reopened) == {row["id"] for row in chip_rows(reopened).values()}
    assert reopened.chips_at(lon, lat) == expected

    reopened.db.execute("DROP TABLE image_boxes")  # an SQLite without R*Tree: the same chips, by a scan
    reopened.db.conn.commit()
    monkeypatch.setattr(catalogue, "_BOXES", "CREATE VIRTUAL TABLE image_boxes USING no_such_module(id);")
    scanning = open_store(store_dir)
    assert "queries by place scan every chip" in caplog.text
    assert "image_boxes" not in scanning.db.table_names()
    assert scanning.chips_at(lon, lat) == expected


def test_a_crop_of_a_scene_query_finds_the_chip_at_that_window(index, naip_dir, store_dir, open_store, embedder):
    index([naip_dir], store_dir, chips=_chips(256))
    store = open_store(store_dir)
    chip = next(row for path, row in sorted(chip_rows(store).items()) if path.endswith("#256,256,256,256"))
    (hit,) = api.search_each(store, [chip["scene"]], k=1, embedder=embedder, crop=(256, 256, 256, 256))
    assert hit["results"][0]["id"] == chip["id"] and hit["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    (whole,) = api.search_each(store, [chip["scene"]], k=1, embedder=embedder)  # not that chip without the crop
    assert whole["results"][0]["score"] < 0.9999
    (outside,) = api.search_each(store, [chip["scene"]], k=1, embedder=embedder, crop=(900, 0, 256, 256))
    assert "does not fit in" in outside["error"]


def test_options_given_in_python_read_as_the_same_options_from_the_cli(index, naip_dir, store_dir):
    """stretch=(2, 98) from Python and the CLI's --stretch 2,98 (floats) are one setting: nothing is cut again."""
    index([naip_dir], store_dir, chips=ChipOptions(chip_size=256, stretch=(2, 98), min_valid=1))

    args = ["index", str(naip_dir), "--store", str(store_dir), "--chip-size", "256", "--min-valid", "1",
            "--dry-run", "--json"]
    plan = json.loads(CliRunner().invoke(cli, args).output)

    assert (plan["embed"], plan["skipped"], plan["removed"]) == (0, 36, 0)


def test_an_unchanged_finished_scene_is_not_opened_again(index, naip_dir, store_dir, open_store, monkeypatch):
    """A rerun over a large archive must not open every scene to find it has nothing to do."""
    from indexer import scenes

    index([naip_dir], store_dir, chips=_chips(256))
    opened = []
    real_open, real_is_georeferenced = scenes.open_scene, scenes.is_georeferenced
    monkeypatch.setattr(scenes, "open_scene", lambda path, **kw: opened.append(path) or real_open(path, **kw))
    monkeypatch.setattr(scenes, "is_georeferenced", lambda path: opened.append(path) or real_is_georeferenced(path))

    again = index([naip_dir], store_dir, chips=_chips(256))
    assert (again["indexed"], again["skipped"], again["removed"], opened) == (0, 36, 0, [])

    store = open_store(store_dir)
    first = sorted(naip_dir.glob("*.tif"))[0]
    store.remove_images([row["id"] for row in chip_rows(store).values() if row["scene"] == str(first)][:1])
    with store.db.conn:
        store.db.execute("UPDATE scenes SET windows = NULL WHERE path != ?", [str(first)])  # as an older lookalike
    resumed = index([naip_dir], store_dir, chips=_chips(256))
    assert (resumed["indexed"], resumed["skipped"]) == (1, 35)  # the window missing from the first scene
    assert len(set(opened)) == 3  # the unfinished one, and the two recorded without their window count

    opened.clear()
    assert index([naip_dir], store_dir, chips=_chips(256))["skipped"] == 36 and opened == []


def test_info_names_a_wkt_crs_and_keeps_the_whole_of_it_in_json(index, shared_data_dir, tmp_path):
    """rgb1.tif's CRS is only a WKT (no EPSG code): its name in the text, the WKT whole in --json."""
    index([shared_data_dir / "rasterio" / "rgb1.tif"], tmp_path / "s")
    as_json = json.loads(CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s"), "--json"]).output)
    assert as_json["crs"][0].startswith("PROJCS[") and "AUTHORITY" in as_json["crs"][0]
    human = CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s")]).output
    assert "PROJCS" not in human and "AUTHORITY" not in human
    assert "UTM Zone 18, Northern Hemisphere (WKT)" in human
    assert human.count("UTM Zone 18") == 2  # the store's CRS list and the scene's line
    assert "· 1 chip\n" in human


def test_info_on_a_store_of_plain_images_cut_into_chips(index, tmp_path, write_image):
    """Chips of a plain image have no CRS: none is listed (a null crashed the text info after the WKT labels)."""
    from indexer.pipeline import ChipOptions

    write_image(tmp_path / "photos" / "big.png", size=(600, 300))
    index([tmp_path / "photos"], tmp_path / "s", chips=ChipOptions(chip_size=256, chip_plain=True))
    human = CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s")])
    assert human.exit_code == 0, human.output
    as_json = json.loads(CliRunner().invoke(cli, ["info", "--store", str(tmp_path / "s"), "--json"]).output)
    assert as_json["crs"] == []


def test_a_chip_across_the_antimeridian_is_found_on_both_sides_of_it_and_nowhere_else(index, tmp_path, open_store):
    """A UTM zone 60 scene off Fiji, 20 km wide across 180°: its footprint's longitudes jump from 179.9 to -179.9,
    which bounds by min and max turned into the whole globe's width."""
    import rasterio
    from rasterio.transform import from_origin

    from indexer.pipeline import ChipOptions

    folder = tmp_path / "fiji"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(1, 255, (3, 100, 200), dtype=np.uint8)
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=200, height=100, count=3, dtype="uint8",
                       crs="EPSG:32760", transform=from_origin(810_000, 8_120_000, 100, 100)) as dst:
        dst.write(pixels)
    index([folder], tmp_path / "s", chips=ChipOptions(chip_size=100))
    store = open_store(tmp_path / "s")
    bounds = [json.loads(store.image(row["id"])["geo"])["wgs84_bounds"] for row in store.images_by_path().values()]
    assert any(west > east for west, _, east, _ in bounds)  # one chip at least crosses
    lat = (bounds[0][1] + bounds[0][3]) / 2
    assert store.chips_at(179.999, lat) and store.chips_at(-179.999, lat)
    assert not store.chips_at(0.0, lat) and not store.chips_at(-179.0, lat) and not store.chips_at(178.0, lat)
    from indexer.refine import _touches  # --bbox: a box on either side of 180° touches such a chip

    crossing = [179.9, -17.0, -179.9, -16.9]
    assert _touches(crossing, (-179.95, -17.5, -179.92, -16.5)) and _touches(crossing, (179.95, -17.5, 179.99, -16.5))
    assert not _touches(crossing, (170.0, -17.5, 179.0, -16.5)) and not _touches(crossing, (-10.0, -17.5, 10.0, -16.5))


def test_a_geographic_scene_in_0_to_360_longitudes_is_placed_in_minus_180_to_180(index, tmp_path, open_store):
    """Global grids often run 0..360: a chip at 200 E is at -160, where --at, --bbox and GeoJSON look for it."""
    import rasterio
    from rasterio.transform import from_origin

    from indexer.pipeline import ChipOptions

    folder = tmp_path / "pacific"
    folder.mkdir()
    pixels = np.random.default_rng(1).integers(1, 255, (3, 100, 200), dtype=np.uint8)
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=200, height=100, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(179.5, 10.0, 0.01, 0.01)) as dst:
        dst.write(pixels)  # 179.5 .. 181.5 E: across 180 too
    index([folder], tmp_path / "s", chips=ChipOptions(chip_size=100))
    store = open_store(tmp_path / "s")
    geos = [json.loads(store.image(row["id"])["geo"]) for row in store.images_by_path().values()]
    assert all(-180 <= lon <= 180 for geo in geos for lon, _ in geo["footprint"][0])
    assert all(-180 <= geo["centroid"][0] <= 180 for geo in geos)
    assert store.chips_at(-178.7, 9.5) and store.chips_at(179.7, 9.5) and store.chips_at(-179.99, 9.5)
    assert not store.chips_at(181.0 - 360 + 2, 9.5)  # -177: east of the scene


def test_the_antimeridian_is_one_meridian_and_a_pole_one_point_for_at_and_bbox(index, tmp_path, open_store):
    """--at 180,y and --at -180,y name one place, as do boxes ending at 180 and starting at -180; at a pole every
    longitude meets, so every chip reaching it covers it."""
    import rasterio
    from rasterio.transform import from_origin

    from indexer.pipeline import ChipOptions
    from indexer.refine import _touches

    folder = tmp_path / "scenes"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(1, 255, (3, 100, 200), dtype=np.uint8)
    with rasterio.open(folder / "dateline.tif", "w", driver="GTiff", width=200, height=100, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(179.5, 10.0, 0.005, 0.005)) as dst:
        dst.write(pixels)  # 179.5 E to 180.5 E: two chips meeting at 180
    polar = np.random.default_rng(1).integers(1, 255, (3, 600, 600), dtype=np.uint8)
    with rasterio.open(folder / "pole.tif", "w", driver="GTiff", width=600, height=600, count=3, dtype="uint8",
                       crs="EPSG:3031", transform=from_origin(-30000, 30000, 100, 100)) as dst:
        dst.write(polar)  # the South Pole at pixel (300, 300): the corner of four chips
    index([folder], tmp_path / "s", chips=ChipOptions(chip_size=100))
    store = open_store(tmp_path / "s")
    dateline = {row["id"] for path, row in store.images_by_path().items() if "dateline" in path}
    assert len(dateline) == 2
    assert {c["id"] for c in store.chips_at(180.0, 9.75)} == {c["id"] for c in store.chips_at(-180.0, 9.75)} \
        == dateline
    pole = [store.image(row["id"]) for path, row in store.images_by_path().items() if "pole" in path]
    at_pole = [json.loads(row["geo"])["wgs84_bounds"] for row in pole]
    reaching = {row["id"] for row, bounds in zip(pole, at_pole) if bounds[1] == -90.0}
    assert len(reaching) == 4
    assert {c["id"] for c in store.chips_at(0.0, -90.0)} == {c["id"] for c in store.chips_at(135.0, -90.0)} \
        == reaching
    assert _touches([179.5, 9.5, 180.0, 10.0], (-180.0, 9.0, -179.9, 10.0))
    assert _touches([-180.0, 9.5, -179.5, 10.0], (179.9, 9.0, 180.0, 10.0))
    assert not _touches([179.5, 9.5, 179.9, 10.0], (-180.0, 9.0, -179.9, 10.0))
    assert all(_touches(bounds, (-10.0, -90.0, 10.0, -89.99)) for bounds in at_pole if bounds[1] == -90.0)


def test_a_gsd_far_finer_than_the_scene_is_one_line_not_a_sea_of_one_pixel_chips(index, tmp_path, open_store):
    import rasterio
    from rasterio.transform import from_origin

    from indexer.pipeline import ChipOptions

    scene = tmp_path / "coarse.tif"  # 300 m pixels: 0.6 m chips of 256 px would be 1 px windows, 1,600 of them
    with rasterio.open(scene, "w", driver="GTiff", width=40, height=40, count=3, dtype="uint8", crs="EPSG:32614",
                       transform=from_origin(500_000, 5_200_000, 300, 300)) as dst:
        dst.write(np.random.default_rng(0).integers(1, 255, (3, 40, 40), dtype=np.uint8))
    summary = index([scene], tmp_path / "s", chips=ChipOptions(chip_size=256, gsd=0.6))
    assert (summary["indexed"], summary["failed"]) == (0, 1)
    store = open_store(tmp_path / "s")
    reason = store.failures_by_path()[str(scene)]["reason"]
    assert "cuts windows of 1 px" in reason and "use a --gsd of at least" in reason
