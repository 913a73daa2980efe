"""A batch's small images of one size are resized in one call: the same bytes as one call per image."""
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_pixels
from indexer import images
from indexer.images import Preprocess, decode_bytes
from indexer.pipeline import DecodeDataset
from indexer.plan import Job

SAT = ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))


@pytest.fixture
def mixed_files(tmp_path, chip_paths):
    """Real 128 px chips, then images of other sizes (the model's own; two pairs of one size, one pair larger than
    the model's input, so not kept for the batch; a larger one), and a broken file."""
    made = {"exact.png": (224, 224), "small.png": (200, 150), "small2.png": (200, 150), "wide.png": (300, 200),
            "wide2.png": (300, 200), "large.png": (900, 700), "grey.png": (128, 128)}
    paths = list(chip_paths[:5])
    for number, (name, size) in enumerate(made.items()):
        image = Image.fromarray(random_pixels(size, seed=number))
        (image.convert("L") if name == "grey.png" else image).save(tmp_path / name)
        paths.insert(2 * number + 1, tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    paths.insert(4, tmp_path / "broken.jpg")
    return paths


def dataset_of(paths, **options) -> DecodeDataset:
    jobs = [Job(path=str(path), size=path.stat().st_size, mtime=0.0) for path in paths]
    return DecodeDataset(jobs, Preprocess(224, *SAT), raw=True, **options)


def test_a_batch_decodes_to_the_bytes_of_one_image_at_a_time(mixed_files):
    dataset = dataset_of(mixed_files)
    items = dataset.__getitems__(list(range(len(mixed_files))))
    assert [item.get("record", {}).get("path") for item in items] == [
        None if path.name == "broken.jpg" else str(path) for path in mixed_files]
    for path, item in zip(mixed_files, items):
        if path.name == "broken.jpg":
            assert "failure" in item and "pixels" not in item
            continue
        expected = dataset.preprocess.resized(decode_bytes(path.read_bytes()))
        assert item["pixels"].shape == (3, 224, 224) and item["pixels"].dtype == torch.uint8
        np.testing.assert_array_equal(item["pixels"].numpy(), expected)
        assert "image" not in item
    single = dataset[3]
    assert torch.equal(single["pixels"], items[3]["pixels"])


def test_images_of_one_size_share_one_resize_call(mixed_files, monkeypatch):
    calls = []
    resize = images._resize
    monkeypatch.setattr(images, "_resize", lambda planes, resolution: calls.append(planes.shape) or resize(
        planes, resolution))
    dataset_of(mixed_files).__getitems__(list(range(len(mixed_files))))
    # the 128 px chips and the grey one (6) in one call, the two 200 x 150 in another; the model's own size needs
    # none, and images larger than the model's input (300 x 200, 900 x 700) are resized alone, once decoded
    assert sorted(calls) == sorted([(6, 3, 128, 128), (2, 3, 150, 200), (3, 200, 300), (3, 200, 300),
                                    (3, 700, 900)])


def test_the_old_way_still_resizes_each_image_on_its_own(mixed_files, monkeypatch):
    dataset = dataset_of(mixed_files)
    dataset.together = False
    calls = []
    resize = images._resize
    monkeypatch.setattr(images, "_resize", lambda planes, resolution: calls.append(planes.shape) or resize(
        planes, resolution))
    together = dataset_of(mixed_files).__getitems__(list(range(len(mixed_files))))
    calls.clear()
    one_by_one = dataset.__getitems__(list(range(len(mixed_files))))
    assert all(len(shape) == 3 for shape in calls) and len(calls) == len(mixed_files) - 2  # not broken, not 224
    for a, b in zip(together, one_by_one):
        assert ("pixels" in a) == ("pixels" in b)
        assert "pixels" not in a or torch.equal(a["pixels"], b["pixels"])


def test_a_ray_decoder_resizes_a_batch_at_a_time_in_the_rows_order(mixed_files, monkeypatch):
    """decode_rows takes DECODE_BATCH jobs at a time (here 3, so the batches split the sizes): each row's pixels
    are those of its own file, in the table's order, and a broken file is its own row's failure."""
    import dataclasses
    import json

    from indexer import distributed
    from indexer.pipeline import ChipOptions

    monkeypatch.setattr(distributed, "DECODE_BATCH", 3)
    calls = []
    resize = images._resize
    monkeypatch.setattr(images, "_resize", lambda planes, resolution: calls.append(planes.shape) or resize(
        planes, resolution))
    jobs = [Job(path=str(path), size=path.stat().st_size, mtime=0.0) for path in mixed_files]
    preprocess = Preprocess(224, *SAT)
    block = distributed.decode_rows(distributed._job_table(list(enumerate(jobs))), preprocess=preprocess,
                                    chips=json.dumps(dataclasses.asdict(ChipOptions()))).to_pydict()
    assert any(len(shape) == 4 for shape in calls)  # some images resized together
    assert max(shape[0] for shape in calls if len(shape) == 4) <= 3
    for path, outcome, pixels, shape in zip(mixed_files, block["outcome"], block["pixels"], block["shape"]):
        if path.name == "broken.jpg":
            assert "failure" in json.loads(outcome) and pixels == b""
            continue
        assert json.loads(outcome)["record"]["path"] == str(path)
        expected = preprocess.resized(decode_bytes(path.read_bytes()))
        np.testing.assert_array_equal(np.frombuffer(pixels, np.uint8).reshape(shape), expected)


def test_a_preprocess_with_its_own_resize_gets_it_for_every_image(mixed_files):
    """A plugged-in Preprocess subclass that resizes its own way: indexing must give each image that resize, as
    a query by the file does, never lookalike's batched one."""

    class Nearest(Preprocess):
        def resized(self, image):
            size = (self.resolution, self.resolution)
            return np.asarray(image.convert("RGB").resize(size, Image.Resampling.NEAREST)).transpose(2, 0, 1).copy()

    jobs = [Job(path=str(path), size=path.stat().st_size, mtime=0.0) for path in mixed_files]
    dataset = DecodeDataset(jobs, Nearest(224, *SAT), raw=True)
    for path, item in zip(mixed_files, dataset.__getitems__(list(range(len(jobs))))):
        if "pixels" in item:
            np.testing.assert_array_equal(item["pixels"].numpy(), dataset.preprocess.resized(
                decode_bytes(path.read_bytes())))
