"""The search page through Streamlit's AppTest: queries from the address, paging, buttons, uploads, errors."""
from pathlib import Path

import numpy as np
import pytest

from helpers import copy_chips
from page_helpers import NO_QUERY, button, card_texts, cards, chip, image_urls, pager_text, run


# -- no query, no store ------------------------------------------------------------------------
def test_no_query_asks_for_one(page, ui_ids):
    at = page()
    assert [i.value for i in at.info] == [NO_QUERY]
    assert cards(at) == []
    assert f"**{len(ui_ids)}** images · 0 failed" in [m.value for m in at.sidebar.markdown]


def test_empty_store_says_how_to_fill_it(page, monkeypatch, tmp_path, index):
    (tmp_path / "nothing").mkdir()
    index([tmp_path / "nothing"], tmp_path / "empty-store")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "empty-store"))
    at = page(id=1)
    assert len(at.info) == 1
    assert "holds no images yet" in at.info[0].value
    assert "lookalike index" in at.info[0].value
    assert cards(at) == [] and not at.error


def test_missing_store_is_one_error_line(page, monkeypatch, tmp_path):
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "nowhere"))
    at = page()
    assert len(at.error) == 1
    assert "no lookalike store at" in at.error[0].value
    assert str(tmp_path / "nowhere") in at.error[0].value
    assert cards(at) == []


