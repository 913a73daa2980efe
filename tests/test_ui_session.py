"""What a page's session remembers, against changes it did not make: browser Back and Forward, a store rebuilt."""
from helpers import copy_chips
from page_helpers import card_texts, cards, chip, run


def captions(at) -> list[str]:
    return [c.value for c in at.caption]


def go_to(at, address: dict):
    """What browser Back and Forward do: another address in the same session, no callback run."""
    at.query_params.clear()
    at.query_params.update(address)
    return run(at)


def test_back_to_an_older_indexed_query_leaves_the_upload_out(page, ui_ids):
    """Back from an upload with examples to the indexed query before it showed the upload with that query's id:
    a query nobody made. The upload is in the query only at the address it was made with."""
    path, _ = chip(ui_ids, 0)
    _, first = chip(ui_ids, 5)
    at = page(id=first, k=12, per_page=12)
    indexed = dict(at.query_params)
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    upload_alone = dict(at.query_params)
    added = cards(at)[1][2]
    run(at.button(key=f"add-2-{added}").click())
    with_upload = dict(at.query_params)
    assert with_upload["id"] == str(added)
    combined = f"2 examples: upload · {path.name} (shown) and ids {added}"
    assert combined in captions(at)

    go_to(at, upload_alone)  # Back
    assert f"upload · {path.name}" in captions(at)
    go_to(at, indexed)  # Back again: the indexed query as it was
    assert not any("upload" in text for text in captions(at))
    assert any(text.startswith(f"id {first} · ") for text in captions(at))
    assert card_texts(at)[0] == f"**#1** · score **1.0000** · id {first}"
    go_to(at, with_upload)  # Forward to the upload's address: its query again
    assert combined in captions(at)


def add(at, image_id: int):
    """Press "Add to the query" under the result `image_id`."""
    rank = next(rank for rank, _, hit in cards(at) if hit == image_id)
    return run(at.button(key=f"add-{rank}-{image_id}").click())


def test_an_indexed_query_that_comes_to_name_the_uploads_ids_stays_indexed(page, ui_ids):
    path, _ = chip(ui_ids, 0)
    at = page(k=24, per_page=40)  # every image on one page
    run(at.file_uploader[0].upload(path.name, path.read_bytes(), "image/jpeg"))
    first, second = (hit for _, _, hit in cards(at)[1:3])
    add(add(at, first), second)
    assert at.query_params["id"] == f"{first},{second}"
    go_to(at, dict(at.query_params, id=str(first)))  # Back to an indexed query of the first
    add(at, second)
    assert at.query_params["id"] == f"{first},{second}"
    assert f"2 examples: ids {first}, {second} (the first shown)" in captions(at)
    assert not any("upload" in text for text in captions(at))


def test_a_clicked_patch_is_forgotten_when_a_rebuild_changes_the_grid(page, monkeypatch, tmp_path, index,
                                                                      load_embedder, model_dir):
    """`lookalike rebuild --resolution 112` under an open page (ids kept): the patch clicked on the 14×14 grid
    was looked up in the new 7×7 one, an IndexError on every rerun."""
    from indexer.rebuild import rebuild_store

    index([copy_chips(tmp_path / "chips", 6)], tmp_path / "store")
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "store"))
    at = page(id=1)
    (click_key,) = [key for key in at.session_state.keys() if str(key).startswith("click-")]
    at.session_state[click_key] = {"x": 190, "y": 190, "width": 200, "height": 200}  # what a click leaves
    run(at)
    assert "Patch row 13, column 13 of a 14×14 grid; the query shows its own similarity to it." in captions(at)

    rebuild_store(tmp_path / "store", embedder=load_embedder(model_dir, resolution=112), workers=0, progress=False)
    run(at)
    assert not at.error and len(cards(at)) == 6
    assert "Click the image to compare one 16×16 patch with every result." in captions(at)


def test_a_remembered_patch_outside_the_querys_grid_is_dropped(page, ui_ids):
    at = page(id=chip(ui_ids, 3)[1])
    (click_key,) = [key for key in at.session_state.keys() if str(key).startswith("click-")]
    at.session_state[f"{click_key}-patch"] = (20, 3)  # the grid is 14×14
    run(at)
    assert "Click the image to compare one 16×16 patch with every result." in captions(at)
