"""The query panel: upload an image or pick an indexed one; turns the choice into a Query."""
import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import streamlit as st
from PIL import Image

from indexer import api
from indexer.errors import IndexerError, UnreadableImage
from indexer.images import IMAGE_SUFFIXES
from indexer.refine import parse_lonlat
from store import Store, StoreError
from store.store import chip_fields

from .resources import LARGE_SIZE, STORE_LOCK, THUMBNAIL_SIZE, embedder_for, open_store, store_signature, thumbnail

MAX_UPLOAD_MB = 50
MAX_EXAMPLES = 20  # indexed examples in one query ("Add to the query")
KEEP_EMBEDDED = 2  # a session's embedded queries: an upload and a part of it (a click reruns the page)


@dataclass
class Query:
    key: str  # identity: a new query forgets the clicked patch
    label: str
    vectors: np.ndarray  # (n, D) L2-normalised: the one query, or each of several indexed examples
    grid: np.ndarray  # (h, w, C) patch features reduced with the store's PCA (the first example's)
    image: Image.Image | None  # None when an indexed file no longer reads
    image_id: int | None = None  # the first example's
    path: str | None = None
    tokens: np.ndarray | None = None  # (h, w, D) full patch tokens, uploads only
    item: dict | None = None  # the catalogue row (with a chip's scene, window, geo), indexed queries only
    # several examples: {id, item, grid} each; an upload among them first, as {id: None, item: None, grid, tokens}
    examples: list[dict] = field(default_factory=list)
    uploaded: bool = False  # the first example is an upload
    part: tuple | None = None  # (col, row, width, height): the first example is this part of its picture
    whole: Image.Image | None = None  # then, its whole picture (shown while another part is chosen)
    large: Image.Image | None = None  # an upload's picture at LARGE_SIZE, for the comparison (image is smaller)

    @property
    def example_ids(self) -> list[int]:
        """The indexed images the query is made of."""
        if self.examples:
            return [example["id"] for example in self.examples if example["id"] is not None]
        return [self.image_id] if self.image_id else []


def describe_place(hit: dict) -> str:
    """The path, and for a chip its window, lon/lat and date."""
    if not hit.get("scene"):
        return hit["path"]
    geo = hit.get("geo") or {}
    col, row, width, height = hit["window"]
    where = f" · {geo['centroid'][0]:.5f}, {geo['centroid'][1]:.5f}" if geo.get("centroid") else ""
    when = f" · {geo['date']}" if geo.get("date") else ""
    return f"{hit['scene']} · window {col},{row} {width}×{height}{where}{when}"


# -- choosing ----------------------------------------------------------------------------------
def new_query(*, keep: tuple = ()) -> None:
    """A new query starts on its first page, with no comparison open, whole and unlike nothing, unless `keep`
    names 'part' (an indexed example's or the upload's) or 'unlike' (a change to the same query: an example more
    or less, another part)."""
    st.query_params["page"] = "1"
    st.query_params.pop("compare", None)
    st.session_state["choosing-part"] = False
    for kept, names in (("part", ("part", "upload_part")), ("unlike", ("unlike",))):
        if kept not in keep:
            for name in names:
                st.query_params.pop(name, None)


def use_indexed(image_id: int) -> None:
    """Callback: make an indexed image the query, in the URL so it can be bookmarked."""
    st.query_params["id"] = str(int(image_id))
    new_query()
    _forget_upload()


def _forget_upload() -> None:
    st.session_state["upload_address"] = None
    st.session_state["uploader_generation"] = st.session_state.get("uploader_generation", 0) + 1


def upload_in_query() -> bool:
    """Whether the session's upload is the first of the address's examples. Only at the address ("id") its query
    had: browser Back and Forward change the address without a callback, and an older indexed query must not
    take the upload in."""
    wanted = st.session_state.get("upload_address")
    return wanted is not None and st.query_params.get("id", "") == wanted


def address_ids() -> list[int]:
    """The indexed examples the address names (?id=12 or ?id=12,40,57); raises ValueError when not numbers."""
    return address_numbers("id")


