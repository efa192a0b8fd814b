"""encode_regions / prediction: the shapes Label Studio renders, decoded back to the masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from sam3_backend.ls.label_config import parse_label_config
from sam3_backend.ls.results import encode_regions, mask_polygons, prediction
from sam3_backend.types import Box, Instance

ALL_OUTPUTS_XML = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="cat"/><Label value="dog"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/><Label value="dog"/></KeyPointLabels>
</View>
"""
ALL = parse_label_config(ALL_OUTPUTS_XML)
H, W = 60, 80


def instance(mask, score=0.9):
    ys, xs = np.nonzero(mask)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (0, 0, 0, 0)
    return Instance(mask=mask, score=score, box=box)


def rect_mask(x0, y0, x1, y1, h=H, w=W):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def disk_mask(cx, cy, r, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def l_mask():
    mask = rect_mask(10, 10, 50, 20)
    mask[10:50, 10:22] = True
    return mask


def decode_brush(region, h=H, w=W):
    flat = decode_rle(region["value"]["rle"])
    return flat.reshape(h, w, 4)[:, :, 3] > 0


def rasterise(points_pct, h=H, w=W):
    """Fill a Label Studio polygon (vertices at pixel centres) back into a mask."""
    pts = np.array([[x * w / 100 - 0.5, y * h / 100 - 0.5] for x, y in points_pct])
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def by_type(regions, result_type):
    return [r for r in regions if r["type"] == result_type]


def test_region_shapes_names_and_labels():
    regions = encode_regions([instance(rect_mask(8, 6, 40, 30), 0.75)], ["dog"], ALL, W, H)
    assert [r["type"] for r in regions] == ["brushlabels", "polygonlabels", "rectanglelabels"]
    for region in regions:
        assert set(region) == {
            "id",
            "from_name",
            "to_name",
            "type",
            "original_width",
            "original_height",
            "image_rotation",
            "value",
            "score",
            "readonly",
        }
        assert region["to_name"] == "image"
        assert (region["original_width"], region["original_height"], region["image_rotation"]) == (W, H, 0)
        assert region["score"] == 0.75 and region["readonly"] is False
        assert region["value"][region["type"]] == ["dog"]
        assert isinstance(region["id"], str) and 1 <= len(region["id"]) <= 16
    assert [r["from_name"] for r in regions] == ["tag", "poly", "rect"]
    assert len({r["id"] for r in regions}) == 3
    brush = regions[0]["value"]
    assert brush["format"] == "rle" and all(isinstance(v, int) for v in brush["rle"])
    assert regions[1]["value"]["closed"] is True


def test_results_validate_against_label_studio_sdk():
    regions = encode_regions([instance(disk_mask(40, 30, 12), 0.8)], ["cat"], ALL, W, H)
    pred = prediction(regions, [0.8], "sam3-test")
    assert LabelInterface(ALL_OUTPUTS_XML).validate_prediction(pred)


@pytest.mark.parametrize(
    "mask",
    [rect_mask(8, 6, 40, 30), disk_mask(40, 30, 15), l_mask(), rect_mask(0, 0, W, H)],
    ids=["rectangle", "disk", "L", "full"],
)
def test_brush_rle_decodes_to_the_mask(mask):
    (brush,) = by_type(encode_regions([instance(mask)], ["cat"], ALL, W, H), "brushlabels")
    np.testing.assert_array_equal(decode_brush(brush), mask)


@pytest.mark.parametrize(
    "mask",
    [rect_mask(8, 6, 40, 30), disk_mask(40, 30, 15), l_mask(), rect_mask(0, 0, W, H)],
    ids=["rectangle", "disk", "L", "full"],
)
def test_polygon_rasterises_back_with_high_iou(mask):
    (poly,) = by_type(encode_regions([instance(mask)], ["cat"], ALL, W, H), "polygonlabels")
    points = poly["value"]["points"]
    assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in points)
    assert iou(rasterise(points), mask) > 0.9


def test_polygon_simplification_reduces_points():
    mask = disk_mask(40, 30, 20)
    fine = by_type(encode_regions([instance(mask)], ["cat"], ALL, W, H, polygon_tolerance=0), "polygonlabels")[0]
    coarse = by_type(encode_regions([instance(mask)], ["cat"], ALL, W, H, polygon_tolerance=2.0), "polygonlabels")[0]
    assert len(coarse["value"]["points"]) < len(fine["value"]["points"])
    assert iou(rasterise(coarse["value"]["points"]), mask) > 0.9


def test_one_polygon_per_component_and_tiny_ones_dropped():
    mask = rect_mask(5, 5, 25, 25) | rect_mask(50, 30, 70, 50)
    mask[55, 2] = True  # a one-pixel speck
    polys = by_type(encode_regions([instance(mask)], ["cat"], ALL, W, H), "polygonlabels")
    assert len(polys) == 2
    assert len({p["id"] for p in polys}) == 2
    union = rasterise(polys[0]["value"]["points"]) | rasterise(polys[1]["value"]["points"])
    assert iou(union, mask) > 0.9


def test_polygon_ignores_holes():
    ring = disk_mask(40, 30, 20) & ~disk_mask(40, 30, 8)
    (poly,) = by_type(encode_regions([instance(ring)], ["cat"], ALL, W, H), "polygonlabels")
    assert iou(rasterise(poly["value"]["points"]), disk_mask(40, 30, 20)) > 0.9


