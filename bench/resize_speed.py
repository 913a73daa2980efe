"""The resize to the model's input: PyTorch's uint8 bicubic kernel (lookalike now) against Pillow's (before), in turn.

Before, `Preprocess.resized` resized with Pillow's BICUBIC and split the planes; now it hands the (3, H, W) view
of the pixels to PyTorch's antialiased bicubic uint8 kernel. Both run here on one thread, as in a decode worker,
on real imagery: the bundled 128 px JPEG chips (made larger, as at 224 px), 256 and 512 px windows and whole
scenes of the NAIP GeoTIFFs, and a scene enlarged to a 4000 x 3000 photo's size (made smaller). Per size, the two
take turns each round (order alternated); medians of per-round ratios, and how far apart their pixels are.
A last row times the whole decode of a 128 px chip (read, hash, decode, resize: one `DecodeDataset` item) both ways.

    python bench/resize_speed.py --rounds 9 --out bench/results/cpu/resize
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench.throughput import cpu_name  # noqa: E402
from indexer.images import Preprocess  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402
from indexer.pipeline import DecodeDataset  # noqa: E402
from indexer.plan import Job  # noqa: E402


class PillowPreprocess(Preprocess):
    """lookalike before: Pillow's BICUBIC, then the planes split and stacked."""

    def resized(self, image: Image.Image) -> np.ndarray:
        size = (self.resolution, self.resolution)
        image = image if image.mode == "RGB" else image.convert("RGB")
        resized = image.resize(size, Image.Resampling.BICUBIC) if image.size != size else image
        return np.stack([np.asarray(plane) for plane in resized.split()])


def scene_rgb(path: Path, size: int | None = None) -> Image.Image:
    """The scene's first three bands (NAIP: red, green, blue), a `size` px window from its corner or all of it."""
    with rasterio.open(path) as raster:
        window = ((0, size), (0, size)) if size else None
        return Image.fromarray(np.moveaxis(raster.read([1, 2, 3], window=window), 0, -1))


def image_sets(chips: Path, scenes: Path, count: int) -> dict:
    scene_paths = sorted(scenes.glob("*.tif"))
    sets = {"128 px JPEG chips (larger)": [Image.open(path).convert("RGB") for path in sorted(chips.glob("*.jpg"))[:count]],
            "256 px scene windows (smaller)": [scene_rgb(path, 256) for path in scene_paths],
            "512 px scene windows (smaller)": [scene_rgb(path, 512) for path in scene_paths],
            "whole scenes (smaller)": [scene_rgb(path) for path in scene_paths]}
    sets["4000 x 3000 enlarged scenes (smaller)"] = [image.resize((4000, 3000), Image.Resampling.BILINEAR)
                                                     for image in sets["whole scenes (smaller)"][:3]]
    return sets


def per_image_seconds(function, images) -> float:
    start = time.perf_counter()
    for image in images:
        function(image)
    return (time.perf_counter() - start) / len(images)


def decode_seconds(preprocess, jobs) -> float:
    dataset = DecodeDataset(jobs, preprocess, raw=True)
    return per_image_seconds(dataset.__getitem__, range(len(jobs)))


def compare(timed: dict, rounds: int, *, new: str = "torch", old: str = "pillow") -> dict:
    """`timed`: `new` and `old` → no-argument function returning seconds per image, taken in turn each round
    (the order alternating); their medians in ms, and the median of old / new per round (the speed-up)."""
    times = {name: [] for name in timed}
    names = list(timed)
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            times[name].append(timed[name]())
    per_round = [before / now for before, now in zip(times[old], times[new])]
    return {f"{new}_ms": 1000 * statistics.median(times[new]), f"{old}_ms": 1000 * statistics.median(times[old]),
            "speed_up": statistics.median(per_round), "per_round": [round(r, 2) for r in per_round]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, default=Path("samples/naip"), help="a folder of JPEG chips")
    parser.add_argument("--scenes", type=Path, default=Path("../shared/data/naip"), help="a folder of GeoTIFFs")
    parser.add_argument("--count", type=int, default=200, help="chips to take")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/resize"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a decode worker
    mean, std = tuple(SAT493M["mean"]), tuple(SAT493M["std"])
    ours, pillow = Preprocess(224, mean, std), PillowPreprocess(224, mean, std)
    rows = []
    for name, images in image_sets(args.chips, args.scenes, args.count).items():
        differences = np.concatenate([np.abs(ours.resized(image).astype(int) - pillow.resized(image)).ravel()
                                      for image in images])
        row = {"images": name, "count": len(images), "size": list(images[0].size),
               "max_difference": int(differences.max()), "share_different": float(np.mean(differences > 0))}
        row |= compare({"torch": lambda: per_image_seconds(ours.resized, images),
                        "pillow": lambda: per_image_seconds(pillow.resized, images)}, args.rounds)
        rows.append(row)
        print(row, flush=True)
    paths = sorted(args.chips.glob("*.jpg"))[:args.count]
    jobs = [Job(path=str(path), size=path.stat().st_size, mtime=path.stat().st_mtime) for path in paths]
    row = {"images": "128 px JPEG chips, whole decode", "count": len(jobs), "size": [128, 128]}
    row |= compare({"torch": lambda: decode_seconds(ours, jobs), "pillow": lambda: decode_seconds(pillow, jobs)},
                   args.rounds)
    rows.append(row)
    print(row, flush=True)
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
              "pillow": Image.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds, "rows": rows}
    save(report, args.out, "resize", table)


def table(report: dict) -> str:
    lines = ["# Resize to 224 px: PyTorch's uint8 bicubic against Pillow's", "",
             f"`{report['command']}` — {report['date']}, {report['device']}, {report['cores']} cores, "
             f"{report['threads']} thread, torch {report['torch']}, Pillow {report['pillow']}; medians over "
             f"{report['rounds']} rounds, the two taken in turn; difference: |torch - Pillow| in uint8 levels", "",
             "| images | count | torch, ms/image | Pillow, ms/image | speed-up | max difference | values different "
             "| per round |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        different = f"{100 * row['share_different']:.2f} %" if "share_different" in row else "—"
        lines.append(f"| {row['images']} | {row['count']} | {row['torch_ms']:.3f} | {row['pillow_ms']:.3f} | "
                     f"{row['speed_up']:.2f} | {row.get('max_difference', '—')} | {different} | "
                     f"{', '.join(map(str, row['per_round']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
