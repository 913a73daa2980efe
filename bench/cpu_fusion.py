"""The backbone's layers rewritten for a CPU (indexer/cpu_fusion.py), one rewrite at a time, against as before.

Side by side, in turn within each round (the order rotating), medians of per-round ratios to the backbone as
lookalike ran it before the rewrites (transformers' layers, with the attention picked for the CPU):
1. + layer scales folded into the weights;  2. + the MLP's activation fused into its projection;  3. + every
linear layer's weights packed once into oneDNN's layout (the packing in bfloat16 and float32);  4. + the rotary
embedding written into new contiguous q and k (all four: what load_backbone gives where cpu_fusion.rewrites_apply).
The rewrites are applied whatever the CPU and --dtype (default: the indexer's), so that any machine can measure
them; the table says whether loading applies them there.
Forward-only on a batch of real chips (--batch, by default the indexer's CPU batch: 32 until 2026-11-30, then 16)
and on one chip (a search query); how far the CLS vectors move, against the unrewritten backbone and against
float32; and where the forward's time goes (torch.profiler, by operator; attention: whatever runs inside the
attention function) before and after.

    python bench/cpu_fusion.py --rounds 12 --out bench/results/cpu/fusion
    python bench/cpu_fusion.py --rounds 10 --dtype float32 --out bench/results/cpu/fusion-epyc-float32
"""
import argparse
import copy
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench import throughput  # noqa: E402
from bench.cpu_attention import run_fields, run_line, seconds  # noqa: E402
from bench.cpu_quantized import chips  # noqa: E402
from bench.throughput import build_backbone  # noqa: E402
from indexer import attention  # noqa: E402
from indexer.cpu_fusion import PARTS, fuse_for_cpu, rewrites_apply  # noqa: E402
from indexer.embedder import CPU_BATCH, DTYPES, resolve_dtype  # noqa: E402
from indexer.random_model import SHAPES  # noqa: E402

MATRIX_PRODUCTS = {"aten::addmm", "aten::mm", "aten::bmm", "mkldnn::_linear_pointwise", "aten::mkldnn_convolution"}
MARK = "lookalike::attention"  # the profiler record around each call of the backbone's attention function


def variants(shape: str, dtype) -> dict:
    base = attention.use_cpu_attention(build_backbone(shape, dtype))
    models = {"before": base}
    for count in range(1, len(PARTS) + 1):
        name = "+ " + " + ".join(PARTS[:count])
        models[name] = fuse_for_cpu(copy.deepcopy(base), parts=PARTS[:count], anywhere=True)
    return models


@torch.inference_mode()
def speed(models: dict, pixels: torch.Tensor, *, rounds: int) -> dict:
    one = pixels[:1].clone()
    names = list(models)
    rates, ratios = {n: [] for n in names}, {n: [] for n in names}
    single, single_ratios = {n: [] for n in names}, {n: [] for n in names}
    for number in range(rounds):
        order = names[number % len(names):] + names[:number % len(names)]
        timed, query = {}, {}
        for name in order:
            timed[name] = seconds(lambda: models[name](pixel_values=pixels), 2)
            query[name] = seconds(lambda: models[name](pixel_values=one), 10)
        for name in names:
            rates[name].append(len(pixels) / timed[name])
            ratios[name].append(timed["before"] / timed[name])
            single[name].append(1000 * query[name])
            single_ratios[name].append(query["before"] / query[name])
        print(number, {n: round(ratios[n][-1], 2) for n in names}, flush=True)
    return {name: {"images_per_second": statistics.median(rates[name]), "speed_up": statistics.median(ratios[name]),
                   "per_round": [round(r, 2) for r in ratios[name]], "one_image_ms": statistics.median(single[name]),
                   "one_image_speed_up": statistics.median(single_ratios[name])} for name in names}


@torch.inference_mode()
def closeness(models: dict, pixels: torch.Tensor, float32_model) -> dict:
    reference = float32_model(pixel_values=pixels.float()).pooler_output
    before = models["before"](pixel_values=pixels).pooler_output.float()
    rows = {}
    for name, model in models.items():
        cls = model(pixel_values=pixels).pooler_output.float()
        rows[name] = {"cls_cosine_min_to_before": float(F.cosine_similarity(cls, before).min()),
                      "cls_cosine_min_to_float32": float(F.cosine_similarity(cls, reference).min())}
    return rows


