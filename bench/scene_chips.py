"""Cutting georeferenced scenes into chips: one open raster per scene against one open per chip, in turn.

The decode workers read a scene's chips one window at a time. Each chip used to open the scene anew, so GDAL
parsed its header again and lost its cache of the blocks the last window read; now consecutive chips of a scene
share one open raster (pipeline.DecodeDataset). Both ways here run the whole decode of every chip of the real
scenes in --scenes (read, mask, stretch, resize to 224 px) in turn, order alternated; medians of per-round ratios.

    python bench/scene_chips.py --rounds 8 --out bench/results/cpu/scene_chips
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench.throughput import cpu_name  # noqa: E402
from indexer import scenes  # noqa: E402
from indexer.images import Preprocess  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402
from indexer.pipeline import DecodeDataset  # noqa: E402
from indexer.plan import Job  # noqa: E402


class OpenPerChip(DecodeDataset):
    """lookalike before: every chip opened its scene, read its window and closed it."""

    def _chip(self, job: Job) -> dict:
        with scenes.open_dataset(job.scene.path) as raster:
            self._scene = (job.scene.path, raster)
            try:
                return super()._chip(job)
            finally:
                self._scene = (None, None)


def chip_jobs(paths, chip_size: int) -> list[Job]:
    jobs = []
    for path in paths:
        scene = scenes.open_scene(path)
        stat = path.stat()
        for window in scenes.chip_windows(scene.width, scene.height, chip_size=chip_size):
            jobs.append(Job(f"{path}#{','.join(map(str, window))}", stat.st_size, stat.st_mtime, scene=scene,
                            window=window))
    return jobs


def decode_all(kind, jobs, preprocess) -> float:
    """Seconds per chip to decode every job, in plan order, as one decode worker does."""
    dataset = kind(jobs, preprocess, raw=True)
    start = time.perf_counter()
    try:
        for position in range(len(jobs)):
            dataset[position]
    finally:
        dataset.close()
    return (time.perf_counter() - start) / len(jobs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=Path, default=Path("../shared/data/naip"), help="a folder of GeoTIFFs")
    parser.add_argument("--chip-sizes", default="128,256,512")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/scene_chips"))
    args = parser.parse_args()
    paths = sorted(args.scenes.glob("*.tif"))
    preprocess = Preprocess(224, tuple(SAT493M["mean"]), tuple(SAT493M["std"]))
    with rasterio.open(paths[0]) as first:
        layout = {"block_shapes": [list(shape) for shape in first.block_shapes[:1]],
                  "compression": str(first.compression), "size": [first.width, first.height], "count": first.count}
    rows = []
    for chip_size in map(int, args.chip_sizes.split(",")):
        jobs = chip_jobs(paths, chip_size)
        times = {"one_open_per_scene": [], "one_open_per_chip": []}
        kinds = [("one_open_per_scene", DecodeDataset), ("one_open_per_chip", OpenPerChip)]
        for number in range(args.rounds):
            for name, kind in kinds if number % 2 == 0 else kinds[::-1]:
                times[name].append(decode_all(kind, jobs, preprocess))
        per_round = [old / new for old, new in zip(times["one_open_per_chip"], times["one_open_per_scene"])]
        rows.append({"chip_size": chip_size, "chips": len(jobs), "scenes": len(paths),
                     "per_scene_ms": 1000 * statistics.median(times["one_open_per_scene"]),
                     "per_chip_ms": 1000 * statistics.median(times["one_open_per_chip"]),
                     "speed_up": statistics.median(per_round), "per_round": [round(r, 2) for r in per_round]})
        print(rows[-1], flush=True)
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": cpu_name(), "cores": os.cpu_count(), "gdal": rasterio.__gdal_version__,
              "rasterio": rasterio.__version__, "scenes": str(args.scenes), "first_scene": layout,
              "rounds": args.rounds, "rows": rows}
    save(report, args.out, "scene_chips", table)


def table(report: dict) -> str:
    layout = report["first_scene"]
    lines = ["# Scene chips: one open raster per scene against one per chip", "",
             f"`{report['command']}` — {report['date']}, {report['device']}, {report['cores']} cores, GDAL "
             f"{report['gdal']}, rasterio {report['rasterio']}; scenes in {report['scenes']} (the first "
             f"{layout['size'][0]} x {layout['size'][1]} px, {layout['count']} bands, blocks {layout['block_shapes']}, "
             f"compression {layout['compression']}); each chip read, masked, stretched and resized to 224 px; "
             f"medians over {report['rounds']} rounds, the two taken in turn", "",
             "| chip px | chips | one open per scene, ms/chip | one open per chip, ms/chip | speed-up | per round |",
             "|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['chip_size']} | {row['chips']} | {row['per_scene_ms']:.2f} | {row['per_chip_ms']:.2f} | "
                     f"{row['speed_up']:.2f} | {', '.join(map(str, row['per_round']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
