"""The benchmark scripts run end to end on a tiny random DINOv3 (the figures are theirs to measure, not this test's):
the GPU check runs bench/throughput.py once, on a machine lent for minutes, so it must not be the first to find it
broken."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from indexer.embedder import CPU_BATCH

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, out: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, f"bench/{script}", *args, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = out.glob("*.json")
    return json.loads(report.read_text())


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("extra", [(), ("--variants", "--files", "24")])
def test_throughput_script(tmp_path, extra):
    report = run_bench("throughput.py", tmp_path, "--device", "cpu", "--shape", "tiny", "--resolutions", "224",
                       "--quick", *extra)
    row = report["results"]["224"]
    for figure in (row["forward_only"]["images_per_second"], row["naive"]["images_per_second"],
                   row["indexer"]["images_per_second"], row["indexer_over_forward"], row["indexer_over_naive"],
                   row["query_latency"]["p50_ms"]):
        assert positive(figure)
    assert row["forward_only"]["finite"]
    # the indexer runs as `lookalike index` does by default; --quick tries forward-only at two other sizes
    assert row["indexer"]["batch_size"] == CPU_BATCH != row["forward_only"]["batch_size"]
    assert row["indexer_at_forward_batch"]["batch_size"] == row["forward_only"]["batch_size"]
    assert positive(row["indexer_at_forward_batch"]["images_per_second"])
    assert (tmp_path / "throughput-cpu-tiny.md").read_text().startswith("# Throughput")
    if extra:
        assert row["indexer"]["images"] == 24  # --quick alone indexes 32
        transport = report["variants"]["224"]["transport"]
        assert positive(transport["uint8"]["images_per_second"]) and positive(transport["float32"]["images_per_second"])


def test_cpu_workers_script(tmp_path):
    report = run_bench("cpu_workers.py", tmp_path, "--shape", "tiny", "--rounds", "1", "--files", "16")
    result = report["result"]
    assert result["images"] == 16 and set(result["images_per_second"]) == {"forward_only", "workers_0", "workers_1"}
    assert all(positive(rate) for rate in result["images_per_second"].values())
    assert positive(result["decode_ms_per_image"]) and 0 < result["bound_if_decode_cannot_overlap"] < 1
    assert positive(result["first_over_second"]["median"])


def test_cpu_attention_script(tmp_path):
    report = run_bench("cpu_attention.py", tmp_path, "--shape", "tiny", "--kernel-resolutions", "224",
                       "--forward", "224", "--rounds", "1")
    (kernel,) = report["kernel"]
    (forward,) = report["forward"]
    assert (kernel["keys"], kernel["padded_to"]) == (201, 208)
    assert positive(kernel["padded_speed_up"]) and positive(forward["speed_up"])
    assert forward["cls_cosine_min"] > 0.99


def test_cpu_attention_script_times_the_kernel_alone_without_forward_resolutions(tmp_path):
    report = run_bench("cpu_attention.py", tmp_path, "--shape", "tiny", "--kernel-resolutions", "224",
                       "--forward", "", "--rounds", "1")
    assert report["forward"] == []  # no backbone built: the 7B's kernel shapes cost seconds, not its 13 GiB
    (kernel,) = report["kernel"]
    assert positive(kernel["split_speed_up"]) and positive(kernel["padded_speed_up"])


def test_scene_chips_script(tmp_path, shared_data_dir):
    report = run_bench("scene_chips.py", tmp_path, "--scenes", str(shared_data_dir / "naip"), "--chip-sizes", "512",
                       "--rounds", "1")
    (row,) = report["rows"]
    assert row["chips"] > row["scenes"] == 10
    assert positive(row["per_scene_ms"]) and positive(row["per_chip_ms"]) and positive(row["speed_up"])


def test_resize_speed_script(tmp_path, shared_data_dir):
    report = run_bench("resize_speed.py", tmp_path, "--scenes", str(shared_data_dir / "naip"), "--count", "5",
                       "--rounds", "1")
    rows = report["rows"]
    assert len(rows) == 6 and rows[-1]["images"] == "128 px JPEG chips, whole decode"
    for row in rows:
        assert positive(row["torch_ms"]) and positive(row["pillow_ms"]) and positive(row["speed_up"])
    assert all(row["max_difference"] <= 2 for row in rows[:-1])


def test_batch_resize_script(tmp_path, shared_data_dir):
    report = run_bench("batch_resize.py", tmp_path, "--scenes", str(shared_data_dir / "naip"), "--count", "12",
                       "--batch", "4", "--rounds", "1")
    rows = report["rows"]
    assert [(row["threads"], row["images"]) for row in rows] == [
        (threads, name) for threads in (1, 2) for name in (
            "128 px JPEG chips (larger)", "256 px scene windows (smaller)", "128 px JPEG chips, whole decode")]
    assert all(row["identical"] and positive(row["together_ms"]) and positive(row["one_by_one_ms"])
               and positive(row["speed_up"]) for row in rows)


def test_jpeg_draft_script(tmp_path, shared_data_dir):
    report = run_bench("jpeg_draft.py", tmp_path, "--scenes", str(shared_data_dir / "naip"), "--repeats", "1",
                       "--rounds", "1")
    large, _, chip = report["rows"]
    assert large["size"] == [3720, 2160] and large["max_difference"] <= 8
    assert chip["max_difference"] == 0
    assert all(positive(row["draft_ms"]) and positive(row["whole_ms"]) for row in report["rows"])
    assert [(row["image"], row["picture"]) for row in report["pictures"]] == [
        (name, size) for name in ("NAIP scenes tiled 4 x 3", "NAIP scenes tiled 2 x 2") for size in (320, 640)]
    assert all(row["same_size"] and row["max_difference"] <= 16 and positive(row["reduced_ms"])
               for row in report["pictures"])


def test_cpu_fusion_script(tmp_path):
    report = run_bench("cpu_fusion.py", tmp_path, "--shape", "tiny", "--batch", "2", "--rounds", "1")
    speed = report["speed"]
    assert list(speed) == ["before", "+ layer_scale", "+ layer_scale + activation",
                           "+ layer_scale + activation + packed_weights",
                           "+ layer_scale + activation + packed_weights + rotary"]
    assert all(positive(row["images_per_second"]) and positive(row["speed_up"]) for row in speed.values())
    assert all(row["cls_cosine_min_to_before"] > 0.99 for row in report["closeness"].values())
    assert report["rewritten"]["+ layer_scale + activation"] == ["layer_scale", "activation"]  # whatever the CPU
    assert report["rewritten"]["+ layer_scale + activation + packed_weights"][-1] == "packed_weights"
    assert report["rewritten"]["+ layer_scale + activation + packed_weights + rotary"][-1] == "rotary"
    native = report["amx"] or report["dtype"] == "bfloat16" and report["avx512_bf16"]
    avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    assert report["loading_rewrites_here"] == (avx2 if report["dtype"] == "float32" else native)
    assert set(report["profile"]["before"]["share"]) == {"matrix products", "attention", "everything else"}


def test_preprocess_speed_script(tmp_path):
    out = tmp_path / "preprocess_speed.json"
    result = subprocess.run([sys.executable, "bench/preprocess_speed.py", "--count", "4", "--batch", "4", "--rounds",
                             "1", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]  # it checks that every way gives the same values
    report = json.loads(out.read_text())
    assert len(report["ms_per_image"]) == 4 and all(positive(ms) for ms in report["ms_per_image"].values())
    assert positive(report["batch"]["speed_up"]) and len(report["batch"]["ms_per_batch"]) == 2


def test_cpu_batch_script(tmp_path):
    report = run_bench("cpu_batch.py", tmp_path, "--shape", "tiny", "--sizes", "2,4", "--images", "8", "--rounds", "2")
    sizes = report["sizes"]
    assert list(sizes) == ["2", "4", str(report["cpu_batch"])]  # the default batch is always among those timed
    assert all(positive(row["images_per_second"]) and len(row["per_round"]) == 2 for row in sizes.values())
    assert sizes[str(report["cpu_batch"])]["to_reference"] == 1.0
    assert (tmp_path / "batch-tiny.md").read_text().count("(fastest)") == 1


def test_cpu_peak_script(tmp_path):
    report = run_bench("cpu_peak.py", tmp_path, "--shape", "tiny", "--rounds", "2", "--runs", "1",
                       "--naive-files", "3")
    gflops = report["gflops"]
    assert set(gflops) == {"peak_float32", "peak_16bit", "products", "attention", "forward", "naive"}
    assert all(positive(value) for value in gflops.values())
    first, second = (list(r) for r in report["per_round_gflops"])
    assert second == first[1:] + first[:1]  # the measurements taken in turn, the order rotating
    assert report["bound_over_naive"] * report["target_needs_of_peak"] == pytest.approx(3.0)
    naive_gflops = report["naive_images_per_second"] * report["flops_per_image"] / 1e9
    assert naive_gflops == pytest.approx(gflops["naive"], abs=0.051)
    assert "the most indexer / loop can be" in (tmp_path / "peak-tiny.md").read_text()


def test_sdpa_backends_are_compared_on_sdpa_where_the_backbone_runs_split_attention(model_dir, load_embedder,
                                                                                     monkeypatch):
    sys.path.insert(0, str(REPO))
    from bench import throughput
    from indexer import attention

    monkeypatch.setattr(attention, "amx_available", lambda: False)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: True)
    backbone = load_embedder(model_dir, dtype="bfloat16").backbone
    assert backbone.config._attn_implementation == attention.SPLIT_NAME

    during = throughput.on_sdpa(backbone, lambda: backbone.config._attn_implementation)

    assert during == "sdpa"  # SDPA's backends would change nothing under split attention
    assert backbone.config._attn_implementation == attention.SPLIT_NAME  # and it is put back


@pytest.mark.parametrize("split", [True, False])
def test_the_fusion_profile_counts_what_the_attention_function_runs_as_attention(model_dir, load_embedder,
                                                                                   monkeypatch, split):
    sys.path.insert(0, str(REPO))
    from bench import cpu_fusion
    from indexer import attention
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    monkeypatch.setattr(attention, "amx_available", lambda: False)
    monkeypatch.setattr(attention, "avx512_bf16_available", lambda: split)
    backbone = load_embedder(model_dir, dtype="bfloat16").backbone
    name = backbone.config._attn_implementation
    assert name == (attention.SPLIT_NAME if split else "sdpa")
    pixels = torch.rand(2, 3, 224, 224, dtype=torch.bfloat16)

    profile = cpu_fusion.where_time_goes(backbone, pixels, runs=1)

    assert profile["share"]["attention"] > 0  # split attention's products and softmax too, not only a flash kernel
    assert sum(profile["share"].values()) == pytest.approx(1.0)
    assert not {"aten::_softmax", "aten::bmm"} & set(profile["largest_other_ops"])
    assert ALL_ATTENTION_FUNCTIONS[name] is attention.FUNCTIONS.get(name, ALL_ATTENTION_FUNCTIONS[name])
    assert ALL_ATTENTION_FUNCTIONS[name].__name__ != "marked"  # the profiler's wrapper is gone


class _OutOfMemoryFrom:
    """A stand-in backbone that runs out of memory at `limit` images or more, as the 7B at 512 px might."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, *, pixel_values):
        if len(pixel_values) >= self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        hidden = pixel_values.flatten(1)[:, None, :8]
        return type("Output", (), {"pooler_output": hidden[:, 0], "last_hidden_state": hidden})()


