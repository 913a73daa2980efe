"""The results: a paged grid of neighbours with heatmaps of where they match the query, and downloads."""
import csv
import io
import json
import math

import numpy as np
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from indexer.errors import UnreadableImage
from indexer.refine import to_geojson
from store import Store

from . import heatmaps
from .query import MAX_EXAMPLES, Query, add_example, describe_place, use_indexed
from .resources import LARGE_SIZE, STORE_LOCK, full_tokens, thumbnail
from .unlike import add_unlike

COLUMNS = 4


def clicked_patch(query: Query, *, opacity: float, store_key: str = ""):
    """Shows the query image, clickable; returns the clicked (row, col) of its token grid, or None. A click is
    remembered for the query in the store `store_key` names: a store rebuilt under the page (at another
    resolution: another grid) forgets it."""
    if query.image is None:
        return None
    generation = st.session_state.get("click_generation", 0)
    state_key = f"click-{query.key}-{store_key}-{generation}"
    previous = st.session_state.get(state_key + "-patch")
    if previous is not None and not all(0 <= i < n for i, n in zip(previous, query.grid.shape[:2])):
        previous = None  # clicked on a grid of another size: it marks no patch of this one
    shown = query.image
    if previous is not None:
        values = heatmaps.cosine_map(query.grid[previous], query.grid)
        shown = heatmaps.mark_patch(heatmaps.overlay(shown, values, opacity=opacity),
                                    *previous, grid_shape=query.grid.shape[:2])
    value = streamlit_image_coordinates(shown, key=state_key, cursor="crosshair", use_column_width="always")
    patch = None
    if value and "x" in value:
        patch = heatmaps.patch_at(value["x"], value["y"], display_size=(value["width"], value["height"]),
                                  grid_shape=query.grid.shape[:2])
    if patch != previous:
        st.session_state[state_key + "-patch"] = patch
        st.rerun()  # redraw the query with the new patch marked
    return patch


def forget_click() -> None:
    st.session_state["click_generation"] = st.session_state.get("click_generation", 0) + 1


def _grids(store: Store, query: Query, results: list[dict], *, exact: bool, embedder=None):
    """(each example's patch grid, each result's): stored PCA features, or full tokens recomputed (exact). In
    exact mode a result whose file no longer reads has None (its map comes from the stored features, as its card
    says), and a query whose file no longer reads takes the stored features for all."""
    if exact:
        with STORE_LOCK:  # the stored features are centred on the PCA's mean: the full tokens are too, to match
            mean = store.pca().mean

        def tokens(example: dict):  # an upload's were kept when it was embedded
            whole = example["tokens"] if example.get("tokens") is not None else full_tokens(example["item"], embedder)
            return whole - mean

        try:
            example_grids = [tokens(example) for example in query.examples] or [
                tokens({"tokens": query.tokens, "item": query.item})]
        except UnreadableImage:
            return _grids(store, query, results, exact=False)
        return example_grids, [_centred(_full_tokens_or_none(hit, embedder), mean) for hit in results]
    with STORE_LOCK:
        grids = [store.patch_features(hit["id"]) for hit in results]
    return _stored_example_grids(query), grids


def _stored_example_grids(query: Query) -> list:
    return [example["grid"] for example in query.examples] or [query.grid]


def _centred(tokens, mean):
    return None if tokens is None else tokens - mean


def _full_tokens_or_none(hit: dict, embedder):
    try:
        return full_tokens(hit, embedder)
    except UnreadableImage:
        return None


def _all_patches(example_grids) -> np.ndarray:
    """Several examples' grids as one (1, n, C) grid: a best match to any patch of any example."""
    return np.concatenate([grid.reshape(1, -1, grid.shape[-1]) for grid in example_grids], axis=1)


def result_maps(store: Store, query: Query, results: list[dict], *, patch, exact: bool, embedder=None):
    """One (h, w) map per result: similarity to the clicked query patch, or best match to any query patch."""
    example_grids, grids = _grids(store, query, results, exact=exact, embedder=embedder)
    maps = []
    for hit, grid in zip(results, grids):
        examples = example_grids
        if grid is None:  # exact, but its file no longer reads: the stored features, on both sides
            with STORE_LOCK:
                examples, grid = _stored_example_grids(query), store.patch_features(hit["id"])
        if patch is not None:  # a patch of the shown (first) example
            maps.append(heatmaps.cosine_map(examples[0][patch], grid))
        else:
            maps.append(heatmaps.correspondence_map(_all_patches(examples), grid))
    return maps


