"""Percent <-> pixel conversions, rotated rectangles and bounds checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sam3_backend.errors import BadRequest
from sam3_backend.ls.geometry import (
    box_to_ls_rect,
    check_ls_rect,
    check_percent,
    ls_rect_to_box,
    percent_to_pixels,
    pixels_to_percent,
)
from sam3_backend.types import Box

sizes = st.integers(min_value=1, max_value=10_000)
percents = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


def test_percent_to_pixels_basic():
    assert percent_to_pixels(50.0, 50.0, 64, 48) == (32.0, 24.0)
    assert percent_to_pixels(0, 100, 64, 48) == (0.0, 48.0)
    assert pixels_to_percent(32, 24, 64, 48) == (50.0, 50.0)


@given(percents, percents, sizes, sizes)
def test_percent_pixel_round_trip(x, y, width, height):
    px, py = percent_to_pixels(x, y, width, height)
    assert 0.0 <= px <= width and 0.0 <= py <= height
    back = pixels_to_percent(px, py, width, height)
    assert back == pytest.approx((x, y), abs=1e-9)


def test_slightly_outside_is_clamped():
    assert percent_to_pixels(-0.5, 100.9, 200, 100) == (0.0, 100.0)
    assert check_percent(100.99, "x") == 100.0


@pytest.mark.parametrize("x, y, axis", [(130.0, 50.0, "x=130%"), (50.0, -1.5, "y=-1.5%"), (101.01, 0, "x=101.01%")])
def test_far_outside_is_bad_request(x, y, axis):
    with pytest.raises(BadRequest) as err:
        percent_to_pixels(x, y, 100, 100, what="keypoint")
    assert str(err.value) == f"keypoint at {axis} is outside the image (0-100%)"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "10", None, True])
def test_non_numbers_are_bad_request(bad):
    with pytest.raises(BadRequest, match="finite number"):
        percent_to_pixels(bad, 10, 100, 100)


def test_zero_image_size_is_a_programming_error():
    with pytest.raises(ValueError):
        percent_to_pixels(1, 1, 0, 10)


def test_unrotated_rect_to_box_and_back():
    box = ls_rect_to_box(25, 25, 50, 50, 0, 64, 48)
    assert box == Box(16.0, 12.0, 48.0, 36.0)
    assert box_to_ls_rect(box, 64, 48) == pytest.approx((25, 25, 50, 50))


@given(
    st.floats(0, 90),
    st.floats(0, 90),
    st.floats(0.5, 10),
    st.floats(0.5, 10),
    sizes,
    sizes,
)
def test_rect_round_trip(x, y, w, h, width, height):
    box = ls_rect_to_box(x, y, w, h, 0, width, height)
    assert box_to_ls_rect(box, width, height) == pytest.approx((x, y, w, h), abs=1e-7)


def test_rotated_rect_becomes_its_bounding_box():
    # 100x100 image; a 20x10 (pixels) rectangle anchored at (50, 50), rotated 90 degrees clockwise
    # about that corner, covers x in [40, 50] and y in [50, 70].
    box = ls_rect_to_box(50, 50, 20, 10, 90, 100, 100)
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx((40, 50, 50, 70))
    # 45 degrees: corners (50,50), (50+14.14,50+14.14), (50+7.07,50+21.21), (50-7.07,50+7.07).
    box = ls_rect_to_box(50, 50, 20, 10, 45, 100, 100)
    s = math.sqrt(0.5)
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx((50 - 10 * s, 50, 50 + 20 * s, 50 + 30 * s))


def test_rotation_uses_pixels_not_percent():
    # On a 200x100 image, 10%x10% is 20x10 pixels; rotated 90 degrees it is 10 wide, 20 tall.
    box = ls_rect_to_box(50, 20, 10, 10, 90, 200, 100)
    assert (box.x1 - box.x0, box.y1 - box.y0) == pytest.approx((10, 20))


def test_rotated_rect_leaving_the_image_is_bad_request():
    with pytest.raises(BadRequest, match="outside the image"):
        ls_rect_to_box(5, 50, 20, 20, 90, 100, 100)


def test_rect_slightly_outside_is_clamped():
    box = ls_rect_to_box(-0.5, 90, 50, 10.9, 0, 100, 100)
    assert box == Box(0.0, 90.0, 49.5, 100.0)


@pytest.mark.parametrize(
    "rect, message",
    [
        ((10, 10, -5, 10), "width=-5% and height=10%; both must be positive"),
        ((10, 10, 5, 0), "both must be positive"),
        ((130, 10, 5, 5), "rectangle at x=130% is outside the image"),
        ((90, 10, 20, 5), "rectangle at x=110% is outside the image"),
        ((10, "a", 5, 5), "y='a'"),
    ],
)
def test_bad_rectangles(rect, message):
    with pytest.raises(BadRequest) as err:
        ls_rect_to_box(*rect, 0, 100, 100)
    assert message in str(err.value)
    with pytest.raises(BadRequest):
        check_ls_rect(*rect)


def test_box_to_ls_rect_clamps():
    assert box_to_ls_rect(Box(-5, -5, 50, 120), 100, 100) == (0.0, 0.0, 50.0, 100.0)