def test_forward_only_keeps_the_best_batch_when_a_larger_one_runs_out_of_memory(monkeypatch):
    sys.path.insert(0, str(REPO))
    from bench import throughput

    monkeypatch.setattr(throughput, "DEVICE", "cpu")
    monkeypatch.setattr(throughput, "DTYPE", torch.float32)

    best = throughput.forward_only(_OutOfMemoryFrom(16), 32, [8, 16], runs=1)

    assert best["batch_size"] == 8 and best["finite"]
    assert best["by_batch_size"][16] == "out of memory"
    with pytest.raises(torch.OutOfMemoryError, match="every batch size"):
        throughput.forward_only(_OutOfMemoryFrom(1), 32, [8, 16], runs=1)


def test_a_failed_stage_is_recorded_and_the_stages_after_it_still_run(monkeypatch):
    sys.path.insert(0, str(REPO))
    from bench import throughput

    monkeypatch.setattr(throughput, "DEVICE", "cpu")
    report, writes = {"results": {}}, []
    stages = throughput.Stages(report, None)

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def written():
        writes.append((len(report.get("failed", [])), sorted(report["results"])))

    stages.write = written
    assert stages.run("512 px", out_of_memory, into=report["results"], key=512) is None
    assert stages.run("224 px", lambda: {"MATH": 1.0}, into=report["results"], key=224) == {"MATH": 1.0}
    assert report["failed"] == [{"stage": "512 px", "error": "OutOfMemoryError: CUDA out of memory. Tried to "
                                                             "allocate 20.00 GiB"}]
    assert report["results"] == {224: {"MATH": 1.0}}
    # the report is written after each stage, the failed one too, with the stage's result already in it
    assert writes == [(1, []), (1, [224])]
    with pytest.raises(KeyboardInterrupt):  # a time-out's interrupt is not swallowed, but the report is written
        stages.run("224 px compiled", lambda: (_ for _ in ()).throw(KeyboardInterrupt()), into={}, key=224)
    assert len(writes) == 3
