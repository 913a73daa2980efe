"""Cutting scenes into chips: consecutive chips of one scene share one open raster, and nothing is left open."""
import pickle

import numpy as np
import pytest
from PIL import Image

from indexer import pipeline, scenes
from indexer.images import scan_sources
from indexer.plan import ChipOptions, plan_run
from store import Store


@pytest.fixture
def scene_jobs(naip_dir, embedder, tmp_path):
    options = ChipOptions(chip_size=256)
    store = Store.create(tmp_path / "store", provenance=embedder.provenance)
    try:
        jobs = plan_run(scan_sources([naip_dir]), store, chips=options).jobs
    finally:
        store.close()
    assert len({job.scene.path for job in jobs}) == 3 and len(jobs) > 3
    return jobs, options


@pytest.fixture
def opened(monkeypatch):
    """Every raster pipeline opens, in order."""
    rasters = []
    real_open = scenes.open_dataset
    monkeypatch.setattr(scenes, "open_dataset", lambda path: (rasters.append(real_open(path)), rasters[-1])[1])
    return rasters


def test_each_scene_is_opened_once_and_chips_read_as_alone(scene_jobs, embedder, opened):
    jobs, options = scene_jobs
    dataset = pipeline.DecodeDataset(jobs, embedder.preprocess, min_valid=options.min_valid, raw=True)
    items = [dataset[position] for position in range(len(jobs))]
    assert len(opened) == 3  # one per scene, not one per chip
    assert [raster.closed for raster in opened] == [True, True, False]  # a new scene closes the one before
    dataset.close()
    assert opened[-1].closed
    for job, item in zip(jobs, items):
        rgb, valid = scenes.read_chip(job.scene.path, job.scene, job.window)  # a fresh open for this chip alone
        if valid < options.min_valid:
            assert "skipped_chip" in item
            continue
        np.testing.assert_array_equal(item["pixels"].numpy(), embedder.preprocess.resized(Image.fromarray(rgb)))
        assert item["record"]["path"] == job.path


@pytest.mark.parametrize("workers", [0, 1])
def test_no_raster_is_left_open_after_the_batches(scene_jobs, embedder, opened, workers):
    jobs, options = scene_jobs
    batches = list(pipeline.batches(jobs, embedder.preprocess, batch_size=4, workers=workers, chips=options,
                                    raw=True))
    assert sum(len(b["records"]) + len(b["skipped_chips"]) for b in batches) == len(jobs)
    assert all(raster.closed for raster in opened)  # with a worker, the rasters were its own: none opened here
    assert len(opened) == (3 if workers == 0 else 0)


def test_a_dataset_with_a_scene_open_still_pickles_without_it(scene_jobs, embedder):
    jobs, options = scene_jobs
    dataset = pipeline.DecodeDataset(jobs, embedder.preprocess, raw=True)
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._scene == (None, None) and dataset._scene[0] == jobs[0].scene.path
    assert np.array_equal(copy[0]["pixels"].numpy(), dataset[0]["pixels"].numpy())
    dataset.close()
    copy.close()
