"""What the results should not look like: "Less like this" under a result, the list in the address (?unlike=)."""
import math

import numpy as np
import streamlit as st

from indexer.errors import IndexerError, UnreadableImage
from indexer.refine import UNLIKE_WEIGHT
from store import StoreError
from store.store import chip_fields

from .address import from_address, to_address
from .query import address_numbers, describe_place, new_query, set_address_numbers
from .resources import STORE_LOCK, thumbnail

MAX_UNLIKE = 20


def address_unlike() -> list[int]:
    """The ids the address names as unlike (?unlike=12,40); raises IndexerError when they are not numbers."""
    try:
        return address_numbers("unlike")[:MAX_UNLIKE]
    except ValueError:
        raise IndexerError(f"the address asks for results unlike {st.query_params['unlike']!r}, which is not image "
                           "ids separated by commas") from None


def unlike_weight() -> float:
    """The weight in the address (?unlike_weight=), or the default for one that is no number; clamped to [0, 1].
    The address is set to the weight used."""
    try:
        weight = float(st.query_params.get("unlike_weight", UNLIKE_WEIGHT))
    except ValueError:
        weight = UNLIKE_WEIGHT
    weight = min(1.0, max(0.0, weight)) if math.isfinite(weight) else UNLIKE_WEIGHT
    if "unlike_weight" in st.query_params:
        st.query_params["unlike_weight"] = str(weight)
    return weight


def add_unlike(image_id: int) -> None:
    """Callback: the results should look less like this one (the same query, moved away from it)."""
    try:
        ids = address_numbers("unlike")
    except ValueError:  # a list that named no ids (said on the page) gives way to this one
        ids = []
    new_query(keep=("part", "unlike"))
    set_address_numbers("unlike", list(dict.fromkeys([*ids, int(image_id)]))[-MAX_UNLIKE:])


def remove_unlike(image_id: int) -> None:
    """Callback: take one image out of what the results should not look like."""
    kept = [i for i in address_numbers("unlike") if i != int(image_id)]  # offered only when the list reads
    new_query(keep=("part", "unlike"))
    set_address_numbers("unlike", kept)


def _set_weight() -> None:
    to_address("unlike-weight", "unlike_weight", st.session_state["unlike-weight"])
    st.query_params["page"] = "1"


def unlike_rows(store) -> tuple[list[dict], np.ndarray | None]:
    """(the catalogue rows, the unit vectors (m, D)) of the images the address names as unlike that are still
    in the store; a gone one is dropped with a warning, an address that names no ids is one error line."""
    try:
        image_ids = address_unlike()
    except IndexerError as error:
        st.error(f"{error}; they are left out.")
        image_ids = []
    rows, vectors = [], []
    with STORE_LOCK:
        for image_id in image_ids:
            try:
                row = store.image(image_id)
                rows.append({"id": image_id, "path": row["path"], "size": row["size"], "mtime": row["mtime"],
                             **chip_fields(row)})
                vectors.append(store.vector(image_id))
            except StoreError:
                st.warning(f"Image {image_id}, which the results should not look like, is no longer in the store.")
    return rows, (np.stack(vectors) if vectors else None)


def unlike_panel(rows: list[dict]) -> float:
    """Under the query: the images it should not look like, each with a button that takes it out, and how far
    to move away from them. Returns that weight."""
    if not rows:
        return unlike_weight()
    st.caption("Less like these:")
    for row in rows:
        picture, words = st.columns([1, 2])
        try:
            picture.image(thumbnail(row), width="stretch", alt=f"Not like this: id {row['id']}")
        except UnreadableImage:
            picture.caption("no longer readable")
        words.caption(f"id {row['id']} · {describe_place(row)}")
        words.button("Remove", key=f"unlike-remove-{row['id']}", on_click=remove_unlike, args=(row["id"],))
    from_address("unlike-weight", "unlike_weight", unlike_weight())  # a link or browser Back: the address wins
    return st.slider("Move away from them", 0.0, 1.0, step=0.05, key="unlike-weight", on_change=_set_weight,
                     help="Rocchio's weight: the query direction d becomes d − weight × their mean direction.")
