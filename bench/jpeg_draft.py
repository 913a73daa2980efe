"""Large JPEGs for the model: decoded at a reduced scale (the decoder's DCT scaling) against decoded whole, in turn.

A decode worker needs a photo only at the model's resolution. For a JPEG at least twice that on both sides,
`images.decode_for_model` lets the decoder itself produce it at 1/2, 1/4 or 1/8 scale, no smaller than twice the
resolution, and the resize shrinks the rest. Here one `DecodeDataset` item (read, hash, decode, resize to 224 px)
is timed both ways on one thread, as in a decode worker, over JPEGs (quality 90) of real NAIP scenes tiled 4 x 3
(3720 x 2160: the 10 scenes and 2 again) and 2 x 2 (1860 x 1440), and a bundled 128 px chip, where nothing
changes. Medians of per-round ratios (order alternated), and how far apart the resized pixels are.

The page's pictures of indexed files (ui.resources.shrunk: 320 px thumbnails, the 640 px comparison) decode such
a JPEG at a reduced scale too, no smaller than twice the picture on a side; the second table times them against
the whole decode with the same LANCZOS shrink, in turn, on the same files.

    python bench/jpeg_draft.py --rounds 9 --out bench/results/cpu/jpeg_draft
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench.throughput import cpu_name  # noqa: E402
from indexer import api  # noqa: E402
from indexer.images import Preprocess  # noqa: E402
from indexer.normalization import SAT493M  # noqa: E402
from indexer.pipeline import DecodeDataset  # noqa: E402
from indexer.plan import Job  # noqa: E402
from ui.resources import LARGE_SIZE, THUMBNAIL_SIZE, shrunk  # noqa: E402


def tiled(scenes: list[Path], columns: int, rows: int) -> Image.Image:
    tiles = []
    for number in range(columns * rows):
        with rasterio.open(scenes[number % len(scenes)]) as raster:
            tiles.append(np.moveaxis(raster.read([1, 2, 3]), 0, -1)[:720, :930])
    return Image.fromarray(np.concatenate([np.concatenate(tiles[row * columns:(row + 1) * columns], axis=1)
                                           for row in range(rows)]))


def jpeg(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def dataset(path: Path, preprocess, *, draft: bool) -> DecodeDataset:
    decode = DecodeDataset([Job(path=str(path), size=path.stat().st_size, mtime=0.0)], preprocess, raw=True)
    decode.draft = draft
    return decode


def in_turn(ways: dict, *, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each of `ways` (name → function), `repeats` calls per timing, the ways taken in turn
    (order alternated) for `rounds` rounds."""
    times = {way: [] for way in ways}
    for number in range(rounds):
        for way in list(ways) if number % 2 == 0 else list(ways)[::-1]:
            start = time.perf_counter()
            for _ in range(repeats):
                ways[way]()
            times[way].append((time.perf_counter() - start) / repeats)
    return times


