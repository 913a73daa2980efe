"""Pixel normalisation: SAT-493M statistics for satellite models, ImageNet for the others, overrides."""
import logging
import uuid

import numpy as np
import pytest
from PIL import Image

from indexer.errors import IndexerError
from indexer.normalization import PRESETS, normalization_for

SAT_MEAN, SAT_STD = [0.430, 0.411, 0.296], [0.213, 0.156, 0.143]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_sat493m_model_dir_gets_sat_statistics(embedder):
    normalization = embedder.provenance["normalization"]
    assert normalization["name"] == "sat493m"
    assert normalization["mean"] == pytest.approx(SAT_MEAN)
    assert normalization["std"] == pytest.approx(SAT_STD)
    assert embedder.preprocess.mean == pytest.approx(SAT_MEAN)
    assert embedder.preprocess.std == pytest.approx(SAT_STD)


def test_lvd_model_dir_gets_imagenet_statistics(lvd_model_dir, load_embedder):
    embedder = load_embedder(lvd_model_dir)
    assert embedder.provenance["normalization"]["mean"] == pytest.approx(IMAGENET_MEAN)
    assert embedder.provenance["normalization"]["std"] == pytest.approx(IMAGENET_STD)
    assert embedder.preprocess.mean == pytest.approx(IMAGENET_MEAN)


def test_hub_ids_choose_by_name():
    assert normalization_for("mirekphd/dinov3-vit7b16-pretrain-sat493m-fp16")["mean"] == pytest.approx(SAT_MEAN)
    assert normalization_for("facebook/dinov3-vitl16-pretrain-lvd1689m")["mean"] == pytest.approx(IMAGENET_MEAN)


def test_a_snapshot_in_the_hub_cache_is_named_by_its_repo(caplog):
    hub = "/home/me/.cache/huggingface/hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    sat = f"{hub}/models--mirekphd--dinov3-vit7b16-pretrain-sat493m-fp16/snapshots/{commit}/"
    assert normalization_for(sat)["mean"] == pytest.approx(SAT_MEAN)
    lvd = f"{hub}/models--facebook--dinov3-vitl16-pretrain-lvd1689m/snapshots/{commit}"
    with caplog.at_level("WARNING"):
        assert normalization_for(lvd)["mean"] == pytest.approx(IMAGENET_MEAN)
    assert "cannot tell" not in caplog.text  # known by its repo's name, not a guess
    # only the Hub's own layout: a folder merely called snapshots under a sat493m one is still its own name
    assert normalization_for(f"/data/sat493m-runs/snapshots/{commit}")["mean"] == pytest.approx(IMAGENET_MEAN)


def test_imagenet_override_beats_the_name(model_dir, load_embedder):
    embedder = load_embedder(model_dir, normalization="imagenet")
    assert embedder.provenance["normalization"]["name"] == "imagenet"
    assert embedder.preprocess.mean == pytest.approx(IMAGENET_MEAN)
    assert embedder.preprocess.std == pytest.approx(IMAGENET_STD)


def test_custom_override_is_parsed(model_dir, load_embedder):
    embedder = load_embedder(model_dir, normalization="0.5,0.4,0.3/0.2,0.25,0.1")
    assert embedder.provenance["normalization"] == {"name": "custom", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.1]}
    assert embedder.preprocess.std == pytest.approx((0.2, 0.25, 0.1))


@pytest.mark.parametrize("text", ["0.5,0.5/0.2,0.2,0.2", "a,b,c/d,e,f", "0.5,0.5,0.5", "0.5,0.5,0.5/0.2,0,0.2",
                                  "0.5,0.5,0.5/0.2,0.2,0.2/1"])
def test_bad_custom_string_raises(text):
    with pytest.raises(IndexerError, match="--normalization"):
        normalization_for("some-model", text)


def test_bad_custom_string_refused_by_the_embedder(model_dir, load_embedder):
    with pytest.raises(IndexerError):
        load_embedder(model_dir, normalization="1,2/3")


def test_preprocess_normalises_the_mean_colour_to_zero(embedder):
    colour = tuple(round(m * 255) for m in SAT_MEAN)
    image = Image.new("RGB", (300, 180), colour)

    pixels = embedder.preprocess(image)

    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.float32
    assert np.abs(pixels).max() < 0.02  # within 8-bit rounding of the mean


def test_preprocess_keeps_channel_order(embedder):
    image = Image.new("RGB", (224, 224), (255, 0, 0))
    pixels = embedder.preprocess(image)
    expected = [(1 - SAT_MEAN[0]) / SAT_STD[0], -SAT_MEAN[1] / SAT_STD[1], -SAT_MEAN[2] / SAT_STD[2]]
    assert pixels[:, 100, 100] == pytest.approx(expected, rel=1e-5)


