"""Engine instances -> Label Studio result regions and predictions.

Result shapes are the ones the Label Studio 1.23.2 editor reads and writes (recorded in
tests/fixtures/payloads-1.23.2.json, and the editor's result model): every region has
``id``, ``from_name``, ``to_name``, ``type``, ``original_width``, ``original_height``,
``image_rotation`` and ``value``, plus ``score`` and ``readonly`` for predictions. Percent
coordinates are of the original image.

* ``BrushLabels``: ``type "brushlabels"``, value ``{"format": "rle", "rle": [...], "brushlabels":
  [label]}``. A plain ``Brush`` (no labels) is ``type "brush"`` with ``{"format", "rle"}`` only;
  the editor's result model has no label key for it.
* ``PolygonLabels`` / ``Polygon``: ``{"points": [[x%, y%], ...], "closed": true}`` (+ labels).
* ``RectangleLabels`` / ``Rectangle``: ``{"x", "y", "width", "height", "rotation": 0}`` (+ labels).
* Plain tools labelled by a generic ``<Labels>`` on the image: the editor stores such a region
  as two results with the same ``id``, the tool's (e.g. ``brush``) and a ``labels`` one carrying
  the same geometry plus ``"labels": [label]``. We emit the same pair.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ..types import Box, Instance
from .geometry import box_to_ls_rect, pixels_to_percent
from .label_config import ControlTag, ImageProjectConfig
from .rle import encode_rle

MIN_POLYGON_AREA = 9  # pixels; smaller connected components get no polygon


def _new_id(taken: set[str]) -> str:
    while True:
        region_id = secrets.token_hex(5)  # 10 characters, like the editor's own ids
        if region_id not in taken:
            taken.add(region_id)
            return region_id


def mask_polygons(mask: np.ndarray, tolerance: float = 1.0, min_area: int = MIN_POLYGON_AREA) -> list[np.ndarray]:
    """Outer outlines of a (H, W) bool mask: one (N, 2) float array of pixel (x, y) per component.

    Components are 8-connected, largest first; those under ``min_area`` pixels are dropped and
    holes are ignored. Vertices sit on the centres of boundary pixels (``col + 0.5``), simplified
    with Douglas-Peucker at ``tolerance`` pixels (0 keeps every boundary pixel). A component too
    thin to outline gets its bounding rectangle.
    """
    mask_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask_u8, connectivity=8)
    order = sorted(range(1, count), key=lambda i: (-int(stats[i, cv2.CC_STAT_AREA]), i))
    polygons = []
    for i in order:
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            continue
        x, y = int(stats[i, cv2.CC_STAT_LEFT]), int(stats[i, cv2.CC_STAT_TOP])
        w, h = int(stats[i, cv2.CC_STAT_WIDTH]), int(stats[i, cv2.CC_STAT_HEIGHT])
        component = (labels[y : y + h, x : x + w] == i).astype(np.uint8)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=len)
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, float(tolerance), True)
        points = contour.reshape(-1, 2).astype(np.float64) + (x + 0.5, y + 0.5)
        if len(points) < 3 or cv2.contourArea(points.astype(np.float32)) <= 0:
            points = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
        polygons.append(points)
    return polygons


def _label_key(control: ControlTag, label: str | None) -> tuple[bool, dict]:
    """(emit?, the label part of ``value``) for one output control."""
    if not control.has_labels:
        return True, {}
    if label is None:
        # Unlabelled prompt: a one-label project gets that label, otherwise the user picks one.
        return True, {control.result_type: list(control.labels) if len(control.labels) == 1 else []}
    if control.labels and label not in control.labels:
        return False, {}  # this control has no such label (dynamic labels are trusted)
    return True, {control.result_type: [label]}


def _regions_for(
    control: ControlTag,
    geometry: dict,
    label: str | None,
    score: float,
    config: ImageProjectConfig,
    width: int,
    height: int,
    taken: set[str],
) -> list[dict]:
    emit, label_part = _label_key(control, label)
    if not emit:
        return []
    region_id = _new_id(taken)

    def region(from_name: str, result_type: str, value: dict) -> dict:
        return {
            "id": region_id,
            "from_name": from_name,
            "to_name": config.image_name,
            "type": result_type,
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": value,
            "score": score,
            "readonly": False,
        }

    out = [region(control.name, control.result_type, {**geometry, **label_part})]
    companion = config.region_labels
    if (
        not control.has_labels
        and companion is not None
        and label is not None
        and (not companion.labels or label in companion.labels)
    ):
        out.append(region(companion.name, "labels", {**geometry, "labels": [label]}))
    return out


def encode_regions(
    instances: Sequence[Instance],
    labels: Sequence[str | None],
    config: ImageProjectConfig,
    width: int,
    height: int,
    *,
    polygon_tolerance: float = 1.0,
    observe: Callable[[str, float], None] | None = None,
) -> list[dict]:
    """Label Studio result regions for ``instances`` of a ``width`` x ``height`` image.

    labels: one per instance (None: no label known). For each instance with a non-empty mask
    (H, W bool at the original size): a brush region (RLE) if ``config.brush``, one polygon
    region per connected component if ``config.polygon`` (Douglas-Peucker at
    ``polygon_tolerance`` pixels), a rectangle from the mask's tight box if ``config.rectangle``.
    A label that a labelled output control does not list is not written to that control.
    ``observe(stage, seconds)`` hears the time spent in RLE encoding ("rle") and polygons.
    """
    if len(labels) != len(instances):
        raise ValueError(f"got {len(instances)} instances but {len(labels)} labels; pass one label per instance")
    taken: set[str] = set()
    regions: list[dict] = []
    for instance, label in zip(instances, labels):
        mask = np.asarray(instance.mask).astype(bool, copy=False)
        if mask.shape != (height, width):
            raise ValueError(f"instance mask is {mask.shape}, expected (height, width) = {(height, width)}")
        if instance.is_empty:
            continue
        box = Box(*instance.box)  # the engine's tight mask box: no second scan of the mask
        geometries: list[tuple[ControlTag, dict]] = []
        if config.brush is not None:
            started = time.perf_counter()
            geometries.append((config.brush, {"format": "rle", "rle": encode_rle(mask)}))
            if observe is not None:
                observe("rle", time.perf_counter() - started)
        if config.polygon is not None:
            started = time.perf_counter()
            for polygon in mask_polygons(mask, polygon_tolerance):
                points = [list(pixels_to_percent(px, py, width, height)) for px, py in polygon]
                geometries.append((config.polygon, {"points": points, "closed": True}))
            if observe is not None:
                observe("polygon", time.perf_counter() - started)
        if config.rectangle is not None:
            x, y, w, h = box_to_ls_rect(box, width, height)
            geometries.append((config.rectangle, {"x": x, "y": y, "width": w, "height": h, "rotation": 0}))
        for control, geometry in geometries:
            regions.extend(_regions_for(control, geometry, label, float(instance.score), config, width, height, taken))
    return regions


def prediction(regions: list[dict], scores: Sequence[float], model_version: str) -> dict:
    """One Label Studio prediction: the regions, the mean instance score (0.0 when none)."""
    score = float(np.mean([float(s) for s in scores])) if len(scores) else 0.0
    return {"result": regions, "score": score, "model_version": model_version}


__all__ = ["MIN_POLYGON_AREA", "encode_regions", "mask_polygons", "prediction"]
