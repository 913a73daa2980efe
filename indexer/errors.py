"""Typed errors raised by the indexer; the CLI and UI turn them into one clear line."""


class IndexerError(Exception):
    """Anything the user can fix about an indexing or search request."""


class UnreadableImage(IndexerError):
    """A file that is not an image Pillow can decode to RGB."""


class ModelUnavailable(IndexerError):
    """The backbone could not be loaded from the Hub or from a local directory."""


class NonFiniteOutput(IndexerError):
    """The backbone produced NaN or inf: the batch is refused, nothing is written."""
