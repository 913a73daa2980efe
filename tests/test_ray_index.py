"""`lookalike index --ray`: a local Ray run equals a single-process run, resumes after a kill, ingests idempotently."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO_ROOT, copy_chips

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason="the ray extra is not installed (CI installs it and fails without it)")

RAY_CHIPS = 240
IMAGE_COLUMNS = "id, path, size, mtime, sha256, width, height, status, scene, window, geo"


def store_snapshot(store_dir) -> dict:
    """Everything a run decides: catalogue rows, vectors, patch features, PCA, failures, index ids."""
    from store import Store

    store = Store.open(store_dir)
    try:
        rows = list(store.db.query(f"SELECT {IMAGE_COLUMNS} FROM images ORDER BY id"))
        ids = [row["id"] for row in rows]
        return {
            "rows": rows,
            "vectors": np.stack([store.vector(i) for i in ids]) if ids else np.zeros((0,)),
            "patches": np.stack([store.patch_features(i) for i in ids]) if ids else np.zeros((0,)),
            "pca": store.pca().components if store.pca() else None,
            "failures": sorted((r["path"], r["reason"]) for r in store.failures_by_path().values()),
            "nearest": [store.search(store.vector(i), k=1)[0]["id"] for i in ids],  # what the index answers
            "ntotal": store.index.ntotal,
        }
    finally:
        store.close()


def assert_same_store(actual_dir, expected_dir, *, atol=1e-5) -> None:
    actual, expected = store_snapshot(actual_dir), store_snapshot(expected_dir)
    assert actual["rows"] == expected["rows"]  # same ids for the same paths, same catalogue fields
    assert actual["failures"] == expected["failures"]
    assert actual["nearest"] == expected["nearest"]
    assert actual["ntotal"] == expected["ntotal"]
    np.testing.assert_allclose(actual["vectors"], expected["vectors"], atol=atol)
    np.testing.assert_allclose(actual["patches"], expected["patches"], atol=2e-3)  # stored as float16
    np.testing.assert_allclose(actual["pca"], expected["pca"], atol=atol)


@pytest.fixture(scope="module")
def ray_chips_dir(tmp_path_factory):
    """240 real NAIP chips and one broken file, so failures travel through the shards too."""
    chips = copy_chips(tmp_path_factory.mktemp("ray") / "chips", RAY_CHIPS)
    (chips / "naip_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return chips


@pytest.fixture(scope="module")
def single_process_store(ray_chips_dir, embedder, tmp_path_factory):
    from indexer.pipeline import index_collection

    store_dir = tmp_path_factory.mktemp("single") / "store"
    summary = index_collection([str(ray_chips_dir)], store_dir, embedder=embedder, batch_size=16, workers=0,
                               progress=False)
    assert summary["indexed"] == RAY_CHIPS and summary["failed"] == 1
    return store_dir


def ray_command(chips_dir, store_dir, model_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "indexer.cli", "index", str(chips_dir), "--store", str(store_dir), "--model",
            str(model_dir), "--dtype", "float32", "--device", "cpu", "--batch-size", "16", "--no-progress",
            "--json", *extra, "--ray"]


def run_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def test_a_local_ray_run_equals_a_single_process_run(ray_chips_dir, single_process_store, model_dir, tmp_path):
    store_dir = tmp_path / "store"
    done = subprocess.run(ray_command(ray_chips_dir, store_dir, model_dir, "--shard-rows", "64"), cwd=REPO_ROOT,
                          env=run_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["indexed"], summary["failed"], summary["reused"]) == (RAY_CHIPS, 1, 0)
    assert_same_store(store_dir, single_process_store)
    assert not (store_dir / "shards").exists()  # ingested shards are cleaned up


def _ray_processes() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if b"ray" in command and (b"raylet" in command or b"gcs_server" in command or b"ray/" in command):
                found.add(int(entry))
    return found


def test_a_killed_ray_job_resumes_from_its_shards(ray_chips_dir, single_process_store, model_dir, tmp_path):
    from indexer.shards import ingest_shard
    from store import Store

    store_dir, shard_dir = tmp_path / "store", tmp_path / "shared-shards"
    before = _ray_processes()
    job = subprocess.Popen(ray_command(ray_chips_dir, store_dir, model_dir, "--shard-dir", str(shard_dir),
                                       "--shard-rows", "16", "--ray-actors", "1"),
                           cwd=REPO_ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None and len(list(shard_dir.glob("*/shard-*"))) < 4:
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be killed: " + job.stderr.read().decode()[-2000:]
    os.killpg(job.pid, signal.SIGKILL)  # the whole job, Ray's own processes included: a lost machine
    job.wait(timeout=30)
    job.stdout.close()
    job.stderr.close()
    for pid in _ray_processes() - before:  # leftovers of the killed job's Ray instance (started by this test)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    written = sorted(shard_dir.glob("*/shard-*.parquet"))
    assert len(written) >= 4
    kept = tmp_path / "kept.parquet"
    kept.write_bytes(written[-1].read_bytes())
    already = 0  # rows ingested while the cluster embedded, before the kill
    if (store_dir / "catalogue.db").exists():
        store = Store.open(store_dir)
        already = store.count_images()
        assert already < RAY_CHIPS  # killed before the end: the store is not complete
        store.close()

    done = subprocess.run(ray_command(ray_chips_dir, store_dir, model_dir, "--shard-dir", str(shard_dir),
                                      "--shard-rows", "16", "--ray-actors", "1"),
                          cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # the shards written before the kill were not embedded again: ingested then, or reused now
    assert summary["reused"] + already >= 3 * 16
    assert summary["indexed"] + already == RAY_CHIPS
    assert_same_store(store_dir, single_process_store)

    reference = store_snapshot(store_dir)
    counts = ingest_shard(Store.open(store_dir), kept)  # a shard ingested again changes nothing
    assert counts["indexed"] == 0
    again = store_snapshot(store_dir)
    assert again["rows"] == reference["rows"] and again["nearest"] == reference["nearest"]
    np.testing.assert_array_equal(again["vectors"], reference["vectors"])


def test_ingesting_a_shard_twice_changes_nothing(embedder, chips_dir, tmp_path):
    """In process, no Ray: a shard of 12 chips and a broken file, ingested twice into a fresh store."""
    from indexer.distributed import _first_batch
    from indexer.images import scan_sources
    from indexer.pipeline import ChipOptions, index_collection
    from indexer.plan import plan_run
    from indexer.shards import ingest_shard, write_shard
    from store import Store

    (chips_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    maker = Store.create(tmp_path / "maker", provenance=embedder.provenance)
    jobs = plan_run(scan_sources([chips_dir]), maker).jobs
    _, rows = _first_batch(jobs, maker, embedder, batch_size=64, chips=ChipOptions())
    maker.close()
    shard_path = write_shard(tmp_path / "shards", rows)
    assert write_shard(tmp_path / "shards", rows) == shard_path  # the same jobs, the same shard name

    store = Store.create(tmp_path / "store", provenance=embedder.provenance)
    first = ingest_shard(store, shard_path)
    store.close()
    snapshot = store_snapshot(tmp_path / "store")
    store = Store.open(tmp_path / "store")
    second = ingest_shard(store, shard_path)
    store.close()
    assert (first["indexed"], first["failed"]) == (12, 1)
    assert (second["indexed"], second["failed"]) == (0, 0)
    again = store_snapshot(tmp_path / "store")
    assert again["rows"] == snapshot["rows"] and again["failures"] == snapshot["failures"]
    assert again["ntotal"] == snapshot["ntotal"] == 12
    np.testing.assert_array_equal(again["vectors"], snapshot["vectors"])

    index_collection([str(chips_dir)], tmp_path / "single", embedder=embedder, workers=0, progress=False)
    reference = store_snapshot(tmp_path / "single")
    assert [(r["id"], r["path"]) for r in again["rows"]] == [(r["id"], r["path"]) for r in reference["rows"]]
    np.testing.assert_allclose(again["vectors"], reference["vectors"], atol=1e-5)


def test_ray_without_the_extra_is_one_clear_line(chips_dir, tmp_path, model_dir, monkeypatch):
    from click.testing import CliRunner

    from indexer.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    result = CliRunner().invoke(cli, ["index", str(chips_dir), "--store", str(tmp_path / "s"), "--model",
                                      str(model_dir), "--ray"])
    assert result.exit_code == 1
    assert "pip install -e '.[ray]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_an_embedding_actor_halves_its_batch_on_out_of_memory(embedder, chips_dir, tmp_path):
    """In process, no Ray: the actor's block is embedded whole, then again by an embedder that runs out of
    device memory above 3 images; the second halves its batch (8 -> 4 -> 2) and writes the same rows."""
    import dataclasses

    import pyarrow.parquet as pq
    import torch

    from indexer.distributed import EmbedActor, _job_table, decode_rows
    from indexer.images import scan_sources
    from indexer.pipeline import ChipOptions, _fit_store_pca
    from indexer.plan import plan_run
    from store import Store

    store = Store.create(tmp_path / "store", provenance=embedder.provenance)
    jobs = plan_run(scan_sources([chips_dir]), store).jobs
    block = decode_rows(_job_table(list(enumerate(jobs))), preprocess=embedder.preprocess,
                        chips=json.dumps(dataclasses.asdict(ChipOptions())))
    first = block.to_pydict()
    pixels = np.frombuffer(first["pixels"][0], np.uint8).reshape(first["shape"][0])[None].copy()  # (1, 3, H, W) uint8
    pca = _fit_store_pca(store, embedder.embed(torch.from_numpy(pixels)).patch_tokens)
    store.close()

    class Tight:  # the same model, with a device that holds 3 images at most
        def __init__(self, inner):
            self.inner, self.sizes = inner, []

        def embed(self, pixels):
            self.sizes.append(len(pixels))
            if len(pixels) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner.embed(pixels)

    shards = {}
    for name, model in (("roomy", embedder), ("tight", Tight(embedder))):
        actor = EmbedActor.__new__(EmbedActor)  # as Ray builds it, minus loading the model by name
        actor.embedder, actor.pca, actor.batch_size = model, pca, 8
        actor.run_dir = tmp_path / name
        written = actor(block)
        shards[name] = pq.read_table(actor.run_dir / written["shard"][0]).to_pylist()
    assert actor.batch_size == 2 and actor.embedder.sizes[:3] == [8, 4, 2]
    assert [r["path"] for r in shards["tight"]] == [r["path"] for r in shards["roomy"]] and len(shards["roomy"]) == 12
    for tight, roomy in zip(shards["tight"], shards["roomy"]):
        np.testing.assert_allclose(np.frombuffer(tight["vector"], "<f4"), np.frombuffer(roomy["vector"], "<f4"),
                                   atol=1e-5)


def test_a_ray_run_writes_a_scene_copys_chips_from_its_twin(index, shared_data_dir, model_dir, tmp_path):
    """The driver writes the chips of a scene copy itself, as a single-process run does: nothing to embed."""
    import shutil

    from indexer.pipeline import ChipOptions

    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    (tmp_path / "naip" / "copy").mkdir(parents=True)
    shutil.copy2(scene, tmp_path / "naip" / scene.name)
    store_dir = tmp_path / "store"
    index([tmp_path / "naip"], store_dir, chips=ChipOptions(chip_size=256))
    shutil.copy(scene, tmp_path / "naip" / "copy" / scene.name)

    done = subprocess.run(ray_command(tmp_path / "naip", store_dir, model_dir, "--chip-size", "256"),
                          cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["indexed"], summary["copied"], summary["skipped"]) == (12, 12, 12)


def test_a_ray_run_writes_the_second_copy_of_a_new_scene_from_the_first(shared_data_dir, model_dir, tmp_path):
    """Two copies of a scene new in the run: the cluster embeds one, the driver writes the other from it."""
    import shutil

    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    (tmp_path / "naip" / "copy").mkdir(parents=True)
    shutil.copy2(scene, tmp_path / "naip" / scene.name)
    shutil.copy(scene, tmp_path / "naip" / "copy" / scene.name)
    store_dir = tmp_path / "store"

    done = subprocess.run(ray_command(tmp_path / "naip", store_dir, model_dir, "--chip-size", "256"),
                          cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["indexed"], summary["copied"], summary["failed"]) == (24, 12, 0)


def test_a_ray_run_writes_copies_of_whole_files_on_the_driver(index, model_dir, tmp_path):
    """A file with the bytes of an indexed one, and the second of two new files with the same bytes, take their
    twin's vector without a forward pass, as in a single-process run."""
    import shutil

    from store import Store

    chips = copy_chips(tmp_path / "chips" / "first", 6)
    store_dir = tmp_path / "store"
    index([tmp_path / "chips"], store_dir)
    indexed = sorted(chips.glob("*.jpg"))[0]
    (tmp_path / "chips" / "again").mkdir()
    shutil.copy(indexed, tmp_path / "chips" / "again" / indexed.name)
    new = copy_chips(tmp_path / "chips" / "new", 2, offset=3)
    (tmp_path / "chips" / "new twice").mkdir()
    twice = shutil.copy(sorted(new.glob("*.jpg"))[0], tmp_path / "chips" / "new twice" / "same.jpg")

    done = subprocess.run(ray_command(tmp_path / "chips", store_dir, model_dir), cwd=REPO_ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["indexed"], summary["copied"], summary["failed"]) == (4, 2, 0)
    store = Store.open(store_dir)
    try:
        ids = {path: row["id"] for path, row in store.images_by_path().items()}
        for copy, twin in ((tmp_path / "chips" / "again" / indexed.name, indexed),
                           (twice, sorted(new.glob("*.jpg"))[0])):
            assert np.array_equal(store.vector(ids[str(copy)]), store.vector(ids[str(twin)]))
    finally:
        store.close()
