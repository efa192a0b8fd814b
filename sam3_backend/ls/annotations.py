"""Label Studio annotations → per-image training targets (masks + labels). No torch here.

An annotation's ``result`` is a list of regions; the ones that carry an instance become a
``LabelledMask`` at the image's size (H, W) bool:

* ``brushlabels`` / ``brush``: Label Studio's brush RLE, decoded with ``rle.decode_rle``;
* ``polygonlabels`` / ``polygon``: ``points`` in percent, rasterised with pycocotools;
* ``rectanglelabels`` / ``rectangle``: x, y, width, height in percent, ``rotation`` in degrees
  clockwise about the top-left corner; rasterised as the (possibly rotated) polygon.

Plain tools take their label from a ``labels`` result with the same region ``id`` (how the editor
stores a ``<Labels>`` + ``<Brush>`` pair). Everything else is skipped and counted under a reason
(``SKIP_REASONS``), never raised: one bad region costs that region, one bad annotation that task.
Label names map to concept phrases with ``ImageProjectConfig.concept_text`` (``sam3_prompt``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from .label_config import ImageProjectConfig
from .rle import decode_rle

MAX_REGIONS_PER_ANNOTATION = 2000
MAX_POLYGON_POINTS = 10_000

SKIP_REASONS = {
    "cancelled": "the annotation was a skipped task (was_cancelled)",
    "empty_result": "the annotation has no regions",
    "no_usable_region": "no region of the annotation could be used",
    "too_many_regions": f"the annotation has more than {MAX_REGIONS_PER_ANNOTATION} regions",
    "unknown_label": "the region's label is not one of the project's labels",
    "no_label": "the region has no label",
    "other_control": "the region belongs to another image or control",
    "unsupported_type": "the region type carries no instance (keypoints, choices, text, ...)",
    "broken_rle": "the brush RLE could not be decoded",
    "bad_geometry": "the polygon or rectangle has invalid coordinates",
    "size_mismatch": "the region's original size differs from the image",
    "rotated_image": "the image was rotated in the editor (image_rotation != 0)",
    "empty_mask": "the region covers no pixel",
    "image_unavailable": "the task's image could not be fetched or decoded",
    "no_image_url": "the task has no image URL in its data",
}

_SHAPE_TYPES = {"brushlabels": "brush", "brush": "brush", "polygonlabels": "polygon", "polygon": "polygon",
                "rectanglelabels": "rectangle", "rectangle": "rectangle"}


@dataclass(frozen=True)
class LabelledMask:
    """One instance: its label as Label Studio writes it, and a (H, W) bool mask."""

    label: str
    mask: np.ndarray


class SkipCounter(Counter):
    """Counts skipped items per reason (keys of ``SKIP_REASONS``)."""

    def describe(self) -> dict[str, dict]:
        return {k: {"count": v, "why": SKIP_REASONS.get(k, k)} for k, v in sorted(self.items())}


def choose_annotation(annotations: Iterable[dict]) -> dict | None:
    """The annotation of a task to train on: a ground-truth one if any, else the latest updated;
    cancelled (skipped) annotations never count."""
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        return None
    return max(usable, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""), _int(a.get("id"))))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _labels_of(value: dict, result_type: str) -> list[str] | None:
    for key in (result_type, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
            return labels
    return None


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _polygon_mask(xy: Sequence[float], width: int, height: int) -> np.ndarray:
    """Pixel polygon [x0, y0, x1, y1, ...] (continuous coordinates) → (H, W) bool, via pycocotools."""
    rle = mask_utils.frPyObjects([list(map(float, xy))], height, width)
    return mask_utils.decode(mask_utils.merge(rle)).astype(bool)


def _rectangle_xy(value: dict, width: int, height: int) -> list[float] | None:
    x, y, w, h = (value.get(k) for k in ("x", "y", "width", "height"))
    rotation = value.get("rotation", 0) or 0
    if not _finite(x, y, w, h, rotation) or w <= 0 or h <= 0:
        return None
    ax, ay, wp, hp = x / 100 * width, y / 100 * height, w / 100 * width, h / 100 * height
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    xy = []
    for dx, dy in ((0.0, 0.0), (wp, 0.0), (wp, hp), (0.0, hp)):
        xy += [ax + dx * cos - dy * sin, ay + dx * sin + dy * cos]
    return xy


def _polygon_xy(value: dict, width: int, height: int) -> list[float] | None:
    points = value.get("points")
    if not isinstance(points, list) or not 3 <= len(points) <= MAX_POLYGON_POINTS:
        return None
    xy = []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) < 2 or not _finite(point[0], point[1]):
            return None
        xy += [point[0] / 100 * width, point[1] / 100 * height]
    return xy


def _region_mask(region: dict, kind: str, width: int, height: int, skipped: SkipCounter) -> np.ndarray | None:
    value = region["value"]
    ow, oh = region.get("original_width"), region.get("original_height")
    if (region.get("image_rotation") or 0) != 0:
        skipped["rotated_image"] += 1
        return None
    if kind == "brush":
        if (ow, oh) != (width, height):
            skipped["size_mismatch"] += 1
            return None
        rle = value.get("rle")
        if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
            skipped["broken_rle"] += 1
            return None
        try:
            return decode_rle(rle, height, width)
        except (ValueError, TypeError, OverflowError):
            skipped["broken_rle"] += 1
            return None
    if ow is not None and oh is not None and _finite(ow, oh) and (ow, oh) != (width, height):
        # Percent coordinates scale with the image; an aspect change means another picture.
        if abs(ow / oh - width / height) > 0.01 * (width / height):
            skipped["size_mismatch"] += 1
            return None
    xy = (_polygon_xy if kind == "polygon" else _rectangle_xy)(value, width, height)
    if xy is None:
        skipped["bad_geometry"] += 1
        return None
    return _polygon_mask(xy, width, height)


def annotation_masks(result: object, config: ImageProjectConfig, width: int, height: int,
                     skipped: SkipCounter) -> list[LabelledMask]:
    """The instances of one annotation ``result`` on a ``width`` x ``height`` image.

    Counts every skipped region in ``skipped``; returns [] (counted) for an empty or unusable one.
    """
    if not isinstance(result, list) or not result:
        skipped["empty_result"] += 1
        return []
    if len(result) > MAX_REGIONS_PER_ANNOTATION:
        skipped["too_many_regions"] += 1
        return []
    regions = [r for r in result if isinstance(r, dict) and isinstance(r.get("value"), dict)]
    labels_by_id = {
        r.get("id"): _labels_of(r["value"], "labels")
        for r in regions if r.get("type") == "labels" and isinstance(r.get("id"), (str, int))
    }
    out: list[LabelledMask] = []
    for region in regions:
        rtype = region.get("type")
        if rtype == "labels":
            continue  # carries the label of a plain-tool region with the same id
        kind = _SHAPE_TYPES.get(rtype) if isinstance(rtype, str) else None
        if kind is None:
            skipped["unsupported_type"] += 1
            continue
        if region.get("to_name") != config.image_name or config.control(str(region.get("from_name"))) is None:
            skipped["other_control"] += 1
            continue
        if rtype.endswith("labels"):
            labels = _labels_of(region["value"], rtype)
        else:
            rid = region.get("id")
            labels = labels_by_id.get(rid) if isinstance(rid, (str, int)) else None
        if not labels:
            skipped["no_label"] += 1
            continue
        known = [label for label in labels if label in config.labels]
        if not known:
            skipped["unknown_label"] += 1
            continue
        mask = _region_mask(region, kind, width, height, skipped)
        if mask is None:
            continue
        if not mask.any():
            skipped["empty_mask"] += 1
            continue
        out += [LabelledMask(label, mask) for label in known]
    if not out:
        skipped["no_usable_region"] += 1
    return out


__all__ = ["LabelledMask", "SKIP_REASONS", "SkipCounter", "annotation_masks", "choose_annotation"]
