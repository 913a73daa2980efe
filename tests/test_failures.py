"""Unreadable files: recorded with a reason, the run goes on, unchanged ones retried if the read was refused."""
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import ids_by_path
from indexer.cli import cli
from indexer.images import load_image


@pytest.fixture
def broken_files(chips_dir, chip_paths):
    """Three files Pillow cannot read, beside the twelve good chips."""
    truncated = chips_dir / "truncated.jpg"
    truncated.write_bytes(chip_paths[0].read_bytes()[:600])
    text = chips_dir / "notes.jpg"
    text.write_text("this is not an image\n")
    empty = chips_dir / "empty.png"
    empty.write_bytes(b"")
    return [p.absolute() for p in (truncated, text, empty)]


def test_corrupt_files_are_recorded_and_the_run_goes_on(index, chips_dir, broken_files, store_dir, open_store):
    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["failed"]) == (12, 3)
    store = open_store(store_dir)
    failures = store.failures_by_path()
    assert set(failures) == {str(p) for p in broken_files}
    for failure in failures.values():
        assert failure["reason"].strip()
    assert "not an image format lookalike reads" in failures[str(broken_files[1])]["reason"]
    assert store.count_images() == 12
    assert store.info()["failed"] == 3
    assert not set(failures) & set(store.images_by_path())


def test_unchanged_failures_are_not_retried(index, chips_dir, broken_files, store_dir, open_store):
    index([chips_dir], store_dir)

    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["skipped"], summary["failed"]) == (0, 15, 0)
    store = open_store(store_dir)
    assert store.count_failures() == 3  # still recorded


def test_a_repaired_file_is_indexed_and_its_failure_forgotten(index, chips_dir, chip_paths, broken_files, store_dir,
                                                               open_store):
    index([chips_dir], store_dir)
    shutil.copyfile(chip_paths[0], broken_files[0])

    summary = index([chips_dir], store_dir)

    assert (summary["indexed"], summary["failed"]) == (1, 0)
    store = open_store(store_dir)
    assert str(broken_files[0]) in store.images_by_path()
    assert str(broken_files[0]) not in store.failures_by_path()


def test_landsat_geotiff_pillow_cannot_read_is_read_as_a_scene(index, chips_dir, shared_data_dir, store_dir,
                                                               open_store):
    landsat = shared_data_dir / "landsat" / "1985.tif"  # 697 x 377: two 512-px chips, shifted inward

    summary = index([chips_dir, landsat], store_dir)

    assert (summary["indexed"], summary["failed"], summary["scenes"]) == (14, 0, 1)
    store = open_store(store_dir)
    chips = [row for path, row in store.images_by_path().items() if row["scene"] == str(landsat.absolute())]
    assert sorted(path.rsplit("#", 1)[1] for path in (c["path"] for c in chips)) == ["0,0,512,377", "185,0,512,377"]


def test_a_tiff_nothing_can_read_is_a_failure(index, chips_dir, store_dir, open_store, tmp_path):
    fake = tmp_path / "scene.tif"
    fake.write_text("not a raster at all")

    summary = index([chips_dir, fake], store_dir)

    assert (summary["indexed"], summary["failed"]) == (12, 1)
    assert "not an image format lookalike reads" in open_store(store_dir).failures_by_path()[str(fake)]["reason"]


def test_missing_source_is_an_error(index, tmp_path):
    from indexer.errors import IndexerError

    with pytest.raises(IndexerError, match="does not exist"):
        index([tmp_path / "nowhere"], tmp_path / "store")


def test_failure_of_a_vanished_file_is_forgotten(index, chips_dir, broken_files, store_dir, open_store):
    """A failed file that is deleted should leave the failures table (and `info`'s count) too."""
    index([chips_dir], store_dir)
    broken_files[1].unlink()

    index([chips_dir], store_dir)

    store = open_store(store_dir)
    assert str(broken_files[1]) not in store.failures_by_path()
    assert store.info()["failed"] == 2


def test_indexed_file_that_turns_unreadable_is_not_retried_every_run(index, indexed, chip_paths, chips_dir,
                                                                     store_dir, open_store):
    """Once an indexed file is broken and recorded as failed, an unchanged broken file is skipped next time."""
    chip_paths[4].write_bytes(b"garbage, not a JPEG any more")
    first = index([chips_dir], store_dir)
    assert first["failed"] == 1

    second = index([chips_dir], store_dir)

    assert (second["failed"], second["skipped"]) == (0, 12)


