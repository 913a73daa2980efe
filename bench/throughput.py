"""Indexing throughput, side by side in one run: forward-only, the model card's loop, and the indexer.

For a random-weight DINOv3 of a known shape (indexer.random_model.SHAPES; compute per image, and so speed,
is the real model's) built directly on the device, over copies of real JPEG chips:
1. forward-only: the backbone on pre-made input tensors, best of several batch sizes, no I/O;
2. naive: the model card's way, one image at a time: open, preprocess, forward, take pooler_output;
3. indexer: `index_collection` into a fresh store, what `lookalike index` runs once the model is loaded
   (scan, decode in workers, embed, PCA, SQLite and FAISS writes), at its default batch (`--batch-size auto`),
   and at forward-only's batch too where that differs;
plus single-query latency (p50/p99), peak memory and, on a GPU, model FLOP utilisation. Forward-only and
the indexer use the indexer's dtype (float16 on CUDA, bfloat16 on a CPU with native bf16, else float32) and
backbone as load_backbone leaves it (on an AMX CPU, keys padded to a multiple of 16; on most CPUs rewritten
layers: indexer/attention.py, indexer/cpu_fusion.py); the naive loop runs in the checkpoint's dtype with
transformers' own layers and attention, as from_pretrained loads it (see main()).

Two reference points put the ratios in context:
- the matrix-product ceiling: every linear layer (and the patch embedding) of the model run alone, back to
  back, on inputs of the timed batch's shape. No attention, norms or activations, so no forward can beat it;
  ceiling/naive is the most indexer/naive could be on this machine.
- on a CPU, the naive loop in float16 as well: the real checkpoint is FP16, transformers 5 loads a
  checkpoint in its own dtype by default, and a CPU without FP16 arithmetic runs it slowly.

--variants adds, at each resolution, forward-only and the one-image forward with SDPA held to each attention
backend in turn, the indexer with uint8 against float32 pixel hand-over, and on CUDA the one-image forward
replayed from a CUDA graph against eager (what the search page waits for). --compile adds `lookalike index
--compile`, its forward-only timed in turn with the eager one (--repeat rounds).

    python bench/throughput.py --device cpu --shape vits16 --resolutions 224 --out bench/results/cpu
    python bench/throughput.py --device cuda --shape vit7b16 --out bench/results/gpu   # via gpu_check.sh
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer import attention  # noqa: E402
from indexer.cpu_fusion import FusedLinear  # noqa: E402
from indexer.embedder import CPU_BATCH, DinoV3Embedder, tune_for_device  # noqa: E402
from indexer.images import load_image  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402
from indexer.pipeline import index_collection  # noqa: E402
from indexer.random_model import random_config  # noqa: E402

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense FP16 tensor-core peak, SXM
DTYPE = torch.float16
DEVICE = "cuda"  # --device cpu runs the same script on a tiny shape, to check it before spending GPU time


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def default_dtype(device: str) -> torch.dtype:
    from indexer.embedder import resolve_dtype

    return resolve_dtype("auto", torch.device(device))


def build_backbone(shape: str, dtype: torch.dtype):
    from transformers import DINOv3ViTModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(DEVICE):
            model = DINOv3ViTModel(random_config(shape))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def tokens_per_image(config, resolution: int) -> int:
    """The sequence a DINOv3 ViT attends over: CLS, registers, patches."""
    return 1 + config.num_register_tokens + (resolution // config.patch_size) ** 2


def attention_flops(config, resolution: int) -> float:
    """Attention's QKᵀ and AV over all layers, per image."""
    return 4 * config.num_hidden_layers * tokens_per_image(config, resolution) ** 2 * config.hidden_size


def flops_per_image(model, resolution: int) -> float:
    """2 × parameters × tokens for the matrix products, plus attention's QKᵀ and AV."""
    params = sum(p.numel() for p in model.parameters())
    return 2 * params * tokens_per_image(model.config, resolution) + attention_flops(model.config, resolution)