def test_no_store_given_says_how_to_start(page, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_STORE")
    at = page()
    assert len(at.error) == 1
    assert "lookalike serve --store" in at.error[0].value


# -- queries from the address ------------------------------------------------------------------
def test_query_by_id_finds_itself_first(page, ui_ids):
    path, image_id = chip(ui_ids, 3)
    at = page(id=image_id)
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {image_id}"
    found = cards(at)
    assert [rank for rank, _, _ in found] == list(range(1, 21))  # k defaults to 20, one page of 20
    scores = [score for _, score, _ in found]
    assert scores == sorted(scores, reverse=True)
    assert len({hit for _, _, hit in found}) == 20
    assert f"id {image_id} · {path}" in [c.value for c in at.caption]
    assert at.query_params["k"] == "20"


def test_k_comes_from_the_address(page, ui_ids):
    at = page(id=chip(ui_ids, 0)[1], k=5)
    assert [rank for rank, _, _ in cards(at)] == [1, 2, 3, 4, 5]
    assert pager_text(at) == "Page **1** of **1** · 5 results"
    assert at.sidebar.number_input[0].value == 5


def test_every_change_of_k_and_page_size_holds(page, ui_ids):
    """Each value the user enters is the one searched with, the second change and the fourth as the first."""
    at = page(id=chip(ui_ids, 7)[1])
    for k in (3, 4, 5, 6):
        run(at.sidebar.number_input[0].set_value(k))
        assert pager_text(at).endswith(f"· {k} results") and at.query_params["k"] == str(k)
    run(at.sidebar.number_input[0].set_value(24))
    for size in (12, 20, 12, 20):
        run(next(box for box in at.selectbox if box.label == "Per page").select(size))
        assert len(cards(at)) == size and at.query_params["per_page"] == str(size)


@pytest.mark.parametrize("k, shown", [("abc", 20), ("0", 1), ("5000", 24)])
def test_odd_k_in_the_address_is_clamped(page, ui_ids, k, shown):
    at = page(id=chip(ui_ids, 0)[1], k=k)
    assert len(cards(at)) == min(shown, 20)
    assert pager_text(at).endswith(f"· {shown} results")


def test_paging(page, ui_ids):
    _, image_id = chip(ui_ids, 7)
    at = page(id=image_id, k=30)  # the store holds 24: 20 on page 1, 4 on page 2
    assert pager_text(at) == "Page **1** of **2** · 24 results"
    first_page = cards(at)
    assert [rank for rank, _, _ in first_page] == list(range(1, 21))
    assert at.button(key="prev").disabled and not at.button(key="next").disabled

    run(at.button(key="next").click())
    assert at.query_params["page"] == "2"
    assert pager_text(at) == "Page **2** of **2** · 24 results"
    second_page = cards(at)
    assert [rank for rank, _, _ in second_page] == [21, 22, 23, 24]
    assert {hit for *_, hit in first_page}.isdisjoint(hit for *_, hit in second_page)
    assert second_page[0][1] <= first_page[-1][1]
    assert at.button(key="next").disabled and not at.button(key="prev").disabled

    run(at.button(key="prev").click())
    assert at.query_params["page"] == "1"
    assert cards(at) == first_page


def test_page_past_the_end_shows_the_last(page, ui_ids):
    at = page(id=chip(ui_ids, 7)[1], k=30, page=9)
    assert pager_text(at) == "Page **2** of **2** · 24 results"
    assert [rank for rank, _, _ in cards(at)] == [21, 22, 23, 24]


def test_the_page_size_is_in_the_address_so_a_reload_shows_the_same_page(page, ui_ids):
    _, image_id = chip(ui_ids, 7)
    at = page(id=image_id, k=30)
    run(next(box for box in at.selectbox if box.label == "Per page").select(12))
    run(at.button(key="next").click())
    assert (at.query_params["per_page"], at.query_params["page"]) == ("12", "2")
    shown = cards(at)
    assert [rank for rank, _, _ in shown] == list(range(13, 25))

    again = page(**{name: at.query_params[name] for name in ("id", "k", "per_page", "page")})  # the bookmark
    assert pager_text(again) == "Page **2** of **2** · 24 results"
    assert cards(again) == shown


@pytest.mark.parametrize("per_page", ["7", "abc", "-12"])
def test_a_page_size_the_page_does_not_offer_is_the_default(page, ui_ids, per_page):
    at = page(id=chip(ui_ids, 7)[1], k=30, per_page=per_page)
    assert len(cards(at)) == 20 and at.query_params["per_page"] == "20"


def test_the_address_says_the_page_shown(page, ui_ids):
    at = page(id=chip(ui_ids, 7)[1], k=30, page=9)
    assert at.query_params["page"] == "2"
    at = page(id=chip(ui_ids, 7)[1], k=30, page="x")
    assert at.query_params["page"] == "1"


def test_id_that_is_not_a_number(page):
    at = page(id="abc")
    assert [e.value for e in at.error] == ["The address asks for image id 'abc', which is not a number "
                                           "(or several, separated by commas)."]
    assert cards(at) == []


@pytest.mark.parametrize("address", [{"id": "99999999999999999999"}, {"id": "5,99999999999999999999"},
                                     {"id": "5", "unlike": "99999999999999999999"}])
def test_ids_too_large_for_the_store_are_one_line_not_a_crash(page, address):
    """SQLite holds 64-bit integers: a larger one raised OverflowError, Streamlit's exception box."""
    at = page(**address)
    assert not at.exception
    assert len(at.error) + len(at.warning) >= 1


def test_unknown_id(page):
    at = page(id=9999)
    assert len(at.error) == 1
    assert "no image with id 9999" in at.error[0].value
    assert cards(at) == []


# -- choosing a query on the page --------------------------------------------------------------
def test_search_with_this_makes_a_result_the_query(page, ui_ids):
    at = page(id=chip(ui_ids, 10)[1], k=30)
    run(at.button(key="next").click())
    second = cards(at)[1]  # rank 22
    run(button(at, "Search with this", 1).click())
    assert at.query_params["id"] == str(second[2])
    assert at.query_params["page"] == "1"
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {second[2]}"


def test_random_image_sets_an_id(page, ui_ids):
    at = page()
    run(button(at, "Random image").click())
    image_id = int(at.query_params["id"])
    assert image_id in ui_ids.values()
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {image_id}"


def test_random_image_on_a_store_gone_meanwhile_is_the_pages_one_line(page, ui_store_dir, monkeypatch, tmp_path):
    """The button's callback opens the store as it is when clicked, before the page's own run: a store gone by
    then (moved away, a swap's gap) must not end in a traceback; the page's run says it in one line."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(ui_store_dir, copy, ignore=shutil.ignore_patterns("write.lock"))
    monkeypatch.setenv("LOOKALIKE_STORE", str(copy))
    at = page()
    copy.rename(tmp_path / "moved")
    run(button(at, "Random image").click())
    assert not at.exception
    assert any("no lookalike store" in error.value for error in at.error)


def test_search_by_id(page, ui_ids):
    _, image_id = chip(ui_ids, 5)
    at = page()
    at.number_input(key="wanted-id").set_value(image_id)
    run(button(at, "Search by id").click())
    assert at.query_params["id"] == str(image_id)
    assert cards(at)[0] == (1, 1.0, image_id)


def test_path_substring_search(page, ui_ids):
    at = page()
    run(at.text_input[0].input("R0256"))  # case-insensitive
    matches = at.selectbox(key="path-match")
    wanted = {image_id for path, image_id in ui_ids.items() if "r0256" in Path(path).name}
    assert wanted
    assert {int(option.split(" · ")[0]) for option in matches.options} == wanted
    chosen = matches.value["id"]
    run(at.button(key="by-path").click())
    assert at.query_params["id"] == str(chosen)
    assert cards(at)[0] == (1, 1.0, chosen)

    run(at.text_input[0].input("no-such-place"))
    assert "no indexed path contains that" in [c.value for c in at.caption]


def test_hide_the_query_itself(page, ui_ids):
    _, image_id = chip(ui_ids, 2)
    at = page(id=image_id)
    run(at.checkbox[0].check())
    found = cards(at)
    assert len(found) == 20
    assert image_id not in [hit for *_, hit in found]


def test_exact_heatmaps_recompute_with_the_model(page, ui_ids):
    _, image_id = chip(ui_ids, 4)
    at = page(id=image_id, k=4)
    pca_maps = image_urls(at)
    run(at.sidebar.toggle[0].set_value(True))
    assert cards(at)[0] == (1, 1.0, image_id)
    exact_maps = image_urls(at)
    assert len(exact_maps) == len(pca_maps) == 1 + 4  # the colour scale, then one picture per result
    # Not the query itself: its best match to any query patch is 1 everywhere, however it is computed.
    assert all(exact != pca for exact, pca in zip(exact_maps[2:], pca_maps[2:]))


# -- several examples --------------------------------------------------------------------------
def api_answer(store_dir, ids, **options):
    from indexer import api

    store = api.open_store(store_dir)
    try:
        hits = api.search(store, ids, k=20, **options)["results"]
        return [(hit["rank"], round(hit["score"], 4), hit["id"]) for hit in hits]
    finally:
        store.close()


def test_several_ids_in_the_address_search_as_the_cli_does(page, ui_ids, ui_store_dir):
    ids = [chip(ui_ids, i)[1] for i in (1, 6, 11)]
    at = page(id=",".join(map(str, ids)))
    assert f"3 examples: ids {', '.join(map(str, ids))} (the first shown)" in [c.value for c in at.caption]
    assert cards(at) == api_answer(ui_store_dir, ids)
    assert [b.key for b in at.button if b.label.startswith("Remove")] == [f"remove-{i}" for i in ids[1:] + ids[:1]]

    at.sidebar.radio[0].set_value("any")
    run(at)
    assert cards(at) == api_answer(ui_store_dir, ids, combine="any")
    assert {hit for _, score, hit in cards(at) if score == 1.0} == set(ids)  # each example finds itself

    run(at.checkbox[0].check())  # hide the query itself: all of its examples
    assert set(ids).isdisjoint(hit for *_, hit in cards(at))
    assert len(cards(at)) == 20


def test_add_a_result_to_the_query_then_remove_it(page, ui_ids, ui_store_dir):
    _, first = chip(ui_ids, 3)
    at = page(id=first)
    assert not [b for b in at.button if b.key == f"add-1-{first}"]  # the query itself is not offered
    added = cards(at)[1][2]
    run(button(at, "Add to the query", 0).click())
    assert at.query_params["id"] == f"{first},{added}"
    assert cards(at) == api_answer(ui_store_dir, [first, added])
    assert not [b for b in at.button if b.label == "Add to the query" and b.key.endswith(f"-{added}")]
    run(at.button(key=f"remove-{added}").click())
    assert at.query_params["id"] == str(first)
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {first}"


def test_heatmaps_of_several_examples_match_any_of_them(ui_ids, ui_store_dir):
    from store import Store
    from ui.query import Query
    from ui.results import result_maps

    store = Store.open(ui_store_dir)
    ids = [chip(ui_ids, i)[1] for i in (2, 9, 15)]
    grids = [store.patch_features(i) for i in ids]
    examples = [{"id": i, "item": {"path": str(i)}, "grid": grid} for i, grid in zip(ids, grids)]
    several = Query(key="k", label="l", vectors=np.stack([store.vector(i) for i in ids[:2]]), grid=grids[0],
                    image=None, image_id=ids[0], examples=examples[:2])
    one = Query(key="k", label="l", vectors=store.vector(ids[0])[None], grid=grids[0], image=None, image_id=ids[0])
    hits = [{"id": i} for i in ids]
    first, second, third = result_maps(store, several, hits, patch=None, exact=False)
    assert np.allclose(first, 1, atol=1e-3) and np.allclose(second, 1, atol=1e-3)  # each matches itself
    assert third.min() < 0.99
    assert not np.allclose(result_maps(store, one, hits, patch=None, exact=False)[1], 1, atol=1e-3)
    clicked = result_maps(store, several, hits, patch=(3, 4), exact=False)  # a patch of the shown example
    assert clicked[0][3, 4] == pytest.approx(1, abs=1e-3)
    store.close()


@pytest.mark.parametrize("wanted", ["999999", "abc"])
def test_a_comparison_with_no_such_result_says_so_and_leaves_the_address(page, ui_ids, wanted):
    at = page(id=chip(ui_ids, 9)[1], k=4, compare=wanted)
    notes = [info.value for info in at.info if "compare" in info.value]
    assert notes == [f"The address asks to compare image {wanted!r}, which is not among these results: nothing to "
                     "show side by side."]
    assert "compare" not in at.query_params and len(cards(at)) == 4


def test_exact_heatmaps_of_several_examples(page, ui_ids):
    ids = [chip(ui_ids, i)[1] for i in (5, 17)]
    at = page(id=",".join(map(str, ids)), k=4)
    pca_maps, found = image_urls(at), cards(at)
    run(at.sidebar.toggle[0].set_value(True))
    assert cards(at) == found
    exact_maps = image_urls(at)
    assert len(exact_maps) == len(pca_maps)
    assert exact_maps[-4:] != pca_maps[-4:]


def test_compare_a_result_side_by_side_then_close(page, ui_ids):
    _, image_id = chip(ui_ids, 8)
    at = page(id=image_id, k=4)
    found = cards(at)
    before = len(image_urls(at))
    run(at.button(key=f"compare-2-{found[1][2]}").click())
    assert at.query_params["compare"] == str(found[1][2])
    assert [s.value for s in at.subheader if s.value.startswith("Side by side")] == [
        f"Side by side: the query and #2 (score {found[1][1]:.4f}, id {found[1][2]})"]
    assert len(image_urls(at)) == before + 3  # the query and the result, large, and their colour scale
    assert cards(at) == found
    run(at.button(key="stop-comparing").click())
    assert "compare" not in at.query_params
    assert not [s for s in at.subheader if s.value.startswith("Side by side")]


def test_an_uploaded_query_is_compared_at_the_comparison_size(page, monkeypatch, tmp_path):
    """The side-by-side pictures are drawn from LARGE_SIZE versions: an upload's too, not its 320 px thumbnail."""
    import numpy as np
    from PIL import Image

    from ui import results
    from ui.resources import LARGE_SIZE

    upload = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(upload)
    at = page(k=4)
    at = run(at.file_uploader[0].upload(upload.name, upload.read_bytes(), "image/png"))
    drawn = []
    real = results.heatmaps.overlay
    monkeypatch.setattr(results.heatmaps, "overlay", lambda picture, *a, **kw: drawn.append(picture.size)
                        or real(picture, *a, **kw))
    run(at.button(key=f"compare-2-{cards(at)[1][2]}").click())
    assert (LARGE_SIZE, LARGE_SIZE) in drawn  # the query's picture, its long side at the comparison size


def test_a_comparison_closes_when_the_query_changes(page, ui_ids):
    _, image_id = chip(ui_ids, 8)
    at = page(id=image_id, k=4, compare=cards(page(id=image_id, k=4))[1][2])
    assert [s for s in at.subheader if s.value.startswith("Side by side")]
    run(button(at, "Search with this", 2).click())
    assert "compare" not in at.query_params
    assert not [s for s in at.subheader if s.value.startswith("Side by side")]


def test_mutual_maps_are_each_sides_best_match_in_the_other(ui_ids, ui_store_dir):
    from store import Store
    from ui.results import mutual_maps

    store = Store.open(ui_store_dir)
    first, second, third = (store.patch_features(chip(ui_ids, i)[1]) for i in (1, 4, 7))
    on_query, on_result = mutual_maps([first], first)
    assert np.allclose(on_query, 1, atol=1e-3) and np.allclose(on_result, 1, atol=1e-3)  # itself: a match everywhere
    on_query, on_result = mutual_maps([first, third], second)
    assert on_query.shape == first.shape[:2] and on_result.shape == second.shape[:2]
    assert np.allclose(on_result, np.maximum(mutual_maps([first], second)[1], mutual_maps([third], second)[1]))
    assert np.allclose(on_query, mutual_maps([first], second)[0])  # the shown example's side only
    store.close()


def test_exact_heatmaps_of_an_upload_with_examples(page, ui_ids):
    path, _ = chip(ui_ids, 3)
    at = page(k=4)
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    run(at.button(key=f"add-2-{cards(at)[1][2]}").click())
    pca_maps, found = image_urls(at), cards(at)
    run(at.sidebar.toggle[0].set_value(True))
    assert cards(at) == found
    assert image_urls(at)[-4:] != pca_maps[-4:]


def test_exact_heatmaps_measure_what_the_stored_features_do(ui_store_dir, ui_ids, embedder):
    """The stored features are PCA-projected, so centred on the store's mean: "Exact" must centre the full tokens
    the same way, or it shows another similarity, not a finer one. The tiny model's 32-d tokens keep all their
    dimensions in the PCA, so here the two agree up to float16 storage."""
    from indexer import api
    from store import Store
    from ui.query import load_indexed
    from ui.results import result_maps

    _, image_id = chip(ui_ids, 2)
    store = Store.open(ui_store_dir)
    query = load_indexed(store, [image_id])
    results = api.search(store, image_id, k=4)["results"]
    for patch in (None, (3, 5)):
        reduced = result_maps(store, query, results, patch=patch, exact=False)
        exact = result_maps(store, query, results, patch=patch, exact=True, embedder=embedder)
        assert all(np.allclose(a, b, atol=0.02) for a, b in zip(reduced, exact))
    store.close()


def test_an_upload_with_examples_keeps_its_large_picture_for_the_comparison():
    from PIL import Image

    from ui.query import Query, with_examples

    def query(key, **fields):
        return Query(key=key, label=key, vectors=np.ones((1, 4), np.float32), grid=np.ones((2, 2, 3), np.float32),
                     image=Image.new("RGB", (32, 32)), **fields)

    upload = query("upload", uploaded=True, large=Image.new("RGB", (640, 640)))
    combined = with_examples(upload, query("indexed", image_id=7, item={"id": 7}))
    assert combined.large is upload.large and combined.image is upload.image  # not the thumbnail, stretched


def test_an_uploaded_query_takes_indexed_examples(page, ui_ids, ui_store_dir):
    path, own_id = chip(ui_ids, 0)
    at = page()
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    added = cards(at)[1][2]  # #1 is the upload's own indexed copy
    run(at.button(key=f"add-2-{added}").click())
    assert at.query_params["id"] == str(added)
    assert f"2 examples: upload · {path.name} (shown) and ids {added}" in [c.value for c in at.caption]
    assert cards(at) == api_answer(ui_store_dir, [path, added])  # as the API combines a file and an id
    third = next(hit for _, _, hit in cards(at) if hit not in (own_id, added))
    run(at.button(key=f"add-{next(r for r, _, h in cards(at) if h == third)}-{third}").click())
    assert at.query_params["id"] == f"{added},{third}"
    assert cards(at) == api_answer(ui_store_dir, [path, added, third])

    run(at.button(key=f"remove-{added}").click())  # an indexed example out: the upload stays
    run(at.button(key=f"remove-{third}").click())
    assert "id" not in at.query_params
    assert f"upload · {path.name}" in [c.value for c in at.caption]
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {own_id}"

    run(at.button(key=f"add-2-{added}").click())
    run(at.button(key="remove-None").click())  # the upload out: its indexed examples are the query
    assert at.query_params["id"] == str(added)
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {added}"
    assert not at.caption or not any(c.value.startswith("upload ·") for c in at.caption)


# -- uploads -----------------------------------------------------------------------------------
def test_upload_finds_itself_first(page, ui_ids):
    path, image_id = chip(ui_ids, 12)
    at = page(id=chip(ui_ids, 0)[1])  # an upload replaces a query from the address
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    assert "id" not in at.query_params
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {image_id}"
    assert len(cards(at)) == 20
    assert f"upload · {path.name}" in [c.value for c in at.caption]


def test_unreadable_upload_is_one_clear_line(page):
    at = page()
    run(at.file_uploader[0].upload("notes.png", b"these are my notes, not a picture", "image/png"))
    assert len(at.error) == 1
    assert at.error[0].value.startswith("notes.png: not an image format lookalike reads")
    assert cards(at) == []


def test_unreadable_upload_message_has_no_python_internals(page):
    at = page()
    run(at.file_uploader[0].upload("notes.png", b"these are my notes, not a picture", "image/png"))
    assert "object at 0x" not in at.error[0].value


def test_the_page_picks_up_a_new_index_run_without_a_restart(page, monkeypatch, tmp_path, index):
    first = copy_chips(tmp_path / "first", 6)
    index([first], tmp_path / "growing")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "growing"))
    at = page(id=1)
    assert "**6** images · 0 failed" in [m.value for m in at.sidebar.markdown]
    assert len(cards(at)) == 6

    index([first, copy_chips(tmp_path / "second", 6)], tmp_path / "growing")  # the server keeps running
    run(at)
    assert "**12** images · 0 failed" in [m.value for m in at.sidebar.markdown]
    assert len(cards(at)) == 12


