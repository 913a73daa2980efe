"""Index choice under a memory budget, training on a sample, and tuning search parameters to a recall target."""
import logging
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import StoreError
from .faiss_index import ivf_of, require_faiss
from .refine import RefinedIVF, split_factory

log = logging.getLogger(__name__)

# Exact search while a query costs at most this many multiply-adds (65k x 1024, 16k x 4096 vectors): a few
# milliseconds on one core, and recall 1.0. Larger collections get an inverted-file index.
EXACT_MAX_WORK = 2**26
# Inverted lists: about LISTS_PER_SQRT x sqrt(n) of them (a power of two), each trained on TRAIN_PER_LIST points.
LISTS_PER_SQRT = 2
TRAIN_PER_LIST = 40
KMEANS_ITERATIONS = 10
MIN_TRAIN_VECTORS = 4096  # fewer than this and an approximate index is not worth training
# Memory an index takes beyond its codes: list growth, ids, the coarse centroids (a safety margin, measured).
OVERHEAD = 1.15
ID_BYTES = 8
DEFAULT_RECALL = 0.95
RETRAIN_GROWTH = 2.0  # retrain once the collection is this many times the size it was trained on
COMPACT_SHARE = 0.25  # rebuild once removed vectors' leftover re-ranking codes reach this share of the live ones
RETUNE_GROWTH = 1.25  # re-measure recall and re-tune once it has grown by a quarter
TUNING_QUERIES = 256
PLATEAU = 0.002  # recall gained by doubling nprobe below which more probing is pointless
CHUNK_ROWS = 65536
# Re-ranking: candidates kept from the first stage per result wanted, tried in this order at build time.
K_FACTORS = (2, 4, 8, 16, 32, 64)
LATENCY_QUERIES = 100  # single queries timed per setting when choosing between settings
FP16_REFINE_MAX_DIM = 256
MAX_PQ = 512
# From this width the coarse quantiser keeps its centroids in float16: a single query reads every centroid, and
# at 1024 lists x 4096 dimensions that is 16 MB in float32, 0.47 of a 0.6 ms query on the 2-core VM (0.30 ms
# in float16). Narrower vectors keep float32 centroids, which assign a batch faster (BLAS) while adding.
FP16_COARSE_MIN_DIM = 2048
CODE_BYTES_PER_DIM = {"Flat": 4, "SQfp16": 2, "SQ8": 1, "SQ4": 0.5}


@dataclass(frozen=True)
class IndexPlan:
    """What to build: a faiss index_factory string, the family, what it should take in memory, and why."""

    factory: str
    kind: str  # "flat" (exact), "ivf" (inverted lists, with or without a refine step)
    estimated_bytes: int
    reason: str


@dataclass
class BuiltIndex:
    index: object
    plan: IndexPlan
    params: dict
    recall: float | None
    latency_ms: float | None
    build_s: float
    trained_on: int
    tuning: list = field(default_factory=list)  # (params, recall) tried, in order


