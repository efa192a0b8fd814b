"""Interactive video contexts as the real UI sends them -> keyframe prompts; bad ones -> 400."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sam3_backend.errors import BadRequest
from sam3_backend.ls.video_config import parse_video_config
from sam3_backend.ls.video_prompts import Keyframe, keyframe_box, parse_video_context

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "payloads-video-1.23.2.json"
VIDEO = json.loads(FIXTURE.read_text())
CONFIG = parse_video_config(VIDEO["label_config"])


def _contexts():
    return [item["backend_received"]["json"]["params"]["context"] for item in VIDEO["interactive"]]


def test_every_recorded_context_parses():
    queries = [parse_video_context(c, CONFIG) for c in _contexts()]
    # clicks with a region selected carry it; Submit sends {"result": []}
    assert [len(q.regions) for q in queries] == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    first, second = queries[0].regions[0], queries[1].regions[0]
    assert first.region_id == "BgZqBK5TBN"
    assert first.label is None and second.label == "car"  # value.labels missing while the label is off
    assert [k.frame for k in first.keyframes] == [1, 20]  # the box dragged on frame 20 is a keyframe
    k = first.keyframes[1]
    assert (k.x, k.y, k.width, k.height, k.enabled) == (23.59375, 24.166666666666668, 20, 18.333333333333332, True)
    assert first.fingerprint() == second.fingerprint()  # the label is not part of the keyframes
    assert queries[2].regions[0].keyframes[0].frame == 20


def test_batch_and_submit():
    assert parse_video_context(None, CONFIG) is None
    assert parse_video_context({"result": []}, CONFIG).is_empty()
    assert parse_video_context({}, CONFIG).is_empty()


def _region(**value_changes):
    region = copy.deepcopy(_contexts()[1]["result"][0])
    region["value"].update(value_changes)
    return region


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r.update(from_name="other"), "VideoRectangle"),
        (lambda r: r.update(to_name="other"), "targets"),
        (lambda r: r.update(type="rectanglelabels"), "videorectangle"),
        (lambda r: r.pop("id"), "'id'"),
        (lambda r: r["value"].update(sequence=[]), "no keyframes"),
        (lambda r: r["value"]["sequence"][0].update(frame=0), "frame=0"),
        (lambda r: r["value"]["sequence"][0].update(frame=2.5), "frame=2.5"),
        (lambda r: r["value"]["sequence"][0].update(frame="3"), "frame='3'"),
        (lambda r: r["value"]["sequence"][0].update(width=0), "positive"),
        (lambda r: r["value"]["sequence"][0].update(x=float("nan")), "finite"),
        (lambda r: r["value"]["sequence"][0].update(enabled="yes"), "enabled"),
        (lambda r: r["value"]["sequence"].append("box"), "must be an object"),
        (lambda r: r.pop("value"), "'value'"),
    ],
)
def test_malformed_regions_are_bad_requests(mutate, needle):
    region = _region()
    mutate(region)
    with pytest.raises(BadRequest) as err:
        parse_video_context({"result": [region]}, CONFIG)
    assert needle in str(err.value)


def test_other_results_ride_along_and_duplicates_collapse():
    region = _region()
    twice = copy.deepcopy(region)
    twice["value"]["sequence"][0]["x"] = 50.0
    labels = {"type": "labels", "id": "x", "value": {"labels": ["car"]}, "from_name": "videoLabels", "to_name": "video"}
    query = parse_video_context({"result": [labels, region, twice]}, CONFIG)
    assert len(query.regions) == 1 and query.regions[0].keyframes[0].x == region["value"]["sequence"][0]["x"]
    # the same frame twice in one sequence: the later entry wins, as in the editor
    seq = region["value"]["sequence"]
    seq.append(dict(seq[0], x=33.0))
    query = parse_video_context({"result": [region]}, CONFIG)
    assert [k.frame for k in query.regions[0].keyframes] == [1, 20] and query.regions[0].keyframes[0].x == 33.0


def test_keyframe_box_clips_to_the_frame_and_refuses_boxes_outside():
    key = Keyframe(frame=3, x=-10, y=50, width=30, height=60)
    box = keyframe_box(key, 200, 100)
    assert (box.x0, box.y0, box.x1, box.y1) == (0.0, 50.0, 40.0, 100.0)
    exact = keyframe_box(Keyframe(1, 25, 10, 50, 20), 320, 240)
    assert (exact.x0, exact.y0, exact.x1, exact.y1) == (80.0, 24.0, 240.0, 72.0)
    with pytest.raises(BadRequest, match="frame 7"):
        keyframe_box(Keyframe(7, 120, 10, 10, 10), 320, 240)
