"""Planning a rerun where nothing changed: scenes opened again (as before) against scenes skipped unopened.

Every `lookalike index` run first plans: it compares the files with the catalogue. A scene recorded with its
window count, unchanged and finished, is now skipped without opening it; one recorded by an older lookalike
(no window count) is opened with GDAL twice (is it georeferenced? which windows?), as every scene was before.

The bench indexes `--copies` copies of the ten NAIP scenes in ../shared/data (tiny random DINOv3, CPU, 256 px
chips) into a store, copies the store and blanks the copy's window counts (the older record), then times the
dry-run plan (`preview_run`: the plan alone, nothing written) on both in turn, `--rounds` times. The scenes
sit in the page cache, so an open costs its local minimum here; on network storage each costs more.

    python bench/plan_speed.py --copies 20 --rounds 7 --out bench/results/plan_speed.json
"""
import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.throughput import cpu_name  # noqa: E402
from indexer.embedder import DinoV3Embedder  # noqa: E402
from indexer.pipeline import ChipOptions, index_collection  # noqa: E402
from indexer.preview import preview_run  # noqa: E402
from indexer.random_model import save_random_model  # noqa: E402

NAIP_DIR = REPO.parent / "shared" / "data" / "naip"
CHIPS = ChipOptions(chip_size=256)


def build(work: Path, copies: int) -> tuple[Path, Path, dict]:
    """(the scene folder, the indexed store, the index run's summary)."""
    scenes_dir = work / "scenes"
    scenes_dir.mkdir()
    for number in range(copies):
        for scene in sorted(NAIP_DIR.glob("*.tif")):
            shutil.copy2(scene, scenes_dir / f"{scene.stem}_{number}.tif")
    model_dir = save_random_model(work / "tiny-dinov3-sat493m", "tiny")
    embedder = DinoV3Embedder.from_pretrained(str(model_dir), dtype="float32", device="cpu")
    summary = index_collection([str(scenes_dir)], work / "store", embedder=embedder, chips=CHIPS, progress=False)
    return scenes_dir, work / "store", summary


def as_older_lookalike(store_dir: Path, target: Path) -> Path:
    """A copy of the store whose scene records lack the window count, as a lookalike before it wrote them."""
    shutil.copytree(store_dir, target)
    conn = sqlite3.connect(target / "catalogue.db")
    with conn:
        conn.execute("UPDATE scenes SET windows = NULL, georeferenced = NULL")
    conn.close()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20, help="copies of the ten NAIP scenes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "plan_speed.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scenes_dir, store_dir, summary = build(Path(tmp), args.copies)
        stores = {"skipped unopened": store_dir, "opened (older record)": as_older_lookalike(store_dir, Path(tmp) / "older")}
        seconds = {name: [] for name in stores}
        for _ in range(args.rounds):
            for name, path in stores.items():
                start = time.perf_counter()
                plan = preview_run([scenes_dir], path, chips=CHIPS)
                seconds[name].append(time.perf_counter() - start)
                assert plan["embed"] == 0 and plan["skipped"] == summary["indexed"], plan
    scenes = summary["scenes"]
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = [older / new for new, older in zip(*seconds.values())]
    report = {
        "command": "python bench/plan_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "scenes": scenes, "chips": summary["indexed"], "rounds": args.rounds,
        "median_seconds": {name: round(value, 3) for name, value in medians.items()},
        "median_ms_per_scene": {name: round(value / scenes * 1000, 2) for name, value in medians.items()},
        "opened_over_unopened": round(statistics.median(ratios), 1),
        "seconds": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
