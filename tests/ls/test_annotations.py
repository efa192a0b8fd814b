"""Label Studio annotations → training masks: every region type, and every skip reason counted."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import FULL_CONFIG
from sam3_backend.ls.annotations import SkipCounter, annotation_masks, choose_annotation
from sam3_backend.ls.label_config import parse_label_config
from sam3_backend.ls.results import encode_regions
from sam3_backend.ls.rle import encode_rle
from sam3_backend.types import Instance

XML = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="cat" sam3_prompt="tabby cat"/><Label value="dog"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>
  <RectangleLabels name="rect" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>
  <Image name="other" value="$other"/>
  <BrushLabels name="other_tag" toName="other"><Label value="cat"/></BrushLabels>
</View>
"""
CONFIG = parse_label_config(XML)
H, W = 60, 80


def disk(cx, cy, r):
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def inst(mask):
    ys, xs = np.nonzero(mask)
    return Instance(mask, 0.9, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))


def brush(mask, label="cat", **extra):
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W, "original_height": H,
            "image_rotation": 0, "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [label]}, **extra}


def run(result, config=CONFIG):
    skipped = SkipCounter()
    return annotation_masks(result, config, W, H, skipped), skipped


def test_our_own_predictions_read_back_as_the_same_masks():
    """encode_regions (what the backend predicts) → annotation_masks: brush exact, polygon close,
    rectangle = the mask's box."""
    a, b = disk(20, 20, 10), disk(55, 35, 14)
    regions = encode_regions([inst(a), inst(b)], ["cat", "dog"], CONFIG, W, H)
    got, skipped = run(regions)
    by_kind = {}
    for region, lm in zip([r for r in regions if r["type"] != "keypointlabels"], got):
        by_kind.setdefault(region["type"], []).append(lm)
    assert [m.label for m in by_kind["brushlabels"]] == ["cat", "dog"]
    assert np.array_equal(by_kind["brushlabels"][0].mask, a) and np.array_equal(by_kind["brushlabels"][1].mask, b)
    for lm, truth in zip(by_kind["polygonlabels"], (a, b)):
        iou = (lm.mask & truth).sum() / (lm.mask | truth).sum()
        assert iou > 0.85, iou
    ys, xs = np.nonzero(a)
    box = np.zeros_like(a)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    assert np.array_equal(by_kind["rectanglelabels"][0].mask, box)
    assert not skipped


def test_recorded_annotation_created_payload(payloads):
    """The real ANNOTATION_CREATED: a 30 % x 30 % 'cat' rectangle at (10 %, 10 %) of a 64x48 image."""
    ann = payloads["webhook:ANNOTATION_CREATED  [step annotation_created]"]["json"]["annotation"]
    skipped = SkipCounter()
    got = annotation_masks(ann["result"], parse_label_config(FULL_CONFIG), 64, 48, skipped)
    assert [m.label for m in got] == ["cat"]
    ys, xs = np.nonzero(got[0].mask)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (6, 26, 5, 19)  # 6.4..25.6 px, 4.8..19.2 px


def test_rotated_rectangle_is_rasterised_rotated():
    region = {"from_name": "rect", "to_name": "image", "type": "rectanglelabels", "original_width": W,
              "original_height": H, "value": {"x": 50, "y": 20, "width": 25, "height": 20, "rotation": 90,
                                               "rectanglelabels": ["dog"]}}
    (lm,), _ = run([region])
    ys, xs = np.nonzero(lm.mask)
    # Rotating 90° clockwise about (40, 12) px: x spans 40 - 12 .. 40, y spans 12 .. 12 + 20.
    assert abs(xs.min() - 28) <= 1 and abs(xs.max() + 1 - 40) <= 1
    assert abs(ys.min() - 12) <= 1 and abs(ys.max() + 1 - 32) <= 1


