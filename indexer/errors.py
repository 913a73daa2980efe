"""Typed errors raised by the indexer; the CLI and UI turn them into one clear line."""


class IndexerError(Exception):
    """Anything the user can fix about an indexing or search request."""


class UnreadableImage(IndexerError):
    """A file that is not an image Pillow can decode to RGB."""


class ModelUnavailable(IndexerError):
    """The backbone could not be loaded from the Hub or from a local directory."""


class NonFiniteOutput(IndexerError):
    """The backbone produced NaN or inf: the batch is refused, nothing is written."""


def check_open_store(store) -> None:
    """One-line refusal of a path, or of a store closed already, where the Python API wants an open store."""
    from store import Store

    if not isinstance(store, Store):
        raise IndexerError(f"{store!r} is no open store: open it first, api.open_store(path)")
    store.check_open()
