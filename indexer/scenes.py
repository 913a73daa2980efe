"""Georeferenced scenes (GeoTIFF, COG, any GDAL raster): band choice, stretch, masks, chip windows and their footprints.

A scene is never read whole: metadata comes from the header, the stretch from one decimated read
(at most ~1024 px on the long side, served from overviews when the file has them), and pixels from
one window per chip. Decisions a caller should know:

- Bands: an explicit `bands=` wins ('override'); else red/green/blue declared by colour interpretation
  ('colorinterp'); else a 1-band raster is grey on three channels ('grey'); else bands 1,2,3 ('default').
  NAIP (R,G,B,NIR) and the Landsat files here (SWIR1,NIR,red,green) declare nothing, so they get the default.
- Mask, in GDAL's own order of precedence: a band declared alpha ('alpha', valid where alpha > 0); else a
  per-dataset mask band ('mask': a COG's internal mask, usual with lossy JPEG compression where no nodata
  value survives, or a .msk sidecar; valid where the mask > 0); else the nodata value ('nodata', valid
  where any used band differs from it, GDAL's per-dataset convention, so a real 0 in one band stays
  valid); else 'none'. Invalid pixels are set to 0 (black) in chips so every scene's gaps look alike.
- Radiometry: uint8 is used as is; every other dtype is stretched per band from the (low, high)
  percentiles of the valid pixels of the decimated read, computed once and recorded on the Scene.
- Chips shift inward at the edges: the last chip of a row or column starts at width - chip_size, so
  every chip is full-size and inside the scene (no padding); a scene smaller than the chip in one
  dimension gives one window of the scene's size in that dimension.
- Place: a chip (or scene) whose outline does not project to WGS84 (a geostationary full disk's corners lie in
  space) has no footprint, centroid or WGS84 bounds, as one not georeferenced has none.
- Date: see `scene_date`. A bare year (landsat/1985.tif) gives 'YYYY' (ISO 8601 reduced precision),
  never an invented day.
"""
import dataclasses
import logging
import math
import re
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine, xy
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .errors import IndexerError, UnreadableImage
from .footprints import NOWHERE, WGS84, window_outline

log = logging.getLogger(__name__)

STRETCH_READ_SIZE = 1024  # long side of the decimated read the percentiles come from
QUERY_READ_SIZE = 2048  # long side of a whole scene read as a query (the model sees 224 to 512 px of it)


@dataclass(frozen=True)
class Scene:
    """What a scene is and how its pixels become RGB chips; recorded with every chip."""

    path: str
    width: int
    height: int
    band_count: int
    dtype: str
    crs: str | None  # 'EPSG:n' when exactly an EPSG code, else WKT; None when not georeferenced
    transform: tuple  # affine a, b, c, d, e, f
    bands: tuple  # 1-based band indexes used: 3 for colour, 1 for grey
    band_source: str  # 'colorinterp' | 'default' | 'override' | 'grey'
    mask_source: str  # 'alpha' | 'mask' | 'nodata' | 'none'
    nodata: float | None
    stretch: tuple | None  # None for uint8, else ((low, high), ...) per used band
    date: str | None  # 'YYYY-MM-DD', 'YYYY' when only the year is known, or None
    bounds: tuple  # left, bottom, right, top in the scene CRS
    wgs84_bounds: tuple | None  # west, south, east, north; None when not georeferenced
    # 'geotransform' (the file's own grid), 'gcps' (an affine fitted to its ground control points), or None
    georeferencing: str | None = "geotransform"

    def as_record(self) -> dict:
        """JSON-friendly dict (tuples become lists, a NaN nodata becomes the string 'nan')."""
        record = dataclasses.asdict(self)
        for name, value in record.items():
            if isinstance(value, tuple):
                record[name] = [list(item) if isinstance(item, tuple) else item for item in value]
        if self.nodata is not None and math.isnan(self.nodata):
            record["nodata"] = "nan"
        return record