def address_numbers(name: str) -> list[int]:
    """The ids the address lists under `name`, in order, each once; raises ValueError when they are not numbers."""
    text = st.query_params.get(name, "")
    numbers = list(dict.fromkeys(int(part) for part in text.split(","))) if text else []
    if any(not -2**63 <= number < 2**63 for number in numbers):  # past what SQLite can hold: no such image
        raise ValueError(f"{name} holds a number too large to be an id")
    return numbers


def set_address_numbers(name: str, ids: list[int]) -> None:
    """Lists `ids` under `name` in the address; none takes the name out."""
    if ids:
        st.query_params[name] = ",".join(map(str, ids))
    else:
        st.query_params.pop(name, None)


def add_example(image_id: int, keep_upload: bool = False) -> None:
    """Callback: add an indexed image to the query's examples (the address keeps the indexed ones; an uploaded
    query stays the first example for this session, `keep_upload`)."""
    ids = [] if keep_upload and not upload_in_query() else address_ids()  # an upload's examples start afresh
    if int(image_id) not in ids:
        ids.append(int(image_id))
    st.query_params["id"] = ",".join(map(str, ids[-MAX_EXAMPLES:]))
    # an indexed query's ids may come to equal an upload's old address: that is no reason to take the upload in
    st.session_state["upload_address"] = st.query_params["id"] if keep_upload else None
    new_query(keep=("part", "unlike"))  # a part stays the first example's


def remove_example(image_id: int | None) -> None:
    """Callback: take one example out of a query of several (None: the upload). A part of the first example
    goes with it."""
    ids, with_upload = address_ids(), upload_in_query()
    first = image_id is None or (not with_upload and ids[:1] == [image_id])
    if image_id is None:
        _forget_upload()
    else:
        set_address_numbers("id", [i for i in ids if i != int(image_id)])  # none: the upload alone again
        st.session_state["upload_address"] = st.query_params.get("id", "") if with_upload else None
    new_query(keep=("unlike",) if first else ("part", "unlike"))


def _use_upload() -> None:
    st.query_params.pop("id", None)
    st.session_state["upload_address"] = None
    new_query()


def _use_widget(key: str) -> None:
    value = st.session_state.get(key)
    if isinstance(value, dict):
        value = value["id"]
    if value:
        use_indexed(value)


def _show_address_id() -> None:
    """Before the "Image id" box is drawn: when the address's examples have changed (a bookmark, "Search with
    this"), the box shows the first of them (none with an upload); otherwise it keeps what was typed in it."""
    text = st.query_params.get("id", "")
    if st.session_state.get("wanted-id-address") == text:
        return
    st.session_state["wanted-id-address"] = text
    try:
        ids = address_ids()
    except ValueError:  # the page says so below
        ids = []
    st.session_state["wanted-id"] = ids[0] if ids and not upload_in_query() else None


def _use_random(store_dir) -> None:
    """A button's callback: given the store's folder, not the store, which the session's widgets would keep
    alive (its index in memory, its files open) after a change replaced it."""
    try:
        store = open_store(store_dir)
        with STORE_LOCK:
            image_id = store.random_image_id()
    except (IndexerError, StoreError):  # the page's run, just after this, says so in one line
        return
    if image_id is not None:
        use_indexed(image_id)


def place_picker(store: Store) -> None:
    """The chips that show a place given as lon,lat, the nearest-centred first, each with its date."""
    text = st.text_input("At lon,lat", placeholder="e.g. -99.15,47.02", key="place",
                         help="WGS84 degrees: the indexed chips that cover this point (every date), the one centred "
                              "nearest first.")
    if not text:
        return
    try:
        lon, lat = parse_lonlat(text)
    except IndexerError as error:
        st.caption(str(error))
        return
    with STORE_LOCK:
        chips = store.chips_at(lon, lat, limit=200)
    if not chips:
        st.caption("no indexed chip covers that point")
        return
    st.selectbox("Chips there", chips, key="place-match",
                 format_func=lambda c: f"{c['id']} · {c['date'] or 'no date'} · centre {c['distance_m']:.0f} m away")
    st.button("Search with this chip", on_click=_use_widget, args=("place-match",), key="by-place")


