"""Searching by a part of the query's picture: the box dragged over it, and the part in the address (?part=)."""
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from indexer import api
from indexer.errors import IndexerError
from indexer.scenes import part_geometry

from . import heatmaps
from .query import Query, new_query
from .resources import picture_size

MIN_PART_PX = 16  # one of the model's patches: a smaller part holds next to nothing


def part_name(uploaded: bool) -> str:
    """The address's name for a part of the first example's picture. An upload's has a name of its own: the
    address keeps only an uploaded query's indexed examples, and a reload or a shared link makes the first of
    them the query, which must not be cut where the upload was."""
    return "upload_part" if uploaded else "part"


def address_part(*, uploaded: bool = False, upload: str | None = None) -> tuple | None:
    """The part the address names (?part=COL,ROW,WIDTH,HEIGHT, or ?upload_part= for an `uploaded` query's first
    example), or None; raises IndexerError when malformed. An upload's part is one this session cut from that
    upload (`upload`: its file id) or first met with it in the address: browser Back to an earlier upload's
    address, after another upload, does not cut the new upload where the earlier one was."""
    text = st.query_params.get(part_name(uploaded))
    if not text:
        return None
    if uploaded and _upload_part_owners().setdefault(text, upload) != upload:
        return None
    try:
        values = tuple(int(value) for value in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or min(values[2:]) < 1:
        raise IndexerError(f"the address asks for the part {text!r}, which is not col,row,width,height in whole "
                           "pixels")
    return values


def use_part(box: tuple, uploaded: bool = False, upload: str | None = None) -> None:
    """Callback: search by this part of the shown example's picture (the upload's, `uploaded`: `upload` its file
    id)."""
    new_query(keep=("unlike",))
    text = ",".join(map(str, box))
    st.query_params[part_name(uploaded)] = text
    if uploaded:
        _upload_part_owners()[text] = upload


def _upload_part_owners() -> dict:
    """part text -> the file id of the upload it was cut from (or first met with), for this session."""
    return st.session_state.setdefault("upload-part-owners", {})


def upload_id(choice) -> str | None:
    """The file id of the query's upload (a choice of "upload" or "upload+ids"), else None."""
    return getattr(_upload_of(choice), "file_id", None)


def _upload_of(choice):
    """The query's uploaded file (a choice of "upload" or "upload+ids": its examples' first), else None."""
    kind, value = choice
    return None if kind == "id" else value if kind == "upload" else value[0]


def use_whole() -> None:
    """Callback: search by the whole picture again."""
    new_query(keep=("unlike",))


def source_size(query: Query, choice) -> tuple[int, int]:
    """(width, height) in the pixels a part counts: an upload's file's (read once per session, not on every
    rerun of a drag), an indexed image's as it was indexed."""
    if not query.uploaded:
        return picture_size(query.item)
    sizes = st.session_state.setdefault("upload-sizes", {})
    if query.key not in sizes:
        uploaded = _upload_of(choice)
        sizes.clear()  # the current upload's only
        sizes[query.key] = api.query_file_size(uploaded.getvalue(), name=uploaded.name)
    return sizes[query.key]


def part_picker(query: Query, *, size: tuple[int, int], upload: str | None = None) -> None:
    """The shown example's whole picture: drag a box over it, then search by that part."""
    picture = query.whole if query.part else query.image
    state_key = f"part-box-{query.key}"
    box = st.session_state.get(state_key)
    shown = heatmaps.outline_box(picture, box, image_size=size) if box else picture
    value = streamlit_image_coordinates(shown, key=f"drag-{query.key}", click_and_drag=True, cursor="crosshair",
                                        use_column_width="always")
    if value and "x1" in value:
        dragged = heatmaps.dragged_box(value["x1"], value["y1"], value["x2"], value["y2"],
                                       display_size=(value["width"], value["height"]), image_size=size)
        if dragged != box:
            st.session_state[state_key] = dragged
            st.rerun()  # redraw the picture with the box on it
    if box is None:
        st.caption(f"Drag a box over the part to search by ({size[0]}×{size[1]} px picture).")
    elif min(box[2:]) < MIN_PART_PX:
        st.caption(f"That box is {box[2]}×{box[3]} px: drag one of at least {MIN_PART_PX}×{MIN_PART_PX} px.")
    else:
        st.caption(f"Part {box[0]},{box[1]} {box[2]}×{box[3]} px of the {size[0]}×{size[1]} px picture. It is "
                   "resized to the model's square input as every image is: a near-square part keeps its shapes.")
        st.button("Search with this part", on_click=use_part, args=(box, query.uploaded, upload), type="primary",
                  key="use-part")


def part_item(item: dict, part: tuple) -> dict:
    """A chip's catalogue row with the footprint of its `part` instead of its own (for the map)."""
    geometry = part_geometry(item.get("geo") or {}, part, picture_size(item))
    return dict(item, geo=dict(item["geo"], **geometry)) if geometry else item
