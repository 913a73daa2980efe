"""The search page: settings, the query, its nearest neighbours and where they match."""
from pathlib import Path

import streamlit as st

from indexer.errors import IndexerError, UnreadableImage
from indexer.refine import Refinement, combined_search, empty_results_note, parse_bbox, parse_dates
from store import StoreError

from . import heatmaps
from .address import from_address, to_address
from .geomap import result_map
from .part import address_part, part_item, part_picker, source_size, upload_id, use_whole
from .query import describe_place, load_indexed, load_upload, query_panel, remove_example, use_indexed, with_examples
from .resources import STORE_LOCK, embedder_for, open_store, store_signature, thumbnail
from .results import (clicked_patch, compare_panel, compared_hit, downloads, forget_click, page_of, pager,
                      result_grid, result_maps)
from .unlike import unlike_panel, unlike_rows

MAX_K = 1000
PAGE_SIZES = [12, 20, 40, 100]
NARROW_PX = 1200  # below this window width the sidebar leaves the columns too little room side by side
# Narrow windows (a laptop's half screen): the query goes above its results instead of beside them, at most
# 20rem wide, and every column keeps room for its buttons' labels, wrapping to the next row when it has none
# (the result cards two to a row instead of four; the pager's label gives way instead).
NARROW_CSS = f"""<style>
@media (max-width: {NARROW_PX}px) {{
  [data-testid="stColumn"] {{ min-width: min(100%, 8.5rem); }}
  .st-key-search-layout > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"]
    > [data-testid="stColumn"] {{ min-width: 100%; }}
  .st-key-search-layout > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"]
    > [data-testid="stColumn"]:first-child {{ min-width: 0; flex-basis: 100%; max-width: 20rem; }}
  .st-key-pager > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"] {{ flex-wrap: nowrap; }}
  .st-key-downloads [data-testid="stColumn"] {{ min-width: min(100%, 13rem); }}
  .st-key-result-grid [data-testid="stColumn"] {{ min-width: calc(50% - 1rem); }}
}}
</style>"""


def settings_sidebar(info: dict) -> dict:
    with st.sidebar:
        st.header("Store")
        st.caption(info["store"])
        st.markdown(f"**{info['images']}** images · {info['failed']} failed")
        st.caption(f"model {info['model']} · {info['dim']}-d {info['pooling']} · {info['resolution']} px · "
                   f"{(info.get('normalization') or {}).get('name')} normalisation")
        st.header("Search")
        from_address("neighbours-k", "k", _address_k())
        k = st.number_input("Neighbours (k)", min_value=1, max_value=MAX_K, step=10, key="neighbours-k")
        to_address("neighbours-k", "k", k)
        from_address("per-page", "per_page", _address_page_size())
        page_size = st.selectbox("Per page", PAGE_SIZES, key="per-page")
        to_address("per-page", "per_page", page_size)  # a bookmark or reload shows the same page
        hide_self = st.checkbox("Hide the query itself", value=False)
        combine = st.radio("A query of several examples finds images", ["mean", "any"], horizontal=True,
                           format_func={"mean": "like all of them", "any": "like any one"}.get,
                           help="Like all of them: the mean of the examples' vectors, what they share. Like any "
                                "one: each image scored by its best match among the examples.")
        st.header("Scenes")
        dedupe = st.checkbox("Collapse overlapping chips of a scene", value=True)
        exclude_scene = st.checkbox("Leave out the query's own scene", value=False)
        bbox = _filter(parse_bbox, st.text_input("Within lon/lat box", placeholder="west,south,east,north"))
        dates = _filter(parse_dates, st.text_input("Dated between", placeholder="2015-01-01,2020-12-31"))
        st.header("Heatmaps")
        opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
        exact = st.toggle("Exact (recompute full patch tokens with the model)", value=False,
                          help="Off: the stored 64-d PCA patch features, no model needed. On: one forward per result.")
    return {"k": int(k), "page_size": page_size, "hide_self": hide_self, "combine": combine, "opacity": opacity,
            "exact": exact, "dedupe": dedupe, "exclude_scene": exclude_scene, "bbox": bbox, "dates": dates}


