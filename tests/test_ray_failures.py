"""`lookalike index --ray` records failures as a single-process run does: a damaged scene keeps no chip, a retried
failure counts again, a run with nothing readable records what failed, and an address that does not answer is
refused in one line."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import REPO_ROOT, copy_chips

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason="the ray extra is not installed (CI installs it and fails without it)")

from test_ray_index import assert_same_store, run_env  # noqa: E402


def ray_index(source, store_dir, model_dir, *extra, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer.cli", "index", str(source), "--store", str(store_dir),
                           "--model", str(model_dir), "--dtype", "float32", "--device", "cpu", "--batch-size", "16",
                           "--no-progress", "--json", *extra], cwd=REPO_ROOT, env=run_env(), capture_output=True,
                          text=True, timeout=timeout)


def summary_of(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_scene_that_stops_short_keeps_no_chip_under_ray(index, shared_data_dir, model_dir, tmp_path):
    """The chips read before the break must not stay behind the scene's failure (they did under --ray: the
    shards' ingestion wrote them after the failure was recorded), nor take ids from the whole scene's chips."""
    from indexer.plan import ChipOptions

    folder = tmp_path / "scenes"
    folder.mkdir()
    whole, cut = sorted((shared_data_dir / "naip").glob("*.tif"))[:2]
    (folder / ("a" + cut.name)).write_bytes(cut.read_bytes()[:1_500_000])  # first in plan order
    shutil.copy2(whole, folder / ("b" + whole.name))
    single = index([folder], tmp_path / "single", chips=ChipOptions(chip_size=256), batch_size=16)
    assert (single["failed"], single["indexed"]) == (1, 12)
    summary = summary_of(ray_index(folder, tmp_path / "ray", model_dir, "--chip-size", "256", "--ray"))
    assert (summary["failed"], summary["indexed"]) == (1, 12)
    assert_same_store(tmp_path / "ray", tmp_path / "single")


def test_a_failure_retried_under_ray_is_counted_and_recorded_again(index, model_dir, tmp_path, open_store):
    chips = copy_chips(tmp_path / "chips", 6)
    (chips / "naip_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert index([chips], tmp_path / "store")["failed"] == 1
    summary = summary_of(ray_index(chips, tmp_path / "store", model_dir, "--retry-failed", "--ray"))
    assert (summary["failed"], summary["indexed"]) == (1, 0)
    assert sum(summary["failure_reasons"].values()) == 1
    (failure,) = open_store(tmp_path / "store").failures_by_path().values()
    assert failure["run_id"] == summary["run_id"]  # this run's, as a single process records it


def test_a_ray_run_with_nothing_readable_records_its_failures(model_dir, tmp_path, open_store):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"garbage")
    (folder / "b.png").write_bytes(b"garbage2")
    summary = summary_of(ray_index(folder, tmp_path / "store", model_dir, "--ray"))
    assert (summary["failed"], summary["indexed"]) == (2, 0)
    store = open_store(tmp_path / "store")
    assert sorted(store.failures_by_path()) == [str(folder / "a.jpg"), str(folder / "b.png")]
    assert store.pca() is None and not (tmp_path / "store" / "shards").exists()


def test_a_ray_address_that_does_not_answer_is_refused_in_one_line(model_dir, tmp_path):
    """Ray retries such an address without end (the run hung, Ctrl-C ignored, the store's lock held)."""
    chips = copy_chips(tmp_path / "chips", 40)  # more than the driver's first batch: the cluster is needed
    started = time.monotonic()
    done = ray_index(chips, tmp_path / "store", model_dir, "--ray", "127.0.0.1:1", timeout=120)
    assert done.returncode == 1 and "cannot reach the Ray cluster at '127.0.0.1:1'" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60  # before any model load or Ray start: refused, not retried
    assert not (tmp_path / "store").exists()
