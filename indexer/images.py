"""Finding image files in the sources and decoding them to normalised pixel arrays."""
import contextlib
import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import IndexerError, UnreadableImage

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
RASTER_SUFFIXES = {".jp2", ".vrt", ".img", ".ntf"}  # GDAL-only formats: read as scenes when georeferenced
LIST_SUFFIXES = {".txt", ".lst", ".list"}


class OutsideLink(type(Path())):
    """A symlink found in a folder source whose target lies outside every folder source: not followed."""


OUTSIDE_LINK_REASON = ("a symlink to a file outside the indexed folders: not followed (give its target, or "
                       "its folder, as a source to index it)")


def _inside(path: Path, roots: list[Path]) -> bool:
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a loop: reading it will fail and say so
        return True
    return any(target.is_relative_to(root) for root in roots)


def scan_sources(sources, *, keep_missing: bool = False) -> list[Path]:
    """Image files from folders (recursive), single files and text files listing paths (files or folders, one
    a line, relative to the list), in order, as absolute paths with no `..` in them. A source that does not exist
    is refused, or with keep_missing kept in its place (for its reader to report); so is a listed one, always.

    Folders are walked without entering linked folders; a linked file whose target is outside all the
    folder sources comes back as an OutsideLink, so that it is reported and not read. Files named
    directly (or in a list) are read wherever they are: the user asked for them."""
    named = [pair for source in map(Path, sources) for pair in _expand_list(source)]  # (path, from a list)
    found: dict[Path, None] = {}
    roots = [path.resolve() for path, _ in named if _refused_as(False, path.is_dir)]
    for source, listed in named:
        if _refused_as(False, source.is_dir):
            for path in sorted(source.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES | RASTER_SUFFIXES and not _refused_as(False, path.is_dir):
                    outside = _refused_as(False, path.is_symlink) and not _inside(path, roots)
                    key = _absolute(path)
                    if key not in found:  # a file also named directly keeps being read
                        found[OutsideLink(key) if outside else key] = None
        elif listed or _refused_as(True, source.exists) or _refused_as(False, source.is_symlink) or keep_missing:
            found.pop(_absolute(source), None)  # named: read even if a folder before listed it as an outside link
            found[_absolute(source)] = None
        else:
            raise IndexerError(f"source {source} does not exist")
    return list(found)


def _refused_as(answer: bool, question) -> bool:
    """question() (a path's is_dir, exists, is_symlink), or `answer` where the system refuses to say (a folder
    without execute permission above the path): the path is then kept as a file there, whose reading fails as
    'cannot be read', one file's failure and not the run's."""
    try:
        return question()
    except OSError:
        return answer


def _expand_list(source: Path) -> list[tuple[Path, bool]]:
    """A .txt list source as the paths on its lines (blank lines and # comments skipped), else the source;
    each with whether it came from a list."""
    if not (source.is_file() and source.suffix.lower() in LIST_SUFFIXES):
        return [(source, False)]
    try:  # utf-8-sig: a list saved by Windows tools may start with a byte-order mark
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise IndexerError(f"the list {source} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(source.parent / line, True) for line in lines]  # an absolute line stays as it is


def _absolute(path: Path) -> Path:
    """Absolute and normalised (`imagery/../imagery/a.jpg` and `../x/imagery/a.jpg` are one file), links kept."""
    return Path(os.path.abspath(path))


def file_sha256(path: Path) -> str:
    return file_digests(path)[0]


def file_digests(path: Path) -> tuple[str, str]:
    """SHA-256 of the whole file and of its first HEAD_BYTES, from one read."""
    with open(path, "rb") as handle:
        first = handle.read(HEAD_BYTES)
        digest = hashlib.sha256(first)
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest(), hashlib.sha256(first).hexdigest()


def head_sha256(path: Path) -> str:
    """SHA-256 of the first HEAD_BYTES: files of one size are told apart by it before any is read whole."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(HEAD_BYTES)).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any Pillow mode: 16-bit and float greys are stretched, transparency dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_stretched(np.asarray(image, dtype=np.float32)), mode="L")
    return image.convert("RGB")


def _stretched(values: np.ndarray) -> np.ndarray:
    """Values of any range to uint8, their lowest to 0 and highest to 255 (NaN ignored)."""
    low, high = np.nanpercentile(values, [0, 100]) if values.size else (0.0, 1.0)
    return np.clip((values - low) / max(high - low, 1e-12) * 255.0, 0, 255).astype(np.uint8)


def upright_rgb(image: Image.Image) -> Image.Image:
    """A PIL image handed over as a query, made what decoding its file gives: turned upright by its EXIF
    orientation (as `index` turns files; one already turned carries none) and in RGB by to_rgb."""
    return to_rgb(ImageOps.exif_transpose(image))


def _wide_colour(opened: Image.Image) -> bool:
    """A PNG of 16 bits per channel in colour or with alpha: Pillow would keep only each value's high byte."""
    return opened.format == "PNG" and any(str(tile[3]).endswith(";16B") for tile in opened.tile)


def _by_gdal(data: bytes, *, exif: bytes | None = None) -> Image.Image:
    """A picture Pillow cannot read whole (a PNG of 16 bits per colour, a TIFF of 16-bit or float colour) read by
    GDAL: its first three bands (its first, for grey and alpha) stretched to 8 bits over the range of their
    values, as to_rgb stretches 16-bit greys; `exif` orientation applied."""
    with _plain_raster(data) as dataset:
        if dataset.width * dataset.height > 2 * (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise Image.DecompressionBombError(f"{dataset.width} x {dataset.height} pixels")
        colour = dataset.read(indexes=[1, 2, 3] if dataset.count >= 3 else [1]).astype(np.float32)  # (C, H, W)
    scaled = _stretched(colour)
    image = Image.fromarray(np.ascontiguousarray(scaled.transpose(1, 2, 0)) if len(scaled) == 3 else scaled[0])
    if exif:
        image.info["exif"] = exif
    return ImageOps.exif_transpose(image).convert("RGB")


@contextlib.contextmanager
def _plain_raster(source):
    """GDAL's dataset of a picture without georeferencing (its bytes, or its path), GDAL's notes kept quiet."""
    import rasterio
    from rasterio.io import MemoryFile

    with warnings.catch_warnings(), rasterio.Env(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")  # "not georeferenced": a plain picture
        if isinstance(source, (bytes, bytearray)):
            yield stack.enter_context(stack.enter_context(MemoryFile(source)).open())
        else:
            yield stack.enter_context(rasterio.open(source))


def _is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and big TIFF, both byte orders


def decode_bytes(data: bytes, *, name: str = "image") -> Image.Image:
    """Decode to an upright RGB image, or raise UnreadableImage saying why."""
    return decode_for_model(data, name=name)[0]


def decode_for_model(data: bytes, *, name: str = "image", at_least: int | None = None):
    """decode_bytes, and the upright (width, height) of the full image. With `at_least`, a JPEG may be decoded
    at 1/2, 1/4 or 1/8 scale (its decoder's DCT scaling, Pillow's draft) while both sides stay at least
    `at_least` px: the model's resize then still shrinks it at least 2x when given twice its resolution.
    A 3720 x 2160 JPEG of NAIP scenes is read, decoded and resized to 224 px 3.8x as fast (1860 x 1440: 1.8x),
    within 4 levels of the full decode, 0.3 on average (bench/jpeg_draft.py, bench/results/cpu/jpeg_draft/)."""
    if not data:
        raise UnreadableImage(f"{name}: an empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # past MAX_IMAGE_PIXELS but under twice it: large, valid, decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                wide = _wide_colour(opened)  # before the EXIF look-up, which loads a PNG
                turned = _quarter_turned(opened)
                if at_least:
                    opened.draft(opened.mode, (at_least, at_least))  # no-op for other formats and small JPEGs
                if wide:
                    picture = _by_gdal(data, exif=opened.info.get("exif"))
                    return picture, ((height, width) if turned else (width, height))
                upright = ImageOps.exif_transpose(opened)
                upright.load()
                return to_rgb(upright), ((height, width) if turned else (width, height))
    except Image.DecompressionBombError as error:
        raise _too_large(name, error) from error
    except UnidentifiedImageError as error:
        if _is_tiff(data):  # a TIFF of a kind Pillow does not read (16-bit or float colour): GDAL reads most
            return _tiff_by_gdal(data, name=name)
        raise UnreadableImage(f"{name}: not an image format lookalike reads (JPEG, PNG, TIFF, WebP, BMP, "
                              "GIF)") from error
    except Exception as error:  # Pillow raises many types for broken files
        raise UnreadableImage(f"{name}: damaged or unsupported image data ({_plain(error)})") from error


def _too_large(name: str, error: Exception) -> UnreadableImage:
    return UnreadableImage(f"{name}: refused, its declared size is too large to decode safely ({error})")


def _tiff_by_gdal(data: bytes, *, name: str):
    """decode_for_model's answer for a TIFF only GDAL reads, or UnreadableImage saying why neither does."""
    try:
        image = _by_gdal(data)
    except Image.DecompressionBombError as error:
        raise _too_large(name, error) from error
    except Exception as error:  # rasterio raises several types for what it cannot read
        reason = re.sub(r"'?/vsimem/\S*\s*", "", _plain(error)).strip()  # GDAL names its in-memory copy
        raise UnreadableImage(f"{name}: a TIFF neither Pillow nor GDAL reads ({reason})") from error
    return image, image.size


def _plain(error: Exception) -> str:
    """Pillow's message without Python object reprs such as <_io.BytesIO object at 0x...>."""
    text = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", str(error)).strip(" :")
    return text or type(error).__name__


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header alone. A file the system would not read (no
    permission, an I/O error, a share away) says so (READ_ERROR, tried again by the next run), not that it is no
    image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = _quarter_turned(image)
    except Exception as error:  # Pillow raises many types for broken files
        if isinstance(error, OSError) and error.errno is not None:  # the system's error (Pillow's own have none)
            raise UnreadableImage(f"{path}: {read_error(error)}") from error
        size = _tiff_size(path)
        if size is None:
            raise UnreadableImage(f"{path}: not an image format lookalike reads (JPEG, PNG, TIFF, WebP, BMP, "
                                  "GIF)") from error
        return size
    return (height, width) if turned else (width, height)


def _tiff_size(source) -> tuple[int, int] | None:
    """(width, height) of a TIFF that only GDAL reads (decode_for_model reads it so), else None. `source`: a path
    or a file-like object."""
    try:
        if hasattr(source, "getvalue"):
            source = source.getvalue()
            head = source[:4]
        else:
            with open(source, "rb") as file:
                head = file.read(4)
        if not _is_tiff(head):
            return None
        with _plain_raster(source) as dataset:
            return dataset.width, dataset.height
    except Exception:  # unreadable by GDAL too (or by the system): not a picture lookalike reads
        return None


def _quarter_turned(image: Image.Image) -> bool:
    """Whether the EXIF orientation turns the stored pixels a quarter turn to view them (width and height swap)."""
    return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)


# The reason of a failure the operating system gave (permissions, a drive or share away): not the file's
# fault, so an index run tries such files again even when they have not changed.
READ_ERROR = "cannot be read"
HEAD_BYTES = 64 * 1024  # the first bytes of a file, hashed to tell files of one size apart cheaply


NOT_A_FILE_REASON = "not a regular file (a pipe, socket or device named like an image): not read"


def read_error(error: OSError) -> str:
    return f"{READ_ERROR} ({error.strerror or error})"


def load_image(path: Path, *, at_least: int | None = None) -> Image.Image:
    """The file decoded upright in RGB; `at_least` as decode_for_model's (a large JPEG at a reduced scale)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would block here for good
            raise UnreadableImage(f"{path}: {NOT_A_FILE_REASON}")
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImage(f"{path}: {read_error(error)}") from error
    return decode_for_model(data, name=str(path), at_least=at_least)[0]


def draft_side(resolution: int) -> int:
    """decode_for_model's `at_least` for a model at `resolution`: what `index` decodes a whole file to, and a query
    of a whole file too, so that a search by an indexed file embeds the pixels its stored vector came from."""
    return 2 * resolution


@dataclass(frozen=True)
class Preprocess:
    """Square resize with antialiasing to `resolution`, then per-channel normalisation (here, or on the model's
    device from the uint8 `resized` form)."""

    resolution: int
    mean: tuple
    std: tuple

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, H, W) float32, normalised."""
        # Each channel's 256 possible bytes are normalised once (table) and looked up plane by plane: the same
        # float32 values as normalising every pixel. Which of the two is faster depends on the CPU
        # (bench/results/preprocess_speed.md: the look-up on the EPYC VM, in git history; the formula on the Xeon).
        planes = self.resized(image)
        pixels = np.empty(planes.shape, np.float32)
        self._look_up(planes, pixels, self.table)
        return pixels

    def resized(self, image: Image.Image) -> np.ndarray:
        """(3, H, W) uint8, resized but not normalised: a quarter of the bytes to carry to the device,
        where `normalize` finishes the job."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        planes = np.asarray(image).transpose(2, 0, 1)  # (3, H, W) view of Pillow's (H, W, 3) pixels: no copy
        if image.size == (self.resolution, self.resolution):
            return np.ascontiguousarray(planes)
        return _resize(planes, self.resolution)

    def resized_together(self, images: list) -> list[np.ndarray]:
        """`resized` of each image, those of one size resized in one call: the same bytes, and on two threads
        (the model's process on a 2-core CPU) a batch of 32 chips of 128 px resized 1.47x and decoded whole 1.20x
        as fast as a call each; on one (a decode worker) 0.97x and 1.07x (bench/batch_resize.py, 9 rounds in
        turn on the 2-core Xeon, bench/results/cpu/batch_resize/)."""
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        out: list = [None] * len(images)
        for size in dict.fromkeys(image.size for image in images):
            where = [number for number, image in enumerate(images) if image.size == size]
            if len(where) == 1:
                out[where[0]] = self.resized(images[where[0]])
                continue
            batch = np.stack([np.asarray(images[number]) for number in where]).transpose(0, 3, 1, 2)  # a view
            resized = batch if size == (self.resolution,) * 2 else _resize(batch, self.resolution)
            for number, pixels in zip(where, resized):
                out[number] = np.ascontiguousarray(pixels)
        return out

    def normalize(self, pixels, dtype=None):
        """uint8 (B, 3, H, W) torch tensor, on any device → `dtype` (float32 by default) there, equal to
        __call__'s values cast to it."""
        import torch

        dtype = dtype or torch.float32
        if pixels.device.type != "cpu":
            return self.gather(pixels, dtype=dtype)
        # The table's own formula, in the same float32 operations (so the same values), over the whole batch on
        # PyTorch's threads: faster on the model's host than looking the table up plane by plane in numpy
        # (bench/preprocess_speed.py: the batch part)
        mean, std = (torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1) for values in (self.mean, self.std))
        return pixels.to(torch.float32).div_(255.0).sub_(mean).div_(std).to(dtype)

    @staticmethod
    def _look_up(planes: np.ndarray, out: np.ndarray, tables: np.ndarray) -> None:
        """One image's uint8 (3, H, W) → its values in the (3, 256) `tables` into `out`, plane by plane."""
        for channel, table in enumerate(tables):
            np.take(table, planes[channel], out=out[channel])

    def gather(self, pixels, dtype=None):
        """normalize's device path: one gather from the (3 × 256) table (tests run it on the CPU too)."""
        table, offsets = _device_table(self, pixels.device, dtype)
        return table[pixels.long() + offsets]

    @cached_property
    def table(self) -> np.ndarray:
        """(3, 256) float32: (byte / 255 - mean) / std, computed as the per-pixel formula would."""
        levels = np.arange(256, dtype=np.float32)[None, :] / 255.0
        return (levels - np.asarray(self.mean, np.float32)[:, None]) / np.asarray(self.std, np.float32)[:, None]


def _resize(planes: np.ndarray, resolution: int) -> np.ndarray:
    """(3, H, W) uint8 → (3, resolution, resolution), or (B, 3, H, W) → (B, 3, ...): bicubic, antialiased when
    shrinking (the filter spans the whole footprint, as Pillow's does), in PyTorch's uint8 kernel: within 2 levels
    of Pillow's BICUBIC (under 0.6 % of values differ), 2.0 to 3.3 × as fast on one thread, and a 128 px JPEG chip's
    whole decode 1.9 × as fast (bench/resize_speed.py, bench/results/cpu/resize/)."""
    import torch
    from torch.nn.functional import interpolate

    with warnings.catch_warnings():  # Pillow's pixels are read-only; interpolate only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(planes)
    resized = interpolate(pixels[None] if pixels.dim() == 3 else pixels, size=(resolution, resolution),
                          mode="bicubic", antialias=True)
    return (resized[0] if pixels.dim() == 3 else resized).contiguous().numpy()


@lru_cache(maxsize=8)
def _device_table(preprocess: Preprocess, device, dtype=None):
    """The table (cast to `dtype`) and channel offsets, copied to `device` once: a copy per batch from pageable
    host memory would make the host wait for the device's queue before it could launch the next batch."""
    import torch

    table = torch.as_tensor(preprocess.table, device=device).to(dtype or torch.float32).reshape(-1)  # (3 * 256,)
    return table, torch.arange(3, device=device).reshape(1, 3, 1, 1) * 256