def mutual_maps(example_grids, result_grid) -> tuple[np.ndarray, np.ndarray]:
    """(on the shown example: each patch's best match in the result; on the result: each patch's best match in
    any example)."""
    return (heatmaps.correspondence_map(result_grid, example_grids[0]),
            heatmaps.correspondence_map(_all_patches(example_grids), result_grid))


# -- side by side --------------------------------------------------------------------------------
def compare(image_id: int) -> None:
    """Callback: show this result beside the query (in the address: ?compare=N)."""
    st.query_params["compare"] = str(int(image_id))


def stop_comparing() -> None:
    st.query_params.pop("compare", None)


def compared_hit(results: list[dict]) -> dict | None:
    """The result the address asks to compare, when it is among this query's results; one that is not is said
    in one line and taken out of the address."""
    wanted = st.query_params.get("compare")
    if wanted is None:
        return None
    hit = next((hit for hit in results if str(hit["id"]) == wanted), None)
    if hit is None:
        st.info(f"The address asks to compare image {wanted!r}, which is not among these results: nothing to "
                "show side by side.")
        stop_comparing()
    return hit


def compare_panel(store: Store, query: Query, hit: dict, *, exact: bool, embedder=None, opacity: float) -> None:
    """The query and one result side by side, large: on each, where the other matches it."""
    example_grids, (result_grid,) = _grids(store, query, [hit], exact=exact, embedder=embedder)
    if result_grid is None:  # exact, but its file no longer reads: the stored features, on both sides
        with STORE_LOCK:
            example_grids, result_grid = _stored_example_grids(query), store.patch_features(hit["id"])
    on_query, on_result = mutual_maps(example_grids, result_grid)
    vmin, vmax = heatmaps.value_range([on_query, on_result])
    st.subheader(f"Side by side: the query and #{hit['rank']} (score {hit['score']:.4f}, id {hit['id']})")
    left, right = st.columns(2)
    for column, item, fallback, values, words, who in (
            (left, None if query.part else query.item, query.large or query.image, on_query,
             "The query: each patch's best match anywhere in the result", "The query"),
            (right, hit, None, on_result, f"#{hit['rank']}: each patch's best match anywhere in the query",
             f"Result #{hit['rank']}, id {hit['id']}")):
        with column:
            try:
                picture = thumbnail(item, size=LARGE_SIZE) if item else fallback
            except UnreadableImage:
                picture = None
            if picture is None:
                st.warning("file no longer readable")
            else:
                st.image(heatmaps.overlay(picture, values, opacity=opacity, vmin=vmin, vmax=vmax), caption=words,
                         width="stretch", alt=f"{who}, each patch coloured by its best match in the other picture")
    what = "cosine similarity, both pictures"
    st.image(heatmaps.colour_scale(vmin, vmax, width=360, height=44), caption=what,
             alt=heatmaps.scale_words(what, vmin, vmax))
    st.button("Close the comparison", on_click=stop_comparing, key="stop-comparing")


def page_of(results: list[dict], page_size: int) -> tuple[list[dict], int, int]:
    pages = max(1, math.ceil(len(results) / page_size))
    try:
        page = min(max(1, int(st.query_params.get("page", 1))), pages)
    except ValueError:
        page = 1
    st.query_params["page"] = str(page)  # the address says the page shown, not one past the end or no number
    return results[(page - 1) * page_size: page * page_size], page, pages


def _go_to(page: int) -> None:
    st.query_params["page"] = str(page)


def pager(page: int, pages: int, total: int) -> None:
    back, label, forward = st.container(key="pager").columns([1, 3, 1])
    back.button("◀ Previous", disabled=page <= 1, on_click=_go_to, args=(page - 1,), key="prev")
    label.markdown(f"Page **{page}** of **{pages}** · {total} results")
    forward.button("Next ▶", disabled=page >= pages, on_click=_go_to, args=(page + 1,), key="next")


