"""The batch size `lookalike index --batch-size auto` uses on a CPU: forward-only at several batch sizes, in turn.

On a GPU the batch is probed to fill memory; on a CPU it is a constant (indexer/embedder.py CPU_BATCH), and
past the point where the matrix products are efficient a larger batch only makes each layer's activations
fall out of the caches. In each round, for each batch size in turn (order rotating): the backbone as loading
leaves it (tune_for_device), forward-only on real chips, timed over the same number of images at every size.
Medians of images/s and of per-round ratios to the batch size CPU_BATCH names.

    python bench/cpu_batch.py --rounds 8 --out bench/results/cpu/batch-epyc
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench import throughput  # noqa: E402
from bench.cpu_attention import run_fields, run_line  # noqa: E402
from bench.cpu_quantized import chips  # noqa: E402
from bench.throughput import build_backbone  # noqa: E402
from indexer.embedder import CPU_BATCH, DTYPES, resolve_dtype, tune_for_device  # noqa: E402
from indexer.random_model import SHAPES  # noqa: E402


@torch.inference_mode()
def rates(model, pixels: torch.Tensor, sizes: list[int], *, rounds: int, images: int) -> dict:
    """images/s per batch size, each round over `images` images (whole batches) after one untimed batch."""
    per_size = {size: [] for size in sizes}
    for number in range(rounds):
        order = sizes[number % len(sizes):] + sizes[:number % len(sizes)]
        for size in order:
            batch = pixels[:size]
            model(pixel_values=batch)
            runs = max(1, images // size)
            start = time.perf_counter()
            for _ in range(runs):
                model(pixel_values=batch)
            per_size[size].append(runs * size / (time.perf_counter() - start))
        print(number, {size: round(per_size[size][-1], 1) for size in sizes}, flush=True)
    return per_size


def summary(per_size: dict, reference: int) -> dict:
    rows = {}
    for size, values in per_size.items():
        ratios = [value / base for value, base in zip(values, per_size[reference])]
        rows[size] = {"images_per_second": statistics.median(values), "to_reference": statistics.median(ratios),
                      "per_round": [round(r, 2) for r in ratios]}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="vits16", choices=sorted(SHAPES))
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--sizes", default="4,8,16,32,64", help="batch sizes, comma-separated")
    parser.add_argument("--images", type=int, default=128, help="images timed per batch size and round")
    parser.add_argument("--chips", type=Path, default=Path("samples/naip"), help="real chips (the bundled sample)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the indexer's on this CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/batch"))
    args = parser.parse_args()
    throughput.DEVICE = "cpu"
    sizes = sorted({int(size) for size in args.sizes.split(",")} | {CPU_BATCH})
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    started = time.perf_counter()
    model = tune_for_device(build_backbone(args.shape, dtype))
    pixels = chips(args.chips, max(sizes), args.resolution).to(dtype)
    per_size = rates(model, pixels, sizes, rounds=args.rounds, images=args.images)
    report = {**run_fields(args.shape, dtype, rounds=args.rounds), "resolution": args.resolution,
              "images_per_round": args.images, "cpu_batch": CPU_BATCH,
              "tuned": list(getattr(model, "lookalike_fused", ())), "attention": model.config._attn_implementation,
              "sizes": summary(per_size, CPU_BATCH), "total_seconds": time.perf_counter() - started}
    save(report, args.out, f"batch-{args.shape}", table)


def table(report: dict) -> str:
    best = max(report["sizes"], key=lambda size: report["sizes"][size]["images_per_second"])
    lines = [f"# Forward-only by batch size on a CPU: {report['model']} in {report['dtype']} on {report['device']}",
             "", run_line(report) + f"{report['resolution']} px real chips, {report['images_per_round']} images per "
             f"batch size and round, the sizes taken in turn (order rotating); backbone as loaded (attention "
             f"{report['attention']}, rewritten layers: {', '.join(report['tuned']) or 'none'}); medians over "
             f"{report['rounds']} rounds", "",
             f"| batch | img/s | to batch {report['cpu_batch']} (CPU_BATCH) | per round |", "|---:|---:|---:|---|"]
    for size, row in report["sizes"].items():
        mark = " (fastest)" if size == best else ""
        lines.append(f"| {size}{mark} | {row['images_per_second']:.1f} | {row['to_reference']:.2f} | "
                     f"{', '.join(map(str, row['per_round']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
