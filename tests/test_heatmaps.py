"""The heatmap maths without Streamlit: similarity maps, click → token, upsampling, colours, overlays, outlines."""
import numpy as np
import pytest
from PIL import Image

from helpers import random_pixels
from ui.heatmaps import (
    LUT,
    cell_box,
    colour_scale,
    colourize,
    correspondence_map,
    cosine_map,
    mark_patch,
    overlay,
    patch_at,
    tick_labels,
    upsample,
    value_range,
)


def random_grid(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)  # (h, w, C)


# -- cosine_map ------------------------------------------------------------------------------
def test_cosine_map_peaks_with_one_where_the_query_sits():
    grid = random_grid((14, 20, 64))
    query = grid[5, 11].copy()

    similarity = cosine_map(query, grid)

    assert similarity.shape == (14, 20)
    assert similarity.dtype == np.float32
    assert np.unravel_index(similarity.argmax(), similarity.shape) == (5, 11)
    assert similarity[5, 11] == pytest.approx(1.0, abs=1e-5)
    assert similarity.max() <= 1.0 + 1e-5 and similarity.min() >= -1.0 - 1e-5


def test_cosine_map_ignores_scale_and_sees_opposites():
    grid = random_grid((4, 4, 8))
    grid[2, 3] = -3.0 * grid[0, 0]

    similarity = cosine_map(7.0 * grid[0, 0], grid)

    assert similarity[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert similarity[2, 3] == pytest.approx(-1.0, abs=1e-5)


def test_cosine_map_is_zero_for_zero_vectors():
    grid = random_grid((3, 4, 8))
    grid[1, 2] = 0.0

    assert cosine_map(grid[0, 0], grid)[1, 2] == 0.0
    assert np.all(cosine_map(np.zeros(8, np.float32), grid) == 0.0)


def test_cosine_map_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="does not match"):
        cosine_map(np.ones(7), random_grid((3, 3, 8)))


# -- correspondence_map ----------------------------------------------------------------------
def test_correspondence_of_a_grid_with_itself_is_one_everywhere():
    grid = random_grid((14, 14, 64))

    best = correspondence_map(grid, grid)

    assert best.shape == (14, 14)
    np.testing.assert_allclose(best, 1.0, atol=1e-5)


def test_correspondence_finds_a_planted_query_patch():
    query = random_grid((32, 32, 64), seed=1)
    grid = random_grid((14, 20, 64), seed=2)
    grid[9, 3] = 2.5 * query[17, 4]

    best = correspondence_map(query, grid)

    assert best.shape == (14, 20)
    assert np.unravel_index(best.argmax(), best.shape) == (9, 3)
    assert best[9, 3] == pytest.approx(1.0, abs=1e-5)
    others = np.delete(best.ravel(), 9 * 20 + 3)
    assert others.max() < 0.9  # unrelated random patches are far from any query patch


def test_correspondence_is_at_least_the_cosine_to_any_single_query_patch():
    query = random_grid((5, 6, 16), seed=3)
    grid = random_grid((4, 7, 16), seed=4)

    best = correspondence_map(query, grid)

    for r, c in [(0, 0), (2, 5), (4, 1)]:
        assert np.all(best >= cosine_map(query[r, c], grid) - 1e-6)


def test_correspondence_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="feature dims"):
        correspondence_map(random_grid((2, 2, 8)), random_grid((2, 2, 9)))


# -- patch_at --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, y, expected",
    [
        (0, 0, (0, 0)),
        (223.9, 0, (0, 13)),
        (0, 223.9, (13, 0)),
        (223.9, 223.9, (13, 13)),
        (112, 112, (7, 7)),
        (15.9, 16.0, (1, 0)),
    ],
)
def test_patch_at_square(x, y, expected):
    assert patch_at(x, y, display_size=(224, 224), grid_shape=(14, 14)) == expected


