"""Overhead of `lookalike index --ray` (a local Ray instance) against the single-process path, same files, one run.

For each model shape (random-weight DINOv3s, saved under a name with 'sat493m', float32 on the CPU), the same
chips are indexed into fresh stores by `lookalike index` run as a subprocess, alternately single-process and
with `--ray`, `--rounds` times each. Reported per path: the run's own images/s (from --json: Ray start-up and
shard ingestion included for --ray), the wall clock of the whole command, and the ratio Ray / single-process;
plus a check that both stores hold the same ids and vectors.

Run from the repository root, in the project's virtual environment (with the ray extra):
    python bench/ray_overhead.py --out bench/results/ray_overhead.json     # about 3 minutes on 2 cores
It writes the JSON to --out and a markdown table next to it (same name, .md).
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_DIR = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def index_command(chips: Path, store_dir: Path, model_dir: Path, *, ray: bool, batch_size: int) -> list[str]:
    command = [sys.executable, "-m", "indexer.cli", "index", str(chips), "--store", str(store_dir), "--model",
               str(model_dir), "--dtype", "float32", "--device", "cpu", "--batch-size", str(batch_size),
               "--no-progress", "--json"]
    return command + (["--ray"] if ray else [])


def run_once(command: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_DIR, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"failed: {shlex.join(command)}\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"images_per_second": summary["images_per_second"], "seconds": summary["seconds"],
            "wall_seconds": round(wall, 3), "indexed": summary["indexed"]}


def max_difference(a_dir: Path, b_dir: Path) -> dict:
    from store import Store

    a, b = Store.open(a_dir), Store.open(b_dir)
    try:
        ids_a = {p: r["id"] for p, r in a.images_by_path().items()}
        ids_b = {p: r["id"] for p, r in b.images_by_path().items()}
        diff = max(float(np.abs(a.vector(i) - b.vector(i)).max()) for i in ids_a.values())
        return {"same_ids": ids_a == ids_b, "max_vector_difference": diff}
    finally:
        a.close()
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=Path, default=REPO_DIR / "samples" / "naip")
    parser.add_argument("--shapes", default="tiny,vits16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO_DIR / "bench" / "results" / "ray_overhead.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_DIR))
    from indexer.random_model import save_random_model

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        for shape in args.shapes.split(","):
            model_dir = save_random_model(tmp_dir / f"random-{shape}-sat493m", shape)
            runs = {"single": [], "ray": []}
            for round_ in range(args.rounds):
                for path in ("single", "ray"):
                    store_dir = tmp_dir / f"{shape}-{path}-{round_}"
                    runs[path].append(run_once(index_command(args.chips, store_dir, model_dir, ray=path == "ray",
                                                             batch_size=args.batch_size)))
                    print(shape, path, runs[path][-1], flush=True)
            check = max_difference(tmp_dir / f"{shape}-single-0", tmp_dir / f"{shape}-ray-0")
            median = {path: {key: statistics.median(r[key] for r in rs) for key in ("images_per_second",
                                                                                  "wall_seconds")}
                      for path, rs in runs.items()}
            results.append({
                "shape": shape, "images": runs["single"][0]["indexed"], "runs": runs, "median": median,
                "ratio_images_per_second": round(median["ray"]["images_per_second"]
                                                 / median["single"]["images_per_second"], 3),
                "ratio_wall": round(median["ray"]["wall_seconds"] / median["single"]["wall_seconds"], 3),
                **check,
            })
    report = {
        "command": "python bench/ray_overhead.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": None, "python": platform.python_version(),
                    "ray": __import__("ray").__version__, "torch": __import__("torch").__version__},
        "chips": str(args.chips.relative_to(REPO_DIR)) if args.chips.is_relative_to(REPO_DIR) else str(args.chips),
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Ray path vs single-process path (`lookalike index` vs `lookalike index --ray`)", "",
        f"`{report['command']}` on {report['date']}: {machine['cpu']}, {machine['cores']} cores, no GPU; "
        f"ray {machine['ray']}, torch {machine['torch']}. Chips: `{report['chips']}`. Random-weight DINOv3s, "
        "float32, 224 px; a local Ray instance (`--ray`, default actors: one per 2 CPUs). images/s is the run's "
        "own figure (Ray start-up and shard ingestion included); medians of the rounds, alternated.", "",
        "| model | images | single-process images/s | Ray images/s | Ray / single | wall s single / Ray | same ids | max vector diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        m = r["median"]
        lines.append(f"| {r['shape']} | {r['images']} | {m['single']['images_per_second']:.1f} | "
                     f"{m['ray']['images_per_second']:.1f} | {r['ratio_images_per_second']:.2f} | "
                     f"{m['single']['wall_seconds']:.1f} / {m['ray']['wall_seconds']:.1f} | {r['same_ids']} | "
                     f"{r['max_vector_difference']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