def _filter(parse, text: str):
    """A filter box's value, or None with the reason shown under it: a typo there must not end the run before
    the query is drawn (Streamlit would drop an uploaded image, a clicked patch, a dragged part)."""
    try:
        return parse(text)
    except IndexerError as error:
        st.error(f"{error}: searching without it until it is fixed")
        return None


def _address_k() -> int:
    """The address's k, held to 1 .. MAX_K, else the default 20."""
    try:
        return min(MAX_K, max(1, int(st.query_params.get("k", 20))))
    except ValueError:
        return 20


def _address_page_size() -> int:
    """The address's per_page when it is one of PAGE_SIZES, else the default 20."""
    text = st.query_params.get("per_page", "")
    return int(text) if text.isdigit() and int(text) in PAGE_SIZES else 20


def render(store_dir: Path, *, model: str | None = None, basemap: str | None = None,
           max_upload_mb: int = 50) -> None:
    st.set_page_config(page_title="lookalike", page_icon="🛰️", layout="wide")
    st.html(NARROW_CSS)
    st.title("lookalike")
    if store_dir is None:
        st.error("No store given: start the page with `lookalike serve --store DIR`.")
        return
    try:
        _render(open_store(Path(store_dir)), model=model, basemap=basemap, max_upload_mb=max_upload_mb)
    except (IndexerError, StoreError) as error:
        st.error(str(error))


def _render(store, *, model, basemap=None, max_upload_mb=50) -> None:
    with STORE_LOCK:
        info = {"store": str(store.store_dir), "images": store.count_images(), "failed": store.count_failures(),
                **{key: (store.provenance or {}).get(key)
                   for key in ("model", "dim", "pooling", "resolution", "normalization")}}
    settings = settings_sidebar(info)
    if info["images"] == 0:
        st.info("This store holds no images yet. Index a collection with `lookalike index SOURCE --store "
                f"{info['store']}`; this page picks them up without a restart.")
        return
    choice = query_panel(store, max_upload_mb=max_upload_mb)
    if choice is None:
        st.info("Upload an image or pick an indexed one to see its nearest neighbours.")
        return
    query = load_query(store, choice, model=model, max_upload_mb=max_upload_mb)

    query_column, results_column = st.container(key="search-layout").columns([1, 3])
    with query_column:
        st.subheader("Query")
        st.caption(query.label)
        patch = None
        if query.image is not None and st.toggle("Select a part to search by", key="choosing-part",
                                                 help="Drag a box over the picture, then search by what it holds."):
            part_picker(query, size=source_size(query, choice), upload=upload_id(choice))
        else:
            patch = query_patch(query, opacity=settings["opacity"], store_key=store_signature(store))
        if query.part:
            st.button("Search with the whole picture", on_click=use_whole, key="use-whole")
        other_examples(query)
        unliked, unlike_vectors = unlike_rows(store)
        weight = unlike_panel(unliked)
    exclude = (query.example_ids if settings["hide_self"] else []) + [row["id"] for row in unliked]
    scenes = tuple(dict.fromkeys(item["scene"] for item in query_items(query) if item.get("scene")))
    refinement = Refinement(dedupe=settings["dedupe"], bbox=settings["bbox"], dates=settings["dates"],
                            exclude_scene=scenes if settings["exclude_scene"] and scenes else None)
    with STORE_LOCK:
        results = combined_search(store, query.vectors, k=settings["k"], exclude=exclude, refinement=refinement,
                                  combine=settings["combine"], unlike=unlike_vectors, unlike_weight=weight)
    with results_column:
        show_results(store, query, results, settings=settings, patch=patch, model=model, basemap=basemap,
                     unlike=(unliked, weight))


def load_query(store, choice, *, model, max_upload_mb=50):
    """The Query the choice names; with the part the address names cut from its first example, when it reads."""
    def load(part=None):
        kind, value = choice
        if kind == "id":
            return load_indexed(store, value, part=part, model=model)
        if kind == "upload":
            return load_upload(store, value, model=model, max_upload_mb=max_upload_mb, part=part)
        uploaded, image_ids = value  # an upload and indexed examples
        return with_examples(load_upload(store, uploaded, model=model, max_upload_mb=max_upload_mb, part=part),
                             load_indexed(store, image_ids))

    try:
        part = address_part(uploaded=choice[0] != "id", upload=upload_id(choice))
        if part:
            return load(part)
    except IndexerError as error:
        st.error(f"{error}; the whole picture is searched instead.")
    return load()


