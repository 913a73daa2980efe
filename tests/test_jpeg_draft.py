"""Large JPEGs are decoded at a reduced scale (the decoder's DCT scaling) when only the model's input needs them."""
import io
import json

import numpy as np
from click.testing import CliRunner
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


def _indexed_photo(tmp_path, chip_paths, index):
    """A folder of chips and one large JPEG (2048 x 1536), indexed; returns (the photo, the store's folder)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in chip_paths:
        (folder / path.name).write_bytes(path.read_bytes())
    photo = write_jpeg(folder / "photo.jpg", mosaic(chip_paths, 16, 12))
    index([folder], tmp_path / "store")
    return photo.absolute(), tmp_path / "store"


def test_a_query_by_a_large_jpeg_is_decoded_as_index_decoded_it(tmp_path, chip_paths, embedder):
    """embed_image and load_query_image (search, the page's uploads) read a whole large JPEG at the reduced scale
    `index` read it at: the model sees the very pixels the stored vector came from. A crop reads the whole decode."""
    from indexer import api

    photo = write_jpeg(tmp_path / "photo.jpg", mosaic(chip_paths, 16, 12))
    item = DecodeDataset([Job(path=str(photo), size=photo.stat().st_size, mtime=0.0)], embedder.preprocess)[0]
    indexed = embedder.embed(item["pixels"][None]).global_vectors
    np.testing.assert_array_equal(api.embed_image(photo, embedder).global_vectors, indexed)
    at_least = api.draft_side(embedder.preprocess.resolution)
    drafted = decode_for_model(photo.read_bytes(), at_least=at_least)[0]
    assert drafted.size != (2048, 1536)
    for source, name in ((photo, None), (photo.read_bytes(), "photo.jpg")):
        picture = api.load_query_image(source, name=name, at_least=at_least)
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(drafted))
        part = api.load_query_image(source, name=name, crop=(1000, 500, 300, 200), at_least=at_least)
        whole = decode_bytes(photo.read_bytes())
        np.testing.assert_array_equal(np.asarray(part), np.asarray(whole.crop((1000, 500, 1300, 700))))


def test_search_by_the_large_file_finds_its_own_vector(tmp_path, chip_paths, index, embedder):
    """Searched by its file (api.search, search_each, the CLI), an indexed large JPEG scores as its reduced-scale
    decode does, not as its whole decode."""
    from indexer import api
    from indexer.cli import cli

    photo, store_dir = _indexed_photo(tmp_path, chip_paths, index)
    store = api.open_store(store_dir)
    try:
        assert api.store_draft_side(store) == api.draft_side(embedder.preprocess.resolution)
        drafted = decode_for_model(photo.read_bytes(), at_least=api.store_draft_side(store))[0]
        expected = api.search(store, drafted, k=1, embedder=embedder)["results"][0]
        whole = api.search(store, decode_bytes(photo.read_bytes()), k=1, embedder=embedder)["results"][0]
        first = api.search(store, photo, k=3, embedder=embedder)["results"][0]
        each = next(iter(api.search_each(store, [photo], k=1, embedder=embedder)))["results"][0]
    finally:
        store.close()
    assert expected["path"] == str(photo) and expected["score"] != whole["score"]
    assert first == expected and each == expected
    result = CliRunner().invoke(cli, ["search", str(photo), "--store", str(store_dir), "-k", "1", "--json",
                                      "--dtype", "float32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["score"] == expected["score"]


def test_the_page_reads_a_large_jpeg_as_index_read_it(tmp_path, chip_paths, index):
    """The page's upload of a large JPEG and its exact heatmaps of an indexed one embed the reduced-scale decode."""
    from types import SimpleNamespace

    import torch

    from indexer import api
    from ui.query import load_upload
    from ui.resources import embedder_for, full_tokens

    photo, store_dir = _indexed_photo(tmp_path, chip_paths, index)
    store = api.open_store(store_dir)
    try:
        model = embedder_for(store)
        drafted = decode_for_model(photo.read_bytes(), at_least=api.store_draft_side(store))[0]
        expected = model.embed(torch.from_numpy(model.preprocess(drafted))[None])
        upload = load_upload(store, SimpleNamespace(name=photo.name, getvalue=photo.read_bytes), model=None)
        hits = api.search(store, photo, k=3, embedder=model)["results"]
        item = next(hit for hit in hits if hit["path"] == str(photo))
        tokens = full_tokens(item, model)
    finally:
        store.close()
    np.testing.assert_array_equal(upload.vectors[0], expected.global_vectors[0].numpy())
    np.testing.assert_array_equal(tokens, expected.patch_tokens[0].numpy())


def test_the_page_shrinks_a_large_jpeg_from_a_reduced_decode(tmp_path, chip_paths):
    """Thumbnails and the comparison picture of an indexed large JPEG: decoded no smaller than twice the picture,
    then shrunk; the same size as from the whole decode and close to it."""
    from ui.resources import shrunk

    photo = write_jpeg(tmp_path / "photo.jpg", mosaic(chip_paths, 16, 12))  # 2048 x 1536
    item = {"path": str(photo), "size": photo.stat().st_size, "mtime": photo.stat().st_mtime}
    for size in (160, 320):
        picture = shrunk(item, size)
        reduced = decode_for_model(photo.read_bytes(), at_least=2 * size)[0]
        assert reduced.size == (2048 // (2 if size == 320 else 4), 1536 // (2 if size == 320 else 4))
        reduced.thumbnail((size, size), Image.Resampling.LANCZOS)
        whole = decode_bytes(photo.read_bytes())
        whole.thumbnail((size, size), Image.Resampling.LANCZOS)
        assert picture.size == whole.size == (size, size * 3 // 4)
        np.testing.assert_array_equal(np.asarray(picture), np.asarray(reduced))
        difference = np.abs(np.asarray(picture, dtype=int) - np.asarray(whole, dtype=int))
        assert 0 < difference.mean() < 1.5, difference.mean()


def test_embed_image_takes_a_preprocess_that_does_not_say_its_resolution(chip_paths, embedder):
    """A plugged-in embedder whose preprocess is a plain function: its files are decoded whole."""
    from types import SimpleNamespace

    from indexer import api

    plugged = SimpleNamespace(preprocess=lambda picture: embedder.preprocess(picture), embed=embedder.embed)
    np.testing.assert_array_equal(api.embed_image(chip_paths[0], plugged).global_vectors,
                                  api.embed_image(chip_paths[0], embedder).global_vectors)


class _PlainPreprocess:
    """A preprocess as the README's contract asks of another backbone: a picklable callable, nothing more."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, picture):
        return self.preprocess(picture)


def test_index_takes_a_backbone_whose_preprocess_does_not_say_its_resolution(chips_dir, chip_paths, embedder,
                                                                              index, tmp_path):
    """Its files are decoded whole; the run indexed nothing before (AttributeError: no 'resolution')."""
    from types import SimpleNamespace

    plugged = SimpleNamespace(preprocess=_PlainPreprocess(embedder.preprocess), embed=embedder.embed,
                              provenance=dict(embedder.provenance))
    summary = index([chips_dir], tmp_path / "store", embedder=plugged)
    assert (summary["indexed"], summary["failed"]) == (len(chip_paths), 0)


def test_an_indexed_files_size_comes_from_its_header(tmp_path, chip_paths, monkeypatch):
    """The pixels a part of an indexed file counts (the page's part picker): its upright size, read without
    decoding it; a file changed since it was indexed is refused as before."""
    import pytest

    from indexer import api, images
    from indexer.errors import UnreadableImage

    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side
    photo = write_jpeg(tmp_path / "turned.jpg", mosaic(chip_paths, 16, 12), exif=exif)
    item = {"path": str(photo), "size": photo.stat().st_size, "mtime": photo.stat().st_mtime}
    assert api.indexed_size(item) == api.load_indexed_image(item).size == (1536, 2048)
    with monkeypatch.context() as patched:
        patched.setattr(images, "decode_for_model", lambda *a, **k: pytest.fail("decoded"))
        assert api.indexed_size(item) == (1536, 2048)
    with pytest.raises(UnreadableImage, match="changed on disk"):
        api.indexed_size(dict(item, size=item["size"] + 1))