@torch.inference_mode()
def where_time_goes(model, pixels: torch.Tensor, *, runs: int = 3) -> dict:
    """Self time by operator; "attention" is everything inside the attention function the model calls (one flash
    kernel with SDPA; products, softmax and scaling with split attention), whatever its operators."""
    from torch.profiler import ProfilerActivity, profile

    model(pixel_values=pixels)
    with attention_marked(model), profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(runs):
            model(pixel_values=pixels)
    events = profiler.events()
    total = sum(e.self_cpu_time_total for e in events)
    share = {"matrix products": 0.0, "attention": 0.0, "everything else": 0.0}
    others = {}
    for event in events:
        group = "attention" if _inside_attention(event) else \
            "matrix products" if event.key in MATRIX_PRODUCTS else "everything else"
        share[group] += event.self_cpu_time_total / total
        if group == "everything else":
            others[event.key] = others.get(event.key, 0.0) + event.self_cpu_time_total / total
    largest = dict(sorted(others.items(), key=lambda item: -item[1])[:6])
    return {"share": share, "largest_other_ops": largest, "ms_per_forward": total / runs / 1000}


def _inside_attention(event) -> bool:
    while event is not None:
        if event.name == MARK:
            return True
        event = event.cpu_parent
    return False


@contextmanager
def attention_marked(model):
    """While profiling: the model's attention function (transformers looks it up by name at every call) wrapped in
    a profiler record named MARK; the function itself back in transformers' table afterwards."""
    from torch.profiler import record_function
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as functions

    name = model.config._attn_implementation
    original = functions[name]

    def marked(*args, **kwargs):
        with record_function(MARK):
            return original(*args, **kwargs)

    functions[name] = marked
    try:
        yield
    finally:
        functions[name] = original


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="vits16", choices=sorted(SHAPES))
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--images", type=Path, default=Path("samples/naip"), help="real chips (the bundled sample)")
    parser.add_argument("--batch", type=int, default=CPU_BATCH)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the indexer's on this CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/fusion"))
    args = parser.parse_args()
    throughput.DEVICE = "cpu"
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    started = time.perf_counter()
    models = variants(args.shape, dtype)
    pixels = chips(args.images, args.batch, args.resolution).to(dtype)
    report = {**run_fields(args.shape, dtype, rounds=args.rounds), "resolution": args.resolution, "batch": args.batch,
              "rewritten": {name: list(getattr(m, "lookalike_fused", ())) for name, m in models.items()},
              "loading_rewrites_here": rewrites_apply(models["before"]),
              "speed": speed(models, pixels, rounds=args.rounds),
              "closeness": closeness(models, pixels, build_backbone(args.shape, torch.float32)),
              "profile": {name: where_time_goes(models[name], pixels) for name in ("before", list(models)[-1])}}
    report["total_seconds"] = time.perf_counter() - started
    save(report, args.out, f"fusion-{args.shape}", table)


def table(report: dict) -> str:
    lines = [f"# Rewritten layers on a CPU: {report['model']} in {report['dtype']} on {report['device']}", "",
             run_line(report) + f"{report['resolution']} px, batch {report['batch']} of real chips; medians over "
             f"{report['rounds']} rounds, the variants taken in turn (order rotating), speed-ups the medians of "
             "per-round ratios", "",
             "| backbone | rewrites applied | img/s | speed-up | per round | one image ms (speed-up) "
             "| CLS cosine min to before / to float32 |", "|---|---|---:|---:|---|---|---|"]
    for name, row in report["speed"].items():
        near = report["closeness"][name]
        lines.append(f"| {name} | {', '.join(report['rewritten'][name]) or 'none'} | {row['images_per_second']:.1f} | "
                     f"{row['speed_up']:.2f} | {', '.join(map(str, row['per_round']))} | {row['one_image_ms']:.1f} "
                     f"({row['one_image_speed_up']:.2f}) | {near['cls_cosine_min_to_before']:.5f} / "
                     f"{near['cls_cosine_min_to_float32']:.5f} |")
    lines += ["", "Where one forward's time goes (torch.profiler, self time by operator, batch "
              f"{report['batch']}; attention is all that runs inside the attention function):", ""]
    for name, profile in report["profile"].items():
        share = ", ".join(f"{group} {value:.0%}" for group, value in profile["share"].items())
        largest = ", ".join(f"{op.removeprefix('aten::')} {value:.1%}" for op, value in
                            profile["largest_other_ops"].items())
        lines.append(f"- {name}: {profile['ms_per_forward']:.0f} ms per forward; {share}; largest others: {largest}")
    here = "applies them" if report.get("loading_rewrites_here") else "keeps transformers' layers"
    lines += ["", "\"before\" is transformers' layers with the attention indexer/attention.py picks for the CPU "
              "(padded keys with AMX in 16-bit floats, split products in bfloat16 with AVX512-BF16). On this CPU in "
              f"{report['dtype']}, load_backbone {here} (indexer/cpu_fusion.py: 16-bit floats with AMX, bfloat16 with "
              "AVX512-BF16, float32 with AVX2 or better)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
