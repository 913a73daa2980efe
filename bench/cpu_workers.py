"""Decode workers on a CPU-only run: the indexer with 0 and 1 decode workers against forward-only, in turn.

On a CPU the backbone's forward already runs a thread on every core. A decode worker then does not run beside
it but instead of it: each time the worker decodes, one of the forward's threads waits for its core, and the
other waits for that one at the next join. This script measures whether decoding in the model's own process
between batches (--workers 0) beats handing it to a worker process on this machine. In each round, in turn
(order alternated): forward-only on pre-made tensors at the indexer's batch size, then `index_collection` over
the same fresh JPEG copies with each worker count, then the decoding alone (read, hash, decode, resize, batch:
what a worker does, here on one thread with no model running). Medians of per-round ratios.

When the forward keeps every core busy, decoding cannot hide behind it, wherever it runs: forward / (forward +
decode), per image, is then the most indexer / forward-only can be; the table reports it.

    python bench/cpu_workers.py --rounds 12 --out bench/results/cpu/workers
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench import throughput  # noqa: E402
from bench.throughput import bench_embedder, build_backbone, copies, cpu_name, forward_only, indexer_run  # noqa: E402
from indexer.embedder import resolve_dtype, tune_for_device  # noqa: E402
from indexer.pipeline import batches, default_workers  # noqa: E402
from indexer.plan import Job  # noqa: E402


def decode_seconds(preprocess, pool, *, batch: int) -> float:
    """Seconds per image for decoding `pool` in this process, as --workers 0 does, with no forward."""
    jobs = [Job(path=str(path), size=path.stat().st_size, mtime=path.stat().st_mtime) for path in pool]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as in a decode worker: the resize is a PyTorch kernel
    try:
        start = time.perf_counter()
        decoded = sum(len(b["records"]) for b in batches(jobs, preprocess, batch_size=batch, workers=0, raw=True))
        return (time.perf_counter() - start) / decoded
    finally:
        torch.set_num_threads(threads)


def rounds_of(model, pool, *, resolution: int, batch: int, worker_counts: list[int], rounds: int) -> dict:
    rates = {"forward_only": []} | {f"workers_{n}": [] for n in worker_counts}
    in_forward = {f"workers_{n}": [] for n in worker_counts}
    decode = []
    for number in range(rounds):
        rates["forward_only"].append(forward_only(model, resolution, [batch], runs=5)["images_per_second"])
        for workers in worker_counts if number % 2 == 0 else worker_counts[::-1]:
            run = indexer_run(bench_embedder(model, resolution), pool, batch_size=batch, workers=workers)
            rates[f"workers_{workers}"].append(run["images_per_second"])
            in_forward[f"workers_{workers}"].append(run["forward_images_per_second"])
        decode.append(decode_seconds(bench_embedder(model, resolution).preprocess, pool, batch=batch))
        print(number, {name: round(values[-1], 1) for name, values in rates.items()}, flush=True)
    forward = rates["forward_only"]
    result = {"images": len(pool), "batch": batch, "rounds": rates, "forward_in_indexer": in_forward,
              "images_per_second": {name: statistics.median(values) for name, values in rates.items()},
              "decode_ms_per_image": 1000 * statistics.median(decode),
              "bound_if_decode_cannot_overlap": statistics.median((1 / f) / (1 / f + d) for f, d in zip(forward, decode))}
    for name in in_forward:
        result[name] = {
            "over_forward_only": statistics.median(a / f for a, f in zip(rates[name], forward)),
            "forward_in_indexer_over_forward_only": statistics.median(a / f for a, f in zip(in_forward[name], forward)),
        }
    if len(worker_counts) == 2:
        a, b = (f"workers_{n}" for n in worker_counts)
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        result["first_over_second"] = {"median": statistics.median(per_round),
                                       "per_round": [round(r, 2) for r in per_round]}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="vits16")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--images", type=Path, default=Path("samples/naip"), help="real JPEG chips (the bundled sample)")
    parser.add_argument("--files", type=int, default=192, help="JPEG copies indexed per run (bench/throughput.py's)")
    parser.add_argument("--batch", type=int, default=8, help="the indexer's and forward-only's batch")
    parser.add_argument("--workers", default="0,1", help="decode worker counts to take in turn")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/workers"))
    args = parser.parse_args()
    throughput.DEVICE = "cpu"
    throughput.DTYPE = dtype = resolve_dtype("auto", torch.device("cpu"))
    import transformers

    started = time.perf_counter()
    model = tune_for_device(build_backbone(args.shape, dtype))
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype)[6:],
              "model": f"random DINOv3 {args.shape}", "resolution": args.resolution, "rounds": args.rounds,
              "attention": model.config._attn_implementation, "default_workers": default_workers()}
    with tempfile.TemporaryDirectory() as tmp:
        pool = copies(args.images, Path(tmp), args.files)
        report["result"] = rounds_of(model, pool, resolution=args.resolution, batch=args.batch,
                                     worker_counts=[int(n) for n in args.workers.split(",")], rounds=args.rounds)
    report["total_seconds"] = time.perf_counter() - started
    save(report, args.out, f"workers-{args.shape}", table)


def table(report: dict) -> str:
    result = report["result"]
    lines = [f"# Decode workers on a CPU-only run: {report['model']} in {report['dtype']} on {report['device']}", "",
             f"`{report['command']}` — {report['date']}, {report['cores']} cores ({report['torch_threads']} torch "
             f"threads), torch {report['torch']}, transformers {report['transformers']}, attention "
             f"{report['attention']}; {result['images']} JPEG chips at {report['resolution']} px, batch "
             f"{result['batch']}; medians over {report['rounds']} rounds, taken in turn", "",
             "| run | img/s | × forward-only | its forward × forward-only |", "|---|---:|---:|---:|",
             f"| forward-only | {result['images_per_second']['forward_only']:.1f} | 1 | |"]
    for name, ratios in result.items():
        if name.startswith("workers_"):
            lines.append(f"| indexer, --workers {name.removeprefix('workers_')} | "
                         f"{result['images_per_second'][name]:.1f} | {ratios['over_forward_only']:.2f} | "
                         f"{ratios['forward_in_indexer_over_forward_only']:.2f} |")
    lines += ["", f"Decoding alone, one thread: {result['decode_ms_per_image']:.2f} ms per image. Were it unable to "
              f"overlap the forward at all, indexer / forward-only could be at most "
              f"{result['bound_if_decode_cannot_overlap']:.2f} (forward / (forward + decode), per image)."]
    if "first_over_second" in result:
        pair = result["first_over_second"]
        lines += ["", f"First worker count over the second: {pair['median']:.2f} × (per round: "
                  f"{', '.join(map(str, pair['per_round']))})"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