def query_patch(query, *, opacity: float, store_key: str = ""):
    """The query's picture, clickable: the patch clicked on it (in the store `store_key` names), or None."""
    patch = clicked_patch(query, opacity=opacity, store_key=store_key)
    if patch is None:
        st.caption("Click the image to compare one 16×16 patch with every result.")
    else:
        st.caption(f"Patch row {patch[0]}, column {patch[1]} of a {query.grid.shape[0]}×{query.grid.shape[1]} "
                   "grid; the query shows its own similarity to it.")
        st.button("Clear the selected patch", on_click=forget_click)
    return patch


def query_items(query) -> list[dict]:
    """The catalogue rows behind the query's indexed examples (none for an upload); a part of the first one's
    picture has the part's footprint."""
    if query.examples:
        items = [example["item"] for example in query.examples if example["item"]]
    else:
        items = [query.item] if query.item else []
    if query.part and not query.uploaded and items:
        items[0] = part_item(items[0], query.part)
    return items


def other_examples(query) -> None:
    """Under the shown example, the query's others, each with a button that takes it out."""
    if not query.examples:
        return
    st.caption("The other examples:")
    for example in query.examples[1:]:  # indexed ones: the shown one may be an upload
        picture, words = st.columns([1, 2])
        try:
            picture.image(thumbnail(example["item"]), width="stretch", alt=f"Query example, id {example['id']}")
        except UnreadableImage:
            picture.caption("no longer readable")
        words.caption(f"id {example['id']} · {describe_place(dict(example['item'], id=example['id']))}")
        words.button("Remove", key=f"remove-{example['id']}", on_click=remove_example, args=(example["id"],))
    st.button("Remove the shown one", key=f"remove-{query.examples[0]['id']}", on_click=remove_example,
              args=(query.examples[0]["id"],))


def show_results(store, query, results, *, settings, patch, model, basemap=None, unlike=((), None)) -> None:
    st.subheader("Nearest neighbours")
    if not results:
        st.info(empty_results_note(filtered=bool(settings["bbox"] or settings["dates"] or settings["exclude_scene"])))
        return
    hits, page, pages = page_of(results, settings["page_size"])
    pager(page, pages, len(results))
    embedder = embedder_for(store, model) if settings["exact"] else None
    compared = compared_hit(results)
    if compared is not None:  # above the page's own colour scale and grid
        compare_panel(store, query, compared, exact=settings["exact"], embedder=embedder, opacity=settings["opacity"])
    maps = result_maps(store, query, hits, patch=patch, exact=settings["exact"], embedder=embedder)
    vmin, vmax = heatmaps.value_range(maps)  # one scale for the whole page, stretched to what it shows
    if patch is None:
        what = "best cosine similarity of each result patch to any query patch"
    else:
        what = "cosine similarity of each result patch to the selected query patch"
    st.image(heatmaps.colour_scale(vmin, vmax, width=360, height=44), caption=what,
             alt=heatmaps.scale_words(what, vmin, vmax))
    if any(hit.get("geo") for hit in results):
        scores = [hit["score"] for hit in hits] or [0.0]
        picked = result_map(query_items(query), hits, vmin=min(scores), vmax=max(scores), basemap=basemap)
        st.caption("Footprints of this page's results coloured by score (the same ramp, stretched to their "
                   "scores); the query's outlined in red. Click one to select it.")
        hit = next((h for h in hits if h["rank"] == picked), None) if picked else None
        if hit is not None:
            st.info(f"Selected on the map: #{hit['rank']} · score {hit['score']:.4f} · {describe_place(hit)}")
            st.button("Search with the selected result", on_click=use_indexed, args=(hit["id"],), key="map-pick")
    result_grid(hits, maps, opacity=settings["opacity"], vmin=vmin, vmax=vmax, examples=query.example_ids,
                keep_upload=query.uploaded)
    downloads(query, results, combine=settings["combine"], unlike=unlike)
