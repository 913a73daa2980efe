"""The page's "Less like this": the query moves away from the images named, kept in the address (?unlike=)."""
import numpy as np
import pytest

from indexer import api
from page_helpers import button, card_texts, cards, chip, run
from ui.query import Query
from ui.results import describe_query


@pytest.fixture
def answer(ui_store_dir):
    """answer(query, **options): api.search's results as the page's cards, (rank, score, id)."""
    store = api.open_store(ui_store_dir)

    def search(query, **options):
        hits = api.search(store, query, k=20, **options)["results"]
        return [(hit["rank"], round(hit["score"], 4), hit["id"]) for hit in hits]

    yield search
    store.close()


def test_less_like_this_moves_the_query_away_then_back(page, ui_ids, answer):
    _, image_id = chip(ui_ids, 4)
    at = page(id=image_id)
    avoided = cards(at)[1][2]
    run(at.button(key=f"unlike-2-{avoided}").click())
    assert at.query_params["unlike"] == str(avoided) and at.query_params["id"] == str(image_id)
    assert cards(at) == answer(image_id, unlike=[avoided])
    assert avoided not in [hit for *_, hit in cards(at)]
    assert "Less like these:" in [c.value for c in at.caption]
    assert not [b for b in at.button if b.key == f"unlike-1-{image_id}"]  # the query is not offered

    run(at.slider(key="unlike-weight").set_value(0.5))
    assert at.query_params["unlike_weight"] == "0.5"
    assert cards(at) == answer(image_id, unlike=[avoided], unlike_weight=0.5)

    run(at.button(key=f"unlike-remove-{avoided}").click())
    assert "unlike" not in at.query_params
    assert cards(at) == answer(image_id)


def test_a_weight_changed_in_the_address_after_the_slider_moved_is_the_one_used(page, ui_ids, answer):
    # browser Back (or a link) onto an address with another weight: the slider and the results follow it
    _, image_id = chip(ui_ids, 4)
    avoided = chip(ui_ids, 7)[1]
    at = page(id=image_id, unlike=avoided)
    run(at.slider(key="unlike-weight").set_value(0.9))
    assert cards(at) == answer(image_id, unlike=[avoided], unlike_weight=0.9)
    at.query_params["unlike_weight"] = "0.25"
    run(at)
    assert at.slider(key="unlike-weight").value == 0.25 and at.query_params["unlike_weight"] == "0.25"
    assert cards(at) == answer(image_id, unlike=[avoided], unlike_weight=0.25)
    run(at.slider(key="unlike-weight").set_value(0.5))  # and the slider still moves it
    assert at.query_params["unlike_weight"] == "0.5"
    assert cards(at) == answer(image_id, unlike=[avoided], unlike_weight=0.5)


def test_the_address_keeps_them_for_a_bookmark(page, ui_ids, answer):
    _, image_id = chip(ui_ids, 4)
    others = [chip(ui_ids, i)[1] for i in (7, 11)]
    at = page(id=image_id, unlike=",".join(map(str, others)), unlike_weight=0.4)
    assert cards(at) == answer(image_id, unlike=others, unlike_weight=0.4)


@pytest.mark.parametrize("text, used", [("5", 1.0), ("-1", 0.0), ("nan", 0.25), ("inf", 0.25), ("abc", 0.25)])
def test_a_weight_the_page_cannot_use_is_corrected_in_the_address(page, ui_ids, answer, text, used):
    _, image_id = chip(ui_ids, 4)
    avoided = chip(ui_ids, 7)[1]
    at = page(id=image_id, unlike=avoided, unlike_weight=text)
    assert at.query_params["unlike_weight"] == str(used)
    assert at.slider(key="unlike-weight").value == used
    assert cards(at) == answer(image_id, unlike=[avoided], unlike_weight=used)


def test_adding_an_example_keeps_them_and_a_new_query_drops_them(page, ui_ids, answer):
    _, image_id = chip(ui_ids, 4)
    avoided = chip(ui_ids, 9)[1]
    at = page(id=image_id, unlike=avoided)
    added = cards(at)[1][2]
    run(at.button(key=f"add-2-{added}").click())
    assert at.query_params["unlike"] == str(avoided)
    assert cards(at) == answer([image_id, added], unlike=[avoided])
    picked = cards(at)[2][2]
    run(button(at, "Search with this", 2).click())
    assert at.query_params["id"] == str(picked) and "unlike" not in at.query_params
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {picked}"


def test_an_address_that_names_no_ids_is_one_line(page, ui_ids, answer):
    _, image_id = chip(ui_ids, 4)
    at = page(id=image_id, unlike="greenhouses")
    assert len(at.error) == 1 and "not image ids" in at.error[0].value
    assert cards(at) == answer(image_id)


def test_an_image_gone_from_the_store_is_dropped_with_a_warning(page, ui_ids, answer):
    _, image_id = chip(ui_ids, 4)
    at = page(id=image_id, unlike=99999)
    assert any("99999" in w.value and "no longer in the store" in w.value for w in at.warning)
    assert cards(at) == answer(image_id)


def test_the_downloads_describe_them():
    grid = np.zeros((2, 2, 4), dtype=np.float32)
    one = Query(key="k", label="l", vectors=np.zeros((1, 4)), grid=grid, image=None, image_id=5, path="a.jpg")
    assert describe_query(one, unlike=([{"id": 9, "path": "b.jpg", "size": 1}], 0.25)) == {
        "examples": [{"id": 5, "path": "a.jpg"}], "combine": "mean", "unlike": [{"id": 9, "path": "b.jpg"}],
        "unlike_weight": 0.25}
    assert describe_query(one) == {"id": 5, "path": "a.jpg"}