def test_plain_brush_takes_its_label_from_the_labels_result():
    xml = ('<View><Image name="image" value="$image"/><Labels name="lab" toName="image"><Label value="cat"/></Labels>'
           '<Brush name="b" toName="image"/></View>')
    config = parse_label_config(xml)
    mask = disk(30, 30, 8)
    regions = [{"id": "r1", "from_name": "b", "to_name": "image", "type": "brush", "original_width": W,
                "original_height": H, "value": {"format": "rle", "rle": encode_rle(mask)}},
               {"id": "r1", "from_name": "lab", "to_name": "image", "type": "labels", "original_width": W,
                "original_height": H, "value": {"labels": ["cat"]}}]
    got, skipped = run(regions, config)
    assert [m.label for m in got] == ["cat"] and np.array_equal(got[0].mask, mask) and not skipped


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda r: r["value"].update(brushlabels=["zebra"]), "unknown_label"),
        (lambda r: r["value"].update(brushlabels=[]), "no_label"),
        (lambda r: r["value"].update(rle=[1, 2, 3]), "broken_rle"),
        (lambda r: r["value"].update(rle=encode_rle(np.ones((H + 1, W), bool))), "broken_rle"),
        (lambda r: r["value"].update(rle="not a list"), "broken_rle"),
        (lambda r: r["value"].update(rle=[300, -1]), "broken_rle"),
        (lambda r: r.update(original_width=W + 20), "size_mismatch"),
        (lambda r: r.update(image_rotation=90), "rotated_image"),
        (lambda r: r.update(to_name="other", from_name="other_tag"), "other_control"),
        (lambda r: r.update(from_name="nope"), "other_control"),
        (lambda r: r.update(type="keypointlabels"), "unsupported_type"),
        (lambda r: r["value"].update(rle=encode_rle(np.zeros((H, W), bool))), "empty_mask"),
    ],
)
def test_bad_regions_are_skipped_and_counted(mutate, reason):
    good = brush(disk(20, 20, 6), "dog")
    bad = copy.deepcopy(brush(disk(50, 40, 6)))
    mutate(bad)
    got, skipped = run([bad, good])
    assert [m.label for m in got] == ["dog"]
    assert skipped == {reason: 1}


@pytest.mark.parametrize(
    "value, reason",
    [
        ({"points": [[10, 10], [20, 10]], "polygonlabels": ["cat"]}, "bad_geometry"),
        ({"points": [[10, 10], [20, "x"], [15, 30]], "polygonlabels": ["cat"]}, "bad_geometry"),
        ({"points": [[10, 10], [20, float("nan")], [15, 30]], "polygonlabels": ["cat"]}, "bad_geometry"),
        ({"points": "nope", "polygonlabels": ["cat"]}, "bad_geometry"),
    ],
)
def test_bad_polygons(value, reason):
    region = {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": W,
              "original_height": H, "value": value}
    got, skipped = run([region])
    assert got == [] and skipped == {reason: 1, "no_usable_region": 1}


def test_bad_rectangles_and_junk_items():
    rect = {"from_name": "rect", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 10, "y": 10, "width": -5, "height": 10, "rectanglelabels": ["cat"]}}
    got, skipped = run([rect, "junk", {"value": "junk"}, {"type": None, "value": {}}])
    assert got == [] and skipped["bad_geometry"] == 1 and skipped["unsupported_type"] == 1


def test_empty_and_oversized_results():
    assert run([]) == ([], {"empty_result": 1})
    assert run(None) == ([], {"empty_result": 1})
    from sam3_backend.ls import annotations as mod

    many = [brush(disk(20, 20, 3))] * (mod.MAX_REGIONS_PER_ANNOTATION + 1)
    assert run(many) == ([], {"too_many_regions": 1})


def test_polygon_vertex_cap():
    from sam3_backend.ls import annotations as mod

    n = mod.MAX_POLYGON_POINTS + 1
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    points = [[50 + 20 * np.cos(a), 50 + 20 * np.sin(a)] for a in angles]
    region = {"from_name": "poly", "to_name": "image", "type": "polygonlabels",
              "value": {"points": points, "polygonlabels": ["cat"]}}
    assert run([region])[1]["bad_geometry"] == 1
    region["value"]["points"] = points[:: 2]
    assert len(run([region])[0]) == 1


def test_choose_annotation():
    anns = [{"id": 1, "updated_at": "2026-01-02T00:00:00Z", "result": [1]},
            {"id": 2, "updated_at": "2026-01-03T00:00:00Z", "result": [2]},
            {"id": 3, "updated_at": "2026-01-04T00:00:00Z", "result": [3], "was_cancelled": True}]
    assert choose_annotation(anns)["id"] == 2
    anns[0]["ground_truth"] = True
    assert choose_annotation(anns)["id"] == 1
    assert choose_annotation([anns[2]]) is None
    assert choose_annotation(["junk"]) is None


def test_concept_text_uses_sam3_prompt():
    assert CONFIG.concept_text("cat") == "tabby cat" and CONFIG.concept_text("dog") == "dog"