def cuda_time(fn, *, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def forward_only(model, resolution: int, batch_sizes, *, runs: int) -> dict:
    best = {"images_per_second": 0.0}
    tried = {}
    for batch in batch_sizes:
        pixels = torch.randn(batch, 3, resolution, resolution, device=DEVICE, dtype=DTYPE)
        try:
            times = cuda_time(lambda: model(pixel_values=pixels).pooler_output, warmup=2, runs=runs)
        except torch.OutOfMemoryError:
            tried[batch] = "out of memory"
            torch.cuda.empty_cache()
            continue
        rate = batch / statistics.median(times)
        tried[batch] = round(rate, 2)
        if rate > best["images_per_second"]:
            best = {"images_per_second": rate, "batch_size": batch}
    if "batch_size" not in best:
        raise torch.OutOfMemoryError(f"forward-only ran out of memory at every batch size tried ({tried})")
    # the best batch's shape, timed already (a compiled model must not recompile), not the last one tried: that
    # one may have run out of memory
    pixels = torch.randn(best["batch_size"], 3, resolution, resolution, device=DEVICE, dtype=DTYPE)
    output = model(pixel_values=pixels).last_hidden_state
    best["finite"] = bool(torch.isfinite(output).all())
    best["by_batch_size"] = tried
    return best


@torch.inference_mode()
def naive(model, files, resolution: int) -> dict:
    """The model card's way: one image at a time, preprocess, forward, take pooler_output."""
    mean = torch.tensor(SAT493M["mean"]).view(3, 1, 1)
    std = torch.tensor(SAT493M["std"]).view(3, 1, 1)

    def one(path):
        from PIL import Image

        image = Image.open(path).convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
        pixels = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255 - mean) / std
        return model(pixel_values=pixels[None].to(DEVICE, next(model.parameters()).dtype)).pooler_output.float().cpu()

    one(files[0])
    sync()
    start = time.perf_counter()
    for path in files:
        one(path)
    seconds = time.perf_counter() - start
    return {"images": len(files), "seconds": seconds, "images_per_second": len(files) / seconds}


@torch.inference_mode()
def matmul_ceiling(model, resolution: int, batch: int, *, runs: int) -> dict:
    """The model's matrix products alone: each linear layer on a (batch × tokens, in) input, plus the patch
    convolution, timed back to back. A bound on any forward pass that computes them, not a forward pass."""
    tokens = tokens_per_image(model.config, resolution)
    dtype = next(model.parameters()).dtype
    inputs = {}
    calls = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, FusedLinear)):
            shape = (batch * tokens, module.weight.shape[1])
            inputs.setdefault(shape, torch.randn(shape, device=DEVICE, dtype=dtype))
            # a rewritten one's product alone (no activation), on its weights as packed
            product = module.product if isinstance(module, FusedLinear) else module
            calls.append((product, shape))
        elif isinstance(module, torch.nn.Conv2d):
            shape = (batch, module.in_channels, resolution, resolution)
            inputs.setdefault(shape, torch.randn(shape, device=DEVICE, dtype=dtype))
            calls.append((module, shape))

    def products():
        for module, shape in calls:
            module(inputs[shape])

    seconds = statistics.median(cuda_time(products, warmup=1, runs=runs))
    return {"images_per_second": batch / seconds, "batch_size": batch, "products": len(calls)}


def bench_embedder(model, resolution: int, *, compile: bool = False, transport: str | None = None) -> DinoV3Embedder:
    """The indexer's embedder; `transport` ("uint8" or "float32") overrides how decode workers hand over pixels."""
    embedder = DinoV3Embedder(model, model="random-sat493m", resolution=resolution, normalization=SAT493M,
                              pooling="cls", compile=compile)
    if transport is not None:
        embedder.__class__ = type("PinnedTransport", (DinoV3Embedder,), {"takes_uint8": transport == "uint8"})
    return embedder


def transport_ab(model, pool, resolution: int, *, batch_size: int, workers: int, rounds: int = 1) -> dict:
    """`lookalike index` with the decode workers handing over uint8 (normalised on the model's device) and
    float32 (normalised in the workers), alternated; uint8 is the default."""
    rates = {"uint8": [], "float32": []}
    for number in range(rounds):
        for transport in ("uint8", "float32") if number % 2 == 0 else ("float32", "uint8"):
            run = indexer_run(bench_embedder(model, resolution, transport=transport), pool, batch_size=batch_size,
                              workers=workers)
            rates[transport].append(run["images_per_second"])
    return {name: {"images_per_second": statistics.median(values), "images": len(pool)} for name, values in rates.items()}