@pytest.mark.parametrize(
    "x, y, expected", [(-5, -1, (0, 0)), (400, 10, (0, 13)), (10, 999, (13, 0)), (224, 224, (13, 13))]
)
def test_patch_at_clamps_outside_clicks(x, y, expected):
    assert patch_at(x, y, display_size=(224, 224), grid_shape=(14, 14)) == expected


def test_patch_at_non_square_grid_and_display():
    size, grid_shape = (320, 224), (14, 20)

    assert patch_at(0, 0, display_size=size, grid_shape=grid_shape) == (0, 0)
    assert patch_at(319, 223, display_size=size, grid_shape=grid_shape) == (13, 19)
    assert patch_at(160, 112, display_size=size, grid_shape=grid_shape) == (7, 10)
    assert patch_at(35, 20, display_size=size, grid_shape=grid_shape) == (1, 2)


def test_patch_at_scales_with_the_display_not_the_token_size():
    """An image shown at 640x448 with a (14, 20) grid has 32-px cells on screen."""
    assert patch_at(63, 31, display_size=(640, 448), grid_shape=(14, 20)) == (0, 1)
    assert patch_at(64, 32, display_size=(640, 448), grid_shape=(14, 20)) == (1, 2)


# -- upsample --------------------------------------------------------------------------------
def test_upsample_non_square_shape_and_dtype():
    up = upsample(random_grid((14, 20, 1))[..., 0], (320, 224))

    assert up.shape == (224, 320)
    assert up.dtype == np.float32


def test_upsample_keeps_a_constant_map_constant():
    np.testing.assert_allclose(upsample(np.full((3, 5), 0.7), (50, 30)), 0.7, atol=1e-6)


def test_upsample_keeps_a_monotone_map_ordered_left_to_right():
    ramp = np.tile(np.linspace(-1.0, 1.0, 20, dtype=np.float32), (14, 1))  # (14, 20)

    up = upsample(ramp, (320, 224))

    assert np.all(np.diff(up, axis=1) >= -1e-6)
    assert up[:, -1].min() > up[:, 0].max()


def test_upsample_roughly_keeps_values_at_patch_centres():
    values = random_grid((14, 20, 1), seed=5)[..., 0]
    up = upsample(values, (320, 224))

    centres = (up[7::16, 7::16] + up[8::16, 8::16]) / 2  # (14, 20): the 16-px cells meet between pixels 7 and 8
    assert np.abs(centres - values).max() < 0.25 * np.ptp(values)
    assert np.unravel_index(centres.argmax(), centres.shape) == np.unravel_index(values.argmax(), values.shape)


def test_upsample_rejects_feature_grids():
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        upsample(random_grid((3, 3, 4)), (30, 30))


# -- colourize -------------------------------------------------------------------------------
def test_colourize_endpoints_are_the_ramp_ends():
    colours = colourize(np.array([[0.2, 0.8]]), vmin=0.2, vmax=0.8)

    assert colours.shape == (1, 2, 3) and colours.dtype == np.uint8
    assert tuple(colours[0, 0]) == tuple(LUT[0]) == (68, 1, 84)
    assert tuple(colours[0, 1]) == tuple(LUT[-1]) == (253, 231, 37)


def test_colourize_clips_values_outside_the_range():
    colours = colourize(np.array([[-5.0, 0.0, 1.0, 9.0]]), vmin=0.0, vmax=1.0)

    assert tuple(colours[0, 0]) == tuple(colours[0, 1]) == tuple(LUT[0])
    assert tuple(colours[0, 3]) == tuple(colours[0, 2]) == tuple(LUT[-1])


def test_colourize_with_equal_vmin_and_vmax_does_not_divide_by_zero():
    with np.errstate(all="raise"):
        colours = colourize(np.array([[0.5, 0.5, 0.6]]), vmin=0.5, vmax=0.5)

    assert tuple(colours[0, 0]) == tuple(LUT[0])
    assert tuple(colours[0, 2]) == tuple(LUT[-1])


