"""Searching by a part of a picture: the API's crops, the box dragged on the page, the part in its address."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from indexer import api
from indexer.errors import IndexerError
from page_helpers import button, card_texts, cards, chip, run
from ui import heatmaps
from ui.query import Query
from ui.results import describe_query

PART = (8, 16, 72, 64)  # of a 128×128 sample chip


@pytest.fixture
def answer(ui_store_dir, model_dir):
    """answer(examples, **options): api.search's results as the page's cards, (rank, score, id)."""
    store = api.open_store(ui_store_dir)
    embedder = api.load_embedder(store, model=str(model_dir))

    def search(examples, **options):
        hits = api.search(store, examples, k=20, embedder=embedder, **options)["results"]
        return [(hit["rank"], round(hit["score"], 4), hit["id"]) for hit in hits]

    yield search
    store.close()


def part_of(path, part=PART) -> Image.Image:
    return api.load_indexed_image({"path": str(path)}, crop=part)


# -- the API -------------------------------------------------------------------------------------
def test_an_indexed_picture_is_cut_in_its_own_pixels(ui_ids):
    path, _ = chip(ui_ids, 2)
    whole = np.asarray(api.load_indexed_image({"path": str(path)}))
    cut = np.asarray(part_of(path))
    col, row, width, height = PART
    assert np.array_equal(cut, whole[row:row + height, col:col + width])
    with pytest.raises(IndexerError, match="does not fit in .*128×128 px"):
        part_of(path, (100, 100, 64, 64))


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rasterio")
def test_a_query_file_counts_its_own_pixels(tmp_path):
    from test_scenes import write_raster

    pixels = np.random.default_rng(0).integers(0, 255, (3, 120, 3000), dtype=np.uint8)  # (bands, h, w)
    scene = write_raster(tmp_path / "wide.tif", pixels)
    assert api.query_file_size(scene) == (3000, 120)
    assert api.query_file_size(scene.read_bytes(), name="wide.tif") == (3000, 120)
    assert api.load_query_image(scene).size == (2048, 82)  # its whole read is smaller: a crop counts the file's
    assert api.load_query_image(scene, crop=(2900, 20, 100, 50)).size == (100, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: the crop counts the upright picture
    Image.new("RGB", (64, 32)).save(tmp_path / "turned.jpg", exif=exif)
    assert api.query_file_size(tmp_path / "turned.jpg") == (32, 64)
    assert api.load_query_image(tmp_path / "turned.jpg").size == (32, 64)


# -- the box ----------------------------------------------------------------------------------------
def test_a_dragged_box_in_the_pictures_pixels():
    assert heatmaps.dragged_box(10, 20, 110, 70, display_size=(200, 100), image_size=(400, 200)) == (20, 40, 200, 100)
    # dragged up and left, ending outside the picture: the same kind of box, clamped
    assert heatmaps.dragged_box(150, 90, -30, 250, display_size=(200, 100), image_size=(400, 200)) == (0, 180, 300, 20)
    with pytest.raises(ValueError):
        heatmaps.dragged_box(0, 0, 1, 1, display_size=(0, 100), image_size=(400, 200))


def test_the_box_is_outlined_on_a_smaller_copy():
    picture = Image.new("RGB", (100, 50), (0, 0, 0))
    marked = np.asarray(heatmaps.outline_box(picture, (40, 20, 100, 40), image_size=(200, 100)))  # half size
    assert tuple(marked[10, 30]) == (255, 40, 40) and tuple(marked[29, 69]) == (255, 40, 40)  # its corners
    assert tuple(marked[20, 50]) == (0, 0, 0)  # inside, untouched
    assert tuple(marked[5, 5]) == (0, 0, 0)
    assert np.asarray(picture).max() == 0  # a copy


# -- the part in the address ---------------------------------------------------------------------
def test_a_part_in_the_address_searches_that_part(page, ui_ids, answer):
    path, image_id = chip(ui_ids, 5)
    at = page(id=image_id, part=",".join(map(str, PART)))
    assert f"part 8,16 72×64 px of id {image_id} · {path}" in [c.value for c in at.caption]
    assert cards(at) == answer([part_of(path)])
    assert cards(at) != answer([image_id])
    run(at.button(key="use-whole").click())  # back to the whole picture
    assert "part" not in at.query_params
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {image_id}"


@pytest.mark.parametrize("text, fragment", [("100,100,64,64", "does not fit in"),
                                            ("8,16,72", "not col,row,width,height"),
                                            ("a,b,c,d", "not col,row,width,height"),
                                            ("8,16,0,64", "not col,row,width,height")])
def test_a_part_that_cannot_be_cut_is_one_line_and_the_whole_is_searched(page, ui_ids, text, fragment):
    _, image_id = chip(ui_ids, 5)
    at = page(id=image_id, part=text)
    assert len(at.error) == 1
    assert fragment in at.error[0].value and "the whole picture is searched instead" in at.error[0].value
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {image_id}"


def test_a_new_query_is_whole(page, ui_ids):
    _, image_id = chip(ui_ids, 5)
    at = page(id=image_id, part="8,16,72,64")
    picked = cards(at)[1][2]
    run(button(at, "Search with this", 1).click())
    assert at.query_params["id"] == str(picked) and "part" not in at.query_params
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {picked}"


def test_a_part_of_the_first_of_several_examples(page, ui_ids, answer):
    (path, first), (_, second) = chip(ui_ids, 5), chip(ui_ids, 14)
    at = page(id=f"{first},{second}", part="8,16,72,64")
    assert f"2 examples: ids {first}, {second} (the first shown); the first by its part 8,16 72×64 px" in \
        [c.value for c in at.caption]
    assert cards(at) == answer([part_of(path), second])
    added = next(hit for *_, hit in cards(at) if hit not in (first, second))
    run(at.button(key=f"add-{[c[2] for c in cards(at)].index(added) + 1}-{added}").click())
    assert at.query_params["part"] == "8,16,72,64"  # adding keeps the part
    assert cards(at) == answer([part_of(path), second, added])
    run(at.button(key=f"remove-{second}").click())  # so does removing another example
    assert at.query_params["id"] == f"{first},{added}" and at.query_params["part"] == "8,16,72,64"
    run(at.button(key=f"remove-{first}").click())  # the part goes with its picture
    assert at.query_params["id"] == str(added) and "part" not in at.query_params
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {added}"


def test_a_part_of_an_upload(page, ui_ids, answer):
    path, _ = chip(ui_ids, 9)
    at = page()
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    at.query_params["upload_part"] = "8,16,72,64"
    run(at)
    assert f"part 8,16 72×64 px of upload · {path.name}" in [c.value for c in at.caption]
    assert cards(at) == answer([api.load_query_image(path, crop=PART)])


def test_an_uploads_part_is_never_cut_from_an_indexed_example(page, ui_ids, answer):
    """The address keeps only an uploaded query's indexed examples: a reload or a shared link made the first of
    them the query, cut where the upload was. The upload's part has its own name, read only for the upload."""
    path, _ = chip(ui_ids, 9)
    upload_part = api.load_query_image(path, crop=PART)
    at = page()
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    at.toggle(key="choosing-part").set_value(True)
    run(at)
    at.session_state[f"part-box-upload-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"] = PART
    run(at)
    run(at.button(key="use-part").click())
    assert at.query_params["upload_part"] == "8,16,72,64" and "part" not in at.query_params
    assert cards(at) == answer([upload_part])
    added = cards(at)[1][2]
    run(at.button(key=f"add-2-{added}").click())
    shown = f"2 examples: part 8,16 72×64 px of upload · {path.name} (shown) and ids {added}"
    assert shown in [c.value for c in at.caption] and cards(at) == answer([upload_part, added])

    reloaded = page(**at.query_params)  # a new session: the upload is gone, its indexed example is the query
    added_path = next(name for name, image_id in ui_ids.items() if image_id == added)
    assert f"id {added} · {added_path}" in [c.value for c in reloaded.caption]
    assert not [c.value for c in reloaded.caption if "part" in c.value]
    assert card_texts(reloaded)[0] == f"**#1** · score **1.0000** · id {added}"

    run(at.button(key=f"remove-{added}").click())  # in the session, the upload keeps its part
    assert f"part 8,16 72×64 px of upload · {path.name}" in [c.value for c in at.caption]
    assert cards(at) == answer([upload_part])
    run(at.button(key=f"add-2-{added}").click())
    run(at.button(key="remove-None").click())  # the part goes with the upload
    assert at.query_params["id"] == str(added) and "upload_part" not in at.query_params
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {added}"


