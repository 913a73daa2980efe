"""How far this CPU's arithmetic lets indexer/naive go: the forward's rates against the machine's matrix-product peak.

The CPU target asks the indexer for 3 × the model card's float32 loop. On a CPU both sides are bound by
matrix-product speed, so the most any indexer can reach is (16-bit peak rate) / (the float32 loop's rate),
both in FLOP/s. In each round, in turn (order rotating), on the same 2-thread CPU:
- peak: a 2048² × 2048 matrix product in float32 and in the indexer's dtype (square and large: the best case),
  the faster of PyTorch's matmul and oneDNN's inner product on packed weights;
- products: every linear layer of the backbone (as loaded) back to back at batch 32, nothing else of the forward;
- attention: the attention the backbone runs as loaded (indexer/attention.py's pick, else
  scaled_dot_product_attention) alone on the forward's shapes;
- forward: forward-only at batch 32, the backbone as loaded;
- naive: the model card's loop on real chips, float32 (decode, preprocess, forward, pooler_output); its
  FLOP/s count its decoding time as well, as indexer/naive does.
FLOPs as in bench/throughput.py (2 × parameters × tokens, plus QKᵀ and AV). Medians over rounds.

    python bench/cpu_peak.py --rounds 6 --out bench/results/cpu/peak-epyc
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench import throughput  # noqa: E402
from bench.cpu_attention import run_fields, run_line  # noqa: E402
from bench.cpu_quantized import chips  # noqa: E402
from bench.throughput import (attention_flops, build_backbone, cuda_time, flops_per_image,  # noqa: E402
                              matmul_ceiling, naive, tokens_per_image)
from indexer import attention  # noqa: E402
from indexer.embedder import CPU_BATCH, DTYPES, resolve_dtype, tune_for_device  # noqa: E402
from indexer.random_model import SHAPES  # noqa: E402

TARGET = 3.0  # indexer / naive, the CPU target


def best_seconds(fn, runs: int) -> float:
    """The fastest of `runs` calls after one untimed call: a rate the machine can reach, not a typical one."""
    return min(cuda_time(fn, warmup=1, runs=runs))  # on a CPU its sync is a no-op


def square_rate(dtype, side: int, runs: int) -> float:
    """FLOP/s of one side² × side matrix product, the faster of PyTorch's matmul and oneDNN's inner product on
    weights packed in its own layout (what the rewritten layers run)."""
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    packed = torch.ops.mkldnn._reorder_linear_weight(b, side)
    return 2 * side**3 / min(best_seconds(lambda: a @ b, runs), best_seconds(
        lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), runs))


def attention_rate(model, resolution: int, batch: int, runs: int) -> float:
    """FLOP/s of the attention kernel alone on one layer's query, key and value shapes (QKᵀ and AV)."""
    config = model.config
    heads = config.num_attention_heads
    shape = (batch, heads, tokens_per_image(config, resolution), config.hidden_size // heads)
    dtype = next(model.parameters()).dtype
    q, k, v = (torch.randn(shape, dtype=dtype) for _ in range(3))
    flops = batch * attention_flops(config, resolution) / config.num_hidden_layers
    chosen = attention.FUNCTIONS.get(config._attn_implementation)
    call = (lambda: chosen(None, q, k, v, None)) if chosen else (lambda: F.scaled_dot_product_attention(q, k, v))
    return flops / best_seconds(call, runs)


def product_flops(model, resolution: int) -> float:
    """FLOPs per image of the linear layers and the patch embedding (flops_per_image less attention)."""
    return flops_per_image(model, resolution) - attention_flops(model.config, resolution)


@torch.inference_mode()
def one_round(models: dict, pixels, files, *, resolution: int, runs: int, turn: int) -> dict:
    model, reference = models["indexer"], models["float32"]
    flops = flops_per_image(model, resolution)
    batch = pixels.shape[0]
    steps = {
        "peak_float32": lambda: square_rate(torch.float32, 2048, runs),
        "peak_16bit": lambda: square_rate(next(model.parameters()).dtype, 2048, runs),
        "products": lambda: matmul_ceiling(model, resolution, batch, runs=runs)["images_per_second"]
        * product_flops(model, resolution),
        "attention": lambda: attention_rate(model, resolution, batch, runs),
        "forward": lambda: batch / best_seconds(lambda: model(pixel_values=pixels), runs) * flops,
        "naive": lambda: naive(reference, files, resolution)["images_per_second"] * flops,
    }
    names = list(steps)
    order = names[turn % len(names):] + names[:turn % len(names)]
    return {name: steps[name]() for name in order}


def summary(rounds: list[dict], flops: float) -> dict:
    rate = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    naive_images = rate["naive"] / flops
    return {"gflops": {name: round(value / 1e9, 1) for name, value in rate.items()},
            "products_of_peak": rate["products"] / rate["peak_16bit"],
            "attention_of_peak": rate["attention"] / rate["peak_16bit"],
            "forward_of_peak": rate["forward"] / rate["peak_16bit"],
            "naive_of_float32_peak": rate["naive"] / rate["peak_float32"],
            "naive_images_per_second": naive_images,
            "forward_over_naive": rate["forward"] / rate["naive"],
            "bound_over_naive": rate["peak_16bit"] / rate["naive"],
            "target_needs_of_peak": TARGET * rate["naive"] / rate["peak_16bit"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="vits16", choices=sorted(SHAPES))
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--chips", type=Path, default=Path("samples/naip"), help="real chips (the bundled sample)")
    parser.add_argument("--naive-files", type=int, default=32, help="chips the float32 loop embeds per round")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per measurement and round (the best kept)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the indexer's on this CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/peak"))
    args = parser.parse_args()
    throughput.DEVICE = "cpu"
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    started = time.perf_counter()
    models = {"indexer": tune_for_device(build_backbone(args.shape, dtype)),
              "float32": build_backbone(args.shape, torch.float32)}
    pixels = chips(args.chips, CPU_BATCH, args.resolution).to(dtype)
    files = sorted(args.chips.glob("*.jpg"))[:args.naive_files]
    rounds = []
    for turn in range(args.rounds):
        rounds.append(one_round(models, pixels, files, resolution=args.resolution, runs=args.runs, turn=turn))
        print(turn, {name: round(value / 1e9, 1) for name, value in rounds[-1].items()}, flush=True)
    flops = flops_per_image(models["indexer"], args.resolution)
    report = {**run_fields(args.shape, dtype, rounds=args.rounds), "resolution": args.resolution,
              "batch": CPU_BATCH, "runs": args.runs, "naive_files": len(files), "flops_per_image": flops,
              "tuned": list(getattr(models["indexer"], "lookalike_fused", ())),
              "attention": models["indexer"].config._attn_implementation, **summary(rounds, flops),
              "per_round_gflops": [{k: round(v / 1e9, 1) for k, v in r.items()} for r in rounds],
              "total_seconds": time.perf_counter() - started}
    save(report, args.out, f"peak-{args.shape}", table)


def table(report: dict) -> str:
    g = report["gflops"]
    rows = [("2048² matrix product, float32 (peak)", g["peak_float32"], "1.00 of float32 peak"),
            (f"2048² matrix product, {report['dtype']} (peak)", g["peak_16bit"], "1.00"),
            ("the backbone's linear layers alone, batch 32", g["products"], f"{report['products_of_peak']:.2f}"),
            (f"attention alone ({report.get('attention', 'sdpa')}), batch 32", g["attention"],
             f"{report['attention_of_peak']:.2f}"),
            ("forward-only, batch 32, as loaded", g["forward"], f"{report['forward_of_peak']:.2f}"),
            ("model card's loop, float32, one image", g["naive"],
             f"{report['naive_of_float32_peak']:.2f} of float32 peak")]
    lines = [f"# The CPU's matrix-product peak and the forward: {report['model']} in {report['dtype']} on "
             f"{report['device']}", "", run_line(report) + f"{report['resolution']} px, "
             f"{report['flops_per_image'] / 1e9:.2f} GFLOP per image; the best of {report['runs']} calls per "
             f"measurement, medians over {report['rounds']} rounds taken in turn", "",
             f"| what | GFLOP/s | share of the {report['dtype']} peak |", "|---|---:|---:|"]
    lines += [f"| {what} | {value:.1f} | {share} |" for what, value, share in rows]
    lines += ["", f"- The float32 loop: {report['naive_images_per_second']:.1f} images/s. forward-only / loop: "
              f"{report['forward_over_naive']:.2f}.",
              f"- Every FLOP of the forward at the {report['dtype']} peak, nothing else: "
              f"{report['bound_over_naive']:.2f} × the loop, the most indexer / loop can be on this CPU.",
              f"- {TARGET:g} × the loop needs the whole forward, attention and all, at "
              f"{report['target_needs_of_peak']:.0%} of that peak (forward-only reaches "
              f"{report['forward_of_peak']:.0%})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
