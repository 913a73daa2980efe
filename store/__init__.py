"""Everything persistent: the SQLite catalogue, the vectors, the FAISS index, provenance."""
from .errors import EmptyCatalogue, ProvenanceMismatch, StoreBusy, StoreError, StoreNotFound, UnknownImage
from .store import PCA, Store

__all__ = ["EmptyCatalogue", "PCA", "ProvenanceMismatch", "Store", "StoreBusy", "StoreError", "StoreNotFound",
           "UnknownImage"]