def test_the_picker_offers_the_dragged_part(page, ui_ids, answer):
    path, image_id = chip(ui_ids, 5)
    at = page(id=image_id)
    at.toggle(key="choosing-part").set_value(True)
    run(at)
    assert any(c.value.startswith("Drag a box over the part") and "128×128 px" in c.value for c in at.caption)
    at.session_state[f"part-box-id-{image_id}"] = (8, 16, 8, 8)  # what a drag leaves (the browser test drags)
    run(at)
    assert any("That box is 8×8 px" in c.value for c in at.caption) and not button_named(at, "Search with this part")
    at.session_state[f"part-box-id-{image_id}"] = PART
    run(at)
    run(at.button(key="use-part").click())
    assert at.query_params["part"] == "8,16,72,64" and at.query_params["id"] == str(image_id)
    assert not at.toggle(key="choosing-part").value  # the part's picture is shown, clickable again
    assert cards(at) == answer([part_of(path)])


def button_named(at, label: str) -> list:
    return [b for b in at.button if b.label == label]


def test_the_downloads_describe_the_part():
    grid = np.zeros((2, 2, 4), dtype=np.float32)
    one = Query(key="k", label="l", vectors=np.zeros((1, 4)), grid=grid, image=None, image_id=5, path="a.jpg",
                part=(1, 2, 3, 4))
    assert describe_query(one) == {"id": 5, "path": "a.jpg", "crop": [1, 2, 3, 4]}
    examples = [{"id": None, "item": None, "label": "part 1,2 3×4 px of upload · u.png", "grid": grid},
                {"id": 7, "item": {"path": "b.jpg"}, "grid": grid}]
    several = Query(key="k", label="l", vectors=np.zeros((2, 4)), grid=grid, image=None, examples=examples,
                    uploaded=True, part=(1, 2, 3, 4))
    assert json.loads(json.dumps(describe_query(several, combine="any"))) == {
        "examples": [{"upload": "part 1,2 3×4 px of upload · u.png", "crop": [1, 2, 3, 4]}, {"id": 7, "path": "b.jpg"}],
        "combine": "any"}


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rasterio")
def test_a_part_of_an_uploaded_scene_is_read_from_the_file(page, index, shared_data_dir, tmp_path, monkeypatch):
    """A GeoTIFF upload's part counts the file's pixels and is read as its chips were: a chip's own window finds
    that chip at 1.0."""
    from indexer.pipeline import ChipOptions
    from store import Store

    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]  # 934×724
    index([scene], tmp_path / "scenes", chips=ChipOptions(chip_size=256))
    store = Store.open(tmp_path / "scenes")
    chip_id = next(row["id"] for path, row in store.images_by_path().items() if path.endswith("#256,256,256,256"))
    store.close()
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "scenes"))
    at = page()
    run(at.file_uploader[0].upload(scene.name, scene.read_bytes(), "image/tiff"))
    assert cards(at)[0][1] < 0.9999  # the whole scene is no chip
    at.toggle(key="choosing-part").set_value(True)
    run(at)
    assert any(c.value.startswith("Drag a box") and "934×724 px" in c.value for c in at.caption)
    at.query_params["upload_part"] = "256,256,256,256"
    run(at)
    assert cards(at)[0][2] == chip_id and cards(at)[0][1] == pytest.approx(1.0, abs=1e-4)


