"""What the page keeps between reruns: the open store (reopened when it changes on disk), the model, thumbnails."""
import hashlib
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from indexer import api
from store import Store
from store import swap

THUMBNAIL_SIZE = 320
LARGE_SIZE = 640  # the side-by-side comparison
# One SQLite connection and one FAISS index serve every browser session: one user at a time touches them.
STORE_LOCK = threading.RLock()


def store_generation(store_dir: Path) -> tuple:
    """Changes whenever an index run writes to the store or a rebuild swaps another one in."""
    return swap.generation(store_dir)


@st.cache_resource(max_entries=1, show_spinner="Opening the store…")
def _open_store(store_dir: str, generation: tuple) -> Store:
    # The FAISS index is loaded here, once, not in the middle of a search, from the same store as the
    # catalogue even when a rebuild swaps stores meanwhile. Only the store as it is now is kept: one a change
    # replaced is freed, its index and catalogue files with it, once no session's run still holds it.
    store = swap.open_live(store_dir)
    _OPENED_AT[store] = generation
    return store


_OPENED_AT = weakref.WeakKeyDictionary()  # each open store: the generation it was opened for (store_signature)


def open_store(store_dir: Path) -> Store:
    return _open_store(str(store_dir), store_generation(store_dir))


@st.cache_resource(max_entries=4, show_spinner=False)
def _signature(store_dir: str, generation: tuple, _store: Store) -> str:
    with STORE_LOCK:
        provenance, pca = _store.provenance, _store.pca()
    digest = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode())
    if pca is not None:
        digest.update(pca.mean.tobytes() + pca.components.tobytes())
    return digest.hexdigest()[:16]


def store_signature(store: Store) -> str:
    """What an embedded query depends on in the store, its model settings and its patch PCA: it changes when
    the store is rebuilt (--rebuild, lookalike rebuild), not when an index run adds to it."""
    # keyed by the generation this store was opened for, not the one on disk now: a session still holding the store
    # a swap replaced must not file its signature under the new store's generation
    opened = _OPENED_AT.get(store) or store_generation(store.store_dir)
    return _signature(str(store.store_dir), opened, store)


@st.cache_resource(max_entries=1, show_spinner="Loading the model (once per server)…")
def _embedder(provenance_key: str, store_dir: str, model: str | None):
    with STORE_LOCK:
        store = Store.open(store_dir)
    try:
        return api.load_embedder(store, model=model)
    finally:
        store.close()


def embedder_for(store: Store, model: str | None = None):
    """The store's own model (or another copy of the same weights), loaded once per process."""
    key = json.dumps(store.provenance, sort_keys=True)
    return _embedder(key, str(store.store_dir), model)


@st.cache_resource(max_entries=4000, show_spinner=False)
def _thumbnail(path: str, mtime_ns: int, reading: str, size: int, _item: dict) -> Image.Image:
    return shrunk(_item, size)


def shrunk(item: dict, size: int) -> Image.Image:
    """An indexed image or chip fitted into `size` x `size` (LANCZOS). A large JPEG is first decoded at a reduced
    scale (the decoder's 1/2, 1/4 or 1/8) that leaves both sides at least twice `size`, as Pillow's own
    thumbnail() does to a JPEG not yet decoded (bench/jpeg_draft.py times it against the whole decode)."""
    image = api.load_indexed_image(item, at_least=2 * size)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _mtime_ns(item: dict) -> int:
    try:
        return api.source_file(item).stat().st_mtime_ns
    except OSError:
        return -1


def thumbnail(item: dict, *, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A small upright RGB copy of an indexed image or chip; raises UnreadableImage if it no longer reads."""
    return _thumbnail(item["path"], _mtime_ns(item), api.reading_key(item), size, item)


@st.cache_resource(max_entries=256, show_spinner=False)
def _full_tokens(path: str, mtime_ns: int, reading: str, provenance_key: str, _item: dict, _embedder):
    """Exact mode: the image's full patch tokens (h, w, D), recomputed with the model from the pixels `index` fed it."""
    picture = api.load_indexed_image(_item, at_least=api.draft_side(_embedder.preprocess.resolution))
    embedding = api.embed_image(picture, _embedder)
    return embedding.patch_tokens[0].cpu().numpy()


def full_tokens(item: dict, embedder) -> np.ndarray:
    key = json.dumps(embedder.provenance, sort_keys=True)
    return _full_tokens(item["path"], _mtime_ns(item), api.reading_key(item), key, item, embedder)


@st.cache_resource(max_entries=64, show_spinner=False)
def _picture_size(path: str, mtime_ns: int, _item: dict) -> tuple[int, int]:
    return api.indexed_size(_item)


def picture_size(item: dict) -> tuple[int, int]:
    """(width, height) of an indexed image or chip as it was indexed: the pixels a part of it counts."""
    return _picture_size(item["path"], _mtime_ns(item), item)
