"""The FAISS index: exact inner-product search over the stored vectors, ids = catalogue ids."""
import logging
import os
from pathlib import Path

import numpy as np

from .errors import StoreError

log = logging.getLogger(__name__)

try:
    import faiss
except ImportError:  # pragma: no cover - depends on the install
    faiss = None


def require_faiss():
    if faiss is None:
        raise StoreError(
            "faiss is not installed: pip install 'lookalike[cpu]' (or 'lookalike[gpu]' on a CUDA machine)"
        )
    return faiss


def gpu_count() -> int:
    if faiss is None or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return faiss.get_num_gpus()
    except Exception:  # a CPU build may expose the symbol and still fail
        return 0


def new_index(dim: int):
    lib = require_faiss()
    return lib.IndexIDMap2(lib.IndexFlatIP(dim))


def describe(index) -> dict:
    return {"type": "IndexIDMap2(IndexFlatIP)", "metric": "inner_product", "exact": True,
            "vectors": int(index.ntotal), "search_device": "gpu" if gpu_count() else "cpu"}


def build_index(dim: int, ids: np.ndarray, vectors: np.ndarray):
    index = new_index(dim)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def read_index(index_path: Path):
    lib = require_faiss()
    return lib.read_index(str(index_path))


def write_index_atomic(index, index_path: Path) -> None:
    """Write beside the target and rename, so a reader never sees half a file."""
    lib = require_faiss()
    tmp_path = index_path.with_name(index_path.name + ".tmp")
    lib.write_index(index, str(tmp_path))
    with open(tmp_path, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp_path, index_path)


class SearchIndex:
    """A CPU index for writes, mirrored to the GPU for searches when faiss sees one."""

    def __init__(self, index):
        self.cpu = index
        self._gpu = None
        self._gpu_stale = True
        self._resources = None

    @property
    def ntotal(self) -> int:
        return self.cpu.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.cpu.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        self._gpu_stale = True

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids):
            self.cpu.remove_ids(ids)
            self._gpu_stale = True

    def _searcher(self):
        if gpu_count() == 0:
            return self.cpu
        if self._gpu_stale:
            try:
                self._resources = self._resources or faiss.StandardGpuResources()
                self._gpu = faiss.index_cpu_to_gpu(self._resources, 0, self.cpu)
            except Exception as error:  # not every index type has a GPU twin
                log.warning("searching on the CPU: the index could not move to the GPU (%s)", error)
                self._gpu = self.cpu
            self._gpu_stale = False
        return self._gpu

    def search(self, queries: np.ndarray, k: int):
        """Top-k (scores, ids) for each query row; ids are -1 where fewer than k exist."""
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self._searcher().search(queries, k)