def open_scene(path, *, bands=None, stretch=(2, 98)) -> Scene:
    """Read a scene's header (and, for non-uint8 data, one decimated read for the stretch)."""
    with _open(path) as dataset:
        return describe(dataset, bands=bands, stretch=stretch)


def describe(dataset, *, bands=None, stretch=(2, 98)) -> Scene:
    """The Scene of an already open rasterio dataset."""
    if not 0 <= stretch[0] < stretch[1] <= 100:
        raise IndexerError(f"stretch {tuple(stretch)}: percentiles must satisfy 0 <= low < high <= 100")
    used, band_source = _choose_bands(dataset, bands)
    mask_source = _mask_source(dataset)
    crs, transform, georeferencing = georeferencing_of(dataset)
    crs = _crs_string(crs)
    bounds = tuple(float(v) for v in dataset.bounds) if georeferencing != "gcps" else _grid_bounds(dataset, transform)
    scene = Scene(
        path=str(Path(dataset.name)),
        width=dataset.width,
        height=dataset.height,
        band_count=dataset.count,
        dtype=dataset.dtypes[0],
        crs=crs,
        transform=tuple(float(v) for v in tuple(transform)[:6]),
        bands=used,
        band_source=band_source,
        mask_source=mask_source,
        nodata=None if dataset.nodata is None else float(dataset.nodata),
        stretch=None,
        date=scene_date(dataset.name, dataset.tags(), dataset.tags(ns="IMAGERY")),
        bounds=bounds,
        wgs84_bounds=_wgs84_bounds(crs, bounds) if crs else None,
        georeferencing=georeferencing,
    )
    if np.dtype(scene.dtype) != np.uint8:
        scene = dataclasses.replace(scene, stretch=_percentiles(dataset, scene, stretch))
    return scene


def _wgs84_bounds(crs: str, bounds: tuple) -> tuple | None:
    """The scene's WGS84 bounds, or None where its outline does not project (a geostationary full disk's corners
    lie in space): no place at all, rather than infinities that no JSON may hold."""
    try:
        projected = tuple(float(v) for v in transform_bounds(crs, WGS84, *bounds, densify_pts=21))
    except Exception:  # GDAL's CPLE errors are no RasterioError, and rasterio keeps them private
        return None
    return projected if all(math.isfinite(v) for v in projected) else None


def open_dataset(path):
    """The raster at `path`, open for reading (close it, or use it in a `with`), or UnreadableImage."""
    return _open(str(path))


def _open(path_or_dataset):
    try:  # in an Env, GDAL's notes (odd TIFF headers) go to rasterio's logger, not straight to stderr
        with warnings.catch_warnings(), rasterio.Env():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path_or_dataset)
    except RasterioError as error:
        raise UnreadableImage(f"{path_or_dataset}: not a raster GDAL can read ({error})") from error


def georeferencing_of(dataset) -> tuple:
    """(crs, affine transform, how): the file's own CRS and grid ('geotransform'); else, for a file placed only by
    ground control points (a Sentinel-1 GRD, a scanned map), the affine that fits them best ('gcps': a
    least-squares fit, close for a small or flat scene, only approximate for a long swath); else (None, the
    pixel grid, None)."""
    if dataset.crs is not None:
        return dataset.crs, dataset.transform, "geotransform"
    points, crs = dataset.gcps
    fitted = _fitted_grid(points, geographic=crs.is_geographic) if crs is not None else None
    if fitted is not None:
        return crs, fitted, "gcps"
    return None, dataset.transform, None