def test_exact_heatmaps_keep_every_result_when_some_files_no_longer_read(page, monkeypatch, tmp_path, index):
    """One unreadable file (a result's, or the query's own) took every result off the page in exact mode: its
    map now comes from the stored features, as without exact."""
    chips = copy_chips(tmp_path / "chips", 6)
    index([chips], tmp_path / "store")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "store"))
    gone = sorted(chips.glob("*.jpg"))
    gone[2].rename(tmp_path / "away.jpg")
    for query_id in (1, 3):  # a result gone; the query itself gone
        at = page(id=query_id)
        run(at.sidebar.toggle[0].set_value(True))
        assert not at.error and not at.exception
        assert len(cards(at)) == 6 and len([w for w in at.warning if w.value == "file no longer readable"]) == 1


def test_an_upload_is_embedded_again_for_a_store_rebuilt_under_the_page(page, monkeypatch, tmp_path, index,
                                                                        load_embedder, model_dir):
    """The session keeps an upload's embedding: after `index --rebuild --pooling cls+mean` (twice the width)
    under the running page, the old vector no longer fits the new index (faiss's AssertionError before)."""
    chips = copy_chips(tmp_path / "chips", 6)
    index([chips], tmp_path / "store")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "store"))
    upload = sorted(chips.glob("*.jpg"))[0]
    at = page()
    at = run(at.file_uploader[0].upload(upload.name, upload.read_bytes(), "image/jpeg"))
    assert len(cards(at)) == 6
    wider = load_embedder(model_dir, pooling="cls+mean")
    index([chips], tmp_path / "store", embedder=wider, rebuild=True)
    run(at)
    assert not at.exception and not at.error and len(cards(at)) == 6
    assert cards(at)[0][1] > 0.999  # the upload is one of the chips: found at the top, by its new vector


