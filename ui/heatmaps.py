"""Patch-similarity maps and their pictures: cosine maps, upsampling, a colour map, overlays, outlines, scales.

Plain numpy + Pillow, no Streamlit: the page calls these, the tests call them directly.
A grid is one image's PCA-reduced patch features, (h, w, C) row-major on its 16-px token grid;
a map is an (h, w) or (H, W) array of floats; sizes follow Pillow, (width, height).
"""
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Viridis sampled at nine evenly spaced points: perceptually ordered, readable in grey and by most colour-blind eyes.
RAMP_STOPS = np.array(
    [
        (68, 1, 84),
        (71, 45, 123),
        (59, 82, 139),
        (44, 114, 142),
        (33, 145, 140),
        (40, 174, 128),
        (94, 201, 98),
        (173, 220, 48),
        (253, 231, 37),
    ],
    dtype=np.float32,
)  # (S, 3)


def _lookup_table(stops: np.ndarray, entries: int = 256) -> np.ndarray:
    at = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, entries)
    channels = [np.interp(t, at, stops[:, k]) for k in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)  # (entries, 3)


LUT = _lookup_table(RAMP_STOPS)  # (256, 3)
# The narrowest cosine range a scale spans. A picture compared with itself gives 0.9999997..1.0000002 (float
# rounding), and the stored features are float16: stretched over the whole ramp, such noise draws a loud pattern
# of nothing. 0.01 is well above that noise and below the differences that show where two pictures part.
MIN_SPAN = 0.01


# -- similarity ------------------------------------------------------------------------------
def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; zero rows stay zero, so their cosine is 0 rather than NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _check_grid(grid: np.ndarray, name: str) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 3:
        raise ValueError(f"{name} must be (h, w, C) patch features, got shape {grid.shape}")
    return grid


def cosine_map(query_vector, grid) -> np.ndarray:
    """Cosine similarity of one feature vector (C,) to every patch of grid (h, w, C): an (h, w) float32 map."""
    grid = _check_grid(grid, "grid")
    query_vector = np.asarray(query_vector)
    if query_vector.shape != grid.shape[-1:]:
        raise ValueError(f"query vector of shape {query_vector.shape} does not match grid dims {grid.shape[-1]}")
    return (_unit(grid) @ _unit(query_vector)).astype(np.float32)  # (h, w)


def correspondence_map(query_grid, grid) -> np.ndarray:
    """For each patch of grid (h, w, C), its best cosine similarity to any patch of query_grid (hq, wq, C)."""
    query_grid = _check_grid(query_grid, "query_grid")
    grid = _check_grid(grid, "grid")
    if query_grid.shape[-1] != grid.shape[-1]:
        raise ValueError(f"feature dims differ: query {query_grid.shape[-1]}, grid {grid.shape[-1]}")
    h, w, dims = grid.shape
    queries = _unit(query_grid.reshape(-1, dims))  # (hq*wq, C)
    patches = _unit(grid.reshape(-1, dims))  # (h*w, C)
    similarities = patches @ queries.T  # (h*w, hq*wq)
    return similarities.max(axis=1).reshape(h, w).astype(np.float32)  # (h, w)


def value_range(maps, *, min_span: float = MIN_SPAN) -> tuple[float, float]:
    """The shared (min, max) over several cosine maps, so every result can be drawn on one colour scale; at least
    `min_span` wide, about the values' middle and within -1..1."""
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    if not maps or all(m.size == 0 for m in maps):
        raise ValueError("value_range needs at least one non-empty map")
    low = float(min(np.nanmin(m) for m in maps if m.size))
    high = float(max(np.nanmax(m) for m in maps if m.size))
    if high - low < min_span:
        # kept within what a cosine can be, so that a perfect match (a map of ones) takes the top colour
        low = min(max((low + high - min_span) / 2, -1.0), 1.0 - min_span)
        high = low + min_span
    return low, high


# -- geometry --------------------------------------------------------------------------------
def patch_at(x, y, *, display_size, grid_shape) -> tuple[int, int]:
    """The (row, col) of the token under a click at pixel (x, y) of an image shown at display_size (width, height).

    Clicks outside the picture land on the nearest edge cell.
    """
    width, height = display_size
    rows, cols = grid_shape
    if width <= 0 or height <= 0 or rows <= 0 or cols <= 0:
        raise ValueError(f"display_size {display_size} and grid_shape {grid_shape} must be positive")
    row = int(np.floor(y * rows / height))
    col = int(np.floor(x * cols / width))
    return min(max(row, 0), rows - 1), min(max(col, 0), cols - 1)


def cell_box(row: int, col: int, *, image_size, grid_shape) -> tuple[int, int, int, int]:
    """Inclusive pixel box (left, top, right, bottom) of one grid cell on an image of image_size (width, height)."""
    width, height = image_size
    rows, cols = grid_shape
    if not (0 <= row < rows and 0 <= col < cols):
        raise ValueError(f"cell ({row}, {col}) is outside a grid of shape {grid_shape}")
    left, right = round(col * width / cols), round((col + 1) * width / cols) - 1
    top, bottom = round(row * height / rows), round((row + 1) * height / rows) - 1
    return left, top, right, bottom


def dragged_box(x1, y1, x2, y2, *, display_size, image_size) -> tuple[int, int, int, int]:
    """(col, row, width, height) in an image of image_size (width, height) px of a box dragged from (x1, y1) to
    (x2, y2) on it shown at display_size; either corner, and ends outside the picture clamped to its edge."""
    shown_width, shown_height = display_size
    width, height = image_size
    if shown_width <= 0 or shown_height <= 0:
        raise ValueError(f"display_size {display_size} must be positive")

    def scaled(value, shown, full):
        return min(max(round(value * full / shown), 0), full)

    cols = sorted(scaled(x, shown_width, width) for x in (x1, x2))
    rows = sorted(scaled(y, shown_height, height) for y in (y1, y2))
    return cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0]


