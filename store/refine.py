"""Inverted lists of small codes, re-ranked with larger codes, that can still add and remove ids.

The first stage scans 4-bit fast-scan product-quantiser codes in the probed lists (d/8 bytes a vector at
PQ{d/4}x4fs: cheap to scan, coarse); the second re-scores the best k x k_factor of them with 8-bit scalar codes
(d bytes a vector: close to exact) and keeps the top k. faiss's IndexRefine does this, but it addresses the
second stage by insertion order and so cannot remove ids. Here the whole thing is a plain faiss object,
IndexIDMap(IndexRefine(IVF..., SQ...)), whose inner row numbers never change:

- adding appends rows to both stages and the image ids to the id map;
- removing marks the rows' id-map entries -1, and searches pass the inverted lists a bitmap of the live
  rows, so removed rows are never candidates; their codes stay until the next retrain compacts them
  (`dead_rows`). The rows are not taken out of the lists: in faiss 1.15 a fast-scan list that has had
  entries removed packs the codes added to it afterwards wrongly (those vectors are then not found),
  (seen with IVF32,PQ16x4fs: none of 50 re-added vectors came back as its own nearest neighbour).

It is written and read with faiss.write_index / read_index like every other index in the store.
"""
import numpy as np

from .faiss_index import require_faiss

DEFAULT_K_FACTOR = 4


def split_factory(factory: str) -> tuple[str, str] | None:
    """'IVF1024,PQ256x4fs,Refine(SQ8)' -> ('IVF1024,PQ256x4fs', 'SQ8'); None when there is no refine step."""
    head, marker, tail = factory.partition(",Refine(")
    if not marker or not tail.endswith(")"):
        return None
    return head, tail[:-1]


def is_refined(index) -> bool:
    lib = require_faiss()
    return isinstance(index, RefinedIVF) or (
        isinstance(index, lib.IndexIDMap) and isinstance(lib.downcast_index(index.index), lib.IndexRefine))


class RefinedIVF:
    """The faiss object (`.faiss`) and the bookkeeping that keeps its row numbers stable."""

    def __init__(self, index):
        lib = require_faiss()
        self.faiss = index  # IndexIDMap(IndexRefine(base, codes))
        self.refine = lib.downcast_index(index.index)
        self.base = lib.downcast_index(self.refine.base_index)
        self.codes = lib.downcast_index(self.refine.refine_index)
        self._keep = ()
        self._live = None  # (count, bitmap, selector) of the live rows, rebuilt after a change
        self._params = None  # the search parameters last used, kept for the next query

    @classmethod
    def new(cls, dim: int, factory: str) -> "RefinedIVF":
        lib = require_faiss()
        base_factory, codes_factory = split_factory(factory)
        base = lib.index_factory(dim, base_factory, lib.METRIC_INNER_PRODUCT)
        ivf = lib.downcast_index(lib.extract_index_ivf(base))
        if isinstance(ivf, lib.IndexIVFPQFastScan):
            # Codes of the vectors themselves, not of their offsets from the list centroid (faiss's default for
            # inner-product fast-scan, kept explicit): offsets measured worse here (250k x 4096, IVF1024,
            # PQ1024x4fs: recall 0.917 against 0.953 at 320 probes, hard regime; 0.45 against 0.36 ms, easy).
            ivf.by_residual = False
        codes = lib.index_factory(dim, codes_factory, lib.METRIC_INNER_PRODUCT)
        refine = lib.IndexRefine(base, codes)
        refine.k_factor = DEFAULT_K_FACTOR
        made = cls(lib.IndexIDMap(refine))
        made._keep = (base, codes, refine)  # the wrappers do not own what Python built
        return made

    # -- what the store and the tuner use ----------------------------------------------------
    @property
    def d(self) -> int:
        return self.faiss.d

    @property
    def ntotal(self) -> int:
        """Vectors that can be found (removed ones excluded)."""
        return self._live_rows()[0]

    def _live_rows(self):
        if self._live is None:
            lib = require_faiss()
            alive = self._id_view() >= 0
            count = int(alive.sum())
            if count == len(alive):
                self._live = (count, None, None)
            else:
                bitmap = np.packbits(alive, bitorder="little")
                self._live = (count, bitmap, lib.IDSelectorBitmap(len(bitmap), lib.swig_ptr(bitmap)))
        return self._live

    @property
    def is_trained(self) -> bool:
        return bool(self.refine.is_trained)

    @property
    def k_factor(self) -> int:
        return int(round(self.refine.k_factor))

    @k_factor.setter
    def k_factor(self, value) -> None:
        self.refine.k_factor = float(value)

    @property
    def nprobe(self) -> int:
        return int(self.base.nprobe)

    def train(self, vectors: np.ndarray) -> None:
        self.refine.train(np.ascontiguousarray(vectors, dtype=np.float32))
        self.faiss.is_trained = True

    def _id_view(self) -> np.ndarray:
        """The id map as a writable view (row -> image id, -1 for removed rows); invalid after an add."""
        lib = require_faiss()
        size = self.faiss.id_map.size()
        if size == 0:
            return np.empty(0, dtype=np.int64)
        return lib.rev_swig_ptr(self.faiss.id_map.data(), size)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        lib = require_faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if not len(ids):
            return
        start = int(self.codes.ntotal)
        rows = np.arange(start, start + len(ids), dtype=np.int64)
        self.base.add_with_ids(vectors, rows)
        self.codes.add(vectors)
        self.refine.ntotal = self.codes.ntotal
        lib.copy_array_to_vector(np.concatenate([self._id_view().copy(), ids]), self.faiss.id_map)
        self.faiss.ntotal = self.codes.ntotal
        self._live = None

    def remove_ids(self, ids) -> int:
        view = self._id_view()
        ids = np.asarray(ids, dtype=np.int64).ravel()
        rows = np.flatnonzero(np.isin(view, ids) & (view >= 0))
        if len(rows):
            view[rows] = -1
            self._live = None
        return len(rows)

    def live_ids(self) -> np.ndarray:
        view = self._id_view()
        return view[view >= 0].copy()

    def dead_rows(self) -> int:
        """Second-stage codes kept for removed ids, freed at the next retrain."""
        return int((self._id_view() < 0).sum())

    def search(self, queries: np.ndarray, k: int, *, params=None):
        """Top-k (scores, ids); `params` may be a SearchParametersIVF carrying nprobe."""
        lib = require_faiss()
        _, _, live = self._live_rows()
        nprobe = int(params.nprobe) if params is not None else self.nprobe
        key = (nprobe, self.refine.k_factor, id(live))
        if self._params is None or self._params[0] != key:  # made once per setting: a query is ~0.5 ms
            base_params = lib.SearchParametersIVF(nprobe=nprobe)
            if live is not None:
                base_params.sel = live
            refine_params = lib.IndexRefineSearchParameters()
            refine_params.k_factor = float(self.refine.k_factor)
            refine_params.base_index_params = base_params
            self._params = (key, refine_params, base_params, live)  # the refine parameters point at the others
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.faiss.search(queries, k, params=self._params[1])
