"""Pictures whose pixels are more than 8 bits or not upright as stored: decoded the same from a file, from bytes
and from a PIL image handed to the Python API; TIFFs that Pillow cannot read, read by GDAL."""
import io
import warnings

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from indexer import api
from indexer.errors import UnreadableImage
from indexer.images import decode_for_model, load_image, upright_size


def _write_png16(path, bands):
    """bands (C, H, W) uint16 as a 16-bit-per-channel PNG (Pillow cannot write one in colour)."""
    count, height, width = bands.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not georeferenced: a plain picture
        with rasterio.open(path, "w", driver="PNG", width=width, height=height, count=count,
                           dtype="uint16") as dataset:
            dataset.write(bands)
    return path


def _reflectance(count, *, seed=0):
    """(C, 64, 96) uint16 in 200..3200, as 16-bit satellite exports (reflectance × 10,000) often are."""
    values = np.random.default_rng(seed).random((count, 8, 12))
    return (np.kron(values, np.ones((1, 8, 8))) * 3000 + 200).astype(np.uint16)


@pytest.mark.parametrize("count", [3, 4, 2], ids=["rgb", "rgba", "grey-alpha"])
def test_16_bit_colour_png_is_stretched_from_all_its_bits(tmp_path, count):
    bands = _reflectance(count)
    path = _write_png16(tmp_path / "wide.png", bands)
    with Image.open(path) as raw:
        assert raw.mode in ("RGB", "RGBA")  # Pillow's own decode: high bytes only (0..12 here)
        assert np.asarray(raw)[..., :3].max() <= 12

    picture = np.asarray(load_image(path)).astype(np.float32)  # (H, W, 3)

    colour = bands[:3] if count >= 3 else bands[:1]
    expected = (colour.astype(np.float32) - colour.min()) / (colour.max() - colour.min()) * 255.0
    expected = np.broadcast_to(expected.transpose(1, 2, 0), picture.shape)  # a grey fills all three
    assert picture.min() == 0 and picture.max() == 255
    assert np.abs(picture - expected).max() <= 1.0  # the stretch of the full values, truncated to uint8
    assert len(np.unique(picture)) > 50  # of 96 values per band (the high bytes: 13 levels)


def test_16_bit_colour_png_keeps_its_size_and_reads_the_same_from_bytes(tmp_path):
    path = _write_png16(tmp_path / "wide.png", _reflectance(3, seed=1))
    picture, size = decode_for_model(path.read_bytes(), name="wide.png")
    assert size == (96, 64) and picture.size == (96, 64) and picture.mode == "RGB"
    assert np.array_equal(np.asarray(picture), np.asarray(load_image(path)))


def _write_tiff(path, bands):
    """bands (C, H, W) as a plain TIFF, no georeferencing (Pillow cannot read 16-bit or float colour ones)."""
    count, height, width = bands.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                           dtype=bands.dtype.name) as dataset:
            dataset.write(bands)
    return path


@pytest.mark.parametrize("count, dtype", [(3, "uint16"), (4, "uint16"), (3, "float32"), (5, "int16")])
def test_a_tiff_pillow_cannot_read_is_read_by_gdal_and_stretched(tmp_path, count, dtype):
    bands = (_reflectance(count).astype(np.float32) - (1000 if dtype == "int16" else 0)).astype(dtype)
    path = _write_tiff(tmp_path / "wide.tif", bands)
    with pytest.raises(Exception):
        Image.open(path).load()  # Pillow's own answer: not an image it reads

    picture = np.asarray(load_image(path)).astype(np.float32)

    colour = bands[:3].astype(np.float32)  # the first three bands, as for a 4-band RGB+NIR export
    expected = ((colour - colour.min()) / (colour.max() - colour.min()) * 255.0).transpose(1, 2, 0)
    assert np.abs(picture - expected).max() <= 1.0
    assert upright_size(path) == (96, 64) and upright_size(io.BytesIO(path.read_bytes())) == (96, 64)


def test_a_tiff_gdal_cannot_read_either_fails_in_one_line(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + bytes(60))  # a TIFF's first bytes, nothing after
    with pytest.raises(UnreadableImage, match=r"broken.tif: a TIFF neither Pillow nor GDAL reads") as raised:
        load_image(path)
    assert "vsimem" not in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UnreadableImage, match="not an image format lookalike reads"):
        upright_size(path)


def _grey16(path):
    values = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21 + 300)  # (H, W) spans most of 16 bits
    Image.fromarray(values).save(path)
    return path


def _turned_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    pixels = np.random.default_rng(3).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("make", [_grey16, _turned_jpeg], ids=["16-bit-grey", "exif-rotated"])
def test_a_pil_image_embeds_as_its_file(embedder, tmp_path, make):
    path = make(tmp_path / ("picture.png" if make is _grey16 else "picture.jpg"))
    with Image.open(path) as image:
        from_pil = api.embed_image(image, embedder).global_vectors
    from_path = api.embed_image(path, embedder).global_vectors
    torch.testing.assert_close(from_pil, from_path)


def test_a_pil_query_finds_its_indexed_file(index, open_store, embedder, tmp_path):
    sources = tmp_path / "images"
    sources.mkdir()
    paths = [_grey16(sources / "grey.png"), _turned_jpeg(sources / "turned.jpg")]
    for seed in range(3):  # others to be found instead
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            sources / f"other-{seed}.png")
    index([sources], tmp_path / "store")
    store = open_store(tmp_path / "store")

    for path in paths:
        with Image.open(path) as image:
            found = api.search(store, image, k=1, embedder=embedder)["results"][0]
            each = next(api.search_each(store, [image], k=1, embedder=embedder))["results"][0]
        assert found["path"] == each["path"] == str(path)
        assert found["score"] == pytest.approx(1.0, abs=1e-4)
