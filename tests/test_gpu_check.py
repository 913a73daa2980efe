"""The GPU check runs on a bare image (no internet): everything the benchmarks import must be either in that
image or among the wheels bench/fetch_wheels.sh downloads for it; and the script itself runs through (here on
the CPU, with a tiny model) and fails loudly when its measurement fails."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The 'cuda' image of the lent H100/H200 machines, as the device notes list it (2026-11-17), trimmed to the
# packages that matter here: what the benchmarks could import.
GPU_IMAGE = {
    "attrs", "certifi", "charset-normalizer", "click", "filelock", "fsspec", "hf-xet", "huggingface-hub", "idna",
    "jinja2", "markupsafe", "mpmath", "networkx", "numpy", "packaging", "pandas", "pillow", "pluggy", "psutil",
    "pyarrow", "pyparsing", "python-dateutil", "pyyaml", "regex", "requests", "safetensors", "setuptools", "six",
    "sympy", "tabulate", "tokenizers", "torch", "tqdm", "transformers", "triton", "typing-extensions", "urllib3",
}

PROBE = """
import importlib.metadata as md, json, sys
sys.path[:0] = ["bench", "."]
before = {m.split(".")[0] for m in sys.modules}
import throughput, search_scale  # what gpu_check.sh runs
tops = {m.split(".")[0] for m in sys.modules} - before
owners = md.packages_distributions()
print(json.dumps(sorted({d for t in tops for d in owners.get(t, [])})))
"""


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_of_the_gpu_check_is_in_the_image_or_carried():
    wheels = {normal(m) for m in re.findall(r"([A-Za-z0-9_.-]+)==", (REPO / "bench" / "fetch_wheels.sh").read_text())}
    assert {"faiss-cpu", "sqlite-utils", "rasterio"} <= wheels
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    imported = {normal(d) for d in json.loads(out.stdout.strip().splitlines()[-1])} - {"lookalike"}
    assert "torch" in imported and "rasterio" in imported  # the probe saw the real import chain
    missing = imported - GPU_IMAGE - wheels
    assert not missing, f"gpu_check.sh would fail to import {sorted(missing)}: add them to bench/fetch_wheels.sh"


def _gpu_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """bench/gpu_check.sh as the device runs it, on this CPU: its arguments go last to bench/throughput.py, so
    --device cpu --shape tiny override the script's own; python3 is this test's."""
    env = {**os.environ, "OUT": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_gpu_check_script_runs_through(tmp_path):
    result = _gpu_check(tmp_path, "--device", "cpu", "--shape", "tiny", "--resolutions", "224", "--quick",
                        "--files", "24")

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "throughput-cpu-tiny.json").read_text())
    assert report["results"]["224"]["indexer"]["images"] == 24
    assert report["variants"]["224"]  # the script asks for --variants
    assert "Throughput" in (tmp_path / "throughput.log").read_text()  # the log it tees


def test_the_gpu_check_exits_with_a_failed_measurement(tmp_path):
    result = _gpu_check(tmp_path, "--device", "cpu", "--shape", "no-such-shape", "--quick")

    assert result.returncode != 0  # through its tee: a failed run must not read as a finished check
    assert (tmp_path / "throughput.log").exists()