def indexer_run(embedder, files, *, batch_size: int, workers: int) -> dict:
    """One `index_collection` into a fresh store. On a CPU, where the forward returns only when it is done, also
    the wall time spent in the backbone's forward: the rest is the indexer's own work on the model's thread
    (start, hand-over, normalisation, writes, finish); a forward slower than forward-only alone is contention."""
    in_forward = [0.0]
    if DEVICE == "cpu":
        run = embedder._run

        def timed_run(pixels, **options):
            started = time.perf_counter()
            try:
                return run(pixels, **options)
            finally:
                in_forward[0] += time.perf_counter() - started

        embedder._run = timed_run
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(str(f) for f in files))
        start = time.perf_counter()
        summary = index_collection([listing], Path(tmp) / "store", embedder=embedder, batch_size=batch_size,
                                   workers=workers, progress=False)
        seconds = time.perf_counter() - start
    embedded = summary["indexed"] - summary.get("copied", 0)  # every file has bytes of its own: copied is 0
    result = {"images": embedded, "copied": summary.get("copied", 0), "failed": summary["failed"], "seconds": seconds,
              "images_per_second": embedded / seconds, "batch_size": batch_size, "workers": workers}
    if DEVICE == "cpu":
        result.update(forward_seconds=in_forward[0], forward_images_per_second=embedded / in_forward[0])
    return result