def test_results_whose_files_moved_say_how_to_find_them_again(page, monkeypatch, tmp_path, index):
    chips = copy_chips(tmp_path / "chips", 6)
    index([chips], tmp_path / "store")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "store"))
    chips.rename(tmp_path / "moved")
    at = page(id=1)
    assert len(cards(at)) == 6 and len([w for w in at.warning if w.value == "file no longer readable"]) == 6
    assert any(m.value.startswith("6 of these results can no longer be read") for m in at.info)

    assert index([tmp_path / "moved"], tmp_path / "store")["moved"] == 6  # the server keeps running
    run(at)
    assert not [w for w in at.warning if w.value == "file no longer readable"]
    assert not any("can no longer be read" in m.value for m in at.info) and len(cards(at)) == 6


def test_a_model_that_cannot_be_loaded_is_one_clear_line(page, monkeypatch, ui_ids, tmp_path):
    monkeypatch.setenv("LOOKALIKE_MODEL", str(tmp_path / "no-such-model-sat493m"))
    path, _ = chip(ui_ids, 3)
    at = page()
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    assert len(at.error) == 1
    assert "cannot load model" in at.error[0].value
    assert "--model" in at.error[0].value
    assert cards(at) == []


def sidebar_input(at, label: str):
    return next(widget for widget in at.text_input if widget.label == label)