def _fitted_grid(points, *, geographic: bool) -> Affine | None:
    """The affine from pixel (col, row) to the points' (x, y) with the least squared error, or None unless the
    points span a plane on both sides (rasterio's from_gcps hands back whatever memory held when GDAL's fit fails).
    Longitudes (`geographic`) are taken continuous from the first point's, so a scene across 180 keeps its width."""
    pixels = np.array([[point.col, point.row, 1.0] for point in points], dtype=np.float64).reshape(-1, 3)
    ground = np.array([[point.x, point.y] for point in points], dtype=np.float64).reshape(-1, 2)
    if len(points) < 3 or not np.isfinite(pixels).all() or not np.isfinite(ground).all():
        return None
    if geographic:
        ground[:, 0] += 360 * np.round((ground[0, 0] - ground[:, 0]) / 360)
    (a, d), (b, e), (c, f) = np.linalg.lstsq(pixels, ground, rcond=None)[0]
    flat = abs(a * e - b * d) <= 1e-9 * (a * a + b * b + d * d + e * e)  # ground points in a line, or one point
    return None if np.linalg.matrix_rank(pixels) < 3 or flat else Affine(*map(float, (a, b, c, d, e, f)))


def _grid_bounds(dataset, transform) -> tuple:
    """left, bottom, right, top of the grid's corners through `transform` (a fitted grid is often rotated)."""
    xs, ys = xy(transform, [0, 0, dataset.height, dataset.height], [0, dataset.width, 0, dataset.width], offset="ul")
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def is_georeferenced(path) -> bool:
    """True when GDAL reads the file (a path, or a file-like object) and it has a coordinate reference system
    or ground control points that place it (header only)."""
    try:
        with _open(path if hasattr(path, "read") else str(path)) as dataset:
            return georeferencing_of(dataset)[0] is not None
    except UnreadableImage:
        return False
    finally:
        if hasattr(path, "seek"):
            path.seek(0)


def native_gsd(scene: Scene) -> float | None:
    """Metres per pixel along a row (x) for a scene in a projected CRS, else None (degrees say nothing of metres).

    A pixel's step along a row is the geotransform's (a, d): a grid rotated on the ground (b and d not 0) has
    pixels hypot(a, d) wide, not |a|."""
    if not scene.crs:
        return None
    crs = CRS.from_user_input(scene.crs)
    if not crs.is_projected:
        return None
    a, _, _, d, _, _ = scene.transform
    return math.hypot(a, d) * crs.linear_units_factor[1]


CHIP_READING = ("bands", "band_source", "stretch_percentiles")  # what load_chip_image reads a chip with, from geo


def load_chip_image(scene_path, window, geo: dict):
    """A catalogued chip as an RGB PIL image, read again from its scene window with the recorded bands."""
    from PIL import Image

    stretch = geo.get("stretch_percentiles") or (2, 98)
    scene = open_scene(scene_path, bands=tuple(geo["bands"]) if geo.get("band_source") == "override" else None,
                       stretch=tuple(stretch))
    rgb, _ = read_chip(scene_path, scene, tuple(window))
    return Image.fromarray(rgb)


def _crs_string(crs) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg() if crs.is_epsg_code else None
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _mask_source(dataset) -> str:
    if _alpha_band(dataset):
        return "alpha"
    if any(MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags for flags in dataset.mask_flag_enums):
        return "mask"
    return "nodata" if dataset.nodata is not None else "none"


def _alpha_band(dataset) -> int | None:
    for index, interp in enumerate(dataset.colorinterp, start=1):
        if interp == ColorInterp.alpha:
            return index
    return None


