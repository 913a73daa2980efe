"""Peak memory of `lookalike index` as the collection grows: 1,000 against 10,000 real chips, one run each.

The chips are windows of the ten NAIP scenes in ../shared/data (`--chip-size` sets how many), indexed with a
tiny random DINOv3 so that the model's own memory is small and what grows, if anything, is the pipeline's.
Each run is a fresh `lookalike index` process; its peak RSS comes from the kernel (getrusage of a wrapper's child).

    python bench/memory_scaling.py --out bench/results/memory_scaling.json
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENES = REPO.parent / "shared" / "data" / "naip"
# chip size -> chips over the ten scenes (934 x 723/724 px each, edges shifted inward)
SIZES = {"1k": 80, "10k": 24}


# A fresh wrapper per run, so that RUSAGE_CHILDREN holds that run's peak alone.
WRAPPER = """
import json, resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True)
print(json.dumps({"summary": json.loads(result.stdout),
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run_index(model_dir: Path, store_dir: Path, chip_size: int) -> dict:
    command = [sys.executable, "-m", "indexer.cli", "index", str(SCENES), "--store", str(store_dir), "--model",
               str(model_dir), "--dtype", "float32", "--chip-size", str(chip_size), "--batch-size", "32",
               "--no-progress", "--json"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=REPO, env=env, capture_output=True,
                            text=True, check=True)
    seconds = time.perf_counter() - started
    measured = json.loads(result.stdout)
    return {"chip_size": chip_size, "indexed": measured["summary"]["indexed"], "seconds": round(seconds, 1),
            "peak_rss_mib": round(measured["peak_kib"] / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory_scaling.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from indexer.random_model import save_random_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_random_model(Path(tmp) / "tiny-dinov3-sat493m", "tiny")
        rows = {name: run_index(model_dir, Path(tmp) / f"store-{name}", size) for name, size in SIZES.items()}
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "runs": rows,
              "ratio_10k_over_1k_peak": round(rows["10k"]["peak_rss_mib"] / rows["1k"]["peak_rss_mib"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
