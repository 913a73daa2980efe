"""Throughput of the DINOv3 ViT-7B/16 shape on one GPU: forward-only, the model card's loop, `lookalike` indexing.

Random weights in FP16 (the real model's shape: width 4096, 40 layers, 32 heads, SwiGLU 8192, 4 registers,
layer scale 1e-5), built directly on the GPU. Compute per image is the same as the real model's, so the
images/s are what the real weights would give. Run by bench/gpu_check.sh; writes JSON and a table.

    python bench/gpu_bench.py --images samples/naip --out bench/results/gpu
"""
import argparse
import json
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.embedder import DinoV3Embedder  # noqa: E402
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


def flops_per_image(model, resolution: int) -> float:
    """2 × parameters × tokens for the matrix products, plus attention's QKᵀ and AV."""
    config = model.config
    tokens = 1 + config.num_register_tokens + (resolution // config.patch_size) ** 2
    params = sum(p.numel() for p in model.parameters())
    attention = 4 * config.num_hidden_layers * tokens**2 * config.hidden_size
    return 2 * params * tokens + attention


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
    output = model(pixel_values=pixels[:1]).last_hidden_state
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
        return model(pixel_values=pixels[None].to(DEVICE, DTYPE)).pooler_output.float().cpu()

    one(files[0])
    sync()
    start = time.perf_counter()
    for path in files:
        one(path)
    seconds = time.perf_counter() - start
    return {"images": len(files), "seconds": seconds, "images_per_second": len(files) / seconds}


def indexer_run(model, files, resolution: int, *, batch_size: int, workers: int) -> dict:
    embedder = DinoV3Embedder(model, model="random-vit7b16-sat493m", resolution=resolution,
                              normalization=SAT493M, pooling="cls")
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(str(f) for f in files))
        start = time.perf_counter()
        summary = index_collection([listing], Path(tmp) / "store", embedder=embedder, batch_size=batch_size,
                                   workers=workers, progress=False)
        seconds = time.perf_counter() - start
    return {"images": summary["indexed"], "failed": summary["failed"], "seconds": seconds,
            "images_per_second": summary["indexed"] / seconds, "batch_size": batch_size, "workers": workers}


def query_latency(model, path, resolution: int, *, runs: int) -> dict:
    embedder = DinoV3Embedder(model, model="random-vit7b16-sat493m", resolution=resolution,
                              normalization=SAT493M, pooling="cls")

    def one():
        pixels = torch.from_numpy(embedder.preprocess(load_image(path)))[None]
        embedder.embed(pixels).global_vectors.cpu()

    times = sorted(cuda_time(one, warmup=3, runs=runs))
    return {"p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
            "runs": runs}


def copies(image_dir: Path, tmp: Path, count: int) -> list[Path]:
    """`count` distinct files cut from the chips (copied under new names so none is skipped)."""
    chips = sorted(image_dir.glob("*.jpg"))
    out = []
    for number in range(count):
        target = tmp / f"copy{number // len(chips)}_{chips[number % len(chips)].name}"
        shutil.copy(chips[number % len(chips)], target)
        out.append(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("samples/naip"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--shape", default="vit7b16", help="a shape from indexer.random_model.SHAPES")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    global DEVICE, DTYPE
    DEVICE = args.device
    DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32
    args.out.mkdir(parents=True, exist_ok=True)
    runs = 2 if args.quick else 5
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)

    started = time.perf_counter()
    model = build_backbone(args.shape, DTYPE)
    sync()
    report = {
        "device": device_name, "torch": torch.__version__, "python": platform.python_version(),
        "model": f"random DINOv3 {args.shape} shape, {DTYPE}", "build_seconds": time.perf_counter() - started,
        "parameters": sum(p.numel() for p in model.parameters()), "peak_flops": peak, "results": {},
    }
    import transformers

    report["transformers"] = transformers.__version__
    settings = {224: ([32, 64, 128], 1050, 64), 512: ([8, 16, 32], 350, 24)}
    if args.quick:
        settings = {224: ([8, 16], 64, 8), 512: ([4], 16, 4)}
    with tempfile.TemporaryDirectory() as tmp:
        pool = copies(args.images, Path(tmp), max(count for _, count, _ in settings.values()))
        for resolution, (batch_sizes, file_count, naive_count) in settings.items():
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            fwd = forward_only(model, resolution, batch_sizes, runs=runs)
            flops = flops_per_image(model, resolution)
            row = {"flops_per_image": flops, "forward_only": fwd}
            if peak:
                fwd["mfu"] = fwd["images_per_second"] * flops / peak
            row["naive"] = naive(model, pool[:naive_count], resolution)
            row["indexer"] = indexer_run(model, pool[:file_count], resolution,
                                         batch_size=fwd.get("batch_size", batch_sizes[0]), workers=args.workers)
            if peak:
                row["indexer"]["mfu"] = row["indexer"]["images_per_second"] * flops / peak
            row["indexer_over_forward"] = row["indexer"]["images_per_second"] / fwd["images_per_second"]
            row["indexer_over_naive"] = row["indexer"]["images_per_second"] / row["naive"]["images_per_second"]
            row["query_latency"] = query_latency(model, pool[0], resolution, runs=10 if args.quick else 30)
            row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
            report["results"][resolution] = row
            print(json.dumps({resolution: row}), flush=True)
    report["peak_host_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report["total_seconds"] = time.perf_counter() - started
    (args.out / "gpu_bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_bench.md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    lines = [f"# 7B throughput on {report['device']}", "",
             f"torch {report['torch']}, transformers {report['transformers']}; model built in "
             f"{report['build_seconds']:.1f} s; peak host RSS {report['peak_host_rss_gib']:.1f} GiB", "",
             "| res | forward-only img/s (batch) | MFU | naive img/s | indexer img/s | indexer/forward | indexer/naive "
             "| query p50 / p99 ms | peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for resolution, row in report["results"].items():
        fwd, mfu = row["forward_only"], row["forward_only"].get("mfu")
        lines.append(
            f"| {resolution} | {fwd['images_per_second']:.1f} ({fwd.get('batch_size')}) | "
            f"{'' if mfu is None else f'{mfu:.0%}'} | {row['naive']['images_per_second']:.1f} | "
            f"{row['indexer']['images_per_second']:.1f} | {row['indexer_over_forward']:.2f} | "
            f"{row['indexer_over_naive']:.2f} | {row['query_latency']['p50_ms']:.0f} / "
            f"{row['query_latency']['p99_ms']:.0f} | {row['peak_gpu_memory_gib']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