def whole_then_shrunk(item: dict, size: int) -> Image.Image:
    """The page's pictures before: the whole decode, then the same LANCZOS shrink."""
    image = api.load_indexed_image(item)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def picture_row(name: str, path: Path, size: int, *, rounds: int, repeats: int) -> dict:
    item = {"path": str(path), "size": path.stat().st_size, "mtime": path.stat().st_mtime}
    ways = {"reduced": lambda: shrunk(item, size), "whole": lambda: whole_then_shrunk(item, size)}
    ours, whole = (np.asarray(ways[way](), dtype=int) for way in ("reduced", "whole"))
    times = in_turn(ways, rounds=rounds, repeats=repeats)
    per_round = [w / d for w, d in zip(times["whole"], times["reduced"])]
    same_size = ours.shape == whole.shape
    return {"image": name, "picture": size, "shape": list(ours.shape[:2][::-1]), "same_size": same_size,
            "reduced_ms": 1000 * statistics.median(times["reduced"]),
            "whole_ms": 1000 * statistics.median(times["whole"]), "speed_up": statistics.median(per_round),
            "per_round": [round(r, 2) for r in per_round],
            "max_difference": int(np.abs(ours - whole).max()) if same_size else None,
            "mean_difference": float(np.abs(ours - whole).mean()) if same_size else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, default=Path("samples/naip"), help="a folder of JPEG chips")
    parser.add_argument("--scenes", type=Path, default=Path("../shared/data/naip"), help="a folder of GeoTIFFs")
    parser.add_argument("--repeats", type=int, default=10, help="decodes per timing")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/jpeg_draft"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a decode worker
    preprocess = Preprocess(224, tuple(SAT493M["mean"]), tuple(SAT493M["std"]))
    scenes = sorted(args.scenes.glob("*.tif"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"NAIP scenes tiled 4 x 3": jpeg(tiled(scenes, 4, 3), Path(tmp) / "4x3.jpg"),
                 "NAIP scenes tiled 2 x 2": jpeg(tiled(scenes, 2, 2), Path(tmp) / "2x2.jpg"),
                 "a bundled chip": sorted(args.chips.glob("*.jpg"))[0]}
        for name, path in files.items():
            decodes = {"draft": dataset(path, preprocess, draft=True), "whole": dataset(path, preprocess, draft=False)}
            ours, whole = (decodes[way][0]["pixels"].numpy().astype(int) for way in ("draft", "whole"))
            difference = np.abs(ours - whole)
            times = in_turn({way: (lambda decode=decode: decode[0]) for way, decode in decodes.items()},
                            rounds=args.rounds, repeats=args.repeats)
            per_round = [w / d for w, d in zip(times["whole"], times["draft"])]
            with Image.open(path) as opened:
                size = list(opened.size)
            rows.append({"image": name, "size": size, "bytes": path.stat().st_size,
                         "draft_ms": 1000 * statistics.median(times["draft"]),
                         "whole_ms": 1000 * statistics.median(times["whole"]), "speed_up": statistics.median(per_round),
                         "per_round": [round(r, 2) for r in per_round], "max_difference": int(difference.max()),
                         "mean_difference": float(difference.mean())})
            print(rows[-1], flush=True)
        pictures = [picture_row(name, path, size, rounds=args.rounds, repeats=args.repeats)
                    for name, path in list(files.items())[:2] for size in (THUMBNAIL_SIZE, LARGE_SIZE)]
        for row in pictures:
            print(row, flush=True)
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "pillow": Image.__version__,
              "rounds": args.rounds, "repeats": args.repeats, "rows": rows, "pictures": pictures}
    save(report, args.out, "jpeg_draft", table)


def table(report: dict) -> str:
    lines = ["# Large JPEGs: decoded at a reduced scale against decoded whole, then resized to 224 px", "",
             f"`{report['command']}` — {report['date']}, {report['device']}, {report['cores']} cores, 1 thread, "
             f"torch {report['torch']}, Pillow {report['pillow']}; one DecodeDataset item (read, hash, decode, "
             f"resize) {report['repeats']} times per timing, medians over {report['rounds']} rounds taken in turn; "
             "difference: |reduced - whole| in uint8 levels after the resize", "",
             "| image | size | reduced scale, ms | whole, ms | speed-up | max / mean difference | per round |",
             "|---|---|---:|---:|---:|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['image']} | {row['size'][0]} x {row['size'][1]} | {row['draft_ms']:.1f} | "
                     f"{row['whole_ms']:.1f} | {row['speed_up']:.2f} | {row['max_difference']} / "
                     f"{row['mean_difference']:.2f} | {', '.join(map(str, row['per_round']))} |")
    lines += ["", "The page's pictures of the same files (ui.resources.shrunk: read, decode at a reduced scale no "
              "smaller than twice the picture, LANCZOS shrink) against the whole decode and the same shrink:", "",
              "| image | picture | shape | reduced scale, ms | whole, ms | speed-up | max / mean difference "
              "| per round |",
              "|---|---|---|---:|---:|---:|---|---|"]
    for row in report.get("pictures", []):
        difference = f"{row['max_difference']} / {row['mean_difference']:.2f}" if row["same_size"] else "sizes differ"
        lines.append(f"| {row['image']} | {row['picture']} px | {row['shape'][0]} x {row['shape'][1]} | "
                     f"{row['reduced_ms']:.1f} | {row['whole_ms']:.1f} | {row['speed_up']:.2f} | {difference} | "
                     f"{', '.join(map(str, row['per_round']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