def _choose_bands(dataset, bands) -> tuple[tuple, str]:
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) not in (1, 3) or not all(1 <= b <= dataset.count for b in bands):
            raise IndexerError(
                f"{dataset.name}: bands {bands} must be 3 (or 1) band numbers between 1 and {dataset.count}")
        return bands, "override"
    interps = list(dataset.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(interp in interps for interp in wanted):
        return tuple(interps.index(interp) + 1 for interp in wanted), "colorinterp"
    if dataset.count == 1:
        return (1,), "grey"
    if dataset.count < 3:
        raise IndexerError(f"{dataset.name}: {dataset.count} bands; say which to use as RGB with bands=")
    return (1, 2, 3), "default"


def _valid_mask(dataset, scene: Scene, pixels: np.ndarray, **read_args) -> np.ndarray | None:
    """(h, w) bool, True where valid, for pixels (bands, h, w) read with read_args; None without a mask."""
    try:
        with rasterio.Env():  # as in _read
            if scene.mask_source == "alpha":
                return dataset.read(_alpha_band(dataset), **read_args) > 0
            if scene.mask_source == "mask":  # the per-dataset mask is shared by all bands: band 1's is all of it
                return dataset.read_masks(1, **read_args) > 0
    except RasterioError as error:
        raise UnreadableImage(f"{dataset.name}: damaged mask data ({error})") from error
    if scene.mask_source == "nodata":
        if math.isnan(scene.nodata):
            is_nodata = np.isnan(pixels)
        else:  # a float nodata compares in the data's own precision (float32 -3.4e38 and the like)
            is_nodata = pixels == (pixels.dtype.type(scene.nodata) if pixels.dtype.kind == "f" else scene.nodata)
        return ~is_nodata.all(axis=0)
    return None


def _percentiles(dataset, scene: Scene, stretch) -> tuple:
    low, high = stretch
    factor = max(1.0, max(scene.width, scene.height) / STRETCH_READ_SIZE)
    shape = (max(1, round(scene.height / factor)), max(1, round(scene.width / factor)))
    args = {"out_shape": shape, "resampling": Resampling.nearest}
    pixels = _read(dataset, scene.bands, **args)  # (bands, h', w')
    valid = _valid_mask(dataset, scene, pixels, **args)
    result = []
    for band in pixels:
        values = band[valid] if valid is not None else band.ravel()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if values.size == 0:
            result.append((0.0, 1.0))
            continue
        result.append(tuple(float(v) for v in np.percentile(values, [low, high])))
    return tuple(result)


def _read(dataset, bands, **read_args) -> np.ndarray:
    try:  # in an Env, as in _open: a first read of some TIFFs has GDAL note their odd headers again
        with rasterio.Env():
            return dataset.read(list(bands), **read_args)
    except RasterioError as error:
        cause = error.__cause__ or error.__context__  # GDAL's own words, where rasterio only points at them
        detail = cause if cause is not None and "previous exception" in str(error) else error
        raise UnreadableImage(f"{dataset.name}: damaged raster data ({detail})") from error


# -- dates ---------------------------------------------------------------------------------------
# A date alone in its run of digits, or run on into a valid hhmmss (Capella's ..._20210301101500_...): a longer
# run is some other number
_FULL_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})-?(\d{2})-?(\d{2})(?:(?:[01]\d|2[0-3])[0-5]\d[0-5]\d)?(?!\d)")
_BARE_YEAR = re.compile(r"(19|20)\d{2}")


def scene_date(path, tags: dict, imagery_tags: dict | None = None) -> str | None:
    """Acquisition date, first found of: GDAL's IMAGERY ACQUISITIONDATETIME; a YYYYMMDD (or YYYYMMDDhhmmss) or
    YYYY-MM-DD in the file name (NAIP's m_..._20090818.tif; the first one, which is acquisition in Landsat product
    ids); a file stem that is only a year (1985.tif → '1985'); TIFFTAG_DATETIME (often the processing date, hence
    after the name)."""
    name, stem = Path(str(path)).name, Path(str(path)).stem
    found = _first_date((imagery_tags or {}).get("ACQUISITIONDATETIME")) or _first_date(name)
    if found or _BARE_YEAR.fullmatch(stem):
        return found or stem
    return _first_date((tags.get("TIFFTAG_DATETIME") or "").replace(":", "-", 2))


def _first_date(text: str | None) -> str | None:
    for match in _FULL_DATE.finditer(text or ""):
        try:
            return date(*(int(part) for part in match.groups())).isoformat()
        except ValueError:
            continue
    return None


