"""lookalike's CPU attention (indexer/attention.py) against PyTorch's SDPA: the kernel alone, then the whole backbone.

Side by side, in turn within each round, medians of per-round ratios:
1. the attention kernel alone, at the model shape's heads and head width, for the token counts of several
   resolutions: plain SDPA on N keys against keys padded to a multiple of 16 with a -inf mask (padding forced at
   every length, to show where lookalike's limit on padded keys comes from) and against split_attention's three
   calls;
2. the whole random DINOv3 forward-only on a batch of real chips at each --forward resolution, and on one chip (a
   search query), with transformers' "sdpa" against the attention load_backbone picks on this CPU (padded keys
   where it keeps sdpa), plus how far the CLS vectors move.

    python bench/cpu_attention.py --out bench/results/cpu/attention
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import save  # noqa: E402
from bench import throughput  # noqa: E402
from bench.cpu_quantized import chips  # noqa: E402
from bench.throughput import build_backbone, cpu_name  # noqa: E402
from indexer import attention  # noqa: E402
from indexer.embedder import CPU_BATCH, DTYPES, resolve_dtype  # noqa: E402
from indexer.random_model import SHAPES  # noqa: E402

HELD_BY = ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")  # besides ONEDNN_MAX_CPU_ISA: what holds kernels back


def seconds(fn, runs: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


KERNELS = {"plain": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
           "padded": lambda q, k, v: attention.padded_key_attention(None, q, k, v, None),
           "split": lambda q, k, v: attention.split_attention(None, q, k, v, None)}


@torch.inference_mode()
def kernel_rows(shape: str, resolutions, *, batch: int, rounds: int, dtype) -> list[dict]:
    hidden, _, heads, *_ = SHAPES[shape]
    rows = []
    limit, attention.LONGEST_PADDED = attention.LONGEST_PADDED, 1 << 30  # padded at every length, to compare
    for side in resolutions:
        keys = 1 + 4 + (side // 16) ** 2
        query, key, value = (torch.randn(batch, keys, heads, hidden // heads, dtype=dtype).transpose(1, 2)
                             for _ in range(3))  # (B, H, N, d), strided as transformers hands them over
        runs = max(2, round(20 * (201 / keys) ** 2))
        ratios, plain_ms = {"padded": [], "split": []}, []
        for number in range(rounds):
            order = list(KERNELS)[number % 3:] + list(KERNELS)[:number % 3]  # each first in turn
            timed = {name: seconds(lambda: KERNELS[name](query, key, value), runs) for name in order}
            for name in ratios:
                ratios[name].append(timed["plain"] / timed[name])
            plain_ms.append(1000 * timed["plain"])
        rows.append({"resolution": side, "keys": keys, "padded_to": keys + (-keys % attention.KEY_MULTIPLE),
                     "plain_ms": statistics.median(plain_ms),
                     **{f"{name}_speed_up": statistics.median(ratios[name]) for name in ratios},
                     **{f"{name}_per_round": [round(r, 2) for r in ratios[name]] for name in ratios}})
        print(rows[-1], flush=True)
    attention.LONGEST_PADDED = limit
    return rows


def cosines(vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(vectors.float(), reference.float(), dim=1)


@torch.inference_mode()
def forward_rows(shape: str, resolutions: list[int], *, images: Path, batch: int, rounds: int, dtype) -> list[dict]:
    if not resolutions:
        return []
    model = build_backbone(shape, dtype)
    picks = attention.use_cpu_attention(model).config._attn_implementation  # what load_backbone picks here
    from transformers import AttentionInterface

    AttentionInterface.register(attention.NAME, attention.FUNCTIONS[attention.NAME])
    chosen = picks if picks != "sdpa" else attention.NAME  # where lookalike keeps sdpa, padded keys are compared
    rows = []
    for side in resolutions:
        pixels = chips(images, batch, side).to(dtype)
        one = pixels[:1].clone()  # a single query, what the search page waits for
        rates, ratios, outputs, single, single_ratios = {"sdpa": [], chosen: []}, [], {}, {"sdpa": [], chosen: []}, []
        for number in range(rounds):
            timed, query = {}, {}
            for name in ("sdpa", chosen) if number % 2 == 0 else (chosen, "sdpa"):
                model.set_attn_implementation(name)
                timed[name] = seconds(lambda: model(pixel_values=pixels), 2)
                query[name] = seconds(lambda: model(pixel_values=one), 10)
                rates[name].append(batch / timed[name])
                single[name].append(1000 * query[name])
                outputs[name] = model(pixel_values=pixels).pooler_output
            ratios.append(timed["sdpa"] / timed[chosen])
            single_ratios.append(query["sdpa"] / query[chosen])
        model.set_attn_implementation(chosen)
        moved = cosines(outputs[chosen], outputs["sdpa"])
        rows.append({"resolution": side, "keys": 1 + model.config.num_register_tokens + (side // 16) ** 2,
                     "lookalike_picks": picks, "batch": batch,
                     "sdpa_images_per_second": statistics.median(rates["sdpa"]),
                     "compared": chosen, "compared_images_per_second": statistics.median(rates[chosen]),
                     "speed_up": statistics.median(ratios), "per_round": [round(r, 2) for r in ratios],
                     "cls_cosine_min": float(moved.min()), "one_image_sdpa_ms": statistics.median(single["sdpa"]),
                     "one_image_compared_ms": statistics.median(single[chosen]),
                     "one_image_speed_up": statistics.median(single_ratios)})
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="vits16", choices=sorted(SHAPES))
    parser.add_argument("--kernel-resolutions", default="224,256,320,384,448,512")
    parser.add_argument("--forward", default="224",
                        help="resolutions for the whole-backbone comparison ('' for none: the kernel alone)")
    parser.add_argument("--images", type=Path, default=Path("samples/naip"), help="real chips (the bundled sample)")
    parser.add_argument("--batch", type=int, default=16, help="kernel batch; the forward uses CPU_BATCH")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: the indexer's on this CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cpu/attention"))
    args = parser.parse_args()
    throughput.DEVICE = "cpu"
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    started = time.perf_counter()
    report = {**run_fields(args.shape, dtype, rounds=args.rounds),
              "kernel": kernel_rows(args.shape, map(int, args.kernel_resolutions.split(",")), batch=args.batch,
                                    rounds=args.rounds, dtype=dtype),
              "forward": forward_rows(args.shape, [int(side) for side in args.forward.split(",") if side],
                                      images=args.images, batch=CPU_BATCH, rounds=args.rounds, dtype=dtype)}
    report["total_seconds"] = time.perf_counter() - started
    save(report, args.out, f"attention-{args.shape}", table)


def run_fields(shape: str, dtype, *, rounds: int) -> dict:
    """What a CPU benchmark's report says about its run: command, date, machine, threads, versions, model, ISA."""
    import transformers

    return {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
            "device": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype)[6:],
            "model": f"random DINOv3 {shape}", "rounds": rounds,
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"), "amx": attention.amx_available(),
            "avx512_bf16": attention.avx512_bf16_available(), **{name: os.environ.get(name) for name in HELD_BY}}