def test_the_api_searches_a_part_of_an_indexed_image(ui_store_dir, ui_ids, model_dir, monkeypatch):
    path, image_id = chip(ui_ids, 7)
    store = api.open_store(ui_store_dir)
    embedder = api.load_embedder(store, model=str(model_dir))
    by_part = api.search(store, api.Part(image_id, PART), k=5, embedder=embedder)
    by_picture = api.search(store, part_of(path), k=5, embedder=embedder)
    assert by_part["results"] == by_picture["results"]
    assert by_part["query"]["id"] == image_id and by_part["query"]["crop"] == list(PART)
    several = api.search(store, [api.Part(image_id, PART), chip(ui_ids, 2)[1]], k=5, embedder=embedder,
                         exclude_self=True)
    assert image_id not in [hit["id"] for hit in several["results"]]  # the picture the part was cut from
    assert several["query"]["examples"][0]["crop"] == list(PART)
    monkeypatch.setattr(api, "load_embedder", lambda *a, **k: pytest.fail("the model loaded before the crop was checked"))
    with pytest.raises(IndexerError, match="does not fit in"):
        api.search(store, api.Part(image_id, (100, 0, 64, 64)))
    store.close()


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rasterio")
def test_the_map_outlines_the_part_not_the_whole_chip(page, index, shared_data_dir, tmp_path, monkeypatch):
    from indexer.pipeline import ChipOptions
    from indexer.scenes import part_geometry
    from store import Store

    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    index([scene], tmp_path / "scenes", chips=ChipOptions(chip_size=256))
    store = Store.open(tmp_path / "scenes")
    chip = api.search(store, next(iter(store.images_by_path().values()))["id"], k=1)["results"][0]
    store.close()
    geo = chip["geo"]
    whole = part_geometry(geo, (0, 0, 256, 256), (256, 256))
    assert np.allclose(whole["footprint"][0], geo["footprint"][0], atol=1e-9)  # the whole part is the chip
    quarter = part_geometry(geo, (128, 0, 128, 128), (256, 256))  # the north-east quarter
    west, south, east, north = geo["wgs84_bounds"]
    assert quarter["wgs84_bounds"] == pytest.approx([(west + east) / 2, (south + north) / 2, east, north], abs=2e-4)
    assert part_geometry({"bounds": None}, (0, 0, 1, 1), (2, 2)) is None

    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "scenes"))
    at = page(id=chip["id"], part="128,0,128,128")
    (chart,) = at.get("deck_gl_json_chart")
    rows = json.loads(chart.proto.json)["layers"][0]["data"]
    (outline,) = [row for row in rows if row["label"] == "query"]
    assert np.allclose(outline["polygon"], quarter["footprint"][0], atol=1e-9)


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rasterio")
def test_a_part_of_an_indexed_scene_is_read_with_that_scenes_own_bands(index, shared_data_dir, store_dir, open_store,
                                                                       embedder):
    """Runs may read scenes differently: a query by an indexed scene (its path, or an upload of its bytes) takes
    the bands its chips were cut with, not those of the store's last run."""
    from indexer.pipeline import ChipOptions

    landsat = shared_data_dir / "landsat" / "1985.tif"  # SWIR1, NIR, red, green: 3,2,1 is a true-colour view
    index([landsat], store_dir, chips=ChipOptions(chip_size=256, bands=(3, 2, 1)))
    index([shared_data_dir / "naip" / "m_4709963_se_14_1_20200831.tif"], store_dir, chips=ChipOptions(chip_size=256))
    store = open_store(store_dir)
    crop = (441, 121, 256, 256)  # a chip's own window
    (hit,) = api.search_each(store, [landsat], k=1, embedder=embedder, crop=crop)
    assert hit["results"][0]["path"] == f"{landsat}#441,121,256,256"
    assert hit["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    options = api.scene_read_options(store)
    assert options["bands"] is None  # the last run's, for any other file
    by_path = api.load_query_image(landsat, read_options=options, crop=crop)
    uploaded = api.load_query_image(landsat.read_bytes(), name=landsat.name, read_options=options, crop=crop)
    assert np.array_equal(np.asarray(uploaded), np.asarray(by_path))
    assert not np.array_equal(np.asarray(by_path), np.asarray(api.load_query_image(landsat, crop=crop)))


def test_browser_back_to_an_earlier_uploads_part_does_not_cut_a_new_upload(page, ui_ids, answer):
    """Upload one picture and search by a part of it, upload another, then go Back: the address holds the first
    upload's part again, and it was cut from the second upload (which the session now holds)."""
    (first, _), (second, _) = chip(ui_ids, 9), chip(ui_ids, 5)
    at = page()
    run(at.file_uploader[0].upload(first.name, first.read_bytes(), "image/jpeg"))
    at.query_params["upload_part"] = "8,16,72,64"
    run(at)
    assert cards(at) == answer([api.load_query_image(first, crop=PART)])
    run(at.file_uploader[0].upload(second.name, second.read_bytes(), "image/jpeg"))
    assert "upload_part" not in at.query_params and cards(at) == answer([api.load_query_image(second)])
    at.query_params["upload_part"] = "8,16,72,64"  # Back: the first upload's address
    run(at)
    assert not [c.value for c in at.caption if "part 8,16" in c.value]
    assert cards(at) == answer([api.load_query_image(second)])
