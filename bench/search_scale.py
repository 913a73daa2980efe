"""Search at scale, side by side in one run: the automatic index choice against hand-picked faiss indexes, autofaiss
and exact search, on the same synthetic vectors under the same memory budget (issue 7).

For each regime (easy, hard: see bench/_search_data.py) and size, it writes the database as a memmap under
--work-dir, computes the exact top-10 of held-out queries, then builds each system and measures its build time
(train + add), serialised bytes, recall@10 against exact search on --queries held-out queries, single-query p50/p99
latency on one thread (one query at a time, after a warm-up) and batch queries/s on two threads. Approximate
indexes are tuned on a separate --tune-queries set to the smallest nprobe / efSearch (and refine factor) reaching
--target-recall. autofaiss runs with its defaults in its own virtual environment (bench/.venv-autofaiss, made on
first use) in a subprocess with a time limit; the index it writes is then measured here like the others.

    python bench/search_scale.py --quick                                  # 50,000 x 256 in 64 MiB: a smoke run
    python bench/search_scale.py --sizes 1m-1024,250k-4096 --regimes easy,hard
    python bench/search_scale.py --sizes 250k-4096 --regimes hard --systems auto,hand   # merged into --out
    python bench/search_scale.py --torch-exact                            # 1M x 4096 float16 exact search on CUDA
"""
import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import _search_data  # noqa: E402

log = logging.getLogger("search_scale")
GIB = 2**30
SIZES = {  # name -> (vectors, dimension, memory budget in bytes, autofaiss's spelling of the budget)
    "quick": (50_000, 256, 64 * 2**20, "64M"),
    "1m-1024": (1_000_000, 1024, 4 * GIB, "4G"),
    "250k-4096": (250_000, 4096, 2 * GIB, "2G"),
}
SYSTEMS = ("exact", "hand", "auto", "autofaiss")
K = 10
CHUNK = 65536
AUTOFAISS_VENV = REPO / "bench" / ".venv-autofaiss"
AUTOFAISS_PINS = ["autofaiss==2.18.0", "numpy<2", "pyarrow<=25", "faiss-cpu<=1.13.2"]
EF_GRID = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
K_FACTORS = [4, 16, 64]


class BuildStopped(Exception):
    pass


# ---------------------------------------------------------------------------------------------- hand-picked configs
def hand_configs(n: int, dim: int) -> list[dict]:
    """The sweep: factory strings sized for (n, dim), with the bytes each should take (to skip what cannot fit)."""
    nlist = 2 ** round(math.log2(2 * math.sqrt(n)))  # 50k -> 512, 250k -> 1024, 1M -> 2048
    m = dim // 4  # 4-bit fast-scan sub-quantizers, half a byte each: a prefilter that the refine step corrects
    opq_out, opq_m = dim // 4, dim // 16
    # An HNSW coarse quantizer saves the scan of the centroids, but at 4096-d a probe on this faiss (1.15.1)
    # measured 59 ms a query against 2.5 ms with flat centroids (40k x 4096, IVF256, nprobe 4): flat there.
    coarse = f"IVF{nlist}_HNSW32" if dim <= 1024 else f"IVF{nlist}"
    links = 32 * 2 * 4 * 1.1  # HNSW32: 64 neighbours on level 0 (int32) + the upper levels
    centroids = nlist * dim * 4 * 1.1
    configs = [
        {"factory": "SQfp16", "kind": "flat", "bytes": n * dim * 2, "why": "exact over float16"},
        {"factory": "HNSW32,SQ8", "kind": "hnsw", "bytes": n * (dim + links)},
        {"factory": "HNSW32,SQfp16", "kind": "hnsw", "bytes": n * (2 * dim + links)},
        {"factory": f"{coarse},SQ8", "kind": "ivf", "bytes": n * (dim + 8) + centroids},
        {"factory": f"{coarse},PQ{m}x4fs,Refine(SQ8)", "kind": "ivf_refine",
         "bytes": n * (m / 2 + 8 + dim) + centroids},
    ]
    if dim > 1024:  # float16 centroids: a single query reads all of them, half the bytes of float32
        configs.append({"factory": f"IVF{nlist}(SQfp16),PQ{m}x4fs,Refine(SQ8)", "kind": "ivf_refine",
                        "bytes": n * (m / 2 + 8 + dim) + centroids / 2})
        configs.append({"factory": f"IVF{nlist}(SQfp16),PQ{m // 2}x4fs,Refine(SQ8)", "kind": "ivf_refine",
                        "bytes": n * (m / 4 + 8 + dim) + centroids / 2})
    # the same first stages with by_residual set off explicitly. For inner-product fast-scan that is already
    # faiss's default, so these rows measure the same index as the rows above them: a check on the noise
    # (same index, same settings, p50 apart by up to 16 % in the committed run)
    for config in [c for c in configs if c["kind"] == "ivf_refine" and not c["factory"].startswith("OPQ")]:
        configs.append(dict(config, factory=config["factory"] + " nores", by_residual=False))
    if dim <= 1024:  # OPQ's rotation is learnt by SVDs of dim x dim/4: at 4096 its training alone runs for minutes
        configs.append({"factory": f"OPQ{opq_m}_{opq_out},IVF{nlist}_HNSW32,PQ{opq_m}x4fs,Refine(SQ8)", "kind": "ivf_refine",
         "bytes": n * (opq_m / 2 + 8 + dim) + nlist * opq_out * 4 + dim * opq_out * 4})
    return configs


