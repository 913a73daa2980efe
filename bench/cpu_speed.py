"""CPU speed of lookalike: indexer images/s, forward-only images/s and (optionally) one 7B query, on this machine.

What it measures, with random-weight DINOv3 backbones (indexer.random_model) at resolution 224:
  1. for the shapes tiny, vits16 and vitl16, saved to a temp dir named '...sat493m' and loaded through the
     product's own path, in bfloat16 and float32:
       - `lookalike index CHIPS --store FRESH --model DIR --json --no-progress --dtype D` run as a subprocess:
         its own images_per_second (median of repeated runs where cheap) and the wall clock of the whole process
         (start-up and model load included);
       - forward only: DinoV3Embedder.embed on pre-made (B, 3, 224, 224) tensors, best of B = 8/16/32, no I/O;
       - the ratio indexer / forward, and bf16 / fp32.
  2. with --with-7b: the full random ViT-7B/16 (6.7B parameters) built directly in bfloat16 in a child process
     (never saved, never float32), tuned for the device as loading does (indexer.embedder.tune_for_device) and
     wrapped in DinoV3Embedder: seconds per single-image query (1 warm-up + 3 timed, median), CPU seconds, then
     images/s on batches of --batch-7b (2 timed, the faster kept: what an index run's forward can reach), peak
     RSS, build time, and whether the output is finite. Skipped below 16 GiB available.

Run from the repository root, in the project's virtual environment:
    python bench/cpu_speed.py --out bench/results/cpu_speed.json             # a few minutes on 2 cores
    python bench/cpu_speed.py --out bench/results/cpu_speed.json --with-7b   # plus a few more for the 7B
It writes the JSON to --out and a markdown table next to it (same name, .md).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_DIR = Path(__file__).resolve().parent.parent
DTYPES = ("bfloat16", "float32")
BATCH_SIZES = (8, 16, 32)
RESOLUTION = 224
# shape: chips indexed (None = all), indexer runs, timed forward runs per batch size. tiny gets 5 indexer runs
# because its runs are short and noisy; vitl16 one run of 64 chips, to stay within minutes on 2 cores.
PLAN = {"tiny": (None, 5, 5), "vits16": (None, 3, 3), "vitl16": (64, 1, 1)}
MIN_FREE_GIB_7B = 16


def machine_info() -> dict:
    from indexer.embedder import cpu_has_bf16
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model_names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return {
        "node": platform.node(), "processor": platform.processor(), "platform": platform.platform(),
        "cpu_model": model_names[0] if model_names else None, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cpu_has_bf16": cpu_has_bf16(),
        "mem_total_gib": round(meminfo_gib("MemTotal"), 1), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }


def meminfo_gib(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB → GiB
    return 0.0


def median_seconds(fn, *, runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def chip_source(chips_dir: Path, count: int | None, work_dir: Path) -> tuple[str, int]:
    """The folder itself, or a .txt list of its first `count` chips (the indexer reads both)."""
    chips = sorted(p for p in chips_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif"})
    if count is None:
        return str(chips_dir), len(chips)
    listing = work_dir / f"chips-{count}.txt"
    listing.write_text("".join(f"{p.absolute()}\n" for p in chips[:count]))
    return str(listing), min(count, len(chips))


def run_indexer(source: str, model_dir: Path, dtype: str, work_dir: Path) -> dict:
    """One `lookalike index` process into a fresh store: its own images/s and the process wall clock."""
    lookalike = shutil.which("lookalike", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=work_dir)) / "store"
    command = [lookalike, "index", source, "--store", str(store_dir), "--model", str(model_dir), "--json",
               "--no-progress", "--dtype", dtype, "--resolution", str(RESOLUTION)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"lookalike index failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(store_dir.parent)
    return {"images_per_second": summary["images_per_second"], "indexed": summary["indexed"],
            "seconds": summary["seconds"], "wall_s": round(wall, 3)}


def forward_only(model_dir: Path, dtype: str, runs: int) -> dict:
    """embed() on pre-made batches, no decoding or store: images/s per batch size and the best."""
    from indexer.embedder import DinoV3Embedder

    embedder = DinoV3Embedder.from_pretrained(str(model_dir), dtype=dtype, device="cpu", resolution=RESOLUTION)
    per_batch = {}
    for batch in BATCH_SIZES:
        pixels = torch.randn(batch, 3, RESOLUTION, RESOLUTION)  # (B, 3, H, W)
        seconds = median_seconds(lambda: embedder.embed(pixels), runs=runs)
        per_batch[batch] = round(batch / seconds, 3)
    best = max(per_batch, key=per_batch.get)
    params = sum(p.numel() for p in embedder.backbone.parameters())
    return {"params": params, "per_batch": per_batch, "best_batch": best, "images_per_second": per_batch[best]}


def bench_shape(shape: str, chips_dir: Path, work_dir: Path) -> list[dict]:
    from indexer.random_model import save_random_model

    count, index_runs, forward_runs = PLAN[shape]
    model_dir = save_random_model(work_dir / f"random-{shape}-sat493m", shape)
    source, chips = chip_source(chips_dir, count, work_dir)
    rows = []
    for dtype in DTYPES:
        print(f"[{shape} {dtype}] indexer x{index_runs} on {chips} chips ...", file=sys.stderr, flush=True)
        index = [run_indexer(source, model_dir, dtype, work_dir) for _ in range(index_runs)]
        print(f"[{shape} {dtype}] forward only ...", file=sys.stderr, flush=True)
        forward = forward_only(model_dir, dtype, forward_runs)
        index_ips = statistics.median(r["images_per_second"] for r in index)
        rows.append({
            "shape": shape, "dtype": dtype, "params": forward["params"], "chips": chips, "index_runs": index,
            "index_images_per_second": round(index_ips, 3),
            "index_wall_s": round(statistics.median(r["wall_s"] for r in index), 3),
            "forward": forward, "forward_images_per_second": forward["images_per_second"],
            "index_over_forward": round(index_ips / forward["images_per_second"], 3),
        })
    shutil.rmtree(model_dir)
    return rows


def build_7b_bf16():
    """The random ViT-7B/16 built on the meta device in bfloat16 and filled in place (12.5 GiB; never float32)."""
    from transformers import DINOv3ViTModel

    from indexer.random_model import random_config

    config = random_config("vit7b16")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            backbone = DINOv3ViTModel(config)
    finally:
        torch.set_default_dtype(previous)
    backbone.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                # normal_ is one pass over 13 GB; the library's trunc_normal_ is several
                module.weight.normal_(0.0, config.initializer_range)
                if module.bias is not None:
                    module.bias.zero_()
            else:  # norms, tokens, layer scale 1e-5, rope frequencies: the library's own init
                backbone._init_weights(module)
    return backbone.eval()


def child_7b(batch: int) -> dict:
    """Runs in its own process so that its peak RSS is the 7B's alone."""
    from indexer.embedder import DinoV3Embedder, tune_for_device
    from indexer.errors import NonFiniteOutput
    from indexer.normalization import SAT493M

    started = time.perf_counter()
    backbone = tune_for_device(build_7b_bf16())
    build_s = time.perf_counter() - started
    embedder = DinoV3Embedder(backbone, model="random-vit7b16", resolution=RESOLUTION, normalization=SAT493M)
    pixels = torch.randn(1, 3, RESOLUTION, RESOLUTION)  # (1, 3, H, W)
    finite = True
    wall, cpu = [], []
    for _ in range(4):  # 1 warm-up + 3 timed
        wall_0, cpu_0 = time.perf_counter(), time.process_time()
        try:
            out = embedder.embed(pixels)
            finite = finite and bool(torch.isfinite(out.global_vectors).all())
        except NonFiniteOutput:
            finite = False
        wall.append(time.perf_counter() - wall_0)
        cpu.append(time.process_time() - cpu_0)
    batch_s = []
    for _ in range(2):
        wall_0 = time.perf_counter()
        embedder.embed(torch.randn(batch, 3, RESOLUTION, RESOLUTION))
        batch_s.append(time.perf_counter() - wall_0)
    return {
        "params": sum(p.numel() for p in backbone.parameters()), "dtype": "bfloat16", "resolution": RESOLUTION,
        "build_s": round(build_s, 1), "warmup_s": round(wall[0], 2), "query_s": [round(s, 2) for s in wall[1:]],
        "median_query_s": round(statistics.median(wall[1:]), 2),
        "median_query_cpu_s": round(statistics.median(cpu[1:]), 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "finite": finite,
        "batch": batch, "batch_s": [round(s, 2) for s in batch_s],
        "batch_images_per_second": round(batch / min(batch_s), 3),
        "tuned": list(getattr(backbone, "lookalike_fused", None) or ()),
    }


def bench_7b(batch: int) -> dict:
    free = meminfo_gib("MemAvailable")
    if free < MIN_FREE_GIB_7B:
        message = f"7B skipped: {free:.1f} GiB available, it needs {MIN_FREE_GIB_7B} GiB (12.5 GiB of bf16 weights)"
        print(message, file=sys.stderr)
        return {"skipped": message}
    print(f"[vit7b16 bfloat16] building and querying ({free:.1f} GiB available) ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, __file__, "--child-7b", "--batch-7b", str(batch)], capture_output=True,
                          text=True)
    if done.returncode:
        return {"skipped": f"7B child failed ({done.returncode}): {done.stderr.strip()[-1000:]}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), mem_available_gib_before=round(free, 1))


def bf16_over_fp32(rows: list[dict]) -> dict:
    by_key = {(r["shape"], r["dtype"]): r for r in rows}
    ratios = {}
    for shape, dtype in by_key:
        if dtype == "bfloat16" and (shape, "float32") in by_key:
            bf16, fp32 = by_key[shape, "bfloat16"], by_key[shape, "float32"]
            ratios[shape] = {kind: round(bf16[f"{kind}_images_per_second"] / fp32[f"{kind}_images_per_second"], 3)
                             for kind in ("index", "forward")}
    return ratios


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# lookalike CPU speed", "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}; total runtime {result['total_s']:.0f} s",
        f"- machine: {m['node']}, {m['cpu_model']} ({m['processor'] or 'n/a'}), {m['cores']} cores, "
        f"{m['torch_threads']} torch threads, {m['mem_total_gib']} GiB RAM, bf16 in CPU: {m['cpu_has_bf16']}",
        f"- software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}",
        f"- load average (1 min) at start / end: {result['load_start']:.2f} / {result['load_end']:.2f}. "
        "Figures come from a shared 2-core machine (other jobs, e.g. a test suite, may have run at the same "
        "time): compare the ratios within this run, not absolute numbers across machines.",
        "- random-weight DINOv3 backbones (indexer.random_model), resolution 224, chips: 128x128 NAIP JPEGs "
        "upscaled to 224. Indexer: `lookalike index` as a subprocess into a fresh store, its default batch "
        "(--batch-size auto) and decode workers; img/s is the indexer's own figure (median of runs), wall is the whole process. Forward: "
        "`DinoV3Embedder.embed` on pre-made tensors, best of batch 8/16/32.", "",
        "| shape | params | dtype | chips x runs | index img/s (min–max) | index process wall s "
        "| forward img/s (batch) | index / forward |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["shapes"]:
        runs = [run["images_per_second"] for run in r["index_runs"]]
        lines.append(
            f"| {r['shape']} | {r['params'] / 1e6:.3g}M | {r['dtype']} | {r['chips']} x {len(r['index_runs'])} "
            f"| {r['index_images_per_second']:.2f} ({min(runs):.1f}–{max(runs):.1f}) | {r['index_wall_s']:.1f} "
            f"| {r['forward_images_per_second']:.2f} ({r['forward']['best_batch']}) | {r['index_over_forward']:.2f} |")
    lines += ["", "| shape | bf16 / fp32 index img/s | bf16 / fp32 forward img/s |", "|---|---:|---:|"]
    for shape, ratio in result["bf16_over_fp32"].items():
        lines.append(f"| {shape} | {ratio['index']:.2f} | {ratio['forward']:.2f} |")
    seven = result.get("vit7b16")
    if seven and "skipped" not in seven:
        lines += ["", "ViT-7B/16 (random, built in bf16 in memory), one image at 224:", "",
                  "| params | build s | warm-up s | median query s (3 runs) | median CPU s | peak RSS GiB | finite |",
                  "|---:|---:|---:|---:|---:|---:|---|",
                  f"| {seven['params'] / 1e9:.2f}B | {seven['build_s']} | {seven['warmup_s']} "
                  f"| {seven['median_query_s']} ({', '.join(map(str, seven['query_s']))}) "
                  f"| {seven['median_query_cpu_s']} | {seven['peak_rss_gib']} | {seven['finite']} |"]
        if "batch" in seven:
            tuned = ", ".join(seven["tuned"]) or "none"
            lines += ["", f"Batches of {seven['batch']} (the forward an index run makes; rewritten layers: {tuned}): "
                      f"{seven['batch_images_per_second']:.3f} images/s (the faster of "
                      f"{', '.join(map(str, seven['batch_s']))} s)."]
    elif seven:
        lines += ["", f"ViT-7B/16: {seven['skipped']}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_DIR / "bench/results/cpu_speed.json")
    parser.add_argument("--chips", type=Path, default=REPO_DIR / "samples/naip", help="Folder of image chips.")
    parser.add_argument("--shapes", default=",".join(PLAN), help="Comma-separated, from " + ", ".join(PLAN))
    parser.add_argument("--with-7b", action="store_true", help="Also time a query on the random ViT-7B (minutes).")
    parser.add_argument("--batch-7b", type=int, default=4, help="Batch size for the 7B's images/s.")
    parser.add_argument("--child-7b", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_7b:
        print(json.dumps(child_7b(args.batch_7b)))
        return

    started = time.perf_counter()
    result = {"command": shlex.join(["python", *sys.argv]),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_info(), "load_start": os.getloadavg()[0], "shapes": []}
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as work:
        for shape in args.shapes.split(","):
            result["shapes"] += bench_shape(shape, args.chips, Path(work))
    result["bf16_over_fp32"] = bf16_over_fp32(result["shapes"])
    if args.with_7b:
        result["vit7b16"] = bench_7b(args.batch_7b)
    result["load_end"] = os.getloadavg()[0]
    result["total_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