def test_restored_file_leaves_no_stale_failure(index, indexed, chip_paths, chips_dir, store_dir, open_store):
    """Broken, then restored byte for byte (new mtime): it is indexed and no failure remains recorded."""
    original = chip_paths[4].read_bytes()
    chip_paths[4].write_bytes(b"garbage, not a JPEG any more")
    index([chips_dir], store_dir)
    chip_paths[4].write_bytes(original)
    later = chip_paths[4].stat().st_mtime + 5
    os.utime(chip_paths[4], (later, later))

    index([chips_dir], store_dir)

    store = open_store(store_dir)
    assert str(chip_paths[4]) in ids_by_path(store)
    assert store.count_failures() == 0


def test_a_failed_file_replaced_by_a_good_one_of_the_same_size_is_tried_again(index, tmp_path, write_image,
                                                                             open_store):
    """Uncompressed formats (BMP) keep one byte count per pixel size: the new mtime says the file changed."""
    folder = tmp_path / "bmps"
    good = write_image(folder / "a.bmp", size=(48, 48), seed=1)
    write_image(folder / "b.bmp", size=(48, 48), seed=2)
    data = good.read_bytes()
    good.write_bytes(b"not a picture".ljust(len(data), b"."))  # the same size, unreadable
    store_dir = tmp_path / "store"
    assert index([folder], store_dir)["failed"] == 1
    good.write_bytes(data)
    later = good.stat().st_mtime + 5
    os.utime(good, (later, later))

    summary = index([folder], store_dir)

    assert (summary["indexed"], summary["failed"]) == (1, 0)
    store = open_store(store_dir)
    assert str(good) in ids_by_path(store) and store.count_failures() == 0


def test_a_file_the_system_would_not_read_is_tried_again_next_run(index, chips_dir, chip_paths, store_dir,
                                                                   open_store, monkeypatch):
    """Permissions fixed, a share back: the file has not changed, but its failure was not the file's."""
    real_read = Path.read_bytes

    def refused(path):
        if path.name == chip_paths[3].name:
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", refused)
    first = index([chips_dir], store_dir)
    assert first["failed"] == 1
    assert open_store(store_dir).failures_by_path()[str(chip_paths[3])]["reason"] == "cannot be read (Permission denied)"
    listed = CliRunner().invoke(cli, ["failures", "--store", str(store_dir)])
    assert "1 the system refused to read is tried again by the next index run" in listed.stderr
    monkeypatch.setattr(Path, "read_bytes", real_read)

    second = index([chips_dir], store_dir)

    assert (second["indexed"], second["failed"], second["skipped"]) == (1, 0, 11)
    assert str(chip_paths[3]) in ids_by_path(open_store(store_dir))
    assert open_store(store_dir).count_failures() == 0


def test_retry_failed_tries_unchanged_failures_again(index, chips_dir, chip_paths, store_dir, open_store,
                                                    monkeypatch):
    """A reader missing in one run (here: the decoder refuses one chip) and installed before the next."""
    from indexer import pipeline
    from indexer.errors import UnreadableImage

    real_decode = pipeline.decode_for_model

    def no_reader(data, *, name, at_least=None):
        if name == str(chip_paths[5]):
            raise UnreadableImage(f"{name}: not an image format lookalike reads (JPEG, PNG, TIFF, WebP, BMP, GIF)")
        return real_decode(data, name=name, at_least=at_least)

    monkeypatch.setattr(pipeline, "decode_for_model", no_reader)
    assert index([chips_dir], store_dir)["failed"] == 1
    monkeypatch.setattr(pipeline, "decode_for_model", real_decode)
    unchanged = index([chips_dir], store_dir)
    assert (unchanged["indexed"], unchanged["skipped"]) == (0, 12)  # the failure is the file's, it has not changed

    again = index([chips_dir], store_dir, retry_failed=True)

    assert (again["indexed"], again["failed"]) == (1, 0)
    assert str(chip_paths[5]) in ids_by_path(open_store(store_dir))
    assert open_store(store_dir).count_failures() == 0