def percentiles_ms(seconds) -> dict:
    """p50 and p99 of timings in seconds, in milliseconds (the nearest rank below, as every table here quotes)."""
    times = sorted(seconds)
    return {"p50_ms": 1000 * times[len(times) // 2],
            "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))]}


def query_latency(model, path, resolution: int, *, runs: int, repeat: int = 3) -> dict:
    """A query image through the embedder as the search page embeds it: decode, preprocess, forward, pooled
    vector on the host. On a GPU the embedder replays the one-image forward from a CUDA graph; there the same
    query with the graph turned off is timed in turn (`eager`), and the two vectors compared."""
    graphed = bench_embedder(model, resolution)
    eager = bench_embedder(model, resolution)
    eager.one_image = None

    def one(embedder):
        pixels = torch.from_numpy(embedder.preprocess(load_image(path)))[None]
        return embedder.embed(pixels).global_vectors.cpu()

    def quantiles(times):
        return {**percentiles_ms(times), "runs": len(times)}

    if graphed.one_image is None:  # a CPU: no graphs, one set of timings
        return quantiles(cuda_time(lambda: one(graphed), warmup=3, runs=runs))
    times = {"graphed": [], "eager": []}
    for _ in range(repeat):
        for name, embedder in (("graphed", graphed), ("eager", eager)):
            times[name] += cuda_time(lambda: one(embedder), warmup=3, runs=max(1, runs // repeat))
    difference = (one(graphed) - one(eager)).abs().max().item()
    return {**quantiles(times["graphed"]), "cuda_graph": True, "eager": quantiles(times["eager"]),
            "max_abs_difference": difference}


def copies(image_dir: Path, tmp: Path, count: int) -> list[Path]:
    """`count` files made from the chips under new names, each a chip's JPEG with a comment segment naming
    the copy: the same pixels, but bytes of its own (the indexer embeds identical bytes only once)."""
    chips = sorted(image_dir.glob("*.jpg"))
    out = []
    for number in range(count):
        chip = chips[number % len(chips)]
        target = tmp / f"copy{number // len(chips)}_{chip.name}"
        data, comment = chip.read_bytes(), f"lookalike bench copy {number}".encode()
        # after the SOI marker: COM (0xFFFE), its length (counting itself), the text
        target.write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:])
        out.append(target)
    return out


DEFAULTS = {  # device: {resolution: (batch sizes to try, indexed files, naive files)}
    "cuda": {224: ([32, 64, 128], 1024, 64), 512: ([8, 16, 32], 352, 24)},
    "cpu": {224: ([8, 16, 32], 192, 32), 512: ([2, 4], 32, 8)},
}


def measure_resolution(model, naive_model, pool, resolution, *, batch_sizes, file_count, naive_count, workers,
                       runs, peak, latency_runs, repeat: int = 1, naive_fp16=None) -> dict:
    """forward-only, naive and indexer `repeat` times in turn (A B C A B C ...); medians and per-round ratios."""
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd = forward_only(model, resolution, batch_sizes, runs=runs)  # picks the batch size
    batch = fwd["batch_size"]
    # the indexer runs as `lookalike index` does by default (--batch-size auto: CPU_BATCH on a CPU, probed on a
    # GPU); where that is not forward-only's best batch, it runs at that batch too, for comparison
    indexer_batch = bench_embedder(model, resolution).probe_batch_size()
    rounds = []
    for number in range(repeat):
        forward_rate = fwd["images_per_second"] if number == 0 else \
            forward_only(model, resolution, [batch], runs=runs)["images_per_second"]
        naive_rate = naive(naive_model, pool[:naive_count], resolution)["images_per_second"]
        indexer = indexer_run(bench_embedder(model, resolution), pool[:file_count], batch_size=indexer_batch,
                              workers=workers)
        if indexer_batch != batch:
            at_forward_batch = indexer_run(bench_embedder(model, resolution), pool[:file_count], batch_size=batch,
                                           workers=workers)["images_per_second"]
        try:
            ceiling = matmul_ceiling(model, resolution, batch, runs=runs)["images_per_second"]
        except torch.OutOfMemoryError:  # a reference point only: the round's measurements stand without it
            ceiling = None
            torch.cuda.empty_cache()
        rounds.append({"forward_only": forward_rate, "naive": naive_rate, "indexer": indexer["images_per_second"],
                       "matmul_ceiling": ceiling})
        if indexer_batch != batch:
            rounds[-1]["indexer_at_forward_batch"] = at_forward_batch
        if "forward_seconds" in indexer:
            rounds[-1].update(indexer_forward=indexer["forward_images_per_second"],
                              indexer_forward_share=indexer["forward_seconds"] / indexer["seconds"])
        if naive_fp16 is not None:  # few images: float16 on a CPU is slow
            rounds[-1]["naive_float16"] = naive(naive_fp16, pool[:max(4, naive_count // 4)],
                                                resolution)["images_per_second"]
    median = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    flops = flops_per_image(model, resolution)
    fwd["images_per_second"] = median("forward_only")
    row = {"flops_per_image": flops, "forward_only": fwd, "rounds": rounds,
           "naive": {"images": naive_count, "images_per_second": median("naive")},
           "indexer": {"images": file_count, "batch_size": indexer_batch, "workers": workers,
                       "images_per_second": median("indexer")},
           "indexer_over_forward": statistics.median(r["indexer"] / r["forward_only"] for r in rounds),
           "indexer_over_naive": statistics.median(r["indexer"] / r["naive"] for r in rounds)}
    if indexer_batch != batch:
        row["indexer_at_forward_batch"] = {
            "batch_size": batch, "images_per_second": median("indexer_at_forward_batch"),
            "over_forward": statistics.median(r["indexer_at_forward_batch"] / r["forward_only"] for r in rounds)}
    measured = [r for r in rounds if r["matmul_ceiling"]]
    if measured:
        row["matmul_ceiling"] = {
            "images_per_second": statistics.median(r["matmul_ceiling"] for r in measured), "batch_size": batch,
            "over_naive": statistics.median(r["matmul_ceiling"] / r["naive"] for r in measured),
            "forward_share": statistics.median(r["forward_only"] / r["matmul_ceiling"] for r in measured)}
    if all("indexer_forward" in r for r in rounds):
        row["indexer"]["time_split"] = {
            "forward_share": median("indexer_forward_share"),  # of the indexer's wall time, in the forward
            "forward_images_per_second": median("indexer_forward"),
            "forward_over_forward_only": statistics.median(r["indexer_forward"] / r["forward_only"] for r in rounds)}
    if naive_fp16 is not None:
        row["naive_float16"] = {"images_per_second": median("naive_float16"),
                                "indexer_over": statistics.median(r["indexer"] / r["naive_float16"] for r in rounds)}
    if peak:
        fwd["mfu"] = fwd["images_per_second"] * flops / peak
        row["indexer"]["mfu"] = row["indexer"]["images_per_second"] * flops / peak
    row["query_latency"] = query_latency(model, pool[0], resolution, runs=latency_runs)
    row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    return row


def compiled_variant(model, pool, resolution, *, batch_size, file_count, workers, runs, peak, rounds: int = 1) -> dict:
    """`lookalike index --compile`: the embedder's compiled forward; compile time, then forward-only compiled
    and eager in turn for `rounds` rounds (the ratio is the median of each round's), and the indexer once."""
    embedder = bench_embedder(model, resolution, compile=True)
    started = time.perf_counter()
    pixels = torch.randn(batch_size, 3, resolution, resolution, device=DEVICE, dtype=DTYPE)
    with torch.inference_mode():
        embedder._forward(pixel_values=pixels)
    sync()
    row = {"compile_seconds": time.perf_counter() - started, "batch_size": batch_size}
    side_by_side = []
    for number in range(rounds):
        pair = {}
        for name in ("compiled", "eager") if number % 2 == 0 else ("eager", "compiled"):
            forward = embedder._forward if name == "compiled" else model
            pair[name] = forward_only(forward, resolution, [batch_size], runs=runs)["images_per_second"]
        side_by_side.append(pair)
    row["forward_only"] = {"images_per_second": statistics.median(p["compiled"] for p in side_by_side),
                           "batch_size": batch_size, "rounds": side_by_side,
                           "eager_images_per_second": statistics.median(p["eager"] for p in side_by_side),
                           "over_eager": statistics.median(p["compiled"] / p["eager"] for p in side_by_side)}
    row["indexer"] = indexer_run(embedder, pool[:file_count], batch_size=batch_size, workers=workers)
    if peak:
        flops = flops_per_image(model, resolution)
        row["forward_only"]["mfu"] = row["forward_only"]["images_per_second"] * flops / peak
        row["indexer"]["mfu"] = row["indexer"]["images_per_second"] * flops / peak
    return row


BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")


def _failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"


def on_sdpa(model, measure):
    """measure() with the backbone on transformers' sdpa if it was loaded with split attention, which never calls
    SDPA (its backends would all time the same thing); padded keys do call it and stay."""
    loaded = model.config._attn_implementation
    if loaded == attention.SPLIT_NAME:
        model.set_attn_implementation("sdpa")
    try:
        return measure()
    finally:
        model.set_attn_implementation(loaded)


@torch.inference_mode()
def attention_backends(model, resolution: int, batch: int, *, runs: int, latency_runs: int, repeat: int = 2) -> dict:
    """Forward-only at `batch` and the one-image forward, with SDPA held to one backend at a time.

    Backends alternate within each of `repeat` rounds; medians. A backend the device or the inputs do not
    support is recorded with the reason instead of a figure.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pixels = torch.randn(batch, 3, resolution, resolution, device=DEVICE, dtype=DTYPE)
    one = pixels[:1].clone()
    rates, latencies, out = {}, {}, {}
    for _ in range(repeat):
        for name in BACKENDS:
            backend = getattr(SDPBackend, name, None)
            if backend is None:
                out[name] = "not in this torch"
                continue
            if isinstance(out.get(name), str):
                continue  # failed in an earlier round
            try:
                with sdpa_kernel([backend]):
                    times = cuda_time(lambda: model(pixel_values=pixels).pooler_output, warmup=1, runs=runs)
                    single = cuda_time(lambda: model(pixel_values=one).pooler_output, warmup=2, runs=latency_runs)
            except (RuntimeError, torch.OutOfMemoryError) as error:  # "No available kernel", out of memory
                out[name] = "unavailable: " + _failure(error)
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
                continue
            rates.setdefault(name, []).append(batch / statistics.median(times))
            latencies.setdefault(name, []).extend(single)
    for name in (name for name in BACKENDS if name in rates):
        single = percentiles_ms(latencies[name])
        out[name] = {"images_per_second": statistics.median(rates[name]), "batch_size": batch,
                     "one_image_p50_ms": single["p50_ms"], "one_image_p99_ms": single["p99_ms"]}
    return {name: out[name] for name in BACKENDS if name in out}


@torch.inference_mode()
def cuda_graph_query(model, resolution: int, *, runs: int, repeat: int = 3) -> dict:
    """The one-image forward (what the search page waits for) eager and replayed from a CUDA graph, alternated.

    A 40-layer forward on one image launches hundreds of small kernels; a graph replays them in one launch.
    """
    if DEVICE != "cuda":
        return {"skipped": "CUDA only"}
    static = torch.randn(1, 3, resolution, resolution, device=DEVICE, dtype=DTYPE)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                model(pixel_values=static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        started = time.perf_counter()
        with torch.cuda.graph(graph):
            captured = model(pixel_values=static).pooler_output
        capture_seconds = time.perf_counter() - started
    except Exception as error:  # noqa: BLE001 - a model that cannot be captured is a result, not a crash
        torch.cuda.synchronize()
        return {"failed": _failure(error)}
    eager, replay = [], []
    for _ in range(repeat):
        eager += cuda_time(lambda: model(pixel_values=static).pooler_output, warmup=2, runs=runs)
        replay += cuda_time(graph.replay, warmup=2, runs=runs)
    graph.replay()
    difference = (captured.float() - model(pixel_values=static).pooler_output.float()).abs().max().item()
    return {"eager": percentiles_ms(eager), "graph": percentiles_ms(replay), "capture_seconds": capture_seconds,
            "max_abs_difference": difference, "runs": len(eager)}


def main() -> None:
    from indexer.pipeline import default_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("samples/naip"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--shape", default="vit7b16", help="a shape from indexer.random_model.SHAPES")
    parser.add_argument("--resolutions", default="224,512")
    parser.add_argument("--workers", type=int, default=None, help="decode workers [indexer default]")
    parser.add_argument("--compile", action="store_true", help="also time `lookalike index --compile` at each resolution")
    parser.add_argument("--variants", action="store_true",
                        help="also time each SDPA attention backend and, on CUDA, a CUDA-graph single query")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="undo an earlier --variants (gpu_check.sh passes it; a short rerun leaves them out)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of forward-only, naive and indexer in turn; medians and per-round ratios")
    parser.add_argument("--files", type=int, default=None,
                        help="files the indexer indexes per round at each resolution [192 on a CPU at 224 px, "
                             "1024 on a GPU; see DEFAULTS]: more weighs its start and finish less, as in a bulk rebuild")
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE = args.device
    DTYPE = default_dtype(DEVICE)
    workers = default_workers(DEVICE) if args.workers is None else args.workers
    args.out.mkdir(parents=True, exist_ok=True)
    runs = 2 if args.quick else 5
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else cpu_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)

    started = time.perf_counter()
    # as load_backbone leaves it (padded keys on AMX, rewritten layers on most CPUs); the card's loop keeps
    # transformers' layers (naive_model below)
    model = tune_for_device(build_backbone(args.shape, DTYPE))
    sync()
    import transformers

    report = {
        "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device_name, "cores": os.cpu_count(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "model": f"random DINOv3 {args.shape}", "dtype": str(DTYPE).removeprefix("torch."),
        "attention": getattr(model.config, "_attn_implementation", None), "workers": workers,
        "rewritten_layers": list(getattr(model, "lookalike_fused", ())),
        "build_seconds": time.perf_counter() - started,
        "parameters": sum(p.numel() for p in model.parameters()), "peak_flops": peak, "results": {},
    }
    # The model card's loop runs in the checkpoint's dtype (from_pretrained's default): float16 for the
    # FP16 7B on a GPU; float32 for a float32 checkpoint on a CPU, where the card has no bfloat16 step.
    naive_model = model if DEVICE == "cuda" else build_backbone(args.shape, torch.float32)
    report["naive_dtype"] = str(next(naive_model.parameters()).dtype).removeprefix("torch.")
    # The same loop on the real (FP16) checkpoint, loaded as transformers 5 loads it by default: context
    # only, the targets are judged against the float32 loop.
    naive_fp16 = None if DEVICE == "cuda" or args.quick else build_backbone(args.shape, torch.float16)
    settings = {r: DEFAULTS[DEVICE][r] for r in map(int, args.resolutions.split(","))}
    if args.files:
        settings = {r: (b, args.files, n) for r, (b, f, n) in settings.items()}
    if args.quick:  # two batch sizes other than a CPU's default, so that the indexer also runs at forward-only's
        settings = {r: ([size for size in b if size != CPU_BATCH][:2], min(f, 32), min(n, 4))
                    for r, (b, f, n) in settings.items()}
    stem = f"throughput-{DEVICE}-{args.shape}"
    stages = Stages(report, lambda: write_report(report, args.out, stem, started))
    with tempfile.TemporaryDirectory() as tmp:
        pool = copies(args.images, Path(tmp), max(count for _, count, _ in settings.values()))
        results = report["results"]
        for resolution, (batch_sizes, file_count, naive_count) in settings.items():
            stages.run(f"{resolution} px", lambda: measure_resolution(
                model, naive_model, pool, resolution, batch_sizes=batch_sizes, file_count=file_count,
                naive_count=naive_count, workers=workers, runs=runs, peak=peak,
                latency_runs=10 if args.quick else 30, repeat=args.repeat, naive_fp16=naive_fp16),
                into=results, key=resolution)
        measured = [resolution for resolution in settings if resolution in results]
        for resolution in measured if args.compile else ():
            best = results[resolution]["forward_only"]["batch_size"]
            stages.run(f"{resolution} px compiled", lambda: compiled_variant(
                model, pool, resolution, batch_size=best, file_count=settings[resolution][1], workers=workers,
                runs=runs, peak=peak, rounds=args.repeat), into=report.setdefault("compiled", {}), key=resolution)
        # last: a CUDA-graph capture that fails must not cost the figures above
        for resolution in measured if args.variants else ():
            best = results[resolution]["forward_only"]["batch_size"]
            variants = report.setdefault("variants", {}).setdefault(resolution, {})
            stages.run(f"{resolution} px attention backends", lambda: on_sdpa(
                model, lambda: attention_backends(model, resolution, best, runs=max(2, runs - 2),
                                                  latency_runs=10 if args.quick else 20)),
                into=variants, key="attention")
            stages.run(f"{resolution} px pixel transport", lambda: transport_ab(
                model, pool[:settings[resolution][1]], resolution, batch_size=best, workers=workers,
                rounds=1 if DEVICE == "cuda" else 3), into=variants, key="transport")
        for resolution in measured if args.variants else ():
            stages.run(f"{resolution} px CUDA-graph query", lambda: cuda_graph_query(
                model, resolution, runs=10 if args.quick else 30), into=report["variants"][resolution],
                key="cuda_graph_query")
    print(table(report))
    if report.get("failed"):  # the figures that were made are written; the check still did not finish
        sys.exit(f"{len(report['failed'])} stage(s) failed: " + "; ".join(
            f"{failure['stage']}: {failure['error']}" for failure in report["failed"]))


class Stages:
    """Runs one measurement at a time: its result, or None when it raises (out of memory at 512 px, a failed
    compile), the failure recorded under report["failed"] and the stages after it still run. The report is written
    after each, its result in place, so a GPU window's figures survive a stage that fails or a time-out."""

    def __init__(self, report: dict, write):
        self.report, self.write = report, write

    def run(self, name: str, measure, *, into: dict, key):
        """into[key] = measure(), unless it fails; the result or None."""
        try:
            into[key] = measure()
            return into[key]
        except Exception as error:  # noqa: BLE001 - whatever one stage meets, the others' figures are kept
            print(f"stage {name} failed:", file=sys.stderr)
            traceback.print_exc()
            self.report.setdefault("failed", []).append({"stage": name, "error": _failure(error)})
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            return None
        finally:
            self.write()


def write_report(report: dict, out_dir: Path, stem: str, started: float) -> None:
    report["peak_host_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report["total_seconds"] = time.perf_counter() - started
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out_dir / f"{stem}.md").write_text(table(report))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def table(report: dict) -> str:
    rounds = len(next(iter(report["results"].values()), {}).get("rounds", [])) or 1
    lines = [f"# Throughput: {report['model']} ({report['dtype']}) on {report['device']}", "",
             f"Medians over {rounds} round(s) of forward-only, naive and indexer in turn; ratios are the medians "
             "of each round's ratio.", "",
             f"`{report['command']}` — {report['date']}, {report['cores']} cores, torch {report['torch']}, "
             f"transformers {report['transformers']}, attention {report['attention']}, rewritten layers "
             f"{', '.join(report.get('rewritten_layers', [])) or 'none'}, {report['workers']} decode "
             f"workers, naive loop in {report['naive_dtype']}; model built in {report['build_seconds']:.1f} s; peak host RSS "
             f"{report['peak_host_rss_gib']:.1f} GiB", "",
             "| res | forward-only img/s (batch) | MFU | naive img/s | indexer img/s (batch) | indexer/forward | indexer/naive "
             "| query p50 / p99 ms | peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|"]
    counts = ", ".join(f"{res} px: {row['indexer']['images']} files (naive {row['naive']['images']})"
                       for res, row in report["results"].items())
    lines[-2:-2] = [f"Indexed per round: {counts}.", ""]
    for resolution, row in report["results"].items():
        fwd, mfu = row["forward_only"], row["forward_only"].get("mfu")
        lines.append(
            f"| {resolution} | {fwd['images_per_second']:.1f} ({fwd.get('batch_size')}) | "
            f"{'' if mfu is None else f'{mfu:.0%}'} | {row['naive']['images_per_second']:.1f} | "
            f"{row['indexer']['images_per_second']:.1f} ({row['indexer']['batch_size']}) | {row['indexer_over_forward']:.2f} | "
            f"{row['indexer_over_naive']:.2f} | {row['query_latency']['p50_ms']:.0f} / "
            f"{row['query_latency']['p99_ms']:.0f} | {row['peak_gpu_memory_gib']:.1f} |")
    for resolution, row in report["results"].items():
        query = row["query_latency"]
        if "eager" in query:
            lines += ["", f"The query at {resolution} px through the embedder (decode to pooled vector) with its "
                          f"one-image forward from a CUDA graph: p50 / p99 {query['p50_ms']:.1f} / "
                          f"{query['p99_ms']:.1f} ms; eager, in turn: {query['eager']['p50_ms']:.1f} / {query['eager']['p99_ms']:.1f} ms "
                          f"(vectors differ by at most {query['max_abs_difference']:.1e})"]
    for resolution, row in report["results"].items():
        other = row.get("indexer_at_forward_batch")
        if other:
            lines += ["", f"The indexer at {resolution} px ran at its default batch (`--batch-size auto`); at forward-only's "
                          f"batch of {other['batch_size']}, in the same rounds: {other['images_per_second']:.1f} img/s "
                          f"= {other['over_forward']:.2f} × forward-only"]
    if any("matmul_ceiling" in row or "naive_float16" in row for row in report["results"].values()):
        lines += ["", "Reference points: the matrix-product ceiling (the model's linear layers and patch embedding "
                      "alone, at the same batch; no forward pass can beat it), and on a CPU the naive loop in float16:", ""]
    for resolution, row in report["results"].items():
        ceiling = row.get("matmul_ceiling")
        if ceiling:
            lines.append(f"- {resolution} px: {ceiling['images_per_second']:.1f} img/s = "
                         f"{ceiling['over_naive']:.2f} × naive; forward-only reaches {ceiling['forward_share']:.0%} of it")
        if "naive_float16" in row:
            lines.append(f"- {resolution} px, the naive loop in float16 (the FP16 checkpoint as transformers loads "
                         f"it by default): {row['naive_float16']['images_per_second']:.1f} img/s; indexer "
                         f"{row['naive_float16']['indexer_over']:.1f} × that")
    splits = {resolution: row["indexer"]["time_split"] for resolution, row in report["results"].items()
              if "time_split" in row["indexer"]}
    if splits:
        lines += ["", "Where the indexer's time goes (medians of the rounds): the share of its wall time spent in the "
                      "backbone's forward, the rest being its own work on the model's thread; and that forward's speed "
                      "against forward-only alone (below 1: decode workers and the writer compete for the cores):", ""]
    for resolution, split in splits.items():
        lines.append(f"- {resolution} px: {split['forward_share']:.0%} in the forward, which ran at "
                     f"{split['forward_images_per_second']:.1f} img/s = {split['forward_over_forward_only']:.2f} × "
                     "forward-only")
    for resolution, row in report.get("variants", {}).items():
        lines += ["", f"Attention backends at {resolution} px (SDPA held to one; forward-only at the chosen batch, and "
                      "the one-image forward):", "", "| backend | forward-only img/s | one image p50 / p99 ms |",
                  "|---|---|---|"]
        for name, figures in row.get("attention", {}).items():
            if isinstance(figures, str):
                lines.append(f"| {name} | {figures} | |")
            else:
                lines.append(f"| {name} | {figures['images_per_second']:.1f} ({figures['batch_size']}) | "
                             f"{figures['one_image_p50_ms']:.1f} / {figures['one_image_p99_ms']:.1f} |")
        transport = row.get("transport")
        if transport:
            lines += ["", f"Indexer at {resolution} px, pixels handed over as uint8 (normalised on the model's device) "
                          f"vs float32 (normalised in the decode workers): {transport['uint8']['images_per_second']:.1f} "
                          f"vs {transport['float32']['images_per_second']:.1f} img/s"]
        graph = row.get("cuda_graph_query", {})
        if "graph" in graph:
            lines += ["", f"One-image forward at {resolution} px: eager {graph['eager']['p50_ms']:.1f} / "
                          f"{graph['eager']['p99_ms']:.1f} ms, CUDA graph {graph['graph']['p50_ms']:.1f} / "
                          f"{graph['graph']['p99_ms']:.1f} ms (p50 / p99; captured in {graph['capture_seconds']:.1f} s, "
                          f"outputs differ by at most {graph['max_abs_difference']:.1e})"]
        elif graph:
            lines += ["", f"CUDA graph at {resolution} px: {graph.get('failed') or graph.get('skipped')}"]
    for resolution, row in report.get("compiled", {}).items():
        fwd, idx = row["forward_only"], row["indexer"]
        mfu = "" if fwd.get("mfu") is None else f" ({fwd['mfu']:.0%} MFU)"
        lines += ["", f"torch.compile at {resolution} (batch {row['batch_size']}): compiled in "
                      f"{row['compile_seconds']:.0f} s; forward-only {fwd['images_per_second']:.1f} img/s{mfu}"
                      + (f" against eager {fwd['eager_images_per_second']:.1f} in turn ({fwd['over_eager']:.2f} ×, "
                         f"median of {len(fwd['rounds'])} round(s))" if "over_eager" in fwd else "")
                      + f"; indexer {idx['images_per_second']:.1f} img/s"]
    for failure in report.get("failed", []):
        lines += ["", f"**Failed:** {failure['stage']}: {failure['error']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