def test_filters_that_leave_nothing_say_so(page, ui_ids):
    at = page(id=chip(ui_ids, 3)[1])
    at = run(sidebar_input(at, "Dated between").input("2030,"))  # the plain chips carry no date at all
    assert "no indexed image passes the filters" in " ".join(info.value for info in at.info)
    assert cards(at) == []


def test_a_typo_in_a_filter_keeps_the_uploaded_query(page, ui_ids):
    """The filter's error stops the run before the uploader is drawn no more: the upload stays, and the search
    goes on without that filter until it is fixed."""
    path, _ = chip(ui_ids, 3)
    at = page()
    at = run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    shown = cards(at)
    assert shown
    at = run(sidebar_input(at, "Within lon/lat box").input("-99.2,47.0,-99.1"))
    assert len(at.error) == 1 and "not four numbers" in at.error[0].value and cards(at) == shown
    at = run(sidebar_input(at, "Within lon/lat box").input(""))
    assert not at.error and cards(at) == shown


@pytest.mark.parametrize("label, text, fragment", [
    ("Dated between", "2020,2010", "run backwards"), ("Dated between", "soon,", "is not a date such as"),
    ("Within lon/lat box", "0,10,5,5", "south is above its north"), ("Within lon/lat box", "1,2,3", "not four numbers")])
def test_bad_filters_are_one_clear_line(page, ui_ids, label, text, fragment):
    at = page(id=chip(ui_ids, 3)[1])
    at = run(sidebar_input(at, label).input(text))
    messages = [element.value for element in at.error]
    assert len(messages) == 1 and fragment in messages[0], messages


def test_k_and_the_page_size_outlast_a_run_where_the_store_could_not_be_opened(page, ui_ids, monkeypatch,
                                                                              ui_store_dir, tmp_path):
    """A store moved away for a moment (a rebuild's swap, a share that dropped): the page says so, and once the
    store is back the search comes back with the k and page size the user had, not the widgets' defaults."""
    at = page(id=chip(ui_ids, 7)[1], per_page=20)
    run(at.sidebar.number_input[0].set_value(8))
    assert pager_text(at).endswith("· 8 results")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "moved-away"))
    run(at)
    assert "no lookalike store at" in at.error[0].value

    monkeypatch.setenv("LOOKALIKE_STORE", str(ui_store_dir))
    run(at)

    assert pager_text(at).endswith("· 8 results") and len(cards(at)) == 8
    assert (at.query_params["k"], at.query_params["per_page"]) == ("8", "20")
    assert at.sidebar.number_input[0].value == 8