def query_panel(store: Store, *, max_upload_mb: int = MAX_UPLOAD_MB):
    """Draws the choices; returns ('id', [N, ...]), ('upload', UploadedFile), ('upload+ids', (UploadedFile,
    [N, ...])) or None."""
    names = ["Upload an image", "Pick an indexed image"]
    indexed_query = "id" in st.query_params and not upload_in_query()
    upload_tab, indexed_tab = st.tabs(names, default=names[indexed_query])  # a bookmark opens on how it was made
    with upload_tab:
        generation = st.session_state.get("uploader_generation", 0)
        uploaded = st.file_uploader(
            "Query image", type=sorted(s.lstrip(".") for s in IMAGE_SUFFIXES), key=f"upload-{generation}",
            on_change=_use_upload, max_upload_size=max_upload_mb,
            help=f"JPEG, PNG, TIFF, WebP, BMP or GIF, up to {max_upload_mb} MB; embedded with the store's model.",
        )
    with indexed_tab:
        by_id, by_path, by_place, at_random = st.columns([1, 2, 2, 1])
        with by_id:
            _show_address_id()
            st.number_input("Image id", min_value=1, step=1, value=None, placeholder="id", key="wanted-id")
            st.button("Search by id", on_click=_use_widget, args=("wanted-id",))
        with by_path:
            text = st.text_input("Path contains", placeholder="e.g. 2018 or r0256_c0384")
            if text:
                with STORE_LOCK:
                    matches = store.find_images(text, limit=200)
                if matches:
                    st.selectbox("Matches", matches, format_func=lambda m: f"{m['id']} · {m['path']}", key="path-match")
                    st.button("Search with this image", on_click=_use_widget, args=("path-match",), key="by-path")
                else:
                    st.caption("no indexed path contains that")
        with by_place:
            place_picker(store)
        with at_random:
            st.button("Random image", on_click=_use_random, args=(store.store_dir,))
    if "id" in st.query_params:
        try:
            ids = address_ids()
        except ValueError:
            st.error(f"The address asks for image id {st.query_params['id']!r}, which is not a number "
                     "(or several, separated by commas).")
            return None
        if len(ids) > MAX_EXAMPLES:
            st.warning(f"The address names {len(ids)} images; a query takes at most {MAX_EXAMPLES}: the first "
                       f"{MAX_EXAMPLES} are used.")
        if ids and uploaded is not None and upload_in_query():
            return "upload+ids", (uploaded, ids[:MAX_EXAMPLES - 1])
        if ids:
            return "id", ids[:MAX_EXAMPLES]
    if uploaded is not None:
        return "upload", uploaded
    return None


# -- loading -----------------------------------------------------------------------------------
def load_indexed(store: Store, image_ids: list[int], *, part: tuple | None = None, model: str | None = None) -> Query:
    """One indexed image, or several as one query's examples (the first is shown, clickable); `part` (col, row,
    width, height) of the first one's picture searches that part instead of it (embedded with the model)."""
    with STORE_LOCK:
        rows = [store.image(image_id) for image_id in image_ids]
        vectors = np.stack([store.vector(image_id) for image_id in image_ids])
        grids = [store.patch_features(image_id) for image_id in image_ids]
    items = [{"path": row["path"], "size": row["size"], "mtime": row["mtime"], **chip_fields(row)} for row in rows]
    try:
        image = thumbnail(items[0])
    except UnreadableImage as error:
        if part:
            raise
        st.warning(f"The query's file no longer reads ({error}); its stored vector is still searched.")
        image = None
    first = image_ids[0]
    if len(image_ids) == 1:
        label = f"id {first} · {rows[0]['path']}"
    else:
        label = f"{len(image_ids)} examples: ids {', '.join(map(str, image_ids))} (the first shown)"
    examples = [{"id": i, "item": item, "grid": grid} for i, item, grid in zip(image_ids, items, grids)]
    query = Query(key="id-" + "-".join(map(str, image_ids)), label=label, vectors=vectors, grid=grids[0],
                  image=image, image_id=first, path=rows[0]["path"], item=items[0],
                  examples=examples if len(image_ids) > 1 else [])
    if not part:
        return query
    key = f"id-{first}-{items[0]['mtime']}-{part}"
    return _with_part(query, part, _embedded(store, key, lambda: api.load_indexed_image(items[0], crop=part),
                                             model=model))


