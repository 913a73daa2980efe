"""Typed errors raised by the store; the CLI and UI turn them into one clear line."""


class StoreError(Exception):
    """Anything wrong with a store that a user can act on."""


class StoreNotFound(StoreError):
    """The store directory or its catalogue does not exist."""


class EmptyCatalogue(StoreNotFound):
    """The catalogue file is an empty database: no store yet, one that `index` may start there."""


class ProvenanceMismatch(StoreError):
    """Vectors made one way would be mixed with vectors made another way."""


class UnknownImage(StoreError):
    """An image id that the catalogue does not hold."""


class StoreBusy(StoreError):
    """Another process is writing the store."""
