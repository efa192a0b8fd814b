"""Conversions between Label Studio's percentages and pixels of the original image.

Label Studio: x, y, width, height in percent (0-100) of ``original_width`` / ``original_height``,
origin top-left. A rectangle's (x, y) is its top-left corner *before* rotation, and ``rotation``
is in degrees, clockwise on screen, about that corner.

Pixels (``types.Point`` / ``types.Box``): continuous coordinates, origin at the top-left corner
of the top-left pixel, so pixel (col, row) covers [col, col + 1) x [row, row + 1) and the image
spans [0, width] x [0, height]. Boxes are XYXY.

Bounds: a prompt coordinate up to ``PERCENT_TOLERANCE`` (1 %) outside [0, 100] is clamped onto
the image (clicks on the very edge land there); further out is a ``BadRequest``.
"""

from __future__ import annotations

import math

from ..errors import BadRequest
from ..types import Box

PERCENT_TOLERANCE = 1.0


def _size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def _finite(value: object, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{what} has {name}={value!r}; it must be a finite number")
    return float(value)


def check_percent(value: float, axis: str, what: str = "point") -> float:
    """Validate one percent coordinate and clamp it into [0, 100].

    axis: "x" or "y", for the message. Raises ``BadRequest`` when ``value`` is not a finite number
    or lies more than ``PERCENT_TOLERANCE`` outside [0, 100].
    """
    value = _finite(value, axis, what)
    if value < -PERCENT_TOLERANCE or value > 100.0 + PERCENT_TOLERANCE:
        raise BadRequest(f"{what} at {axis}={value:g}% is outside the image (0-100%)")
    return min(max(value, 0.0), 100.0)


def percent_to_pixels(
    x_pct: float, y_pct: float, width: int, height: int, *, what: str = "point"
) -> tuple[float, float]:
    """(x%, y%) of a ``width`` x ``height`` image -> (x, y) pixels, validated and clamped."""
    _size(width, height)
    x = check_percent(x_pct, "x", what)
    y = check_percent(y_pct, "y", what)
    return x / 100.0 * width, y / 100.0 * height


def pixels_to_percent(x_px: float, y_px: float, width: int, height: int) -> tuple[float, float]:
    """(x, y) pixels of a ``width`` x ``height`` image -> (x%, y%). No clamping."""
    _size(width, height)
    return float(x_px) / width * 100.0, float(y_px) / height * 100.0


def check_ls_rect(
    x: float, y: float, w: float, h: float, rotation: float = 0.0, what: str = "rectangle"
) -> tuple[float, float, float, float, float]:
    """Validate a Label Studio rectangle in percent; returns (x, y, w, h, rotation) as floats.

    Checks: all finite, width and height positive, the anchor corner within the tolerance, and
    for an unrotated rectangle its far edges too (a rotated one is checked in pixels by
    ``ls_rect_to_box``). Values are not clamped here.
    """
    x, y = _finite(x, "x", what), _finite(y, "y", what)
    w, h = _finite(w, "width", what), _finite(h, "height", what)
    rotation = _finite(rotation, "rotation", what)
    if w <= 0 or h <= 0:
        raise BadRequest(f"{what} has width={w:g}% and height={h:g}%; both must be positive")
    check_percent(x, "x", what)
    check_percent(y, "y", what)
    if rotation % 360.0 == 0.0:
        check_percent(x + w, "x", what)
        check_percent(y + h, "y", what)
    return x, y, w, h, rotation


def ls_rect_to_box(
    x: float, y: float, w: float, h: float, rotation: float, width: int, height: int, *, what: str = "rectangle"
) -> Box:
    """A Label Studio rectangle (percent, rotated about its top-left corner) -> pixel ``Box``.

    A rotated rectangle becomes its axis-aligned bounding box. The box is clamped to the image;
    a corner more than ``PERCENT_TOLERANCE`` outside it is a ``BadRequest``.
    """
    _size(width, height)
    x, y, w, h, rotation = check_ls_rect(x, y, w, h, rotation, what)
    ax, ay = x / 100.0 * width, y / 100.0 * height
    wp, hp = w / 100.0 * width, h / 100.0 * height
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    xs, ys = [], []
    for dx, dy in ((0.0, 0.0), (wp, 0.0), (wp, hp), (0.0, hp)):
        xs.append(ax + dx * cos - dy * sin)
        ys.append(ay + dx * sin + dy * cos)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    slack_x, slack_y = PERCENT_TOLERANCE / 100.0 * width, PERCENT_TOLERANCE / 100.0 * height
    if x0 < -slack_x or x1 > width + slack_x:
        edge = x0 if x0 < -slack_x else x1
        raise BadRequest(f"{what} reaches x={edge / width * 100.0:g}%, outside the image (0-100%)")
    if y0 < -slack_y or y1 > height + slack_y:
        edge = y0 if y0 < -slack_y else y1
        raise BadRequest(f"{what} reaches y={edge / height * 100.0:g}%, outside the image (0-100%)")
    x0, x1 = min(max(x0, 0.0), float(width)), min(max(x1, 0.0), float(width))
    y0, y1 = min(max(y0, 0.0), float(height)), min(max(y1, 0.0), float(height))
    if not (x0 < x1 and y0 < y1):
        raise BadRequest(f"{what} lies outside the image")
    return Box(x0, y0, x1, y1)


def box_to_ls_rect(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """A pixel ``Box`` (clamped to the image) -> Label Studio (x%, y%, width%, height%), rotation 0."""
    _size(width, height)
    x0, x1 = min(max(box.x0, 0.0), width), min(max(box.x1, 0.0), width)
    y0, y1 = min(max(box.y0, 0.0), height), min(max(box.y1, 0.0), height)
    x_pct, y_pct = pixels_to_percent(x0, y0, width, height)
    w_pct, h_pct = pixels_to_percent(x1 - x0, y1 - y0, width, height)
    return x_pct, y_pct, w_pct, h_pct


__all__ = [
    "PERCENT_TOLERANCE",
    "box_to_ls_rect",
    "check_ls_rect",
    "check_percent",
    "ls_rect_to_box",
    "percent_to_pixels",
    "pixels_to_percent",
]
