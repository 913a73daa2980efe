"""The GPU check runs on a bare image (no internet): everything the benchmarks import must be either in that
image or among the wheels bench/fetch_wheels.sh downloads for it; and the script itself runs through (here on
the CPU, with a tiny model) and fails loudly when its measurement fails."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    wheels = {normal(m) for m in re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "bench" / "gpu_wheels.txt").read_text(),
                                            re.MULTILINE)}
    assert {"faiss-cpu", "sqlite-utils", "rasterio"} <= wheels
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True)
    imported = {normal(d) for d in json.loads(out.stdout.strip().splitlines()[-1])} - {"lookalike"}
    assert "torch" in imported and "rasterio" in imported  # the probe saw the real import chain
    missing = imported - GPU_IMAGE - wheels
    assert not missing, f"gpu_check.sh would fail to import {sorted(missing)}: add them to bench/gpu_wheels.txt"


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


def _script_copy(tmp_path: Path) -> Path:
    """gpu_check.sh and its wheel list in a folder of their own, where a .whl/ can be made without touching the
    checkout."""
    (tmp_path / "repo" / "bench").mkdir(parents=True)
    for name in ("gpu_check.sh", "gpu_wheels.txt"):
        (tmp_path / "repo" / "bench" / name).write_bytes((REPO / "bench" / name).read_bytes())
    return tmp_path / "repo"


def test_wheels_for_another_python_stop_the_check_at_once_saying_so(tmp_path):
    repo = _script_copy(tmp_path)
    (repo / ".whl").mkdir()
    (repo / ".whl" / "PYTHON").write_text("3.99\n")
    (repo / ".whl" / "rasterio-1.4.4-cp399-cp399-manylinux_2_28_x86_64.whl").write_bytes(b"not for this Python")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 3
    assert "fetched for Python 3.99" in result.stderr and "fetch_wheels.sh X.Y" in result.stderr
    assert "fetch_wheels.sh" in (out / "gpu_check.log").read_text()  # it comes back with $OUT
    assert not (out / "throughput.log").exists()  # nothing was started


def test_missing_wheels_stop_the_check_at_once_saying_so(tmp_path):
    repo = _script_copy(tmp_path)
    shim = tmp_path / "bin" / "python3"  # a Python without site-packages: no faiss, no sqlite-utils
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 3
    assert "run 'bash bench/fetch_wheels.sh'" in result.stderr and "nothing was measured" in result.stderr


def test_the_gpu_check_stops_at_its_limit_and_says_so(tmp_path):
    # the shortest limit the script allows, 10 s, against a run that takes minutes (a hundred rounds)
    result = _gpu_check(tmp_path, "--device", "cpu", "--shape", "tiny", "--resolutions", "224", "--no-search",
                        "--repeat", "100", "--limit", "1")

    assert result.returncode == 4  # not 124, which the device's runner reads as its own time-out
    assert "stopped at its limit of 10 s" in (tmp_path / "throughput.log").read_text()


@pytest.mark.parametrize("limit", ["abc", "5m", "SECONDS", ""])
def test_a_limit_that_is_no_whole_number_of_seconds_is_refused_first(tmp_path, limit):
    result = _gpu_check(tmp_path, "--limit", limit, "--device", "cpu")

    assert result.returncode == 3
    assert f"--limit takes whole seconds, not '{limit}'" in (tmp_path / "gpu_check.log").read_text()
    assert not (tmp_path / "throughput.log").exists()
