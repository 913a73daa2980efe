"""Does int8 quantisation buy CPU speed? forward-only of one random DINOv3 in float32, bfloat16 and int8, side by side.

The issue's CPU target (indexer ≥ 3 × the model card's float32 loop) is above what the matrix products of
bfloat16 reach on this machine (bench/results/cpu). The one cheap way left to go faster is to change the
arithmetic: PyTorch's dynamic int8 quantisation of the linear layers (weights int8, activations quantised per
batch). This measures, on the same batch of real chips and in turn (rounds; medians of per-round ratios):
- forward-only img/s of the float32 model, the bfloat16 model (what the indexer runs on a bf16 CPU) and the
  int8-dynamic model (built from the float32 one);
- how far each embedding (pooler_output) moves from float32: cosine, min and median over the batch, and
  whether each chip's nearest other chip in the batch stays the same.
Random weights: the agreement figures say how much the arithmetic moves the vectors, not retrieval quality.

    python bench/cpu_quantized.py --shape vits16 --out bench/results/cpu/quantized
"""
import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench import throughput  # noqa: E402
from bench.throughput import build_backbone, cpu_name  # noqa: E402
from indexer.images import load_image  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402


def chips(image_dir: Path, count: int, resolution: int) -> torch.Tensor:
    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:count]
    if len(files) < count:
        raise SystemExit(f"error: {image_dir} has {len(files)} pictures, {count} needed")
    mean = torch.tensor(SAT493M["mean"]).view(3, 1, 1)
    std = torch.tensor(SAT493M["std"]).view(3, 1, 1)
    pixels = []
    for path in files:
        image = load_image(path).convert("RGB").resize((resolution, resolution))
        pixels.append((torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255 - mean) / std)
    return torch.stack(pixels)


@torch.inference_mode()
def rate(model, pixels: torch.Tensor, runs: int) -> tuple[float, torch.Tensor]:
    output = model(pixel_values=pixels).pooler_output  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        output = model(pixel_values=pixels).pooler_output
        times.append(time.perf_counter() - start)
    return len(pixels) / statistics.median(times), output.float()


def agreement(vectors: torch.Tensor, reference: torch.Tensor) -> dict:
    cosine = torch.nn.functional.cosine_similarity(vectors, reference)

    def nearest(v):
        v = torch.nn.functional.normalize(v, dim=1)
        similarity = v @ v.T
        similarity.fill_diagonal_(-2)
        return similarity.argmax(dim=1)

    return {"cosine_min": cosine.min().item(), "cosine_median": cosine.median().item(),
            "same_nearest_neighbour": (nearest(vectors) == nearest(reference)).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("samples/naip"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/quantized"))
    parser.add_argument("--shape", default="vits16")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per model per round")
    args = parser.parse_args()
    throughput.DEVICE = "cpu"
    started = time.perf_counter()
    pixels = chips(args.images, args.batch, args.resolution)
    fp32 = build_backbone(args.shape, torch.float32)
    models = {"float32": (fp32, torch.float32), "bfloat16": (copy.deepcopy(fp32).to(torch.bfloat16), torch.bfloat16)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    models["int8-dynamic"] = (int8, torch.float32)
    rounds, outputs = [], {}
    for _ in range(args.rounds):
        row = {}
        for name, (model, dtype) in models.items():
            row[name], outputs[name] = rate(model, pixels.to(dtype), args.runs)
        rounds.append(row)
    results = {}
    for name in models:
        results[name] = {"images_per_second": statistics.median(r[name] for r in rounds),
                         "over_float32": statistics.median(r[name] / r["float32"] for r in rounds),
                         "over_bfloat16": statistics.median(r[name] / r["bfloat16"] for r in rounds),
                         **agreement(outputs[name], outputs["float32"])}
    import transformers

    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "model": f"random DINOv3 {args.shape}", "resolution": args.resolution, "batch": args.batch,
              "rounds": rounds, "results": results, "total_seconds": time.perf_counter() - started}
    save(report, args.out, f"quantized-{args.shape}", table)


def table(report: dict) -> str:
    lines = [f"# int8 vs bfloat16 vs float32 forward-only: {report['model']} on {report['device']}", "",
             f"`{report['command']}` — {report['date']}, {report['cores']} cores ({report['torch_threads']} torch "
             f"threads), torch {report['torch']}, transformers {report['transformers']}; {report['resolution']} px, "
             f"batch {report['batch']} of real chips, medians over {len(report['rounds'])} rounds taken in turn", "",
             "| arithmetic | img/s | × float32 | × bfloat16 | cosine to float32 min / median | same nearest chip |",
             "|---|---:|---:|---:|---|---:|"]
    for name, row in report["results"].items():
        lines.append(f"| {name} | {row['images_per_second']:.1f} | {row['over_float32']:.2f} | "
                     f"{row['over_bfloat16']:.2f} | {row['cosine_min']:.4f} / {row['cosine_median']:.4f} | "
                     f"{row['same_nearest_neighbour']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