def run_line(report: dict) -> str:
    """run_fields as the table's line under its title (ends with '; ')."""
    return (f"`{report['command']}` — {report['date']}, {report['cores']} cores ({report['torch_threads']} torch "
            f"threads), torch {report['torch']}, transformers {report['transformers']}; AMX "
            f"{'yes' if report['amx'] else 'no'}, AVX512-BF16 {'yes' if report.get('avx512_bf16') else 'no'}, "
            f"ONEDNN_MAX_CPU_ISA {report['ONEDNN_MAX_CPU_ISA'] or 'unset'}"
            + "".join(f", {name} {report[name]}" for name in HELD_BY if report.get(name)) + "; ")


NAMES = {attention.NAME: "padded", attention.SPLIT_NAME: "split", "sdpa": "sdpa"}


def table(report: dict) -> str:
    lines = [f"# CPU attention: {report['model']} in {report['dtype']} on {report['device']}", "",
             run_line(report) + f"medians over {report['rounds']} rounds, the kernels taken in turn", "",
             "## The attention kernel alone (padding forced at every length)", "",
             "| px | keys | padded to | plain ms | padded speed-up | per round | split speed-up | per round |",
             "|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in report["kernel"]:
        lines.append(f"| {row['resolution']} | {row['keys']} | {row['padded_to']} | {row['plain_ms']:.1f} | "
                     f"{row['padded_speed_up']:.2f} | {', '.join(map(str, row['padded_per_round']))} | "
                     f"{row['split_speed_up']:.2f} | {', '.join(map(str, row['split_per_round']))} |")
    lines += ["", "## The whole backbone, forward-only on real chips", "",
              "| px | keys | batch | sdpa img/s | compared | its img/s | speed-up | per round | CLS cosine min "
              "| one image sdpa / compared ms (speed-up) | lookalike uses |",
              "|---:|---:|---:|---:|---|---:|---:|---|---:|---|---|"]
    for row in report["forward"]:
        lines.append(f"| {row['resolution']} | {row['keys']} | {row['batch']} | {row['sdpa_images_per_second']:.1f} | "
                     f"{NAMES[row['compared']]} | {row['compared_images_per_second']:.1f} | {row['speed_up']:.2f} | "
                     f"{', '.join(map(str, row['per_round']))} | {row['cls_cosine_min']:.5f} | "
                     f"{row['one_image_sdpa_ms']:.1f} / {row['one_image_compared_ms']:.1f} "
                     f"({row['one_image_speed_up']:.2f}) | {NAMES[row['lookalike_picks']]} |")
    lines += ["", f"padded: keys padded to a multiple of {attention.KEY_MULTIPLE} for PyTorch's flash kernel, which "
              f"lookalike does in bfloat16/float16 on a CPU with AMX up to {attention.LONGEST_PADDED} keys. split: "
              "QKᵀ, softmax and ·V as three calls over slices of the batch, which lookalike does in bfloat16 on a CPU "
              "with AVX512-BF16 but no AMX. Elsewhere it keeps transformers' sdpa. ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 "
              "holds oneDNN (and so the attention kernel) below AMX, like a CPU without it."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
