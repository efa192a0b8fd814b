"""End to end in the real labeling UI, video: Label Studio 1.23.2's video player in headless
Chromium, the sam3-backend with the tiny model behind it, all on loopback.

On a video nothing is sent while drawing, moving or seeking; the one interactive request is a
click on a label while a region is selected (``../shared/label-studio/NOTES.md``, "Video in the
real labeling UI"). The backend answers with the tracked region under the same id and the editor
replaces the region in place at once: there is no suggestion step. These tests draw a box, add a
keyframe on a later frame, click the label and check what the browser posted, what the backend
received and answered (through the recording proxy) and what the editor holds afterwards; then
Submit and read the annotation back through the API.

They share the session's Label Studio, backend, proxy and browser with the other e2e tests, with a
video project of their own (prelabel off, so opening a task sends nothing) and a fresh task per
test. The tiny model is random: the checks are on structure and wiring (ids, frames, times,
labels), not on where the tracked box goes.

Run alone: ``SAM3_E2E=1 .venv/bin/python -m pytest tests/e2e/test_browser_video.py -q``
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ls_harness import phase, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from video_clips import Shape, make_clip  # noqa: E402

pytestmark = pytest.mark.e2e

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "payloads-video-1.23.2.json").read_text())
# The config the real UI was recorded with: <Labels name="videoLabels" allowEmpty="true"> (car,
# person), <Video name="video" framerate="24">, <VideoRectangle name="box" smart="true">.
CONFIG = RECORDED["label_config"]
FRAMES, FPS, W, H = 24, 24, 160, 120  # Chromium shows the clip at zoom 1 (it fits the stage)
CAR = Shape((16, 36), (3, 0), (40, 30), (220, 40, 40))  # moves right 3 px per frame
LATER = 12  # the Label Studio frame (1-based) where the test adds a second keyframe
# How far a drawn box may be from where the test dragged (percent of the frame): one screen pixel
# is 0.6 % of this clip; the pointer lands on whole pixels.
COORD_TOLERANCE = 1.5


# --------------------------------------------------------------------------------------------
# The project and its tasks


@dataclass
class VideoProject:
    id: int
    ml_id: int
    clip: Path

    def new_task(self, label_studio) -> int:
        """Upload the clip once more as a new task (Label Studio keeps a draft of every task
        opened, which would change what a later test finds there); return its id."""
        before = {t["id"] for t in label_studio.tasks(self.id)}
        label_studio.upload_files(self.id, [self.clip])
        new = [t for t in label_studio.tasks(self.id) if t["id"] not in before]
        assert len(new) == 1, f"uploading {self.clip.name} made tasks {[t['id'] for t in new]}"
        assert new[0]["data"]["video"].endswith(".webm"), new[0]["data"]
        return new[0]["id"]


@pytest.fixture(scope="module")
def video_project(label_studio, backend, proxy, tmp_path_factory) -> VideoProject:
    """Prelabel off (README's setting for interactive work): opening a task sends nothing."""
    clip = tmp_path_factory.mktemp("browser-video") / "car.webm"
    make_clip(clip, frames=FRAMES, width=W, height=H, fps=FPS, shapes=[CAR])  # VP8: Chromium plays it
    with phase("browser video: create project"):
        body = {"title": "sam3 e2e browser: video", "label_config": CONFIG, "show_collab_predictions": False}
        project = label_studio.api("POST", "/api/projects", json=body)
        ml = label_studio.connect_ml_backend(project["id"], proxy.url, title="sam3 video (browser e2e)")
    return VideoProject(id=project["id"], ml_id=ml["id"], clip=clip)


# --------------------------------------------------------------------------------------------
# Checks


def fractions(box) -> tuple[tuple[float, float], tuple[float, float]]:
    """A pixel XYXY box of the clip as two corner points in fractions of the frame."""
    x0, y0, x1, y1 = box
    return (x0 / W, y0 / H), (x1 / W, y1 / H)


def centre(box) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2 / W, (y0 + y1) / 2 / H


def check_keyframe(key: dict, frame: int, box) -> None:
    """A keyframe the user drew: on ``frame``, where ``box`` (pixels) is."""
    x0, y0, x1, y1 = box
    want = {"x": x0 / W * 100, "y": y0 / H * 100, "width": (x1 - x0) / W * 100, "height": (y1 - y0) / H * 100}
    assert key["frame"] == frame and key["enabled"] is True, key
    assert all(abs(key[k] - v) < COORD_TOLERANCE for k, v in want.items()), (key, want)
    assert abs(key["time"] - frame / FPS) < 1e-6, key


def check_track(region: dict, region_id: str) -> None:
    """A tracked region: the drawn one's id, keyframes on 1-based frames of this clip, from the
    first frame to the last (the tiny model never loses the object with the e2e thresholds)."""
    assert region["id"] == region_id, (region["id"], region_id)
    assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
    value = region["value"]
    assert value["framesCount"] == FRAMES and abs(value["duration"] - FRAMES / FPS) < 0.01, value
    frames = [k["frame"] for k in value["sequence"]]
    assert frames == sorted(set(frames)), frames
    assert frames[0] == 1 and frames[-1] == FRAMES and len(frames) >= 2, frames
    for key in value["sequence"]:
        assert abs(key["time"] - key["frame"] / FPS) < 1e-6, key
        assert 0 <= key["x"] <= 100 and 0 <= key["y"] <= 100, key
        assert 0 < key["width"] <= 100 and 0 < key["height"] <= 100, key


def tracked_region(proxy, mark: int, interaction) -> dict:
    """The backend's side of one label click: exactly one interactive /predict since ``mark``,
    carrying what the browser posted, answered 200 with one region, which Label Studio passed
    back to the browser as it was. Returns that region."""
    sent = [e for e in proxy.find("POST", "/predict", since=mark) if e.request_json["params"].get("context")]
    assert len(sent) == 1, f"expected one interactive /predict, got {len(sent)}:\n" + proxy.report(10)
    exchange = sent[0]
    assert exchange.status == 200, exchange.summary(2000)
    assert exchange.request_json["params"]["context"] == {"result": interaction.context}
    assert "errors" not in interaction.answer, f"Label Studio reports: {interaction.answer['errors']}"
    assert exchange.response_json["results"][0]["result"] == interaction.result, "LS passed on something else"
    count = len(interaction.result)
    assert count == 1, f"the backend answered {count} regions: {exchange.summary(2000)}"
    return interaction.result[0]


def wait_replaced(labeling, region: dict) -> dict:
    """Wait until the editor holds ``region`` (by id, keyframe frames and labels) as its only
    region, with no suggestions; return it as the editor serializes it."""
    want = [region["id"], [k["frame"] for k in region["value"]["sequence"]], region["value"].get("labels")]
    want = json.dumps(want, separators=(",", ":"))  # as JSON.stringify writes it
    labeling.wait_state(
        "(() => { const rs = a.serializeAnnotation();"
        " return a.suggestions.size === 0 && rs.length === 1 && JSON.stringify([rs[0].id,"
        f" rs[0].value.sequence.map(k => k.frame), rs[0].value.labels]) === {json.dumps(want)}; }})()"
    )
    [shown] = labeling.results()
    return shown


def interactive_sent(proxy, mark: int) -> list:
    """The /predict calls since ``mark`` that carry a context (interactive ones)."""
    sent = proxy.find("POST", "/predict", since=mark)
    return [e for e in sent if e.request_json["params"].get("context") is not None]


# --------------------------------------------------------------------------------------------
# Tests


def test_label_click_tracks_the_box_in_place_and_submit_stores_the_track(label_studio, proxy, video_project, labeling):
    task_id = video_project.new_task(label_studio)
    mark = proxy.mark()
    with phase("browser video: open task"):
        labeling.open_video_task(video_project.id, task_id, CONFIG)
    assert labeling.video_box()["frames"] == FRAMES
    assert labeling.results() == []
    labeling.enable_auto_annotation()

    # Draw the car's box on frame 1 (no label chosen: the label click comes last), then move it
    # on a later frame to where the car is there: a second keyframe.
    region = labeling.draw_video_box(*fractions(CAR.box(0)))
    region_id = region["id"]
    [key] = region["value"]["sequence"]
    check_keyframe(key, 1, CAR.box(0))
    labeling.seek_frame(LATER)
    dx = (CAR.box(LATER - 1)[0] - CAR.box(0)[0]) / W  # LS frame N shows decoded frame N - 1
    cx, cy = centre(CAR.box(0))
    region = labeling.move_video_box(region_id, (cx, cy), (cx + dx, cy))
    first, later = region["value"]["sequence"]
    assert first == key
    check_keyframe(later, LATER, CAR.box(LATER - 1))
    assert "labels" not in region["value"], region
    assert not proxy.find("POST", "/predict", since=mark), "opening, drawing, seeking, moving: nothing is sent"

    labeling.select_video_region(region_id, *centre(CAR.box(LATER - 1)))
    mark = proxy.mark()
    with phase("browser video: label click (UI round trip, tracking)"):
        click = labeling.click_label("videoLabels", "car")
    # The browser sent the region as the editor held it, with both keyframes and the label now on.
    assert click.context == [{**region, "value": {**region["value"], "labels": ["car"]}}], click.context
    track = tracked_region(proxy, mark, click)
    check_track(track, region_id)
    assert track["value"]["labels"] == ["car"], track["value"]

    # Replaced in place: the same region, now with the tracked keyframes; no suggestion step.
    shown = wait_replaced(labeling, track)
    assert shown["value"]["sequence"] == track["value"]["sequence"]
    assert labeling.state().selected == [region_id]

    mark = proxy.mark()
    with phase("browser video: submit"):
        created = labeling.submit(task_id)
    annotations = label_studio.api("GET", f"/api/tasks/{task_id}/annotations/")
    assert [a["id"] for a in annotations] == [created["id"]]
    [stored] = annotations[0]["result"]
    check_track(stored, region_id)
    assert stored["value"]["sequence"] == track["value"]["sequence"]
    assert stored["value"]["labels"] == ["car"]
    # Submit's own requests (one per region): empty context, answered at once with nothing.
    empties = wait_for(lambda: interactive_sent(proxy, mark), timeout=30, what="the /predict sent on Submit")
    for exchange in empties:
        assert exchange.request_json["params"]["context"] == {"result": []}, exchange.summary(2000)
        assert exchange.status == 200 and exchange.response_json["results"][0]["result"] == [], exchange.summary(2000)
        assert exchange.seconds < 5, exchange.summary(600)


def test_label_chosen_before_drawing_is_turned_off_then_on(label_studio, proxy, video_project, labeling):
    """Label first, as with the image tools: the box is drawn with the label on, so the click on
    that label turns it off (the backend tracks the box unlabelled), and a second click turns it
    back on: the region now holds the backend's own keyframes, which are not prompts, so the same
    track comes back, labelled."""
    task_id = video_project.new_task(label_studio)
    labeling.open_video_task(video_project.id, task_id, CONFIG)
    labeling.enable_auto_annotation()
    labeling.select_label("videoLabels", "car")
    region = labeling.draw_video_box(*fractions(CAR.box(0)))
    region_id = region["id"]
    assert region["value"]["labels"] == ["car"], region
    labeling.select_video_region(region_id, *centre(CAR.box(0)))

    mark = proxy.mark()
    with phase("browser video: label click (UI round trip, tracking)"):
        off = labeling.click_label("videoLabels", "car")
    assert off.context == [{**region, "value": {k: v for k, v in region["value"].items() if k != "labels"}}]
    track = tracked_region(proxy, mark, off)
    check_track(track, region_id)
    assert "labels" not in track["value"], track["value"]
    wait_replaced(labeling, track)

    mark = proxy.mark()
    on = labeling.click_label("videoLabels", "car")
    [sent] = on.context
    assert sent["id"] == region_id and sent["value"]["labels"] == ["car"]
    assert sent["value"]["sequence"] == track["value"]["sequence"], "the editor sent other keyframes than it got"
    again = tracked_region(proxy, mark, on)
    check_track(again, region_id)
    assert again["value"]["labels"] == ["car"]
    assert again["value"]["sequence"] == track["value"]["sequence"]
    wait_replaced(labeling, again)
