"""A batch's resize to the model's input: one call per size (`Preprocess.resized_together`, lookalike now) against
one call per image (`Preprocess.resized`, before), in turn.

`DecodeDataset` resizes a batch's small images of one size in one call: the kernel's set-up (its filter's
weights) is made once, and on two threads the batch is shared between them. Timed here on the bundled 128 px JPEG
chips, in batches of `--batch`, and on 256 px windows of the NAIP GeoTIFFs (shrunk): the resize alone, and the
whole decode of a batch of chips (read, hash, decode, resize: `DecodeDataset.__getitems__`, against the same
with `together` off, as before). On one thread (a decode worker) and on two (the model's process decodes on a
2-core CPU). The two ways take turns each round (order alternated); medians of per-round ratios; the two results
are checked byte for byte.

    python bench/batch_resize.py --rounds 9 --out bench/results/cpu/batch_resize
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench.resize_speed import compare as in_turn, scene_rgb  # noqa: E402
from bench.throughput import cpu_name  # noqa: E402
from indexer.images import Preprocess  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402
from indexer.pipeline import DecodeDataset  # noqa: E402
from indexer.plan import Job  # noqa: E402


def batched(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def per_image_seconds(function, batches: list[list]) -> float:
    start = time.perf_counter()
    for batch in batches:
        function(batch)
    return (time.perf_counter() - start) / sum(map(len, batches))


def compare(timed: dict, rounds: int) -> dict:
    return in_turn(timed, rounds, new="together", old="one_by_one")


def resize_row(name: str, preprocess: Preprocess, images: list, *, batch: int, rounds: int) -> dict:
    batches = batched(images, batch)
    together = [pixels for group in batches for pixels in preprocess.resized_together(group)]
    same = all(np.array_equal(a, preprocess.resized(image)) for a, image in zip(together, images))
    row = {"images": name, "count": len(images), "size": list(images[0].size), "identical": same}
    return row | compare({"together": lambda: per_image_seconds(preprocess.resized_together, batches),
                          "one_by_one": lambda: per_image_seconds(
                              lambda group: [preprocess.resized(image) for image in group], batches)}, rounds)


def decode_row(preprocess: Preprocess, paths: list[Path], *, batch: int, rounds: int) -> dict:
    jobs = [Job(path=str(path), size=path.stat().st_size, mtime=path.stat().st_mtime) for path in paths]
    dataset, before = DecodeDataset(jobs, preprocess, raw=True), DecodeDataset(jobs, preprocess, raw=True)
    before.together = False
    batches = batched(list(range(len(jobs))), batch)
    pixels = {name: [item["pixels"] for group in batches for item in data.__getitems__(group)]
              for name, data in (("together", dataset), ("one_by_one", before))}
    same = all(map(torch.equal, pixels["together"], pixels["one_by_one"]))
    row = {"images": "128 px JPEG chips, whole decode", "count": len(jobs), "size": [128, 128], "identical": same}
    return row | compare({"together": lambda: per_image_seconds(dataset.__getitems__, batches),
                          "one_by_one": lambda: per_image_seconds(before.__getitems__, batches)}, rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, default=Path("samples/naip"), help="a folder of JPEG chips")
    parser.add_argument("--scenes", type=Path, default=Path("../shared/data/naip"), help="a folder of GeoTIFFs")
    parser.add_argument("--count", type=int, default=320, help="chips to take")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (the CPU's default batch until "
                        "2026-11-30; CPU_BATCH is 16 since)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/batch_resize"))
    args = parser.parse_args()
    preprocess = Preprocess(224, tuple(SAT493M["mean"]), tuple(SAT493M["std"]))
    paths = sorted(args.chips.glob("*.jpg"))[:args.count]
    chips = [Image.open(path).convert("RGB") for path in paths]
    windows = [scene_rgb(path, 256) for path in sorted(args.scenes.glob("*.tif"))]
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for row in (resize_row("128 px JPEG chips (larger)", preprocess, chips, batch=args.batch, rounds=args.rounds),
                    resize_row("256 px scene windows (smaller)", preprocess, windows, batch=args.batch,
                               rounds=args.rounds),
                    decode_row(preprocess, paths, batch=args.batch, rounds=args.rounds)):
            rows.append({"threads": threads, **row})
            print(rows[-1], flush=True)
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "pillow": Image.__version__,
              "batch": args.batch, "rounds": args.rounds, "rows": rows}
    save(report, args.out, "batch_resize", table)


def table(report: dict) -> str:
    lines = ["# A batch's resize to 224 px: one call per size against one call per image", "",
             f"`{report['command']}` — {report['date']}, {report['device']}, {report['cores']} cores, "
             f"torch {report['torch']}, Pillow {report['pillow']}; batches of {report['batch']}; medians over "
             f"{report['rounds']} rounds, the two taken in turn", "",
             "| threads | images | count | together, ms/image | one by one, ms/image | speed-up | identical "
             "| per round |", "|---:|---|---:|---:|---:|---:|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['threads']} | {row['images']} | {row['count']} | {row['together_ms']:.3f} | "
                     f"{row['one_by_one_ms']:.3f} | {row['speed_up']:.2f} | {'yes' if row['identical'] else 'NO'} | "
                     f"{', '.join(map(str, row['per_round']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
