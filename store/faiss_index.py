"""The FAISS index file and the search front: ids, GPU copies, the torch exact path, inverted-file probes."""
import logging
import os
import re
from pathlib import Path

import numpy as np

from .errors import StoreError

log = logging.getLogger(__name__)

try:
    import faiss
except ImportError:  # pragma: no cover - depends on the install
    faiss = None


def _one_thread_after_fork() -> None:
    """In a child made by fork(), faiss searches on one thread: its OpenMP threads stay in the parent, and a child
    whose parent had searched hung for good in its first search."""
    faiss.omp_set_num_threads(1)


if faiss is not None and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)


def require_faiss():
    if faiss is None:
        raise StoreError(
            "faiss is not installed: pip install faiss-cpu (faiss-gpu on a CUDA machine), as the cpu and gpu extras "
            "do: pip install -e '.[cpu]' in lookalike's checkout (it is not on PyPI)"
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


def _refined(index) -> bool:
    """A store.refine.RefinedIVF (imported lazily: that module builds on this one)."""
    from .refine import RefinedIVF

    return isinstance(index, RefinedIVF)


def ivf_of(index):
    """The inverted-file index inside `index` (through id maps and a refine step)."""
    lib = require_faiss()
    return lib.extract_index_ivf(index.base if _refined(index) else index)


def index_ids(index) -> np.ndarray:
    """Every id an index holds: from the id map of a flat index, from the lists of an inverted file."""
    lib = require_faiss()
    if _refined(index):
        return index.live_ids()
    if hasattr(index, "id_map"):
        return lib.vector_to_array(index.id_map).astype(np.int64)
    ivf = ivf_of(index)
    lists = ivf.invlists
    parts = [lib.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def is_ivf(index) -> bool:
    return _refined(index) or not hasattr(index, "id_map")


def type_name(index) -> str:
    if _refined(index):
        return f"IndexIDMap(IndexRefine({type(index.base).__name__}, {type(index.codes).__name__}))"
    return type(index).__name__ if is_ivf(index) else f"IndexIDMap2({type(_inner(index)).__name__})"


def _inner(index):
    """The index an id map wraps, as its own faiss class (the wrapper hands back a plain Index)."""
    return require_faiss().downcast_index(index.index)


def describe(index) -> dict:
    exact = not is_ivf(index) and isinstance(_inner(index), require_faiss().IndexFlat)
    return {"type": type_name(index),
            "metric": "inner_product", "exact": exact, "vectors": int(index.ntotal),
            "search_device": search_device()}


def search_device() -> str:
    if gpu_count():
        return "gpu (faiss)"
    from .torch_exact import cuda_device_available

    return "gpu (torch exact)" if cuda_device_available() else "cpu"


def build_index(dim: int, ids: np.ndarray, vectors: np.ndarray):
    index = new_index(dim)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def read_index(index_path: Path):
    from .refine import RefinedIVF, is_refined

    lib = require_faiss()
    if _utf8(index_path):
        index = lib.read_index(str(index_path))
    else:  # faiss takes only UTF-8 names: a path that is not one is read through Python's own file
        with open(index_path, "rb") as handle:
            index = lib.read_index(lib.PyCallbackIOReader(handle.read))
    return RefinedIVF(index) if is_refined(index) else index


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # a folder name in another encoding, kept as surrogates by Python
        return False
    return True


def write_index_atomic(index, index_path: Path) -> None:
    """Write beside the target and rename, so a reader never sees half a file. Written through Python's own file,
    whose every failed write, flush or fsync raises: faiss's own file writer only prints a failure met on closing
    (its last block on a full disk), and the empty file then replaced the index."""
    lib = require_faiss()
    tmp_path = index_path.with_name(index_path.name + ".tmp")
    try:
        with open(tmp_path, "wb") as handle:  # any name, UTF-8 or not (as in read_index)
            lib.write_index(getattr(index, "faiss", index), lib.PyCallbackIOWriter(handle.write))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        if isinstance(error, (RuntimeError, OSError)):  # a full disk, a folder that cannot be written
            raise StoreError(f"cannot save the index {index_path} ({_write_failure(error)})") from error
        raise
    os.replace(tmp_path, index_path)


def _write_failure(error: Exception) -> str:
    """An OSError's own words; the reason in faiss's multi-line 'Error in ... (No space left on device)'."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    reason = re.search(r"\(([^()]+)\)\s*$", str(error))
    return reason.group(1) if reason else str(error).strip().splitlines()[-1]


class SearchIndex:
    """A CPU index for writes; searches go to a GPU copy when faiss sees a GPU, else to an exact torch search
    on a CUDA device when torch sees one (and `exact_source`, a weak reference to a () -> (ids, vectors), can
    still supply the vectors), else to the CPU index."""

    def __init__(self, index, *, nprobe: int | None = None, exact_source=None):
        self.cpu = index
        self.nprobe = nprobe  # the tuned value for k = 10
        self.nprobe_override = None  # a user's fixed value, for every k
        self._exact_source = exact_source  # weak: the index does not keep its store alive
        self._device_index = None
        self._stale = True
        self._resources = None

    @property
    def ntotal(self) -> int:
        return self.cpu.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.cpu.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
        self._stale = True

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids):
            self.cpu.remove_ids(ids)
            self._stale = True

    def _device_searcher(self):
        """The GPU twin, rebuilt after writes; None to search on the CPU."""
        if not self._stale:
            return self._device_index
        self._stale = False
        self._device_index = None
        if gpu_count() and not _refined(self.cpu):  # a refine step has no GPU twin
            try:
                self._resources = self._resources or faiss.StandardGpuResources()
                options = faiss.GpuClonerOptions()
                options.useFloat16 = True  # half the memory of float32; recall within rounding
                self._device_index = faiss.index_cpu_to_gpu(self._resources, 0, self.cpu, options)
            except Exception as error:  # not every index type has a GPU twin
                log.warning("searching on the CPU: the index could not move to the GPU (%s)", error)
        elif self._exact_source is not None:
            from .torch_exact import TorchExactIndex, cuda_device_available

            source = self._exact_source()  # None once its store is gone
            if cuda_device_available() and source is not None:
                ids, vectors = source()
                self._device_index = TorchExactIndex(ids, vectors, device="cuda")
        return self._device_index

    def nprobe_for(self, k: int, nprobe: int | None = None) -> int | None:
        """Lists to probe: the tuned value, scaled up for long result pages so they still fill."""
        if not is_ivf(self.cpu):
            return None
        ivf = ivf_of(self.cpu)
        nlist = ivf.nlist
        nprobe = nprobe or self.nprobe_override
        base = nprobe or self.nprobe or ivf.nprobe
        return int(min(nlist, base if nprobe else base * max(1, -(-k // 10))))

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None):
        """Top-k (scores, ids) for each query row; ids are -1 where fewer than k exist."""
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        device_index = self._device_searcher()
        if device_index is not None:
            return device_index.search(queries, k)
        probes = self.nprobe_for(k, nprobe)
        if probes is None:
            return self.cpu.search(queries, k)
        return self.cpu.search(queries, k, params=faiss.SearchParametersIVF(nprobe=probes))