def test_retry_failed_in_a_dry_run(index, chips_dir, broken_files, store_dir):
    index([chips_dir], store_dir)
    args = ["index", str(chips_dir), "--store", str(store_dir), "--dry-run", "--json"]
    plain = json.loads(CliRunner().invoke(cli, args).output)
    retried = json.loads(CliRunner().invoke(cli, args + ["--retry-failed"]).output)
    assert (plain["embed"], plain["skipped"]) == (0, 15)
    assert (retried["embed"], retried["skipped"]) == (3, 12)


def test_a_damaged_scene_says_what_gdal_found(index, shared_data_dir, tmp_path, open_store):
    """rasterio's own message only says 'See previous exception for details.': the reason gives GDAL's."""
    from indexer.pipeline import ChipOptions

    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    damaged = tmp_path / "scenes" / scene.name
    damaged.parent.mkdir()
    damaged.write_bytes(scene.read_bytes()[:100_000])  # the header and the first tiles, the rest cut off
    summary = index([damaged.parent], tmp_path / "store", chips=ChipOptions(chip_size=256))
    assert summary["failed"] >= 1
    reasons = [row["reason"] for row in open_store(tmp_path / "store").failures()]
    assert reasons and all("damaged raster data" in reason for reason in reasons)
    assert not any("previous exception" in reason for reason in reasons), reasons
    assert any("IReadBlock failed" in reason or "TIFFRead" in reason for reason in reasons), reasons


def test_an_image_cut_into_chips_that_does_not_decode_is_one_failure(index, tmp_path, write_image, open_store,
                                                                       monkeypatch):
    """Each of its 16 chips meets the broken file; the run counts, and decodes, it once."""
    from indexer import pipeline
    from indexer.pipeline import ChipOptions

    decoded = []
    monkeypatch.setattr(pipeline, "load_image", lambda path: decoded.append(path) or load_image(path))

    folder = tmp_path / "photos"
    big = write_image(folder / "big.jpg", size=(512, 512), seed=4)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 3])  # the header reads, the pixels stop short
    write_image(folder / "small.jpg")
    summary = index([folder], tmp_path / "s", chips=ChipOptions(chip_size=128, chip_plain=True))
    assert (summary["failed"], summary["failure_reasons"]) == (1, {"damaged or unsupported image data": 1})
    assert summary["indexed"] == 1 and open_store(tmp_path / "s").count_failures() == 1
    assert decoded == [big.absolute()]


def test_a_scene_that_stops_short_is_one_failure_and_keeps_no_chip(index, shared_data_dir, tmp_path, open_store):
    """An interrupted download: the header and first strips read, the rest is missing. The chips read before the
    break do not stay behind a file listed as failed; the other scene is untouched."""
    from indexer.pipeline import ChipOptions

    folder = tmp_path / "scenes"
    folder.mkdir()
    whole, cut = sorted((shared_data_dir / "naip").glob("*.tif"))[:2]
    shutil.copy2(whole, folder / whole.name)
    (folder / cut.name).write_bytes(cut.read_bytes()[:1_500_000])
    summary = index([folder], tmp_path / "s", chips=ChipOptions(chip_size=256))
    store = open_store(tmp_path / "s")
    assert (summary["failed"], summary["indexed"]) == (1, 12)  # 12 chips of 256 px in the whole scene
    assert {row["scene"] for row in store.images_by_path().values()} == {str(folder / whole.name)}
    assert list(store.failures_by_path()) == [str(folder / cut.name)]
    assert store.index.ntotal == 12



@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error")])
def test_sizing_a_file_the_system_will_not_read_says_so(write_image, tmp_path, monkeypatch, error):
    """A query's --crop and a plain image cut into chips size the file from its header: a refusal by the system
    (permissions, a failing drive or share) is a read error, as a decode's is, not 'not an image format'."""
    from PIL import Image

    from indexer import api, images
    from indexer.errors import UnreadableImage

    picture = write_image(tmp_path / "photo.png", size=(300, 200))
    opened = Image.open

    def refusing(path, *args, **kwargs):
        if str(path) == str(picture):
            raise error
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(images.Image, "open", refusing)
    for size in (lambda: images.upright_size(picture), lambda: api.query_file_size(picture)):
        with pytest.raises(UnreadableImage) as refused:
            size()
        assert str(refused.value) == f"{picture}: cannot be read ({error.strerror})"
    monkeypatch.setattr(images.Image, "open", opened)
    assert images.upright_size(picture) == (300, 200)