def load_upload(store: Store, uploaded, *, model: str | None, max_upload_mb: int = MAX_UPLOAD_MB,
                part: tuple | None = None) -> Query:
    """An upload (or its `part`: col, row, width, height in the file's pixels), embedded once per session."""
    data = uploaded.getvalue()
    if len(data) > max_upload_mb * 2**20:
        raise IndexerError(f"{uploaded.name} is {len(data) / 2**20:.0f} MB; uploads are limited to {max_upload_mb} MB "
                           "(lookalike serve --max-upload-mb)")
    digest = hashlib.sha256(data).hexdigest()

    def read(crop=None):
        with STORE_LOCK:  # the store's connection is shared by every session's thread
            read_options, at_least = api.scene_read_options(store), api.store_draft_side(store)
        # read as `index` read the store's files: a GeoTIFF as chips, a large JPEG at the scale it was decoded to
        return api.load_query_image(data, name=uploaded.name, read_options=read_options, crop=crop, at_least=at_least)

    image, vector, grid, tokens = _embedded(store, digest, read, model=model)
    shown = image.copy()
    shown.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    query = Query(key=f"upload-{digest[:16]}", label=f"upload · {uploaded.name}", vectors=vector[None], grid=grid,
                  image=shown, tokens=tokens, uploaded=True, large=image)
    if not part:
        return query
    return _with_part(query, part, _embedded(store, f"{digest}-{part}", lambda: read(part), model=model))


def _embedded(store: Store, cache_key: str, read, *, model: str | None) -> tuple:
    """(a copy of the picture `read()` gives, at most LARGE_SIZE px, its vector, PCA grid and full tokens),
    embedded once per session; the full-size picture is not kept."""
    cache = st.session_state.setdefault("embedded_queries", {})
    cache_key = f"{store_signature(store)}-{cache_key}"  # a store rebuilt meanwhile: another model, another PCA
    if cache_key not in cache:
        image = read()
        embedding = api.embed_image(image, embedder_for(store, model))
        tokens = embedding.patch_tokens[0].cpu().numpy()  # (h, w, D)
        with STORE_LOCK:
            pca = store.pca()
        image.thumbnail((LARGE_SIZE, LARGE_SIZE))  # in place: read() makes a fresh picture each time
        while len(cache) >= KEEP_EMBEDDED:  # tokens can be large too
            cache.pop(next(iter(cache)))
        cache[cache_key] = (image, embedding.global_vectors[0].cpu().numpy(), pca.project(tokens), tokens)
    return cache[cache_key]


def _with_part(query: Query, part: tuple, embedded: tuple) -> Query:
    """The query with its first example replaced by the embedded part of its picture."""
    shown, vector, grid, tokens = embedded
    col, row, width, height = part
    vectors = query.vectors.copy()
    vectors[0] = vector
    examples = [dict(query.examples[0], grid=grid, tokens=tokens), *query.examples[1:]] if query.examples else []
    words = f"part {col},{row} {width}×{height} px"
    label = f"{query.label}; the first by its {words}" if examples else f"{words} of {query.label}"
    return replace(query, key=f"{query.key}-part-{col}-{row}-{width}-{height}", label=label, vectors=vectors,
                   grid=grid, image=shown, tokens=tokens, examples=examples, part=tuple(part), whole=query.image,
                   large=None)  # the part's picture is drawn at LARGE_SIZE already


def with_examples(upload: Query, indexed: Query) -> Query:
    """An uploaded query followed by indexed examples: one query, the upload shown (and clickable)."""
    first = {"id": None, "item": None, "grid": upload.grid, "tokens": upload.tokens, "label": upload.label}
    others = indexed.examples or [{"id": indexed.image_id, "item": indexed.item, "grid": indexed.grid}]
    ids = ", ".join(str(example["id"]) for example in others)
    return Query(key=f"{upload.key}-{indexed.key}", label=f"{1 + len(others)} examples: {upload.label} (shown) and "
                 f"ids {ids}", vectors=np.concatenate([upload.vectors, indexed.vectors]), grid=upload.grid,
                 image=upload.image, tokens=upload.tokens, examples=[first, *others], uploaded=True,
                 part=upload.part, whole=upload.whole, large=upload.large)
