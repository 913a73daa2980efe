"""Large JPEGs are decoded at a reduced scale (the decoder's DCT scaling) when only the model's input needs them."""
import io

import numpy as np
from PIL import Image

from indexer.images import Preprocess, decode_bytes, decode_for_model
from indexer.pipeline import DecodeDataset
from indexer.plan import Job

SAT = ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))


def mosaic(chip_paths, columns: int, rows: int) -> Image.Image:
    """Real chips side by side: real detail at a photo's size."""
    chips = [Image.open(path).convert("RGB") for path in chip_paths]
    width, height = chips[0].size
    canvas = Image.new("RGB", (columns * width, rows * height))
    for number in range(columns * rows):
        canvas.paste(chips[number % len(chips)], ((number % columns) * width, (number // columns) * height))
    return canvas


def write_jpeg(path, image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    path.write_bytes(buffer.getvalue())
    return path


def decoded(path, preprocess, *, draft=True):
    dataset = DecodeDataset([Job(path=str(path), size=path.stat().st_size, mtime=0.0)], preprocess, raw=True)
    dataset.draft = draft
    item = dataset[0]
    return item["record"], item["pixels"].numpy().astype(int)


def test_large_jpeg_is_decoded_smaller_and_keeps_its_size(tmp_path, chip_paths):
    preprocess = Preprocess(224, *SAT)
    path = write_jpeg(tmp_path / "photo.jpg", mosaic(chip_paths, 16, 12))  # 2048 x 1536
    image, size = decode_for_model(path.read_bytes(), at_least=448)
    assert size == (2048, 1536) and image.size == (1024, 768)  # half scale: 1/4 would leave 384 px, under 448
    record, pixels = decoded(path, preprocess)
    assert (record["width"], record["height"]) == (2048, 1536)  # the file's size, not the decoded one
    _, full = decoded(path, preprocess, draft=False)
    np.testing.assert_array_equal(full, preprocess.resized(decode_bytes(path.read_bytes())))
    assert np.abs(pixels - full).max() <= 8 and np.abs(pixels - full).mean() < 0.5


def test_quarter_turned_large_jpeg(tmp_path, chip_paths):
    preprocess = Preprocess(224, *SAT)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: turn 90 degrees clockwise to view
    path = write_jpeg(tmp_path / "turned.jpg", mosaic(chip_paths, 16, 12), exif=exif)
    image, size = decode_for_model(path.read_bytes(), at_least=448)
    assert size == (1536, 2048) and image.size == (768, 1024)
    record, pixels = decoded(path, preprocess)
    assert (record["width"], record["height"]) == (1536, 2048)
    _, full = decoded(path, preprocess, draft=False)
    assert np.abs(pixels - full).max() <= 8 and np.abs(pixels - full).mean() < 0.5


def test_small_jpegs_and_other_formats_decode_whole(tmp_path, chip_paths):
    preprocess = Preprocess(224, *SAT)
    small = write_jpeg(tmp_path / "small.jpg", mosaic(chip_paths, 6, 5))  # 768 x 640: under 2 x 448 on a side
    png = tmp_path / "photo.png"
    mosaic(chip_paths, 16, 12).save(png)
    for path in (small, png, chip_paths[0]):
        image, size = decode_for_model(path.read_bytes(), at_least=448)
        assert image.size == size
        _, pixels = decoded(path, preprocess)
        _, full = decoded(path, preprocess, draft=False)
        np.testing.assert_array_equal(pixels, full)


def test_search_by_the_large_file_finds_it_first(tmp_path, chip_paths, index, embedder):
    """The store holds the reduced-scale decode's vector, a search by the file embeds its whole decode: close."""
    from indexer import api

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in chip_paths:
        (folder / path.name).write_bytes(path.read_bytes())
    photo = write_jpeg(folder / "photo.jpg", mosaic(chip_paths, 16, 12))
    index([folder], tmp_path / "store")
    store = api.open_store(tmp_path / "store")
    try:
        first = api.search(store, photo, k=3, embedder=embedder)["results"][0]
    finally:
        store.close()
    assert first["path"] == str(photo.absolute()) and first["score"] > 0.999, first