# -- chips ---------------------------------------------------------------------------------------
def chip_windows(width: int, height: int, *, chip_size: int = 512, overlap: int = 0) -> list[tuple]:
    """(col_off, row_off, width, height) windows covering the scene, row by row.

    Stride is chip_size - overlap. Edges shift inward: the last chip of a row or column starts at
    width - chip_size (height - chip_size), so it overlaps its neighbour more than `overlap` but is
    full-size and inside the scene; duplicate offsets are dropped. A dimension smaller than chip_size
    gets one window of its own size.
    """
    if chip_size < 1:
        raise IndexerError(f"chip size {chip_size} must be at least 1 pixel")
    if not 0 <= overlap < chip_size:
        raise IndexerError(f"overlap {overlap} must be at least 0 and smaller than the chip size {chip_size}")
    cols, rows = _offsets(width, chip_size, overlap), _offsets(height, chip_size, overlap)
    return [(col, row, min(chip_size, width), min(chip_size, height)) for row in rows for col in cols]


def _offsets(length: int, chip_size: int, overlap: int) -> list[int]:
    if length <= chip_size:
        return [0]
    last = length - chip_size
    offsets = list(range(0, last, chip_size - overlap))
    return offsets + [last]  # range stops before `last`, so it is added exactly once


def read_chip(path_or_dataset, scene: Scene, window) -> tuple[np.ndarray, float]:
    """The window as (h, w, 3) uint8 RGB and the share of its pixels valid under the scene's mask."""
    if isinstance(path_or_dataset, (str, Path)):
        with _open(path_or_dataset) as dataset:
            return read_chip(dataset, scene, window)
    dataset = path_or_dataset
    return _rgb(dataset, scene, window=Window(*window))


def scene_image(source, *, bands=None, stretch=(2, 98), longest: int = QUERY_READ_SIZE, window=None):
    """A whole scene (or its `window`, (col, row, width, height) in pixels) as one RGB PIL image, read as its
    chips are (bands, mask, stretch: the scene's own percentiles), its long side at most `longest` px (GDAL
    decimates, from overviews where the file has them): a query by example. `source` is a path or a file-like
    object (an upload); `bands` that this raster lacks fall back to its own."""
    from PIL import Image

    with _open(source) as dataset:
        try:
            scene = describe(dataset, bands=bands, stretch=stretch)
        except IndexerError:
            if bands is None:
                raise
            log.warning("%s has no bands %s: reading its default bands", dataset.name, tuple(bands))
            scene = describe(dataset, stretch=stretch)
        col, row, width, height = window or (0, 0, scene.width, scene.height)
        check_crop((col, row, width, height), (scene.width, scene.height), dataset.name)
        factor = max(1.0, max(width, height) / longest)
        shape = (max(1, round(height / factor)), max(1, round(width / factor)))
        rgb, _ = _rgb(dataset, scene, window=Window(col, row, width, height), out_shape=shape,
                      resampling=Resampling.nearest)
    return Image.fromarray(rgb)


def scene_size(source) -> tuple[int, int]:
    """(width, height) of a raster in its own pixels (header only); `source` a path or a file-like object."""
    with _open(source if hasattr(source, "read") else str(source)) as dataset:
        return dataset.width, dataset.height


def check_crop(crop, size, name) -> None:
    """A query's crop (col, row, width, height) must lie inside its image of `size` (width, height) px."""
    col, row, width, height = crop
    if width < 1 or height < 1 or col < 0 or row < 0 or col + width > size[0] or row + height > size[1]:
        raise IndexerError(f"the crop {col},{row},{width},{height} (col,row,width,height) does not fit in {name}, "
                           f"which is {size[0]}×{size[1]} px")