def test_colour_ramp_gets_brighter_from_start_to_end():
    """Viridis-like: perceived lightness rises monotonically, so higher similarity always reads lighter."""
    luma = LUT.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (256,)

    assert LUT.shape == (256, 3)
    assert np.all(np.diff(luma) >= 0)  # neighbours may tie after rounding to uint8, never darken
    assert luma[-1] - luma[0] > 150


# -- overlay ---------------------------------------------------------------------------------
@pytest.fixture
def photo() -> Image.Image:
    return Image.fromarray(random_pixels((320, 224), seed=7))


def test_overlay_with_opacity_zero_is_the_image(photo):
    blended = overlay(photo, random_grid((14, 20, 1))[..., 0], opacity=0.0)

    assert blended.size == photo.size
    assert np.array_equal(np.asarray(blended), np.asarray(photo))


def test_overlay_with_opacity_one_is_the_heatmap(photo):
    values = random_grid((14, 20, 1))[..., 0]

    blended = overlay(photo, values, opacity=1.0)

    expected = colourize(upsample(values, photo.size), vmin=values.min(), vmax=values.max())
    assert np.array_equal(np.asarray(blended), expected)


def test_overlay_uses_the_given_shared_range(photo):
    values = np.full((14, 20), 0.5, np.float32)

    low = overlay(photo, values, opacity=1.0, vmin=0.5, vmax=1.0)
    high = overlay(photo, values, opacity=1.0, vmin=0.0, vmax=0.5)

    assert np.all(np.asarray(low) == LUT[0])
    assert np.all(np.asarray(high) == LUT[-1])


def test_overlay_half_opacity_lies_between_image_and_heatmap(photo):
    values = random_grid((14, 20, 1))[..., 0]
    image = np.asarray(photo, dtype=np.int16)
    heat = np.asarray(overlay(photo, values, opacity=1.0), dtype=np.int16)

    half = np.asarray(overlay(photo, values, opacity=0.5), dtype=np.int16)

    assert np.all(half >= np.minimum(image, heat)) and np.all(half <= np.maximum(image, heat))
    assert np.abs(half - (image + heat) / 2).max() <= 1


def test_overlay_converts_grey_images_to_rgb():
    grey = Image.new("L", (64, 48), 100)

    blended = overlay(grey, np.zeros((3, 4)), opacity=0.0)

    assert blended.mode == "RGB" and blended.size == (64, 48)
    assert np.all(np.asarray(blended) == 100)


def test_overlay_rejects_an_opacity_outside_zero_to_one(photo):
    with pytest.raises(ValueError, match="opacity"):
        overlay(photo, np.zeros((14, 20)), opacity=1.5)


# -- mark_patch ------------------------------------------------------------------------------
def outline_mask(box, size, width) -> np.ndarray:
    left, top, right, bottom = box
    inside = np.zeros(size[::-1], bool)  # (H, W)
    inside[top:bottom + 1, left:right + 1] = True
    inner = np.zeros_like(inside)
    inner[top + width:bottom + 1 - width, left + width:right + 1 - width] = True
    return inside & ~inner


@pytest.mark.parametrize("row, col", [(0, 0), (6, 11), (13, 19)])
def test_mark_patch_changes_only_the_outline_of_that_cell(row, col):
    image = Image.new("RGB", (320, 224), (0, 0, 0))

    marked = mark_patch(image, row, col, grid_shape=(14, 20), colour=(255, 0, 0))

    changed = np.any(np.asarray(marked) != 0, axis=-1)  # (H, W)
    box = (col * 16, row * 16, col * 16 + 15, row * 16 + 15)
    assert np.array_equal(changed, outline_mask(box, image.size, 2))
    assert np.all(np.asarray(marked)[changed] == (255, 0, 0))
    assert np.all(np.asarray(image) == 0)  # the original is untouched