def outline_box(image: Image.Image, box, *, image_size, colour=(255, 40, 40)) -> Image.Image:
    """A copy of `image` (any size) with `box` (col, row, width, height in image_size px) outlined."""
    scale_x, scale_y = image.width / image_size[0], image.height / image_size[1]
    col, row, width, height = box
    left, top = round(col * scale_x), round(row * scale_y)
    right = max(left, round((col + width) * scale_x) - 1)
    bottom = max(top, round((row + height) * scale_y) - 1)
    marked = image.convert("RGB")
    ImageDraw.Draw(marked).rectangle((left, top, right, bottom), outline=colour, width=max(2, image.width // 160))
    return marked


def upsample(values, size) -> np.ndarray:
    """A smooth (H, W) float32 version of an (h, w) map for size (W, H); patch centres keep about their values.

    Pillow resamples pixel centres onto pixel centres, so the centre of token (r, c) lands on the centre of its cell.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"upsample takes an (h, w) map, got shape {values.shape}")
    picture = Image.fromarray(np.ascontiguousarray(values))  # mode 'F'
    resized = picture.resize(tuple(int(s) for s in size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.float32)  # (H, W)


# -- colour ----------------------------------------------------------------------------------
def colourize(values, *, vmin, vmax) -> np.ndarray:
    """An (H, W) map through the viridis-like ramp: (H, W, 3) uint8, vmin → first colour, vmax → last.

    Values outside [vmin, vmax] clip to the ends; with vmin == vmax everything above vmin takes the last colour.
    """
    values = np.asarray(values, dtype=np.float32)
    span = float(vmax) - float(vmin)
    if span > 0:
        t = (values - float(vmin)) / span
    else:
        t = (values > float(vmin)).astype(np.float32)
    t = np.nan_to_num(t, nan=0.0)
    index = np.rint(np.clip(t, 0.0, 1.0) * (len(LUT) - 1)).astype(np.intp)  # (H, W)
    return LUT[index]  # (H, W, 3)


def overlay(image, values, *, opacity=0.5, vmin=None, vmax=None) -> Image.Image:
    """The map, upsampled and colourized, blended over the RGB image at opacity (0: image only, 1: map only).

    vmin and vmax default to the map's own value_range; pass value_range(...) to share one scale across results.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity}")
    values = np.asarray(values, dtype=np.float32)
    if vmin is None or vmax is None:
        own_min, own_max = value_range([values])
        vmin = own_min if vmin is None else vmin
        vmax = own_max if vmax is None else vmax
    rgb = image.convert("RGB")
    heat = colourize(upsample(values, rgb.size), vmin=vmin, vmax=vmax)  # (H, W, 3)
    base = np.asarray(rgb, dtype=np.float32)  # (H, W, 3)
    blended = (1.0 - opacity) * base + opacity * heat.astype(np.float32)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def mark_patch(image, row, col, *, grid_shape, colour=(255, 0, 0), width=2) -> Image.Image:
    """A copy of the image with grid cell (row, col) outlined, `width` pixels drawn inside the cell."""
    marked = image.convert("RGB")  # always a copy
    box = cell_box(row, col, image_size=marked.size, grid_shape=grid_shape)
    ImageDraw.Draw(marked).rectangle(box, outline=tuple(colour), width=width)
    return marked


def scale_words(what: str, vmin, vmax) -> str:
    """A colour scale said in words, for screen readers (the picture's alt text): what it measures, its ends."""
    labels = tick_labels(vmin, vmax)
    return f"Colour scale of the heatmaps: {what}, from {labels[0]} (left) to {labels[-1]} (right)"


def tick_labels(vmin, vmax, *, ticks=5) -> list[str]:
    """The values of `ticks` evenly spaced ticks from vmin to vmax, with 2 decimals, or as many more as tell
    neighbours apart (a narrow scale: 0.990, 0.993, ...)."""
    if ticks < 2:
        raise ValueError(f"a colour scale needs at least 2 ticks, got {ticks}")
    step = (vmax - vmin) / (ticks - 1)
    decimals = min(6, max(2, math.ceil(-math.log10(step)))) if step > 0 else 2
    return [f"{vmin + i * step:.{decimals}f}" for i in range(ticks)]


def colour_scale(vmin, vmax, *, width=256, height=40, ticks=5) -> Image.Image:
    """A horizontal bar of the colour map from vmin (left) to vmax (right), tick labels under it (tick_labels)."""
    labels = tick_labels(vmin, vmax, ticks=ticks)
    font = ImageFont.load_default()
    label_height = font.getbbox("0.00")[3] + 4
    bar_height = height - label_height
    if bar_height < 1 or width < 2:
        raise ValueError(f"a {width}x{height} colour scale leaves no room for the bar and its labels")

    scale = Image.new("RGB", (width, height), "white")
    ramp = colourize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :], vmin=0.0, vmax=1.0)  # (1, width, 3)
    scale.paste(Image.fromarray(ramp).resize((width, bar_height), Image.Resampling.NEAREST), (0, 0))

    draw = ImageDraw.Draw(scale)
    for i, label in enumerate(labels):
        x = round(i * (width - 1) / (ticks - 1))
        draw.line([(x, bar_height - 4), (x, bar_height)], fill="black")
        text_width = draw.textlength(label, font=font)
        left = min(max(x - text_width / 2, 0), width - text_width)  # keep the end labels inside the picture
        draw.text((left, bar_height + 2), label, fill="black", font=font)
    return scale
