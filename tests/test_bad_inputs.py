"""A corpus of bad and odd inputs, made here: each kind is indexed or recorded as failed, and the run goes on.

One table (KINDS) says what each kind is, how to make it and what the run must do with it. The whole corpus
is indexed in ONE run beside good control images; every kind is then checked on its own. A kind with a known
product bug (`bug=`) is indexed in a run of its own beside a control, so that its bug cannot hide the other
kinds' results; its case is a strict xfail, and removing `bug=` once fixed puts it back in the shared run.
"""
import hashlib
import io
import math
import os
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, features

from helpers import random_pixels

INDEXED, FAILED, SKIPPED_CHIPS, IGNORED = "indexed", "failed", "skipped_chips", "ignored"
GEOTIFF_SIDE = 600  # two 512-px windows per side, shifted inward: four chips


@dataclass
class Made:
    """What a maker left on disk and what the run must show for it."""

    path: Path  # the catalogue key the kind is checked under (absolute, as scan_sources gives it)
    outcome: str | None = None  # overrides the table's outcome where the machine decides (root reads 000 files)
    note: str = ""  # why the outcome was overridden
    also_indexed: tuple = ()  # reference images the kind's check compares against
    after_plan: Callable | None = None  # runs once the run has planned and before anything is decoded
    check: Callable | None = None  # check(run, made): assertions beyond the outcome


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable  # make(corpus_dir) -> Made
    # INDEXED | FAILED | SKIPPED_CHIPS (a scene whose every chip is under --min-valid) | IGNORED (a folder,
    # not a file: neither catalogued nor failed, and scanned for what it holds)
    outcome: str
    reason: str = ""  # for FAILED: the reason's head (before its first " ("), as failure_reasons counts it
    bug: str | None = None  # a known product bug: the case is a strict xfail and runs in a run of its own


# -- makers ------------------------------------------------------------------------------------
def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _rgb(size=(64, 48), seed=0) -> Image.Image:
    return Image.fromarray(random_pixels(size, seed))


def _write(path: Path, data: bytes) -> Made:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Made(path.absolute())


def _dims(width, height):
    """A check that the catalogue holds (width, height) for the kind's image."""

    def check(run, made):
        row = run.row(made.path)
        assert (row["width"], row["height"]) == (width, height)

    return check


def make_zero_byte(root):
    return _write(root / "zero-byte.png", b"")