def _configure_training(index, faiss, nlist_train: int):
    """Spherical k-means (unit vectors, inner product) on a sample, 10 rounds; OPQ kept short."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        # (an HNSW assigner for k-means was tried: 3x faster, but nprobe 4 fell from 0.95 to 0.70 recall)
        ivf.cp.niter, ivf.cp.spherical = 10, True
        ivf.cp.max_points_per_centroid = max(1, nlist_train // ivf.nlist)
    inner = faiss.downcast_index(index.base_index) if hasattr(index, "base_index") else index
    if isinstance(inner, faiss.IndexPreTransform):
        opq = faiss.downcast_VectorTransform(inner.chain.at(0))
        if isinstance(opq, faiss.OPQMatrix):
            opq.niter, opq.max_train_points = 20, 32768


def build_capped(factory: str, base: np.ndarray, *, cap_s: float, seed: int):
    """Train on a sample and add in chunks; stop (BuildStopped) as soon as the projected build passes cap_s."""
    import faiss

    n, dim = base.shape
    by_residual = not factory.endswith(" nores")
    index = faiss.index_factory(dim, factory.removesuffix(" nores"), faiss.METRIC_INNER_PRODUCT)
    if not by_residual:
        faiss.extract_index_ivf(index).by_residual = False
    started = time.perf_counter()
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        train_n = min(n, 65536, 32 * ivf.nlist if ivf is not None else 65536)
        _configure_training(index, faiss, train_n)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=train_n, replace=False))
        index.train(np.ascontiguousarray(base[rows]))
    trained = time.perf_counter()
    if trained - started > cap_s:
        raise BuildStopped(f"training alone took {trained - started:.0f} s (cap {cap_s:.0f} s)")
    for start in range(0, n, CHUNK):
        index.add(np.ascontiguousarray(base[start:start + CHUNK]))
        done = min(n, start + CHUNK)
        projected = (trained - started) + (time.perf_counter() - trained) * n / done
        if done < n and projected > cap_s:
            raise BuildStopped(f"projected build {projected / 60:.1f} min after {done:,} vectors (cap "
                               f"{cap_s / 60:.0f} min)")
    return index, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- measuring
def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth)]))


def serialised_bytes(index) -> int:
    import faiss

    total = [0]

    def count(chunk):
        total[0] += len(chunk)
        return len(chunk)

    faiss.write_index(getattr(index, "faiss", index), faiss.PyCallbackIOWriter(count))  # store.refine keeps it in .faiss
    return total[0]


def set_params(index, params: dict) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            if name != "quantizer_efSearch":  # only an HNSW coarse quantizer has one
                raise


def batch_search(index, queries: np.ndarray, threads: int = 2):
    import faiss

    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    _, found = index.search(queries, K)
    return found, time.perf_counter() - started


def single_latencies(index, queries: np.ndarray, warmup: np.ndarray, *, budget_s: float) -> np.ndarray:
    """Seconds per query, one at a time on one thread, stopping early past budget_s (exact search is slow)."""
    import faiss

    faiss.omp_set_num_threads(1)
    for row in warmup:
        index.search(row[None], K)
    times = []
    deadline = time.perf_counter() + budget_s
    for row in queries:
        started = time.perf_counter()
        index.search(row[None], K)
        times.append(time.perf_counter() - started)
        if time.perf_counter() > deadline and len(times) >= 20:
            break
    return np.array(times)


def measure(index, data, args) -> dict:
    """Recall, single-query p50/p99 (1 thread) and batch queries/s (2 threads) on the evaluation queries."""
    queries, truth = data.queries[:args.queries], data.truth[:args.queries]
    warmup = data.queries[args.queries:args.queries + args.warmup]
    times = single_latencies(index, queries, warmup, budget_s=args.latency_budget_s)
    # a slow (exact) index gets a batch that fits in about half a minute; its recall is then on that batch
    batch = min(len(queries), max(100, int(30 * 2 / max(np.median(times), 1e-6))))
    found, seconds = batch_search(index, queries[:batch])
    return {"recall": round(recall_at_k(found, truth[:batch]), 4), "p50_ms": round(1000 * np.median(times), 3),
            "p99_ms": round(1000 * np.percentile(times, 99), 3), "latency_queries": len(times),
            "qps_2_threads": round(batch / seconds, 1), "batch_queries": batch, "bytes": serialised_bytes(index)}


def tune_recall(index, params: dict, data, args) -> float:
    set_params(index, _with_quantizer_ef(params) if "nprobe" in params else params)
    found, _ = batch_search(index, data.tune_queries)
    return recall_at_k(found, data.tune_truth)


def smallest_reaching(index, name: str, grid: list, extra: dict, data, args) -> tuple[dict, float, list]:
    """The first grid value (then refined between grid points) whose tuning recall reaches the target."""
    trace, previous = [], None
    for value in grid:
        recall = tune_recall(index, {**extra, name: value}, data, args)
        trace.append((value, round(recall, 4)))
        if recall >= args.target_recall:
            low = previous
            while low is not None and value - low > max(1, value // 8):  # bisect down to ~12 % of the step
                middle = (low + value) // 2
                middle_recall = tune_recall(index, {**extra, name: middle}, data, args)
                trace.append((middle, round(middle_recall, 4)))
                if middle_recall >= args.target_recall:
                    value, recall = middle, middle_recall
                else:
                    low = middle
            return {**extra, name: value}, recall, trace
        previous = value
    return {**extra, name: grid[-1]}, recall, trace  # never reached: the most thorough setting


def _with_quantizer_ef(params: dict) -> dict:
    """An HNSW coarse quantizer must look wider than the lists it returns, or nprobe stops mattering."""
    return {**params, "quantizer_efSearch": max(32, 2 * params["nprobe"])}


def tune(index, kind: str, data, args) -> tuple[dict, float, list]:
    import faiss

    if kind == "flat":
        return {}, None, []
    if kind == "hnsw":
        return smallest_reaching(index, "efSearch", EF_GRID, {}, data, args)
    nlist = faiss.extract_index_ivf(index).nlist
    nprobes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= nlist]
    if kind == "ivf":
        params, recall, trace = smallest_reaching(index, "nprobe", nprobes, {}, data, args)
        params = _with_quantizer_ef(params)
        set_params(index, params)
        return params, recall, trace
    best = None  # ivf_refine: for each refine factor the smallest nprobe, then the fastest of those
    for k_factor in K_FACTORS:
        params, recall, trace = smallest_reaching(index, "nprobe", nprobes, {"k_factor_rf": k_factor}, data, args)
        if recall < args.target_recall:
            continue
        set_params(index, _with_quantizer_ef(params))
        ms = 1000 * np.median(single_latencies(index, data.tune_queries[:200], data.tune_queries[:20], budget_s=10))
        if best is None or ms < best[3]:
            best = (_with_quantizer_ef(params), recall, trace, ms)
    if best is None:
        params = _with_quantizer_ef({"k_factor_rf": K_FACTORS[-1], "nprobe": nprobes[-1]})
        best = (params, tune_recall(index, params, data, args), [], None)
    set_params(index, best[0])
    return best[0], best[1], best[2]


# ---------------------------------------------------------------------------------------------- the systems
def run_exact(data, args, budget: int) -> list[dict]:
    import faiss

    index = faiss.IndexFlatIP(data.base.shape[1])
    started = time.perf_counter()
    for start in range(0, len(data.base), CHUNK):
        index.add(np.ascontiguousarray(data.base[start:start + CHUNK]))
    row = {"system": "exact", "index": "Flat (float32)", "params": {}, "build_s": round(time.perf_counter() -
                                                                                         started, 1)}
    row.update(measure(index, data, args))
    del index
    return [row]


def run_hand(data, args, budget: int) -> list[dict]:
    rows = []
    n, dim = data.base.shape
    for config in hand_configs(n, dim):
        if args.configs and not any(config["factory"].startswith(part) for part in args.configs.split("|")):
            continue
        row = {"system": "hand", "index": config["factory"], "params": {}}
        if config["bytes"] > budget:
            rows.append({**row, "status": f"skipped: over budget ({config['bytes'] / GIB:.2f} GiB estimated)"})
            continue
        log.info("hand-picked %s", config["factory"])
        try:
            index, build_s = build_capped(config["factory"], data.base, cap_s=60 * args.build_cap_min,
                                          seed=args.seed)
        except BuildStopped as stopped:
            rows.append({**row, "status": f"stopped: {stopped}"})
            continue
        params, tune_recall_value, trace = tune(index, config["kind"], data, args)
        row.update(params=params, build_s=round(build_s, 1), tune_recall=tune_recall_value, tuning=trace)
        row.update(measure(index, data, args))
        rows.append(row)
        del index
    return rows


def run_auto(data, args, budget: int) -> list[dict]:
    """This project's automatic choice: store.ann.plan_index + build_index, measured like the others."""
    try:
        from store import ann
    except ImportError as error:  # the hook: store/ann.py is being written beside this benchmark
        return [{"system": "auto", "index": "-", "params": {}, "status": f"missing: store.ann ({error})"}]
    import faiss

    n, dim = data.base.shape
    plan = ann.plan_index(n, dim, memory_bytes=budget, target_recall=args.target_recall)
    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    built = ann.build_index(data.base, np.arange(n, dtype=np.int64), plan, target_recall=args.target_recall,
                            k=K, seed=args.seed)
    build_s = time.perf_counter() - started
    source = (REPO / "store" / "ann.py").read_bytes() + (REPO / "store" / "refine.py").read_bytes()
    committed = subprocess.run(["git", "log", "-1", "--format=%h", "--", "store/ann.py", "store/refine.py"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    row = {"system": "auto", "index": plan.factory, "params": dict(built.params), "reason": plan.reason,
           "ann_py": {"sha256": hashlib.sha256(source).hexdigest()[:12], "last_commit": committed or None},
           "estimated_bytes": plan.estimated_bytes, "build_s": round(build_s, 1),
           "build_recall": None if built.recall is None else round(built.recall, 4)}
    row.update(measure(built.index, data, args))
    return [row]


AUTOFAISS_SCRIPT = """
import json, sys, time
from autofaiss import build_index
a = json.loads(sys.argv[1])
started = time.perf_counter()
_, infos = build_index(embeddings=a["embeddings"], index_path=a["index_path"], index_infos_path=a["infos_path"],
                       max_index_memory_usage=a["memory"], current_memory_available=a["available"],
                       metric_type="ip")
print("AUTOFAISS " + json.dumps({"build_s": time.perf_counter() - started, "infos": infos}, default=str))
"""


def autofaiss_python() -> Path:
    python = AUTOFAISS_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import autofaiss"], capture_output=True).returncode == 0:
        return python
    log.info("creating %s (autofaiss 2.18 needs numpy<2 and faiss-cpu<=1.13.2)", AUTOFAISS_VENV)
    subprocess.run([sys.executable, "-m", "venv", "--clear", AUTOFAISS_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *AUTOFAISS_PINS], check=True)
    return python


def run_autofaiss(data, args, budget: int, memory_text: str) -> list[dict]:
    import faiss

    python = autofaiss_python()
    out_dir = data.data_dir / "autofaiss"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    available = f"{max(2, min(16, int(_ram_available_gib() * 0.6)))}G"
    settings = {"embeddings": str(data.embeddings_dir), "index_path": str(out_dir / "knn.index"),
                "infos_path": str(out_dir / "infos.json"), "memory": memory_text, "available": available}
    row = {"system": "autofaiss", "index": "?", "params": {}, "settings": {"max_index_memory_usage": memory_text,
                                                                          "current_memory_available": available}}
    log.info("autofaiss (limit %d min)", args.autofaiss_minutes)
    started = time.perf_counter()
    process = subprocess.Popen([python, "-c", AUTOFAISS_SCRIPT, json.dumps(settings)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=60 * args.autofaiss_minutes)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        chosen = [line for line in output.splitlines() if "index_key" in line or "The best" in line][-3:]
        return [{**row, "status": f"did not finish in {args.autofaiss_minutes} min", "log_tail": chosen}]
    wall_s = time.perf_counter() - started
    result = [line for line in output.splitlines() if line.startswith("AUTOFAISS ")]
    if process.returncode != 0 or not result:
        return [{**row, "status": f"failed (exit {process.returncode})", "log_tail": output.splitlines()[-8:]}]
    infos = json.loads(result[-1][len("AUTOFAISS "):])
    index = faiss.read_index(str(out_dir / "knn.index"))
    key, param = infos["infos"].get("index_key", "?"), infos["infos"].get("index_param", "")
    faiss.ParameterSpace().set_index_parameters(index, param)
    row.update(index=key, params={"autofaiss": param}, build_s=round(infos["build_s"], 1), wall_s=round(wall_s, 1))
    row.update(measure(index, data, args))
    rows = [row]
    kind = "ivf" if faiss.try_extract_index_ivf(index) is not None else ("hnsw" if "HNSW" in key else "flat")
    if kind != "flat":  # the same index at the benchmark's recall target: the like-for-like comparison
        params, tune_recall_value, trace = tune(index, kind, data, args)
        retuned = {**row, "system": "autofaiss@target", "params": params, "tune_recall": tune_recall_value,
                   "tuning": trace}
        retuned.update(measure(index, data, args))
        rows.append(retuned)
    del index
    shutil.rmtree(out_dir, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------- verdicts, tables
def _best_hand(run: dict, target: float):
    ok = [r for r in run["rows"] if r["system"] == "hand" and r.get("within_budget") and
          (r.get("recall") or 0) >= target]
    return min(ok, key=lambda r: r["p50_ms"]) if ok else None


def _verdict(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _meets(row, target: float, p50_ms: float, build_s: float | None) -> bool | None:
    if row is None or "recall" not in row:
        return None
    ok = row["recall"] >= target and row["p50_ms"] <= p50_ms and row.get("within_budget", False)
    return ok and (build_s is None or row["build_s"] <= build_s)


def targets(run: dict, target: float) -> list[dict]:
    """The issue's targets for one regime and size, each PASS / FAIL / n/a with the figures behind it."""
    rows = {r["system"]: r for r in run["rows"]}
    auto, best = rows.get("auto"), _best_hand(run, target)
    easy = run["regime"] == "easy"
    p50_cap, build_cap = (0.5, 180) if easy else (2.0, None)
    want = (f"recall@10 >= {target}, p50 <= {p50_cap} ms" + (", build <= 3 min" if easy else "") +
            ", within budget")
    share = run["own_cluster_share"]
    out = [{"target": "regime: own-cluster share of the true top-10 " + (">= 0.90" if easy else "< 0.70"),
            "verdict": _verdict(share >= 0.9 if easy else share < 0.7), "detail": f"{share:.3f}"}]
    for name, row in (("automatic choice", auto), ("best hand-picked", best)):
        detail = "-" if row is None or "recall" not in row else (
            f"{row['index']}: recall {row['recall']:.3f}, p50 {row['p50_ms']:.2f} ms, build {row['build_s']:.0f} s, "
            f"{row['bytes'] / GIB:.2f} GiB")
        out.append({"target": f"{name}: {want}", "verdict": _verdict(_meets(row, target, p50_cap, build_cap)),
                    "detail": detail})
    ok, detail = None, "needs the automatic choice and a hand-picked config at the target"
    if auto and "recall" in auto and best:
        ok = auto["recall"] >= target and auto["p50_ms"] <= 1.5 * best["p50_ms"]
        detail = f"{auto['p50_ms']:.2f} ms vs {best['p50_ms']:.2f} ms ({auto['p50_ms'] / best['p50_ms']:.2f}x)"
    out.append({"target": "automatic choice within 1.5x of the best hand-picked p50 at the target recall",
                "verdict": _verdict(ok), "detail": detail})
    rival = rows.get("autofaiss@target") or rows.get("autofaiss")
    ok, detail = None, "autofaiss not run"
    if rival is not None and "recall" not in rival:
        detail = f"autofaiss {rival.get('status')}" + (f"; automatic choice built in {auto['build_s']:.0f} s"
                                                     if auto and "build_s" in auto else "")
    elif rival is not None and auto and "recall" in auto:
        ok = auto["recall"] >= min(target, rival["recall"]) and 10 * auto["p50_ms"] <= rival["p50_ms"]
        detail = (f"{rival['system']} {rival['index']} {rival['params']}: recall {rival['recall']:.3f}, p50 "
                  f"{rival['p50_ms']:.2f} ms; automatic {auto['recall']:.3f}, {auto['p50_ms']:.2f} ms "
                  f"({rival['p50_ms'] / auto['p50_ms']:.1f}x faster)")
    out.append({"target": "automatic choice >= 10x faster than autofaiss at equal or better recall",
                "verdict": _verdict(ok), "detail": detail})
    return out


def _cell(row: dict, key: str, form: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, form)


def render_markdown(report: dict) -> str:
    m, sw = report["machine"], report["software"]
    lines = ["# Search at scale (bench/search_scale.py)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, host {m['host']}, Python "
             f"{m['python']}. Software: {json.dumps(sw)}.", "",
             "Single-query latency: one thread, one query at a time after a warm-up. Batch: all evaluation "
             "queries in one call on two threads. Bytes: the serialised index. Recall@10 against exact search "
             "on held-out queries; approximate indexes tuned on a separate query set to the smallest setting "
             "reaching the target. Other processes shared the 2 cores: see the load averages.", "",
             f"Runs in this file: {', '.join(report['runs'])}. Data: the seeded generator of "
             "`bench/_search_data.py` (described in its docstring), queries held out from the same generator. "
             "`auto` is `store.ann.plan_index` + `build_index`; its build time includes its own tuning. "
             "`autofaiss` is autofaiss 2.18 with its defaults (its own venv, faiss 1.13.2); `autofaiss@target` is "
             "the same index with efSearch / nprobe re-tuned here to the recall target, the like-for-like point. "
             "Hand-picked builds projected past --build-cap-min are stopped and listed as such.", ""]
    for key, run in report["runs"].items():
        lines += [f"## {run['regime']} / {run['size']}: {run['n']:,} x {run['dim']}, budget "
                  f"{run['budget_bytes'] / GIB:.3g} GiB", "",
                  f"- Represents: {run['represents']}.",
                  f"- Own-cluster share of a query's exact top-10: {run['own_cluster_share']:.3f}. Data "
                  f"generated in {run['generate_s']} s, exact top-10 in {run['truth_s']} s.",
                  f"- `{run['command']}`, {run['date']}, load average {run['load_start']} at start, "
                  f"{run['load_end']} at end, {run['wall_s'] / 60:.1f} min."]
        lines += [f"- Rows of other systems from an earlier run: `{e['command']}`, {e['date']}, load average "
                  f"{e['load_start']} at start, {e['load_end']} at end." for e in run.get("earlier_runs", [])]
        lines += ["",
                  "| system | index | search params | build s | GiB | in budget | recall@10 | p50 ms | p99 ms "
                  "| q/s (2 thr) | note |", "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
        for row in run["rows"]:
            params = ", ".join(f"{k}={v}" for k, v in row.get("params", {}).items() if k != "quantizer_efSearch")
            size = "-" if "bytes" not in row else f"{row['bytes'] / GIB:.2f}"
            budget = "-" if "within_budget" not in row else ("yes" if row["within_budget"] else "**over**")
            note = row.get("status", "")
            if row.get("latency_queries") and row["latency_queries"] < 1000:
                note += f"latency over {row['latency_queries']} queries, recall over {row['batch_queries']}"
            lines.append(f"| {row['system']} | `{row['index']}` | {params or '-'} | {_cell(row, 'build_s', '.1f')} | "
                         f"{size} | {budget} | {_cell(row, 'recall', '.3f')} | {_cell(row, 'p50_ms', '.3f')} | "
                         f"{_cell(row, 'p99_ms', '.3f')} | {_cell(row, 'qps_2_threads', ',.0f')} | {note} |")
        lines += ["", "| target | verdict | figures |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['verdict']} | {t['detail']} |" for t in run["targets"]]
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- GPU exact search
class LocalTorchExact:
    """Exact inner-product search in torch: a float16 matrix product and top-k, one batch of queries at a time."""

    def __init__(self, vectors):
        self.vectors = vectors  # (N, D) float16 on the device

    def search(self, queries, k: int):
        scores = queries @ self.vectors.T  # (B, N)
        top = scores.topk(k, dim=1)
        return top.values, top.indices


def _product_torch_index():
    """The store's torch exact searcher when this checkout has one (store.ann or store.torch_exact), else None."""
    for module in ("store.ann", "store.torch_exact"):
        try:
            found = getattr(__import__(module, fromlist=["TorchExactIndex"]), "TorchExactIndex", None)
        except Exception:  # noqa: BLE001 - a missing or half-written module: fall back to the local one
            found = None
        if found is not None:
            return found
    return None


def torch_exact(out_path: Path, *, n: int = 1_000_000, dim: int = 4096, single: int = 500, batch: int = 1024,
                batches: int = 8) -> None:
    """1M x 4096 float16 exact search on a CUDA device: single-query latency and batch queries/s."""
    import torch

    if not torch.cuda.is_available():
        log.info("--torch-exact: no CUDA device, skipped")
        return
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    # exact search costs the same whatever the vectors, so plain random unit vectors stand in for embeddings
    vectors = torch.empty((n, dim), dtype=torch.float16, device=device)
    for start in range(0, n, CHUNK):
        rows = torch.randn((min(CHUNK, n - start), dim), generator=gen, device=device)
        vectors[start:start + len(rows)] = torch.nn.functional.normalize(rows, dim=1).half()
    queries = torch.nn.functional.normalize(torch.randn((batch * batches, dim), generator=gen, device=device),
                                            dim=1).half()
    searcher, source = LocalTorchExact(vectors), "local (bench/search_scale.py)"
    product = _product_torch_index()
    if product is not None:
        try:  # the product's searcher takes host float32 vectors and numpy queries, as the store gives them
            host = np.empty((n, dim), dtype=np.float32)
            for start in range(0, n, CHUNK):
                host[start:start + CHUNK] = vectors[start:start + CHUNK].float().cpu().numpy()
            searcher, source = product(np.arange(n, dtype=np.int64), host, device=str(device)), \
                f"{product.__module__}.{product.__name__}"
            del host
        except Exception as error:  # an API still being written: measure the local one and say why
            source += f"; {product.__module__}.{product.__name__} not usable here: {error}"
    if not isinstance(searcher, LocalTorchExact):
        queries = queries.float().cpu().numpy()

    def timed(q):
        torch.cuda.synchronize()
        started = time.perf_counter()
        searcher.search(q, K)
        torch.cuda.synchronize()
        return time.perf_counter() - started

    for row in range(20):
        timed(queries[row:row + 1])
    times = np.array([timed(queries[row:row + 1]) for row in range(single)])
    timed(queries[:batch])
    batch_s = sum(timed(queries[i * batch:(i + 1) * batch]) for i in range(batches))
    exact32 = torch.topk(torch.as_tensor(queries[:64]).to(device).float() @ vectors.float().T, K,
                         dim=1).indices.cpu().numpy()
    found = searcher.search(queries[:64], K)[1]
    found = found.cpu().numpy() if hasattr(found, "cpu") else np.asarray(found)
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "searcher": source,
              "n": n, "dim": dim, "dtype": "float16", "index_gib": round(n * dim * 2 / GIB, 2),
              "single_p50_ms": round(1000 * float(np.median(times)), 3),
              "single_p99_ms": round(1000 * float(np.percentile(times, 99)), 3), "single_queries": single,
              "batch": batch, "batch_qps": round(batch * batches / batch_s, 1),
              "recall_vs_float32": round(recall_at_k(found, exact32), 4)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


# ---------------------------------------------------------------------------------------------- the run
def _ram_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram, 1),
            "python": platform.python_version()}


def software() -> dict:
    import faiss

    versions = {"numpy": np.__version__, "faiss": faiss.__version__}
    python = AUTOFAISS_VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([python, "-c", "import autofaiss, faiss, numpy; from importlib.metadata import "
                                "version; print(version('autofaiss'), faiss.__version__, numpy.__version__)"],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            a, f, n = probe.stdout.split()
            versions["autofaiss_venv"] = {"autofaiss": a, "faiss": f, "numpy": n}
    return versions


def run_one(regime: str, size: str, args) -> dict:
    n, dim, budget, memory_text = SIZES[size]
    load_start = os.getloadavg()
    started = time.perf_counter()
    log.info("%s / %s: %d x %d, budget %.2f GiB", regime, size, n, dim, budget / GIB)
    data = _search_data.load_or_make(args.work_dir, regime, n, dim, seed=args.seed, k=K,
                                     queries=args.queries + args.warmup + args.tune_queries)
    tune_from = args.queries + args.warmup
    data.tune_queries, data.tune_truth = data.queries[tune_from:], data.truth[tune_from:]
    run = {"regime": regime, "represents": _search_data.REPRESENTS[regime], "size": size, "n": n, "dim": dim,
           "budget_bytes": budget, "own_cluster_share": round(_search_data.own_cluster_share(data), 3),
           "generate_s": round(data.generate_s, 1), "truth_s": round(data.truth_s, 1),
           "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
           "load_start": [round(x, 2) for x in load_start], "rows": []}
    runners = {"exact": run_exact, "hand": run_hand, "auto": run_auto,
               "autofaiss": lambda d, a, b: run_autofaiss(d, a, b, memory_text)}
    for system in args.systems:
        try:
            rows = runners[system](data, args, budget)
        except Exception as error:  # one broken system (a module being written meanwhile) must not end the run
            log.exception("%s failed", system)
            rows = [{"system": system, "index": "-", "params": {}, "status": f"failed: {error!r}"[:300]}]
        for row in rows:
            if "bytes" in row:
                row["within_budget"] = row["bytes"] <= budget
            run["rows"].append(row)
            log.info("  %s", {key: row.get(key) for key in ("system", "index", "params", "build_s", "recall",
                                                             "p50_ms", "bytes", "status")})
    run["targets"] = targets(run, args.target_recall)
    run["load_end"] = [round(x, 2) for x in os.getloadavg()]
    run["wall_s"] = round(time.perf_counter() - started, 1)
    if not args.keep_data:
        shutil.rmtree(data.data_dir, ignore_errors=True)
    return run


def merge_runs(previous: dict | None, run: dict, args) -> dict:
    """Keep an earlier run's rows for the systems this run did not measure (same seed, so the same vectors)."""
    remeasured = {(r["system"], r["index"]) for r in run["rows"]}
    kept = [] if previous is None else [
        r for r in previous["rows"] if (r["system"], r["index"]) not in remeasured and
        (r["system"].split("@")[0] not in args.systems or (r["system"] == "hand" and args.configs))]
    if not kept:
        return run
    order = {name: i for i, name in enumerate(SYSTEMS)}
    run["rows"] = sorted(kept + run["rows"], key=lambda r: order[r["system"].split("@")[0]])
    earlier = {key: previous[key] for key in ("command", "date", "load_start", "load_end")}
    run["earlier_runs"] = previous.get("earlier_runs", []) + [earlier]
    run["targets"] = targets(run, args.target_recall)
    return run


def save(report: dict, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, default=str))
    out_path.with_suffix(".md").write_text(render_markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="the 50,000 x 256 size only (64 MiB budget)")
    parser.add_argument("--sizes", default="1m-1024,250k-4096", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--regimes", default="easy,hard")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    parser.add_argument("--configs", default="", help="only the hand-picked factories starting with one of "
                        "these, separated by | (e.g. 'IVF' or 'HNSW32,SQ8|IVF')")
    parser.add_argument("--queries", type=int, default=1000, help="evaluation queries (latency and recall)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tune-queries", type=int, default=500)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--build-cap-min", type=float, default=8, help="stop a hand-picked build projected past this")
    parser.add_argument("--autofaiss-minutes", type=float, default=30)
    parser.add_argument("--latency-budget-s", type=float, default=15, help="single-query timing per system")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    parser.add_argument("--keep-data", action="store_true", help="keep the memmaps for a later run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="replace --out instead of merging runs into it")
    parser.add_argument("--torch-exact", action="store_true", help="only the torch float16 exact search (CUDA)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.torch_exact:
        torch_exact(args.out or Path(os.environ.get("OUT", REPO / "bench" / "results" / "gpu")) /
                    "search_scale_torch.json")
        return
    if args.out is None:  # a smoke run is not a result: it stays in the scratch folder
        args.out = args.work_dir / "search_scale_quick.json" if args.quick else REPO / "bench" / "results" / \
            "search_scale.json"
    args.systems = [s for s in args.systems.split(",") if s]
    sizes = ["quick"] if args.quick else args.sizes.split(",")
    report = {"runs": {}}
    if args.out.exists() and not args.fresh:
        report = json.loads(args.out.read_text())
    report.update(machine=machine(), software=software())
    for size in sizes:
        for regime in args.regimes.split(","):
            key = f"{regime}/{size}"
            report["runs"][key] = merge_runs(None if args.fresh else report["runs"].get(key),
                                             run_one(regime, size, args), args)
            save(report, args.out)  # after each run, so a long session keeps what it measured
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