def test_mark_patch_cells_follow_the_image_size_not_16_px():
    image = Image.new("RGB", (100, 60), (0, 0, 0))

    marked = mark_patch(image, 1, 2, grid_shape=(3, 4), colour=(0, 255, 0), width=1)

    changed = np.any(np.asarray(marked) != 0, axis=-1)
    assert cell_box(1, 2, image_size=(100, 60), grid_shape=(3, 4)) == (50, 20, 74, 39)
    assert np.array_equal(changed, outline_mask((50, 20, 74, 39), image.size, 1))


def test_mark_patch_rejects_a_cell_outside_the_grid():
    with pytest.raises(ValueError, match="outside"):
        mark_patch(Image.new("RGB", (32, 32)), 2, 0, grid_shape=(2, 2))


# -- colour_scale and value_range ------------------------------------------------------------
@pytest.mark.parametrize("width, height", [(256, 40), (400, 60)])
def test_colour_scale_size_and_ends(width, height):
    scale = colour_scale(-0.2, 0.9, width=width, height=height)

    assert scale.size == (width, height)
    pixels = np.asarray(scale)
    assert tuple(pixels[0, 0]) == tuple(LUT[0])
    assert tuple(pixels[0, width - 1]) == tuple(LUT[-1])


def test_colour_scale_draws_labels_under_the_bar():
    pixels = np.asarray(colour_scale(0.0, 1.0, ticks=3))

    below = pixels[-12:]  # the label strip: white with dark text
    assert (below == 255).all(axis=-1).mean() > 0.5
    assert (below < 100).all(axis=-1).any()


def test_colour_scale_needs_two_ticks():
    with pytest.raises(ValueError, match="ticks"):
        colour_scale(0.0, 1.0, ticks=1)


def test_value_range_spans_all_maps():
    maps = [np.array([[0.1, 0.5]]), np.array([[-0.3], [0.2]]), np.full((2, 2), 0.9)]

    assert value_range(maps) == pytest.approx((-0.3, 0.9))


def test_value_range_of_nothing_raises():
    with pytest.raises(ValueError):
        value_range([])


def test_a_map_of_a_picture_with_itself_is_drawn_in_one_colour(photo):
    """Comparing a picture with itself gives ones up to float rounding: stretched over the whole ramp, that noise
    was a loud checkerboard under five labels that all read 1.00. A perfect match takes the top colour."""
    noise = np.random.default_rng(0).uniform(-3e-7, 2e-7, (14, 14))
    values = np.where(np.indices((14, 14)).sum(axis=0) % 2, 1.0 + noise, 1.0 - noise).astype(np.float32)
    vmin, vmax = value_range([values, values])
    assert (vmin, vmax) == pytest.approx((0.99, 1.0))
    for colours in (colourize(upsample(values, photo.size), vmin=vmin, vmax=vmax),
                    np.asarray(overlay(photo, values, opacity=1.0))):  # the query's own map: no shared scale
        assert (colours.reshape(-1, 3) == LUT[-1]).all()
    labels = tick_labels(vmin, vmax)
    assert labels[0] == "0.990" and labels[-1] == "1.000" and len(set(labels)) == 5


@pytest.mark.parametrize("value, middle", [(0.5, 0.5), (-1.0, -0.995), (1.0, 0.995)])
def test_a_near_constant_map_spans_the_narrowest_scale_within_cosines(value, middle):
    values = np.full((3, 4), value, np.float32)
    vmin, vmax = value_range([values])
    assert vmax - vmin == pytest.approx(0.01) and (vmin + vmax) / 2 == pytest.approx(middle)
    assert -1.0 <= vmin and vmax <= 1.0
    assert len(np.unique(colourize(values, vmin=vmin, vmax=vmax).reshape(-1, 3), axis=0)) == 1


def test_tick_labels_have_two_decimals_unless_neighbours_need_more():
    assert tick_labels(0.0, 1.0) == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert tick_labels(-0.2, 0.9, ticks=3) == ["-0.20", "0.35", "0.90"]
    assert tick_labels(0.5, 0.51, ticks=3) == ["0.500", "0.505", "0.510"]
    assert tick_labels(0.5, 0.5, ticks=2) == ["0.50", "0.50"]