def make_truncated_jpeg(root):
    data = _encode(_rgb((128, 96), 1), "JPEG", quality=95)
    return _write(root / "truncated.jpg", data[: len(data) // 2])


def make_truncated_png(root):
    data = _encode(_rgb((128, 96), 2), "PNG")  # random pixels: the IDAT is most of the file
    return _write(root / "truncated.png", data[: len(data) // 2])


def make_text_as_jpg(root):
    return _write(root / "notes.jpg", b"meeting notes, not a photo\n")


def make_html_as_png(root):
    return _write(root / "page.png", b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n")


def make_directory_named_jpg(root):
    folder = root / "folder.jpg"
    inside = _write(folder / "inside.png", _encode(_rgb(seed=3), "PNG")).path

    def check(run, made):
        assert not any(key == str(made.path) for key in (*run.images, *run.failures))
        assert inside in run.indexed_paths  # the folder is still scanned for what it holds

    return Made(folder.absolute(), also_indexed=(inside,), check=check)


def make_symlink_loop(root):
    loop = root / "loop.jpg"
    loop.symlink_to(loop.name)  # loop.jpg -> loop.jpg
    return Made(loop.absolute())


def make_directory_cycle(root):
    cycle = root / "cycle"
    inside = _write(cycle / "inside.png", _encode(_rgb(seed=4), "PNG")).path
    (cycle / "up").symlink_to("..")  # cycle/up/cycle/up/... for a scan that follows directory links

    def check(run, made):
        assert not [key for key in run.images if "/up/" in key]  # found once, not through the cycle

    return Made(inside, check=check)


def make_dangling_symlink(root):
    link = root / "dangling.jpg"
    link.symlink_to(root / "gone" / "never-there.jpg")
    return Made(link.absolute())


def make_fifo(root):
    path = root / "pipe.jpg"
    os.mkfifo(path)  # opened for reading, it waits for a writer that never comes
    return Made(path.absolute())


def make_unreadable(root):
    path = _write(root / "no-permission.jpg", _encode(_rgb(seed=5), "JPEG")).path
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return Made(path)
    # Root (CI) reads a mode-000 file anyway; os.access says so too, but only a real open is certain.
    return Made(path, outcome=INDEXED, note="mode 000 does not stop this user (root) from reading")


def make_deleted_after_scan(root):
    path = _write(root / "deleted-after-scan.jpg", _encode(_rgb(seed=6), "JPEG")).path
    return Made(path, after_plan=path.unlink)


def make_changed_during_run(root):
    path = _write(root / "changed-during-run.png", _encode(_rgb((64, 48), 7), "PNG")).path

    def change():
        stat = path.stat()
        path.write_bytes(_encode(_rgb((80, 40), 8), "PNG"))
        os.utime(path, (stat.st_atime, stat.st_mtime + 10))

    def check(run, made):
        row = run.row(made.path)
        assert (row["width"], row["height"]) == (80, 40)  # what was read is what was recorded
        assert row["sha256"] == hashlib.sha256(made.path.read_bytes()).hexdigest()
        assert row["size"] == made.path.stat().st_size

    return Made(path, after_plan=change, check=check)


def _png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR chunk claims width x height (its CRC recomputed, so only the size lies)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, then the chunk type
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # CRC over type + 13 data bytes
    return bytes(data)


def make_decompression_bomb(root):
    return _write(root / "bomb.png", _png_declaring(100_000, 100_000))


def make_oversized_valid(root):
    """Over Pillow's MAX_IMAGE_PIXELS (a DecompressionBombWarning) but under twice it (the error)."""
    side = math.isqrt(Image.MAX_IMAGE_PIXELS) + 64
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    image = Image.new("L", (side, side), 40)
    ImageDraw.Draw(image).rectangle((side // 4, side // 4, side // 2, side // 2), fill=220)
    made = _write(root / "oversized-valid.png", _encode(image, "PNG", compress_level=1))
    made.check = _dims(side, side)  # Pillow only warns under 2 x the limit, and the product decodes it
    return made


def make_one_pixel(root):
    made = _write(root / "one-pixel.png", _encode(_rgb((1, 1), 9), "PNG"))
    made.check = _dims(1, 1)
    return made


def make_elongated(root):
    made = _write(root / "elongated.png", _encode(_rgb((10_000, 16), 10), "PNG"))
    made.check = _dims(10_000, 16)
    return made


def make_grey16(root):
    values = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)  # (H, W) spans most of 16 bits
    made = _write(root / "grey16.png", _encode(Image.fromarray(values), "PNG"))
    with Image.open(made.path) as image:
        assert image.mode.startswith("I")  # really 16-bit on disk
    made.check = _dims(64, 48)
    return made


def make_cmyk_jpeg(root):
    made = _write(root / "cmyk.jpg", _encode(_rgb(seed=11).convert("CMYK"), "JPEG"))
    with Image.open(made.path) as image:
        assert image.mode == "CMYK"
    return made


def make_palette_transparency(root):
    image = _rgb(seed=12).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    made = _write(root / "palette-transparent.png", _encode(image, "PNG", transparency=0))
    with Image.open(made.path) as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    return made


def make_la(root):
    grey = _rgb(seed=13).convert("L")
    alpha = Image.linear_gradient("L").resize(grey.size)
    return _write(root / "grey-alpha.png", _encode(Image.merge("LA", (grey, alpha)), "PNG"))


def make_rgba(root):
    rgba = _rgb(seed=14).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return _write(root / "rgba.png", _encode(rgba, "PNG"))


def make_exif_rotated(root):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    made = _write(root / "exif-rotated.jpg", _encode(_rgb((64, 32), 15), "JPEG", exif=exif))
    made.check = _dims(32, 64)  # the upright image is stored, not the sensor's layout
    return made


def _first_frame_check(first: Path, second: Path):
    """The kind's vector is the first frame's (a reference file with its pixels), not the second's."""

    def check(run, made):
        vector = run.vector(made.path)
        to_first = np.abs(vector - run.vector(first)).max()
        to_second = np.abs(vector - run.vector(second)).max()
        assert to_first < 1e-4 < to_second, (to_first, to_second)

    return check


def _multi_frame(root, name, fmt, **params):
    """A multi-frame file (random, then black, then white) and PNG references of its first two frames."""
    frames = [_rgb(seed=16), Image.new("RGB", (64, 48)), Image.new("RGB", (64, 48), "white")]
    made = _write(root / name, _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params))
    references = []
    with Image.open(made.path) as image:
        assert getattr(image, "n_frames", 1) == 3
        for frame in (0, 1):
            image.seek(frame)
            reference = root / "references" / f"{name}-frame{frame}.png"
            references.append(_write(reference, _encode(image.convert("RGB"), "PNG")).path)
    made.also_indexed = tuple(references)
    made.check = _first_frame_check(*references)
    return made


def make_animated_gif(root):
    return _multi_frame(root, "animated.gif", "GIF", duration=100, loop=0)


def make_animated_webp(root):
    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    return _multi_frame(root, "animated.webp", "WEBP", duration=100, loop=0, lossless=True)


def make_multipage_tiff(root):
    return _multi_frame(root, "multipage.tif", "TIFF")


def make_float32_tiff(root):
    values = np.linspace(-1000, 3000, 48 * 64, dtype=np.float32).reshape(48, 64)  # (H, W)
    made = _write(root / "float32.tif", _encode(Image.fromarray(values), "TIFF"))
    with Image.open(made.path) as image:
        assert image.mode == "F"
    made.check = _dims(64, 48)
    return made


def make_geotiff_all_nodata(root):
    import rasterio
    from rasterio.transform import from_origin

    path = (root / "all-nodata.tif").absolute()
    profile = {"driver": "GTiff", "width": GEOTIFF_SIDE, "height": GEOTIFF_SIDE, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500_000, 5_000_000, 10, 10), "nodata": 0}
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.zeros((1, GEOTIFF_SIDE, GEOTIFF_SIDE), np.uint8))

    def check(run, made):
        assert run.summary["skipped_chips"] == 4
        assert len(run.store.skipped_chip_keys(str(made.path))) == 4
        assert not [row for row in run.images.values() if row["scene"] == str(made.path)]

    return Made(path, check=check)


def make_non_utf8_name(root):
    name = os.path.join(os.fsencode(root), b"caf\xe9.jpg")  # Latin-1 'café': not valid UTF-8
    try:
        descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except (OSError, UnicodeError) as error:
        pytest.skip(f"this file system refuses a non-UTF-8 name ({error})")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(_encode(_rgb(seed=17), "JPEG"))
    # recorded under the name's bytes escaped ('caf\\xe9.jpg'): SQLite keeps UTF-8 text only
    return Made(Path(name.decode("utf-8", "backslashreplace")))


def make_unicode_name(root):
    return _write(root / "Zürich – 東京 🛰️ ñ.png", _encode(_rgb(seed=18), "PNG"))


def make_spaces(root):
    return _write(root / "folder with spaces" / "  an image  with spaces .jpg", _encode(_rgb(seed=19), "JPEG"))


def make_newline(root):
    return _write(root / "line\nbreak.png", _encode(_rgb(seed=20), "PNG"))


KINDS = [
    Kind("zero-byte file", make_zero_byte, FAILED, "an empty file"),
    Kind("truncated JPEG", make_truncated_jpeg, FAILED, "damaged or unsupported image data"),
    Kind("truncated PNG", make_truncated_png, FAILED, "damaged or unsupported image data"),
    Kind("text file named .jpg", make_text_as_jpg, FAILED, "not an image format lookalike reads"),
    Kind("HTML page named .png", make_html_as_png, FAILED, "not an image format lookalike reads"),
    Kind("directory named x.jpg", make_directory_named_jpg, IGNORED),
    Kind("symlink loop", make_symlink_loop, FAILED, "cannot be read"),
    Kind("directory symlink cycle", make_directory_cycle, INDEXED),
    Kind("dangling symlink", make_dangling_symlink, FAILED, "cannot be read"),
    Kind("unreadable permissions", make_unreadable, FAILED, "cannot be read"),
    Kind("named pipe named .jpg", make_fifo, FAILED, "not a regular file"),
    Kind("deleted between scan and read", make_deleted_after_scan, FAILED, "cannot be read"),
    Kind("changed during the run", make_changed_during_run, INDEXED),
    Kind("decompression bomb", make_decompression_bomb, FAILED,
         "refused, its declared size is too large to decode safely"),
    Kind("over MAX_IMAGE_PIXELS but valid", make_oversized_valid, INDEXED),
    Kind("1x1 image", make_one_pixel, INDEXED),
    Kind("elongated 10000x16", make_elongated, INDEXED),
    Kind("16-bit grey PNG", make_grey16, INDEXED),
    Kind("CMYK JPEG", make_cmyk_jpeg, INDEXED),
    Kind("palette PNG with transparency", make_palette_transparency, INDEXED),
    Kind("LA image", make_la, INDEXED),
    Kind("RGBA image", make_rgba, INDEXED),
    Kind("EXIF-rotated JPEG", make_exif_rotated, INDEXED),
    Kind("animated GIF", make_animated_gif, INDEXED),
    Kind("animated WebP", make_animated_webp, INDEXED),
    Kind("multi-page TIFF", make_multipage_tiff, INDEXED),
    Kind("float32 TIFF", make_float32_tiff, INDEXED),
    Kind("GeoTIFF all nodata", make_geotiff_all_nodata, SKIPPED_CHIPS),
    Kind("non-UTF-8 file name", make_non_utf8_name, FAILED, "file name is not valid UTF-8"),
    Kind("unicode file name", make_unicode_name, INDEXED),
    Kind("path with spaces", make_spaces, INDEXED),
    Kind("newline in the file name", make_newline, INDEXED),
]


def _param(kind: Kind):
    marks = [pytest.mark.xfail(strict=True, reason=kind.bug)] if kind.bug else []
    return pytest.param(kind, id=kind.name.replace(" ", "-"), marks=marks)


# -- one run over a corpus ----------------------------------------------------------------------
def _reason_head(reason: str) -> str:
    return reason.split(" (", 1)[0]


def assert_human_reason(reason):
    assert isinstance(reason, str) and reason.strip(), "an empty reason"
    assert "Traceback" not in reason
    assert not re.search(r"<[^<>]*>|0x[0-9a-fA-F]{6,}", reason), f"a Python object repr in {reason!r}"
    assert "\n" not in reason, f"a reason of several lines: {reason!r}"


@dataclass
class CorpusRun:
    """Builds a corpus of `kinds` beside good controls in `root`, then indexes it once with `runner`."""

    kinds: list
    root: Path
    made: dict = field(default_factory=dict)  # kind name -> Made
    skipped: dict = field(default_factory=dict)  # kind name -> why it could not be made here
    controls: list = field(default_factory=list)
    summary: dict | None = None
    error: BaseException | None = None

    def build(self) -> "CorpusRun":
        corpus = self.root / "corpus"
        corpus.mkdir(parents=True)
        for number, suffix in enumerate((".jpg", ".png", ".webp")):
            control = corpus / "controls" / f"good-{number}{suffix}"
            self.controls.append(_write(control, _encode(_rgb((96, 72), 100 + number),
                                                         Image.registered_extensions()[suffix])).path)
        for kind in self.kinds:
            try:
                self.made[kind.name] = kind.make(corpus)
            except pytest.skip.Exception as skip:
                self.skipped[kind.name] = str(skip)
        return self

    def index(self, runner, store_open) -> "CorpusRun":
        """runner(sources, store_dir) -> summary dict; the corpus's after-plan hooks run between plan and decode."""
        import indexer.pipeline

        real_plan_run = indexer.pipeline.plan_run

        def plan_then_disturb(*args, **kwargs):
            plan = real_plan_run(*args, **kwargs)
            for made in self.made.values():
                if made.after_plan:
                    made.after_plan()
            return plan

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(indexer.pipeline, "plan_run", plan_then_disturb)
            try:
                self.summary = runner([self.root / "corpus"], self.root / "store")
            except Exception as error:  # checked per kind: the run must go on
                self.error = error
        if self.error is not None and not (self.root / "store").exists():
            raise AssertionError(f"the run made no store: {type(self.error).__name__}: {self.error}")
        self.store = store_open(self.root / "store")
        self.images = self.store.images_by_path()
        self.failures = self.store.failures_by_path()
        return self

    # -- what the run left ----------------------------------------------------------------
    def outcome(self, kind: Kind) -> str:
        return self.made[kind.name].outcome or kind.outcome

    @property
    def indexed_paths(self) -> set:
        return {Path(key) for key in self.images}

    def row(self, path: Path) -> dict:
        return self.store.image(self.images[str(path)]["id"])

    def vector(self, path: Path) -> np.ndarray:
        return self.store.vector(self.images[str(path)]["id"])

    def expected_indexed(self) -> set:
        paths = set(self.controls)
        for kind in self.kinds:
            made = self.made.get(kind.name)
            if made:
                paths |= set(made.also_indexed) | ({made.path} if self.outcome(kind) == INDEXED else set())
        return paths

    def expected_failed(self) -> dict:
        return {self.made[k.name].path: k.reason for k in self.kinds
                if k.name in self.made and self.outcome(k) == FAILED}

    # -- checks -----------------------------------------------------------------------------
    def assert_went_on(self):
        assert self.error is None, f"the run stopped: {type(self.error).__name__}: {self.error}"
        for control in self.controls:
            assert str(control) in self.images, f"good control {control.name} not indexed"
        runs = list(self.store.db.query("SELECT status FROM runs ORDER BY id DESC LIMIT 1"))
        assert runs[0]["status"] == "done"

    def check(self, kind: Kind):
        if kind.name in self.skipped:
            pytest.skip(self.skipped[kind.name])
        self.assert_went_on()
        made, outcome, key = self.made[kind.name], self.outcome(kind), str(self.made[kind.name].path)
        if outcome == INDEXED:
            assert key in self.images, f"{made.path.name!r} not in the catalogue; failure: {self.failures.get(key)}"
            assert key not in self.failures
            vector = self.vector(made.path)
            assert vector.shape == (self.store.dim,) and np.isfinite(vector).all()
        elif outcome == FAILED:
            assert key in self.failures, f"{made.path.name!r} not recorded as failed"
            assert key not in self.images
            reason = self.failures[key]["reason"]
            assert_human_reason(reason)
            assert _reason_head(reason) == kind.reason, reason
        elif outcome == SKIPPED_CHIPS:
            assert key not in self.failures and key not in self.images
        else:  # IGNORED: not an image file at all
            assert key not in self.failures and key not in self.images
        for path in made.also_indexed:
            assert str(path) in self.images, f"reference {path.name} not indexed"
        if made.check:
            made.check(self, made)


@pytest.fixture(scope="module")
def store_opener():
    from store import Store

    opened = []

    def open_(store_dir):
        opened.append(Store.open(store_dir))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def _pipeline_runner(embedder):
    from indexer.pipeline import index_collection

    def run(sources, store_dir):
        return index_collection([str(s) for s in sources], store_dir, embedder=embedder, workers=0,
                                progress=False)

    return run


SHARED_KINDS = [kind for kind in KINDS if not kind.bug]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, embedder, store_opener) -> CorpusRun:
    """Every kind without a known bug, and the controls, indexed in one run."""
    run = CorpusRun(SHARED_KINDS, tmp_path_factory.mktemp("bad-inputs")).build()
    return run.index(_pipeline_runner(embedder), store_opener)


@pytest.fixture
def run_for(tmp_path, embedder, store_opener):
    """run_for(kind): the shared run, or for a kind with a known bug a run of its own beside the controls."""

    def get(kind: Kind, shared: CorpusRun) -> CorpusRun:
        if not kind.bug:
            return shared
        return CorpusRun([kind], tmp_path).build().index(_pipeline_runner(embedder), store_opener)

    return get


def test_the_corpus_has_at_least_25_kinds():
    assert len({kind.name for kind in KINDS}) == len(KINDS) >= 25


@pytest.mark.parametrize("kind", [_param(kind) for kind in KINDS])
def test_each_kind_is_indexed_or_recorded_and_the_run_goes_on(kind, corpus_run, run_for):
    run_for(kind, corpus_run).check(kind)


def test_the_run_indexes_and_fails_exactly_the_expected_files(corpus_run):
    corpus_run.assert_went_on()
    expected_failed = corpus_run.expected_failed()

    assert set(corpus_run.failures) == {str(path) for path in expected_failed}
    assert set(corpus_run.images) == {str(path) for path in corpus_run.expected_indexed()}
    assert corpus_run.summary["indexed"] == len(corpus_run.images)
    assert corpus_run.summary["failed"] == len(expected_failed)
    assert corpus_run.store.index.ntotal == corpus_run.store.count_images()


def test_failures_are_summarised_by_reason(corpus_run):
    """The summary's counts by reason agree with the failures table and with the table of kinds."""
    counted = Counter(_reason_head(row["reason"]) for row in corpus_run.failures.values())
    expected = Counter(corpus_run.expected_failed().values())

    assert counted == expected
    assert corpus_run.summary["failure_reasons"] == dict(counted)
    assert counted["cannot be read"] >= 3  # symlink loop, dangling symlink, deleted after the scan
    assert counted["not an image format lookalike reads"] == 2  # text, HTML
    assert counted["an empty file"] == 1


def test_cli_indexes_the_corpus_and_exits_0(tmp_path, model_dir, store_opener):
    """`lookalike index CORPUS --store S --json` goes through the corpus and reports it in its summary."""
    import json

    from click.testing import CliRunner

    from indexer.cli import cli

    results = []

    def run(sources, store_dir):
        args = ["index", *map(str, sources), "--store", str(store_dir), "--model", str(model_dir), "--dtype", "float32",
                "--device", "cpu", "--workers", "0", "--no-progress", "--json"]
        results.append(CliRunner().invoke(cli, args))
        assert results[-1].exit_code == 0, results[-1].output
        return json.loads(results[-1].stdout)

    corpus = CorpusRun(SHARED_KINDS, tmp_path).build().index(run, store_opener)

    corpus.assert_went_on()
    assert "Traceback" not in results[0].output
    summary = corpus.summary
    assert summary["indexed"] == len(corpus.expected_indexed())
    assert summary["failed"] == len(corpus.expected_failed())
    assert summary["skipped_chips"] == 4
    assert summary["failure_reasons"] == dict(Counter(corpus.expected_failed().values()))
    for kind in SHARED_KINDS:
        corpus.check(kind)

    again = run([tmp_path / "corpus"], tmp_path / "store")  # nothing disturbs this one

    assert results[-1].exit_code == 0, results[-1].output
    assert again["indexed"] == 0  # every kind is settled: nothing is embedded twice
    deleted = corpus.made["deleted between scan and read"].path
    assert str(deleted) not in corpus.store.failures_by_path()  # its file is gone: so is its failure


def test_a_pipe_as_a_query_is_refused_at_once(tmp_path):
    """load_image (search, search --each, the API) must not wait on a pipe for a writer that never comes."""
    import threading

    from indexer.errors import UnreadableImage
    from indexer.images import load_image

    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    outcome = []

    def read():
        try:
            load_image(path)
        except UnreadableImage as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # let the blocked open go, so that the test run can end
        with open(path, "wb"):
            pass
    assert outcome and "not a regular file" in outcome[0]