def parse_bytes(text) -> int:
    """'4GB', '512MiB', '2g', '1000000' -> bytes (decimal GB and binary GiB both understood)."""
    units = {"": 1, "b": 1, "bytes": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
             "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise StoreError(f"index memory {text!r} is not a size such as 4GB, 512MiB or 2000000000") from None
    if value < 1 or not math.isfinite(value):  # 0.5 would be 0 bytes, which reads as no budget at all
        raise StoreError(f"index memory {text!r} must be at least one byte")
    return int(value)


def _nlist(n: int) -> int:
    wanted = LISTS_PER_SQRT * math.sqrt(n)
    nlist = 2 ** round(math.log2(max(wanted, 16)))
    while nlist > 16 and n / nlist < TRAIN_PER_LIST:
        nlist //= 2
    return nlist


def flat_bytes(n: int, dim: int, *, bytes_per_dim: float = 4) -> int:
    return int(n * (dim * bytes_per_dim + ID_BYTES) * OVERHEAD)


def ivf_bytes(n: int, dim: int, nlist: int, code_bytes: float) -> int:
    return int(n * (code_bytes + ID_BYTES) * OVERHEAD + nlist * dim * 4)


def pq_size(dim: int) -> int:
    """Sub-quantisers of the first-stage codes (4 bits each): a quarter of the dimensions, at most 512.
    The first stage only has to put the true neighbours among k x k_factor candidates, and scan time grows
    with the code: at 4096 dimensions PQ512x4fs reached recall 0.954 at 2.9 ms where PQ1024x4fs needed 4.8 ms
    (hard regime, 250k vectors; easy: 0.37 against 0.42 ms); at 1024, PQ128x4fs capped near 0.83 where
    PQ256x4fs reached 0.958 (hard, 1M)."""
    m = max(2, min(dim // 4, MAX_PQ))
    while m > 2 and (dim % m or m % 2):
        m -= 1
    return m


def refined_bytes(n: int, dim: int, nlist: int, m: int, refine_codes: str) -> int:
    """Fast-scan codes and a row id in the lists, plus second-stage codes and an id-map entry per vector."""
    return ivf_bytes(n, dim, nlist, m / 2 + CODE_BYTES_PER_DIM[refine_codes] * dim + ID_BYTES)


def estimate_bytes(factory: str, n: int, dim: int) -> int:
    """What an index made by `factory` takes for n vectors (0 when the factory string is not one we plan)."""
    refined = split_factory(factory)
    if refined:
        first = estimate_bytes(refined[0], n, dim)
        per_dim = CODE_BYTES_PER_DIM.get(refined[1])
        return int(first + n * (per_dim * dim + ID_BYTES) * OVERHEAD) if first and per_dim else 0
    parts = factory.split(",")
    codes = parts[-1]
    per_dim = CODE_BYTES_PER_DIM
    if re.fullmatch(r"PQ\d+x4(fs)?", codes):
        code_bytes = int(codes[2:].split("x")[0]) / 2
    elif codes in per_dim:
        code_bytes = dim * per_dim[codes]
    else:
        return 0
    lists = re.fullmatch(r"IVF(\d+)(\(SQfp16\)|\(Flat\))?", parts[0])
    if lists:
        return ivf_bytes(n, dim, int(lists.group(1)), code_bytes)
    return int(n * (code_bytes + ID_BYTES) * OVERHEAD)


def plan_index(n: int, dim: int, *, memory_bytes: int | None = None, target_recall: float = 0.95) -> IndexPlan:
    """The index for n vectors of dim under a memory budget: exact while it is cheap and fits, else IVF."""
    budget = memory_bytes or float("inf")
    small = n * dim <= EXACT_MAX_WORK or n < MIN_TRAIN_VECTORS
    if small and flat_bytes(n, dim) <= budget:
        return IndexPlan("IDMap2,Flat", "flat", flat_bytes(n, dim), "exact: small enough to search every vector")
    if small and flat_bytes(n, dim, bytes_per_dim=2) <= budget:
        return IndexPlan("IDMap2,SQfp16", "flat", flat_bytes(n, dim, bytes_per_dim=2),
                         "every vector searched, stored as float16 (not exact: scores rounded to float16); "
                         "float32 would not fit the memory budget")
    nlist = _nlist(n)
    # Inverted lists of 4-bit fast-scan codes (d/8 bytes: quick to scan even when many lists must be probed),
    # re-ranked with scalar codes that keep nearly all of the recall: float16 when the target is strict and
    # it fits, then 8 bits, then 4 bits; past that, fast-scan codes alone. Measured against IVF with SQ8
    # alone (bench/results/search_scale.md): as fast on well-separated data, several times faster where
    # clusters overlap and many lists must be probed.
    # Narrow vectors get float16 second-stage codes: 8-bit codes over the whole range of each dimension
    # cap recall@10 near 0.95 on tight clusters at 32 dimensions, and float16 costs little there.
    m = pq_size(dim)
    coarse = f"IVF{nlist}(SQfp16)" if dim >= FP16_COARSE_MIN_DIM else f"IVF{nlist}"
    candidates = (["SQfp16"] if target_recall > 0.97 or dim <= FP16_REFINE_MAX_DIM else []) + ["SQ8", "SQ4"]
    for codes in candidates:
        size = refined_bytes(n, dim, nlist, m, codes)
        if size <= budget:
            return IndexPlan(f"{coarse},PQ{m}x4fs,Refine({codes})", "ivf", size,
                             f"{n:,} vectors: {nlist} inverted lists of {m} x 4-bit codes, re-ranked with "
                             f"{codes} codes, fit the budget")
    # Codes alone are scanned without fast-scan: in faiss 1.15 a fast-scan list that had entries removed stores
    # the codes added to it later wrongly (store/refine.py), and with no refine step nothing else can remove ids.
    code_only = [m for m in (dim // 2, dim // 4, dim // 8, dim // 16, dim // 32) if m >= 8 and dim % m == 0]
    for m in code_only:
        size = ivf_bytes(n, dim, nlist, m / 2)  # 4-bit codes: m sub-vectors, half a byte each
        if size <= budget:
            return IndexPlan(f"{coarse},PQ{m}x4", "ivf", size,
                             f"{n:,} vectors: only product-quantised codes ({m} x 4 bits) fit the budget")
    sizes = [refined_bytes(n, dim, nlist, pq_size(dim), codes) for codes in candidates] + [  # every option above
        ivf_bytes(n, dim, nlist, m / 2) for m in code_only] + ([flat_bytes(n, dim, bytes_per_dim=2)] if small else [])
    raise StoreError(
        f"no index of {n:,} x {dim} vectors fits in {format_bytes(memory_bytes)}; raise --index-memory "
        f"to {format_bytes(min(sizes), up=True)} or more"
    )


def format_bytes(count: float, *, up: bool = False) -> str:
    """Decimal units, as --index-memory reads them: 999 bytes, 4.6 kB, 116.4 MB, 4.00 GB; `up` rounds up."""
    for unit, size, digits in (("TB", 1e12, 2), ("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 1)):
        if count >= size:
            value = math.ceil(count / size * 10**digits) / 10**digits if up else count / size
            return f"{value:.{digits}f} {unit}"
    return f"{math.ceil(count) if up else int(count):,} bytes"


def user_plan(factory: str, n: int, dim: int) -> IndexPlan:
    """An index type the user named: inverted files keep ids themselves, flat codes get an id map.
    Graph indexes are refused: they cannot remove ids, and a changed or deleted image must leave the index."""
    refined = split_factory(factory)
    parts = (refined[0] if refined else factory).split(",")
    if any(part.startswith(("HNSW", "NSG")) for part in parts) or "NSG" in factory:
        raise StoreError(f"--index-type {factory}: graph indexes cannot remove ids; use an inverted file "
                         "such as IVF4096,SQ8 (an HNSW coarse quantiser, IVF4096_HNSW32,SQ8, is fine)")
    if fast_scan_alone(factory):
        raise StoreError(f"--index-type {factory}: fast-scan codes without a refine step lose the vectors added "
                         f"after a removal (faiss 1.15); use {parts[-1].split('x')[0]}x4 (the same codes, scanned "
                         f"without fast-scan) or add one: {factory},Refine(SQ8)")
    if refined and ("IVF" not in refined[0] or factory.startswith("IDMap")):
        raise StoreError(f"--index-type {factory}: a refine step goes after an inverted file, such as "
                         "IVF1024,PQ256x4fs,Refine(SQ8)")
    if "IVF" in factory and factory.startswith("IDMap"):  # searched as exact: --nprobe and tuning lost
        raise StoreError(f"--index-type {factory}: an inverted file keeps ids itself; leave out the IDMap "
                         f"(--index-type {factory.split(',', 1)[1]})")
    if re.search(r",RFlat\b", factory):
        raise StoreError(f"--index-type {factory}: faiss's RFlat cannot take ids; refine with Refine(Flat) "
                         "instead, such as IVF1024,PQ256x4fs,Refine(Flat)")
    kind = "ivf" if "IVF" in factory else "flat"
    if kind == "flat" and not factory.startswith("IDMap"):
        factory = "IDMap2," + factory
    return IndexPlan(factory, kind, estimate_bytes(factory, n, dim), "chosen with --index-type")


def fast_scan_alone(factory: str) -> bool:
    """Fast-scan codes with no refine step (older plans; refused now): faiss 1.15 loses what is added after a
    removal."""
    return not split_factory(factory) and bool(re.fullmatch(r"PQ\d+x4fsr?", factory.split(",")[-1]))


def faiss_reason(error: RuntimeError) -> str:
    """The sentence in a faiss exception, without the C++ function, file and failed condition around it."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    match = re.search(r"\.(?:cpp|h):\d+: (?:Error: '.*?' failed: )?(.*)", text)
    return (match[1] if match else text)[:300]


def new_index(dim: int, plan: IndexPlan):
    lib = require_faiss()
    try:
        if split_factory(plan.factory):
            index = RefinedIVF.new(dim, plan.factory)
        else:
            index = lib.index_factory(dim, plan.factory, lib.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise StoreError(f"faiss cannot build index type {plan.factory!r} for {dim}-dim vectors: "
                         f"{faiss_reason(error)}") from None
    if plan.kind == "ivf":
        ivf = ivf_of(index)
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.max_points_per_centroid = TRAIN_PER_LIST * 4
    return index


def _rows(vectors, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(vectors[start:stop], dtype=np.float32)


def training_sample(vectors, size: int, *, seed: int = 0) -> np.ndarray:
    n = len(vectors)
    if n <= size:
        return _rows(vectors, 0, n)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def set_search_params(index, params: dict) -> None:
    """Apply {"nprobe": 8, "k_factor": 4, ...} to an index (or the index inside its id map)."""
    lib = require_faiss()
    space = lib.ParameterSpace()
    for name, value in (params or {}).items():
        if isinstance(index, RefinedIVF):
            if name == "k_factor":
                index.k_factor = value
            else:
                space.set_index_parameter(index.base, name, value)
        else:
            space.set_index_parameter(index, name, value)


def nlist_of(index) -> int | None:
    try:
        return int(ivf_of(index).nlist)
    except RuntimeError:  # not an inverted-file index
        return None


def exact_neighbours(vectors, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-k inner products, streaming the vectors in chunks."""
    lib = require_faiss()
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), CHUNK_ROWS):
        chunk = _rows(vectors, start, start + CHUNK_ROWS)
        flat = lib.IndexFlatIP(chunk.shape[1])
        flat.add(chunk)
        scores, rows = flat.search(queries, min(k, len(chunk)))
        rows = np.where(rows >= 0, rows + start, -1)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, order, axis=1)
        best_rows = np.take_along_axis(rows, order, axis=1)
    return best_rows


def recall_at(found_ids: np.ndarray, true_ids: np.ndarray, query_ids: np.ndarray, k: int) -> float:
    """Mean share of each query's true top-k (itself left out) that the index found in its top-k."""
    hits = 0
    total = 0
    for found, truth, own in zip(found_ids, true_ids, query_ids):
        truth = [i for i in truth if i != own and i >= 0][:k]
        found = {i for i in found if i != own and i >= 0}
        hits += sum(1 for i in truth if i in found)
        total += len(truth)
    return hits / total if total else 1.0


@dataclass
class TuningSet:
    """Queries taken from the collection, with their exact neighbours (query itself excluded when scored)."""

    queries: np.ndarray  # (Q, D)
    query_ids: np.ndarray  # (Q,)
    true_ids: np.ndarray  # (Q, k + 1)
    k: int


def tuning_set(vectors, ids: np.ndarray, *, k: int = 10, size: int = TUNING_QUERIES, seed: int = 1) -> TuningSet:
    n = len(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    true_rows = exact_neighbours(vectors, queries, k + 1)
    true_ids = np.where(true_rows >= 0, ids[np.clip(true_rows, 0, None)], -1)
    return TuningSet(queries, ids[rows], true_ids, k)


def measure_recall(index, tuning: TuningSet) -> float:
    _, found = index.search(tuning.queries, tuning.k + 1)
    return recall_at(found, tuning.true_ids, tuning.query_ids, tuning.k)


def single_query_ms(index, queries: np.ndarray, *, k: int = 10, repeat: int = 200) -> float:
    """Median milliseconds of one query at a time, one thread: what a page waits for."""
    lib = require_faiss()
    threads = lib.omp_get_max_threads()
    lib.omp_set_num_threads(1)
    try:
        times = []
        for row in range(min(repeat, len(queries))):
            start = time.perf_counter()
            index.search(queries[row:row + 1], k)
            times.append(time.perf_counter() - start)
    finally:
        lib.omp_set_num_threads(threads)
    return float(np.median(times) * 1000) if times else None


def tune(index, tuning: TuningSet, *, target_recall: float) -> tuple[dict, float, list]:
    """Search parameters reaching the target recall@k: nprobe, and for a refine step also k_factor.
    Returns (params, recall, [(params, recall) tried, in order])."""
    aim = tuning_aim(target_recall, tuning)
    if isinstance(index, RefinedIVF):
        return tune_refined(index, tuning, target_recall=aim)
    params, recall, tried = tune_nprobe(index, tuning, target_recall=aim)
    return params, recall, [({"nprobe": p}, r) for p, r in tried]


def tuning_aim(target_recall: float, tuning: TuningSet) -> float:
    """The recall tuned for: the target plus one standard error of its estimate on the tuning queries (0.954
    for 0.95 on 256 queries x 10 neighbours), so that other queries reach the target too, not half of them."""
    samples = max(1, len(tuning.queries) * tuning.k)
    return min(1.0, target_recall + math.sqrt(target_recall * (1 - target_recall) / samples))


def tune_refined(index, tuning: TuningSet, *, target_recall: float) -> tuple[dict, float, list]:
    """For each k_factor in turn, the smallest nprobe reaching the target; of the settings that reach it,
    the one with the lowest single-query latency. More candidates re-ranked let fewer lists be probed, until
    re-ranking costs more than it saves: the search stops once latency rises again or nprobe stops falling."""
    trace, best, fallback = [], None, None
    for k_factor in K_FACTORS:
        index.k_factor = k_factor
        params, recall, tried = tune_nprobe(index, tuning, target_recall=target_recall, warn=False)
        params["k_factor"] = k_factor
        trace += [({"nprobe": p, "k_factor": k_factor}, r) for p, r in tried]
        if recall < target_recall:
            if fallback is None or recall > fallback[1]:
                fallback = (params, recall)
            continue
        set_search_params(index, params)
        latency = single_query_ms(index, tuning.queries, k=tuning.k, repeat=LATENCY_QUERIES)
        if best is not None and (latency >= best[2] or params["nprobe"] >= best[0]["nprobe"]):
            if latency < best[2]:
                best = (params, recall, latency)
            break
        best = (params, recall, latency)
    if best is None:
        log.warning("recall@%d reaches only %.3f at best (%s): the codes are too coarse for %.2f; "
                    "raise --index-memory", tuning.k, fallback[1], fallback[0], target_recall)
        best = fallback
    set_search_params(index, best[0])
    return dict(best[0]), best[1], trace


def tune_nprobe(index, tuning: TuningSet, *, target_recall: float, warn: bool = True) -> tuple[dict, float, list]:
    """The smallest nprobe reaching the target recall@k (binary search over powers of two, then between)."""
    nlist = nlist_of(index)
    if nlist is None:
        return {}, measure_recall(index, tuning), []
    tried = {}

    def recall_with(nprobe: int) -> float:
        if nprobe not in tried:
            set_search_params(index, {"nprobe": nprobe})
            tried[nprobe] = measure_recall(index, tuning)
        return tried[nprobe]

    high = 1
    while high < nlist and recall_with(high) < target_recall:
        if high >= 4 and recall_with(high) - recall_with(high // 2) < PLATEAU:
            # The codes, not the lists, limit recall here: probing more lists only costs time.
            (log.warning if warn else log.debug)("recall@%d levels off at %.3f (nprobe %d): the codes are too coarse "
                                                 "for %.2f; raise --index-memory", tuning.k, recall_with(high), high,
                                                 target_recall)
            set_search_params(index, {"nprobe": high})
            return {"nprobe": high}, recall_with(high), sorted(tried.items())
        high *= 2
    high = min(high, nlist)
    low = high // 2
    while high - low > max(1, high // 8) and low >= 1:  # refine down to about 12 % of the step
        middle = (low + high) // 2
        if recall_with(middle) >= target_recall:
            high = middle
        else:
            low = middle
    recall = recall_with(high)
    if recall < target_recall:
        (log.warning if warn else log.debug)("recall@%d reaches only %.3f with every list probed", tuning.k, recall)
    set_search_params(index, {"nprobe": high})
    return {"nprobe": high}, recall, sorted(tried.items())


def train_and_add(vectors, ids: np.ndarray, plan: IndexPlan, *, seed: int = 0):
    dim = vectors.shape[1]
    index = new_index(dim, plan)
    trained_on = 0
    if not index.is_trained:
        nlist = nlist_of(index) or 1
        sample = training_sample(vectors, max(MIN_TRAIN_VECTORS, nlist * TRAIN_PER_LIST), seed=seed)
        try:
            index.train(sample)
        except RuntimeError as error:  # e.g. fewer vectors than a named --index-type has lists
            raise StoreError(f"faiss cannot train index type {plan.factory!r} on {len(sample):,} vectors: "
                             f"{faiss_reason(error)}") from None
        trained_on = len(vectors)
    try:
        for start in range(0, len(vectors), CHUNK_ROWS):
            index.add_with_ids(_rows(vectors, start, start + CHUNK_ROWS), ids[start:start + CHUNK_ROWS])
    except RuntimeError as error:  # an index type that cannot keep ids
        raise StoreError(f"faiss cannot add vectors with ids to index type {plan.factory!r}: "
                         f"{faiss_reason(error)}") from None
    return index, trained_on


def build_index(vectors, ids, plan: IndexPlan, *, target_recall: float = 0.95, k: int = 10, seed: int = 0,
                params: dict | None = None) -> BuiltIndex:
    """Train on a sample, add every vector in chunks, then tune (or apply `params`) and measure recall."""
    ids = np.asarray(ids, dtype=np.int64)
    started = time.perf_counter()
    index, trained_on = train_and_add(vectors, ids, plan, seed=seed)
    build_s = time.perf_counter() - started
    if len(ids) == 0:
        return BuiltIndex(index, plan, dict(params or {}), None, None, build_s, trained_on)
    tuning = tuning_set(vectors, ids, k=k, seed=seed + 1)
    if plan.kind == "flat":  # a store that shrank to exact search keeps no probe setting: nothing to probe
        params = {}
    if params:
        set_search_params(index, params)
        chosen, recall, tried = dict(params), measure_recall(index, tuning), []
    else:
        chosen, recall, tried = tune(index, tuning, target_recall=target_recall)
    latency = single_query_ms(index, tuning.queries, k=k)
    return BuiltIndex(index, plan, chosen, recall, latency, build_s, trained_on, tried)
