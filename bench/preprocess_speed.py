"""Pixel normalisation, side by side in one run, on the bundled chips at 224 px:
1. per-pixel formula: (uint8 / 255 - mean) / std over the whole image in float32 numpy (what Preprocess did),
   after the same resize as the other rows;
2. Preprocess.__call__: resize, then the per-channel table, plane by plane (the float32 hand-over);
3. Preprocess.resized + Preprocess.normalize on the CPU (the uint8 hand-over, normalised by the model's host);
4. Preprocess.gather on the CPU (the path a GPU runs, here only for scale).
Resize time is in every row; medians of --rounds, ms per image. All four give identical values (checked).
Then the batch part: a batch of uint8 chips (--batch) normalised to bfloat16 on the model's host, with PyTorch's
default threads, as the indexer does: the table looked up plane by plane in numpy (how normalize did it before)
against the table's formula over the whole batch in PyTorch (how it does it now); identical values (checked).

    python bench/preprocess_speed.py --out bench/results/preprocess_speed.json
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.images import Preprocess, load_image  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402
from throughput import cpu_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("samples/naip"))
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/preprocess_speed.json"))
    args = parser.parse_args()
    model_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a decode worker
    preprocess = Preprocess(224, tuple(SAT493M["mean"]), tuple(SAT493M["std"]))
    images = [load_image(path) for path in sorted(args.images.glob("*.jpg"))[:args.count]]
    mean, std = np.float32(SAT493M["mean"]), np.float32(SAT493M["std"])

    def formula(image):  # the same resize as every other row (Preprocess.resized), then every pixel's formula
        resized = preprocess.resized(image).transpose(1, 2, 0)  # (H, W, 3)
        return np.ascontiguousarray(((resized.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))

    def uint8_then(normalize):
        return lambda: normalize(torch.from_numpy(np.stack([preprocess.resized(image) for image in images])))

    ways = {
        "per-pixel formula": lambda: [formula(image) for image in images],
        "Preprocess.__call__ (table)": lambda: [preprocess(image) for image in images],
        "resized + normalize (CPU)": uint8_then(preprocess.normalize),
        "resized + gather (CPU)": uint8_then(preprocess.gather),
    }
    reference = np.stack([formula(image) for image in images])
    for name, way in ways.items():
        result = way()
        result = result.numpy() if isinstance(result, torch.Tensor) else np.stack(result)
        assert np.array_equal(result, reference), name
    times = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():  # in turn, every round
            started = time.perf_counter()
            way()
            times[name].append((time.perf_counter() - started) / len(images) * 1000)
    torch.set_num_threads(model_threads)
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, 1 thread used",
              "images": len(images), "rounds": args.rounds,
              "ms_per_image": {name: statistics.median(values) for name, values in times.items()},
              "batch": batch_part(preprocess, images, size=args.batch, rounds=args.rounds, threads=model_threads)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    lines = [f"# Pixel normalisation at 224 px ({len(images)} chips, median of {args.rounds} rounds, identical values)",
             "", f"`{report['command']}` — {report['date']}, {report['machine']}", "", "| way | ms per image |",
             "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in report["ms_per_image"].items()]
    batch = report["batch"]
    lines += ["", f"A batch of {batch['size']} uint8 chips to bfloat16 on the model's host ({batch['threads']} threads), "
              "identical values:", "", "| way | ms per batch |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in batch["ms_per_batch"].items()]
    lines += ["", f"The formula over the batch: {batch['speed_up']:.2f} × the table look-up (median of per-round ratios)"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def batch_part(preprocess, images, *, size: int, rounds: int, threads: int) -> dict:
    raw = torch.from_numpy(np.stack([preprocess.resized(images[i % len(images)]) for i in range(size)]))
    table = torch.from_numpy(preprocess.table).to(torch.bfloat16).view(torch.int16).numpy()  # (3, 256) bit patterns

    def look_up():  # normalize before: numpy's take, plane by contiguous plane
        planes = raw.numpy()
        out = np.empty(planes.shape, np.int16)
        for image, image_out in zip(planes, out):
            for channel, channel_table in enumerate(table):
                np.take(channel_table, image[channel], out=image_out[channel])
        return torch.from_numpy(out).view(torch.bfloat16)

    ways = {"table look-up (numpy, before)": look_up,
            "formula over the batch (PyTorch, now)": lambda: preprocess.normalize(raw, dtype=torch.bfloat16)}
    assert torch.equal(look_up().view(torch.int16), ways["formula over the batch (PyTorch, now)"]().view(torch.int16))
    times = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            way()  # warm
            started = time.perf_counter()
            for _ in range(5):
                way()
            times[name].append((time.perf_counter() - started) / 5 * 1000)
    before, now = times.values()
    return {"size": size, "threads": threads, "ms_per_batch": {name: statistics.median(v) for name, v in times.items()},
            "speed_up": statistics.median(b / n for b, n in zip(before, now))}


if __name__ == "__main__":
    main()