def test_preprocess_table_equals_the_per_pixel_formula():
    """The lookup table must give exactly what normalising every pixel in float32 gives."""
    from indexer.images import Preprocess

    preprocess = Preprocess(224, tuple(SAT_MEAN), tuple(SAT_STD))
    rng = np.random.default_rng(0)
    for height, width in ((224, 224), (300, 500), (97, 61)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        resized = preprocess.resized(image).transpose(1, 2, 0)
        expected = (resized.astype(np.float32) / 255.0 - np.float32(SAT_MEAN)) / np.float32(SAT_STD)
        np.testing.assert_array_equal(preprocess(image), expected.transpose(2, 0, 1))


def test_resize_matches_pillows_bicubic(chip_paths):
    """The resize (PyTorch's uint8 bicubic) stays within 2 levels of Pillow's antialiased BICUBIC, on real chips
    made larger (128 → 224) and smaller (enlarged to 1000 × 700, then to 224), and on odd sizes and a 1 px image."""
    from indexer.images import Preprocess

    preprocess = Preprocess(224, tuple(SAT_MEAN), tuple(SAT_STD))
    chip = Image.open(chip_paths[0]).convert("RGB")
    images = [chip, chip.resize((1000, 700), Image.Resampling.LANCZOS), chip.crop((5, 9, 102, 70)),
              Image.new("RGB", (1, 1), (200, 30, 90))]
    for image in images:
        ours = preprocess.resized(image).astype(int)
        pillow = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC)).transpose(2, 0, 1).astype(int)
        assert ours.shape == (3, 224, 224)
        assert np.abs(ours - pillow).max() <= 2
        assert np.mean(ours != pillow) < 0.02, image.size
    unchanged = Image.fromarray(np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    np.testing.assert_array_equal(preprocess.resized(unchanged), np.asarray(unchanged).transpose(2, 0, 1))


def test_preprocess_takes_grey_and_alpha_images():
    from indexer.images import Preprocess

    preprocess = Preprocess(32, tuple(SAT_MEAN), tuple(SAT_STD))
    grey = preprocess(Image.new("L", (40, 40), 128))
    rgba = preprocess(Image.new("RGBA", (40, 40), (128, 128, 128, 0)))
    np.testing.assert_array_equal(grey, rgba)
    assert grey.shape == (3, 32, 32)
    assert grey[:, 0, 0] == pytest.approx([(128 / 255 - m) / s for m, s in zip(SAT_MEAN, SAT_STD)], rel=1e-5)


def test_device_normalisation_equals_the_host_one():
    """uint8 pixels normalised later (the CPU path and the gather a GPU runs) equal __call__'s floats."""
    import torch

    from indexer.images import Preprocess

    preprocess = Preprocess(64, tuple(SAT_MEAN), tuple(SAT_STD))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)) for _ in range(3)]
    raw = torch.from_numpy(np.stack([preprocess.resized(image) for image in images]))
    expected = torch.from_numpy(np.stack([preprocess(image) for image in images]))
    assert raw.dtype == torch.uint8 and raw.shape == (3, 3, 64, 64)
    assert torch.equal(preprocess.normalize(raw), expected)
    assert torch.equal(preprocess.gather(raw), expected)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_batch_normalisation_on_the_cpu_is_the_table_for_every_byte(preset):
    """The CPU path computes the table's formula over the batch: every byte of every channel must give the
    table's float32 value exactly (a reciprocal multiply or another order of operations would not)."""
    import torch

    from indexer.images import Preprocess

    stats = PRESETS[preset]
    preprocess = Preprocess(16, tuple(stats["mean"]), tuple(stats["std"]))
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(1, 3, 1, 1)  # (1, 3, 16, 16)

    pixels = preprocess.normalize(every_byte)

    assert torch.equal(pixels.reshape(3, 256), torch.from_numpy(preprocess.table))


def test_sixteen_bit_normalisation_equals_the_float32_one_cast():
    """A bfloat16 or float16 model gets the very values (bit for bit) that normalising in float32 and casting
    would give, on the CPU path and the device gather alike."""
    import torch

    from indexer.images import Preprocess

    preprocess = Preprocess(32, tuple(SAT_MEAN), tuple(SAT_STD))
    raw = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    raw[1, :, :8, :] = torch.arange(256, dtype=torch.uint8).reshape(8, 32)  # all 256 bytes in every channel
    reference = preprocess.normalize(raw)
    for dtype in (torch.bfloat16, torch.float16):
        for pixels in (preprocess.normalize(raw, dtype=dtype), preprocess.gather(raw, dtype=dtype)):
            assert pixels.dtype == dtype and pixels.shape == raw.shape
            assert torch.equal(pixels.view(torch.int16), reference.to(dtype).view(torch.int16))
    wide = preprocess.normalize(raw, dtype=torch.float64)  # any other float: its own itemsize, no bit patterns
    assert wide.dtype == torch.float64 and torch.equal(wide, reference.double())


def test_an_unknown_corpus_is_warned_about_once_per_model(caplog):
    name = f"my-finetune-{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.WARNING, logger="indexer.normalization"):
        for _ in range(3):  # what one index run asks: before its model loads, and again when it loads
            assert normalization_for(f"/models/{name}")["name"] == "imagenet"
        normalization_for("/models/another-one-" + name)
    warned = [record.getMessage() for record in caplog.records if "cannot tell" in record.getMessage()]
    assert len(warned) == 2 and name in warned[0] and "another-one" in warned[1]