def test_thin_component_still_gets_a_polygon():
    line = rect_mask(10, 20, 60, 21)  # one pixel tall, 50 wide
    (poly,) = mask_polygons(line)[:1]
    assert len(poly) >= 3


def test_rectangle_is_the_mask_bounding_box():
    mask = disk_mask(30, 25, 10)
    (region,) = by_type(encode_regions([instance(mask)], ["cat"], ALL, W, H), "rectanglelabels")
    value = region["value"]
    ys, xs = np.nonzero(mask)
    assert value["x"] == pytest.approx(xs.min() / W * 100)
    assert value["y"] == pytest.approx(ys.min() / H * 100)
    assert value["width"] == pytest.approx((xs.max() + 1 - xs.min()) / W * 100)
    assert value["height"] == pytest.approx((ys.max() + 1 - ys.min()) / H * 100)
    assert value["rotation"] == 0


def test_empty_instances_are_skipped_and_labels_follow_instances():
    instances = [instance(rect_mask(0, 0, 10, 10)), instance(np.zeros((H, W), bool)), instance(disk_mask(50, 30, 6))]
    config = parse_label_config(
        '<View><Image name="photo" value="$img"/>'
        '<BrushLabels name="mask" toName="photo"><Label value="cat"/><Label value="dog"/></BrushLabels></View>'
    )
    regions = encode_regions(instances, ["cat", "dog", "dog"], config, W, H)
    assert [r["value"]["brushlabels"] for r in regions] == [["cat"], ["dog"]]
    assert all(r["from_name"] == "mask" and r["to_name"] == "photo" for r in regions)


def test_plain_brush_has_no_label_key():
    config = parse_label_config('<View><Image name="image" value="$image"/><Brush name="m" toName="image"/></View>')
    (region,) = encode_regions([instance(rect_mask(1, 1, 9, 9))], [None], config, W, H)
    assert region["type"] == "brush"
    assert set(region["value"]) == {"format", "rle"}


def test_plain_tools_with_generic_labels_emit_a_labels_companion():
    xml = """
    <View>
      <Image name="image" value="$image"/>
      <Labels name="classes" toName="image"><Label value="cat"/><Label value="dog"/></Labels>
      <Brush name="m" toName="image"/>
      <Rectangle name="r" toName="image"/>
    </View>
    """
    config = parse_label_config(xml)
    regions = encode_regions([instance(rect_mask(1, 1, 9, 9))], ["dog"], config, W, H)
    assert [(r["from_name"], r["type"]) for r in regions] == [
        ("m", "brush"),
        ("classes", "labels"),
        ("r", "rectangle"),
        ("classes", "labels"),
    ]
    assert regions[0]["id"] == regions[1]["id"] != regions[2]["id"] == regions[3]["id"]
    assert regions[1]["value"]["labels"] == ["dog"] and regions[1]["value"]["rle"] == regions[0]["value"]["rle"]
    assert regions[3]["value"]["labels"] == ["dog"] and regions[3]["value"]["x"] == regions[2]["value"]["x"]


def test_label_unknown_to_a_control_is_not_written_there():
    xml = """
    <View>
      <Image name="image" value="$image"/>
      <BrushLabels name="b" toName="image"><Label value="cat"/></BrushLabels>
      <RectangleLabels name="r" toName="image"><Label value="cat"/><Label value="person"/></RectangleLabels>
    </View>
    """
    config = parse_label_config(xml)
    regions = encode_regions([instance(rect_mask(1, 1, 9, 9))], ["person"], config, W, H)
    assert [r["from_name"] for r in regions] == ["r"]


def test_missing_label_uses_the_only_label_or_none():
    one = parse_label_config(
        '<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image"><Label value="cat"/></BrushLabels></View>'
    )
    (region,) = encode_regions([instance(rect_mask(1, 1, 9, 9))], [None], one, W, H)
    assert region["value"]["brushlabels"] == ["cat"]
    (region,) = by_type(encode_regions([instance(rect_mask(1, 1, 9, 9))], [None], ALL, W, H), "brushlabels")
    assert region["value"]["brushlabels"] == []


def test_ids_unique_across_many_regions():
    masks = [rect_mask(i, i, i + 5, i + 5) for i in range(0, 50, 2)]
    regions = encode_regions([instance(m) for m in masks], ["cat"] * len(masks), ALL, W, H)
    assert len({r["id"] for r in regions}) == len(regions) == 3 * len(masks)


def test_mismatched_inputs_are_programming_errors():
    with pytest.raises(ValueError, match="one label per instance"):
        encode_regions([instance(rect_mask(1, 1, 5, 5))], [], ALL, W, H)
    with pytest.raises(ValueError, match="expected"):
        encode_regions([instance(np.ones((5, 5), bool))], ["cat"], ALL, W, H)


def test_prediction_scores():
    assert prediction([], [], "v1") == {"result": [], "score": 0.0, "model_version": "v1"}
    pred = prediction([{"id": "a"}], [0.5, 1.0], "v2")
    assert pred["score"] == pytest.approx(0.75) and pred["model_version"] == "v2" and pred["result"] == [{"id": "a"}]
    assert isinstance(pred["score"], float)