def _rgb(dataset, scene: Scene, **read_args) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 RGB of the read (invalid pixels black) and the share of valid pixels."""
    pixels = _read(dataset, scene.bands, **read_args)  # (bands, h, w)
    valid = _valid_mask(dataset, scene, pixels, **read_args)
    rgb = _to_uint8(pixels, scene.stretch)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))  # (h, w, 3)
    if valid is None:
        return rgb, 1.0
    rgb[~valid] = 0
    return rgb, float(valid.mean()) if valid.size else 0.0


def _to_uint8(pixels: np.ndarray, stretch) -> np.ndarray:
    if stretch is None:
        return pixels.astype(np.uint8, copy=False)
    out = np.empty(pixels.shape, np.uint8)
    for band, (low, high), target in zip(pixels, stretch, out):
        scaled = (band.astype(np.float32) - low) * (255.0 / max(high - low, 1e-12))
        target[...] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255)
    return out


def chip_geometry(scene: Scene, window) -> dict:
    """Bounds in the scene CRS; footprint polygon, centroid and box in WGS84 lon/lat (None if not georeferenced):
    see footprints.window_outline. The footprint follows the window's edges where they bow out between its corners
    in longitude and latitude (near a pole), and is its four corners otherwise."""
    col, row, width, height = window
    xs, ys = xy(Affine(*scene.transform), [row, row + height, row + height, row], [col, col, col + width,
                                                                                 col + width], offset="ul")
    bounds = [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]
    if scene.crs is None:
        return {"bounds": bounds, **NOWHERE}
    return {"bounds": bounds, **window_outline(scene.crs, scene.transform, window)}


def part_geometry(geo: dict, part, picture_size) -> dict | None:
    """Footprint, centroid and WGS84 bounds of `part` (col, row, width, height) of a chip whose picture is
    `picture_size` (width, height) px, from the chip's grid on the ground (its record's "grid"; a chip recorded
    before it, from its bounds in its scene's CRS, which hold only for a north-up grid); None for a chip
    without them."""
    if not geo or not (geo.get("grid") or geo.get("bounds")) or not geo.get("crs"):
        return None
    if geo.get("grid"):
        picture = Affine(*geo["grid"]) @ Affine.scale(1 / picture_size[0], 1 / picture_size[1])
    else:
        west, south, east, north = geo["bounds"]
        picture = (Affine.translation(west, north)
                   @ Affine.scale((east - west) / picture_size[0], -(north - south) / picture_size[1]))
    return window_outline(geo["crs"], tuple(picture)[:6], part)


class Chip(NamedTuple):
    window: tuple  # col_off, row_off, width, height
    rgb: np.ndarray  # (h, w, 3) uint8
    valid_fraction: float
    geometry: dict


class ChipRun:
    """The kept chips of one scene, in window order; after iterating, `kept` and `skipped` count them.

    Iterating opens the scene once and reads one window at a time; iterating again starts over.
    """

    def __init__(self, scene: Scene, windows: list, *, min_valid: float):
        self.scene, self.windows, self.min_valid = scene, windows, min_valid
        self.kept = self.skipped = 0

    def __iter__(self):
        self.kept = self.skipped = 0
        with _open(self.scene.path) as dataset:
            for window in self.windows:
                rgb, valid_fraction = read_chip(dataset, self.scene, window)
                if valid_fraction < self.min_valid:
                    self.skipped += 1
                    continue
                self.kept += 1
                yield Chip(window, rgb, valid_fraction, chip_geometry(self.scene, window))
        if self.skipped:
            log.debug("%s: %d of %d chips skipped below %.0f%% valid", self.scene.path, self.skipped,
                      len(self.windows), 100 * self.min_valid)


def iter_chips(path, *, chip_size=512, overlap=0, min_valid=0.5, bands=None, stretch=(2, 98)) -> ChipRun:
    """The chips of a scene with at least `min_valid` valid pixels, as an iterable `ChipRun` of `Chip`s.

    The scene header (and stretch) is read now, so `run.scene` is there before iterating;
    `run.skipped` is final once the iteration ends.
    """
    if not 0 <= min_valid <= 1:
        raise IndexerError(f"min_valid {min_valid} must be between 0 and 1")
    scene = open_scene(path, bands=bands, stretch=stretch)
    windows = chip_windows(scene.width, scene.height, chip_size=chip_size, overlap=overlap)
    return ChipRun(scene, windows, min_valid=min_valid)
