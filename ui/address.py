"""Widgets whose value lives in the page's address: a bookmark, a reload or browser Back brings it back."""
import streamlit as st


def from_address(key: str, name: str, value) -> None:
    """Before a keyed widget is drawn: when the address's `name` has changed since it was last read or written
    (a bookmark, a link), the widget takes `value` from it; otherwise it keeps its own. So it does when Streamlit
    has dropped the widget's own (a run that could not draw it, the store being away for a moment): the address
    still holds what the user chose.
    (A widget without a key, given its value from the address, is a new widget whenever that value changes, and
    Streamlit drops what the user chose in it on every second change.)"""
    text = st.query_params.get(name, "")
    if st.session_state.get(f"{key}-address") != text or key not in st.session_state:
        st.session_state[f"{key}-address"] = text
        st.session_state[key] = value


def to_address(key: str, name: str, value) -> None:
    """The widget's value into the address, noted as read: what the page writes there is no change to follow."""
    st.query_params[name] = st.session_state[f"{key}-address"] = str(value)
