"""parse_context and to_engine_prompts, against real Label Studio 1.23.2 payloads and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam3_backend.errors import BadRequest
from sam3_backend.ls.label_config import parse_label_config
from sam3_backend.ls.prompts import (
    EnginePrompts,
    InteractiveQuery,
    KeypointPrompt,
    RectanglePrompt,
    parse_context,
    to_engine_prompts,
)
from sam3_backend.types import Box, ConceptPrompt, GeometryPrompt, Point

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads-1.23.2.json"

# Full version of the recorded project's config (the fixture's copy is truncated).
CONFIG_XML = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="cat" smart="true"/><Label value="dog" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="cat"/><Label value="dog"/>
  </RectangleLabels>
  <TextArea name="prompt" toName="image" editable="true"/>
</View>
"""
CONFIG = parse_label_config(CONFIG_XML)
W, H = 64, 48


def predict_payloads():
    payloads = json.loads(FIXTURES.read_text())
    return [(key, p["json"]) for key, p in payloads.items() if p["path"] == "/predict"]


def kp(x, y, positive=True, label="cat", rid=None):
    item = {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    if positive is not None:
        item["is_positive"] = positive
    if rid:
        item["id"] = rid
    return item


def rect(x, y, w, h, label="cat", rotation=0, origin="manual"):
    return {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": origin,
    }


def textarea(*texts):
    return {"value": {"text": list(texts)}, "from_name": "prompt", "to_name": "image", "type": "textarea"}


# --- every recorded /predict payload --------------------------------------------------------


@pytest.mark.parametrize("key, payload", predict_payloads(), ids=[k for k, _ in predict_payloads()])
def test_every_recorded_predict_payload_parses(key, payload):
    context = payload["params"]["context"]
    query = parse_context(context, CONFIG)
    if context is None:
        assert query is None
        return
    assert isinstance(query, InteractiveQuery)
    assert not query.is_empty()
    prompts = to_engine_prompts(query, W, H)
    assert isinstance(prompts, EnginePrompts) and not prompts.is_empty()
    assert len(prompts.object_labels) == len(prompts.objects)
    for obj in prompts.objects:
        for point in obj.points:
            assert 0 <= point.x <= W and 0 <= point.y <= H


def test_recorded_two_keypoints_positive_and_negative():
    payloads = dict(predict_payloads())
    query = parse_context(
        payloads["predict:interactive:keypointlabels:n=2  [step interactive_keypoint]"]["params"]["context"], CONFIG
    )
    assert query.keypoints == (KeypointPrompt(50.0, 50.0, True, "cat"), KeypointPrompt(10.0, 10.0, False, "cat"))
    assert query.rectangles == () and query.text is None and query.label == "cat"
    prompts = to_engine_prompts(query, W, H)
    (obj,) = prompts.objects
    assert obj.box is None
    assert [(p.x, p.y, p.positive) for p in obj.points] == [
        (32.0, 24.0, True),
        (pytest.approx(6.4), pytest.approx(4.8), False),
    ]
    assert prompts.object_labels == ("cat",)
    assert prompts.concept is None


def test_recorded_prediction_plus_manual_rectangle_gives_one_object():
    """The earlier prediction (origin "prediction", 25%,25% 50%x50%) rides along but is no prompt."""
    payloads = dict(predict_payloads())
    key = "predict:interactive:rectanglelabels:n=2  [step real_ui_smart_keypoint_rectangle]"
    context = payloads[key]["params"]["context"]
    assert [r["origin"] for r in context["result"]] == ["prediction", "manual"]
    query = parse_context(context, CONFIG)
    assert len(query.rectangles) == 1
    prompts = to_engine_prompts(query, W, H)
    (only,) = (obj.box for obj in prompts.objects)
    x, y, w, h = 5.0370065789473655, 5.016447368421053, 14.92598684210526, 14.967105263157892
    expected = (x * W / 100, y * H / 100, (x + w) * W / 100, (y + h) * H / 100)
    assert (only.x0, only.y0, only.x1, only.y1) == pytest.approx(expected)
    assert all(obj.points == () for obj in prompts.objects)
    # The same regions, both drawn by the user, are two objects.
    for region in context["result"]:
        region["origin"] = "manual"
    first, second = (obj.box for obj in to_engine_prompts(parse_context(context, CONFIG), W, H).objects)
    assert first == Box(16.0, 12.0, 48.0, 36.0)
    assert (second.x0, second.y0, second.x1, second.y1) == pytest.approx(expected)


# --- context shapes ------------------------------------------------------------------------


def test_none_context_is_batch():
    assert parse_context(None, CONFIG) is None


def test_empty_result_is_empty_query():
    query = parse_context({"result": []}, CONFIG)
    assert query == InteractiveQuery()
    assert query.is_empty()
    assert to_engine_prompts(query, W, H) == EnginePrompts()
    assert parse_context({}, CONFIG).is_empty()


def test_missing_is_positive_means_positive():
    query = parse_context({"result": [kp(10, 10, positive=None)]}, CONFIG)
    assert query.keypoints[0].positive is True


def test_keypoints_only_negative_give_no_object():
    query = parse_context({"result": [kp(10, 10, positive=False)]}, CONFIG)
    assert not query.is_empty()
    assert to_engine_prompts(query, W, H).objects == ()


def test_one_rectangle_plus_points_is_one_object():
    query = parse_context({"result": [kp(50, 50), rect(25, 25, 50, 50), kp(90, 90, False)]}, CONFIG)
    prompts = to_engine_prompts(query, W, H)
    assert len(prompts.objects) == 1
    obj = prompts.objects[0]
    assert obj.box == Box(16.0, 12.0, 48.0, 36.0)
    assert obj.points == (Point(32.0, 24.0, True), Point(57.6, 43.2, False))


def test_several_rectangles_group_points_into_smallest_containing():
    context = {
        "result": [
            rect(0, 0, 100, 100, label="dog"),  # whole image
            rect(10, 10, 20, 20, label="cat"),  # small box inside it
            kp(15, 15),  # inside both -> small box
            kp(80, 80, False),  # inside the big box only
            kp(101.0, 50),  # clamped onto the edge: inside the big box
        ]
    }
    prompts = to_engine_prompts(parse_context(context, CONFIG), 100, 100)
    big, small = prompts.objects
    assert big.box == Box(0.0, 0.0, 100.0, 100.0)
    assert big.points == (Point(80.0, 80.0, False), Point(100.0, 50.0, True))
    assert small.box == Box(10.0, 10.0, 30.0, 30.0)
    assert small.points == (Point(15.0, 15.0, True),)
    assert prompts.object_labels == ("dog", "cat")


def test_points_outside_every_rectangle_form_one_more_object():
    context = {
        "result": [
            rect(0, 0, 20, 20),
            rect(50, 50, 20, 20, label="dog"),
            kp(90, 10, label="dog"),
            kp(90, 20, False),
            kp(5, 5),
        ]
    }
    prompts = to_engine_prompts(parse_context(context, CONFIG), 100, 100)
    assert len(prompts.objects) == 3
    assert prompts.objects[0].points == (Point(5.0, 5.0, True),)
    assert prompts.objects[1].points == ()
    assert prompts.objects[2] == GeometryPrompt(points=(Point(90.0, 10.0, True), Point(90.0, 20.0, False)), box=None)
    assert prompts.object_labels == ("cat", "dog", "dog")


def test_negative_points_outside_every_rectangle_are_dropped():
    context = {"result": [rect(0, 0, 20, 20), rect(50, 50, 20, 20), kp(90, 10, False)]}
    prompts = to_engine_prompts(parse_context(context, CONFIG), 100, 100)
    assert len(prompts.objects) == 2


def test_text_with_boxes_is_a_concept_with_exemplars():
    context = {"result": [textarea("red car"), rect(25, 25, 50, 50), kp(10, 10)]}
    query = parse_context(context, CONFIG)
    assert query.text == "red car"
    prompts = to_engine_prompts(query, W, H)
    assert prompts.objects == ()
    assert prompts.concept == ConceptPrompt(text="red car", exemplars=(Box(16.0, 12.0, 48.0, 36.0, positive=True),))


def test_text_alone_and_latest_entry_wins():
    query = parse_context({"result": [textarea("dog", "  Cat  ")]}, CONFIG)
    assert query.text == "Cat"
    assert query.label == "cat"  # the typed text names a project label
    assert to_engine_prompts(query, W, H) == EnginePrompts(concept=ConceptPrompt(text="Cat"))


def test_text_underscore_label_prompts_with_the_phrase_and_labels_with_the_label():
    """Label Studio's Grounding DINO/SAM convention: "brown dog_cat" prompts "brown dog", labels cat."""
    query = parse_context({"result": [textarea("brown dog_cat")]}, CONFIG)
    assert (query.text, query.label) == ("brown dog", "cat")
    assert to_engine_prompts(query, W, H).concept == ConceptPrompt(text="brown dog")
    # an underscore that does not name a label is part of the phrase
    query = parse_context({"result": [textarea("fire_hydrant")]}, CONFIG)
    assert (query.text, query.label) == ("fire_hydrant", None)
    query = parse_context({"result": [textarea("_dog")]}, CONFIG)
    assert query.text == "_dog"


def test_context_text_key_is_a_concept():
    query = parse_context({"result": [], "text": "traffic light"}, CONFIG)
    assert query.text == "traffic light" and query.label is None
    assert not query.is_empty()


def test_too_long_text_is_bad_request():
    with pytest.raises(BadRequest, match="short noun phrase"):
        parse_context({"result": [textarea("x" * 1000)]}, CONFIG)


def test_generic_labels_result_labels_the_region_with_same_id():
    config = parse_label_config("""
        <View>
          <Image name="image" value="$image"/>
          <Labels name="classes" toName="image"><Label value="cat"/></Labels>
          <Brush name="mask" toName="image"/>
          <Rectangle name="box" toName="image" smart="true"/>
        </View>
        """)
    geometry = {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0}
    context = {
        "result": [
            {"id": "r1", "from_name": "box", "to_name": "image", "type": "rectangle", "value": dict(geometry)},
            {
                "id": "r1",
                "from_name": "classes",
                "to_name": "image",
                "type": "labels",
                "value": {**geometry, "labels": ["cat"]},
            },
        ]
    }
    query = parse_context(context, config)
    assert query.rectangles == (RectanglePrompt(10, 10, 20, 20, 0, "cat"),)
    assert query.label == "cat"


def test_brush_regions_in_context_are_ignored():
    brush = {
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "value": {"format": "rle", "rle": [0], "brushlabels": ["cat"]},
    }
    query = parse_context({"result": [brush, kp(10, 10)]}, CONFIG)
    assert len(query.keypoints) == 1


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, message",
    [
        ({**kp(10, 10), "from_name": "ghost"}, 'comes from "ghost", which is not a control on image "image"'),
        ({**kp(10, 10), "type": "videorectangle", "from_name": "kp"}, 'type "videorectangle"'),
        ({**kp(10, 10), "type": "rectanglelabels"}, 'control "kp" is a KeyPointLabels'),
        ({**kp(10, 10), "to_name": "other"}, 'targets "other"'),
        ({**kp(10, 10), "value": {"y": 10, "keypointlabels": ["cat"]}}, "has no value.x"),
        ({**kp(10, 10), "value": {"x": "10", "y": 10}}, "value.x='10'"),
        (kp(130, 10), "keypoint at x=130% is outside the image"),
        ({**kp(10, 10), "is_positive": "yes"}, "is_positive='yes'"),
        (rect(10, 10, -5, 10), "both must be positive"),
        ({**rect(10, 10, 5, 5), "value": {"x": 1, "y": 1, "width": 5}}, "has no value.height"),
        ({**rect(10, 10, 5, 5), "value": {"x": 1, "y": 1, "width": 5, "height": None}}, "has no value.height"),
        ({"type": "keypointlabels", "to_name": "image", "value": {"x": 1, "y": 1}}, 'comes from "None"'),
        ({"from_name": "kp", "value": {}}, "has no 'type'"),
        ({**kp(10, 10), "value": [1, 2]}, "has no 'value' object"),
        ("not a region", "must be an object"),
    ],
)
def test_malformed_regions_are_bad_request(item, message):
    with pytest.raises(BadRequest) as err:
        parse_context({"result": [item]}, CONFIG)
    assert message in str(err.value)
    assert err.value.status == 400


def test_malformed_context_is_bad_request():
    with pytest.raises(BadRequest, match="params.context"):
        parse_context(["result"], CONFIG)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="must be a list"):
        parse_context({"result": {"x": 1}}, CONFIG)
    with pytest.raises(BadRequest, match="context.text"):
        parse_context({"result": [], "text": 5}, CONFIG)


def test_rotated_rectangle_out_of_image_fails_at_conversion():
    query = parse_context({"result": [rect(5, 50, 20, 20, rotation=90)]}, CONFIG)
    with pytest.raises(BadRequest, match="outside the image"):
        to_engine_prompts(query, 100, 100)