def result_grid(hits: list[dict], maps: list[np.ndarray], *, opacity: float, vmin: float, vmax: float,
                examples=(), keep_upload: bool = False) -> None:
    """The cards, each offering to become the query, to join it (unless it is one of its `examples` already;
    `keep_upload`: the query is an upload) or to be compared with it."""
    unreadable = 0
    grid = st.container(key="result-grid")
    for start in range(0, len(hits), COLUMNS):
        for column, hit, values in zip(grid.columns(COLUMNS), hits[start:start + COLUMNS], maps[start:start + COLUMNS]):
            with column:
                try:
                    image = heatmaps.overlay(thumbnail(hit), values, opacity=opacity, vmin=vmin, vmax=vmax)
                    st.image(image, output_format="JPEG", width="stretch", alt=f"Result #{hit['rank']}, id "
                             f"{hit['id']}, score {hit['score']:.4f}: its picture under a heatmap of its patches' "
                             "similarity to the query")
                except UnreadableImage:
                    st.warning("file no longer readable")
                    unreadable += 1
                st.markdown(f"**#{hit['rank']}** · score **{hit['score']:.4f}** · id {hit['id']}")
                st.caption(describe_place(hit))
                st.button("Search with this", key=f"with-{hit['rank']}-{hit['id']}", on_click=use_indexed,
                          args=(hit["id"],))
                st.button("Compare", key=f"compare-{hit['rank']}-{hit['id']}", on_click=compare, args=(hit["id"],))
                if hit["id"] not in examples and len(examples) + keep_upload < MAX_EXAMPLES:
                    st.button("Add to the query", key=f"add-{hit['rank']}-{hit['id']}", on_click=add_example,
                              args=(hit["id"], keep_upload))
                if hit["id"] not in examples:
                    st.button("Less like this", key=f"unlike-{hit['rank']}-{hit['id']}", on_click=add_unlike,
                              args=(hit["id"],))
    if unreadable:
        st.info(f"{unreadable} of these results can no longer be read where they were indexed (moved, changed or "
                "deleted since). If the collection moved, `lookalike index NEW_FOLDER --store STORE` finds them "
                "under their new paths and keeps their ids without embedding them again.")


def describe_query(query: Query, *, combine: str = "mean", unlike=((), None)) -> dict:
    """The query as `lookalike search --json` describes it; a part of the first example's picture as its crop;
    `unlike`: (the rows of the images it should not look like, the weight)."""
    if query.examples:
        described = {"examples": [{"id": example["id"], "path": example["item"]["path"]} if example["item"] else
                                  {"upload": example["label"]} for example in query.examples], "combine": combine}
    else:
        described = {"id": query.image_id, "path": query.path} if query.image_id else {"upload": query.label}
    if query.part:
        (described["examples"][0] if query.examples else described)["crop"] = list(query.part)
    rows, weight = unlike
    if rows:
        described = described if query.examples else {"examples": [described], "combine": combine}
        described.update(unlike=[{"id": row["id"], "path": row["path"]} for row in rows], unlike_weight=weight)
    return described


def downloads(query: Query, results: list[dict], *, combine: str = "mean", unlike=((), None)) -> None:
    rows = [{key: hit.get(key) for key in ("rank", "id", "path", "score", "width", "height")} for hit in results]
    for row, hit in zip(rows, results):
        if hit.get("scene"):
            geo = hit.get("geo") or {}
            row.update(scene=hit["scene"], window=",".join(map(str, hit["window"])), date=geo.get("date"),
                       lon=(geo.get("centroid") or [None, None])[0], lat=(geo.get("centroid") or [None, None])[1])
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["rank", "id", "path", "score"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    described = describe_query(query, combine=combine, unlike=unlike)
    columns = st.container(key="downloads").columns(3)
    columns[0].download_button("Download results (CSV)", text.getvalue(), file_name="lookalike-results.csv",
                               mime="text/csv")
    columns[1].download_button("Download results (JSON)", json.dumps({"query": described, "results": rows}, indent=1),
                               file_name="lookalike-results.json", mime="application/json")
    if any(hit.get("geo") for hit in results):
        collection = to_geojson({"query": described, "results": results})
        columns[2].download_button("Download footprints (GeoJSON)", json.dumps(collection),
                                   file_name="lookalike-results.geojson", mime="application/geo+json")
