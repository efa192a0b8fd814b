"""End to end, video: real Label Studio 1.23.2 <-> sam3-backend (tiny random SAM 3) on loopback.

A video project with the labeling UI's recorded config, a PyAV-generated VP8 WebM uploaded as a
task, "Retrieve predictions" (text-prompted tracks stored as a prediction and read back through
the API), and the interactive request the UI sends when a label is clicked on a selected region
(a box-prompted track, returned under the region's id), then Submit's empty request.

The tiny model is random: the checks are on structure (frames, times, ids, labels), not quality.
The backend runs with SAM3_VIDEO_SCORE_THRESHOLD=0 and SAM3_VIDEO_HOTSTART_FRAMES=0 (conftest).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ls_harness import phase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from video_clips import Shape, make_clip  # noqa: E402

pytestmark = pytest.mark.e2e

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "payloads-video-1.23.2.json").read_text())
CONFIG = RECORDED["label_config"]  # <Video framerate="24">, <VideoRectangle name="box">, labels car / person
FRAMES, FPS, W, H = 48, 24, 320, 240
CAR = Shape((20, 60), (3, 0), (60, 40), (220, 40, 40))


@pytest.fixture(scope="module")
def video_project(label_studio, backend, proxy, tmp_path_factory):
    ls = label_studio
    folder = tmp_path_factory.mktemp("video")
    clip = folder / "clip.webm"
    make_clip(clip, frames=FRAMES, width=W, height=H, fps=FPS, shapes=[CAR])
    with phase("video: create project, connect backend, upload a WebM"):
        project = ls.create_project("sam3 e2e video", CONFIG)
        ml = ls.connect_ml_backend(project["id"], proxy.url, title="sam3 video (e2e)")
        ls.upload_files(project["id"], [clip])
        [task] = ls.tasks(project["id"])
    assert task["data"]["video"].startswith(f"/data/upload/{project['id']}/") and task["data"]["video"].endswith(".webm")
    return {"id": project["id"], "ml_id": ml["id"], "task": task}


def _check_track(region: dict) -> None:
    assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
    value = region["value"]
    assert value["framesCount"] == FRAMES and abs(value["duration"] - FRAMES / FPS) < 0.01
    frames = [k["frame"] for k in value["sequence"]]
    assert frames == sorted(set(frames)) and 1 <= frames[0] and frames[-1] <= FRAMES
    for key in value["sequence"]:
        assert abs(key["time"] - key["frame"] / FPS) < 1e-9
        assert 0 <= key["x"] <= 100 and 0 < key["width"] <= 100 and 0 <= key["y"] <= 100 and 0 < key["height"] <= 100


def test_video_prelabel_is_stored_and_readable(label_studio, proxy, video_project):
    ls = label_studio
    task_id = video_project["task"]["id"]
    mark = proxy.mark()
    with phase("video: retrieve predictions (DM action)"):
        answer = ls.retrieve_predictions(video_project["id"], [task_id])
    assert answer.get("processed_items") == 1, answer
    [sent] = proxy.find("POST", "/predict", since=mark)
    assert sent.status == 200 and sent.request_json["params"]["context"] is None, sent.summary(2000)
    [stored] = ls.predictions(task_id)
    assert stored["model_version"] == sent.response_json["model_version"]
    regions = stored["result"]
    assert regions, f"no tracks stored: {sent.summary(2000)}"
    assert len({r["id"] for r in regions}) == len(regions)
    for region in regions:
        _check_track(region)
        assert region["value"]["labels"][0] in ("car", "person")


def test_video_interactive_box_is_tracked_through_the_clip(label_studio, proxy, video_project):
    """The request the UI sends on a label click (recorded shape): the selected region with two
    keyframes and its label; the answer replaces it in place (same id)."""
    ls = label_studio
    task_id = video_project["task"]["id"]
    region = json.loads(json.dumps(next(i for i in RECORDED["interactive"] if i["n"] == 6)
                                   ["backend_received"]["json"]["params"]["context"]["result"][0]))
    region["value"]["framesCount"], region["value"]["duration"] = FRAMES, FRAMES / FPS
    for key in region["value"]["sequence"]:  # the car where the clip draws it on those frames
        x0, y0, x1, y1 = CAR.box(key["frame"] - 1)
        key.update(x=x0 / W * 100, y=y0 / H * 100, width=(x1 - x0) / W * 100, height=(y1 - y0) / H * 100)
    context = {"result": [region]}
    mark = proxy.mark()
    with phase("video: interactive track"):
        answer = ls.interactive_annotating(video_project["ml_id"], task_id, context)
    [sent] = proxy.find("POST", "/predict", since=mark)
    assert sent.status == 200 and sent.request_json["params"]["context"] == context, sent.summary(2000)
    assert "errors" not in answer, answer
    [track] = answer["data"]["result"]
    assert track["id"] == region["id"] and track["value"]["labels"] == ["car"]
    _check_track(track)
    frames = [k["frame"] for k in track["value"]["sequence"]]
    assert frames[0] == 1 and frames[-1] == FRAMES  # through the whole clip

    mark = proxy.mark()
    submit = ls.interactive_annotating(video_project["ml_id"], task_id, {"result": []})
    assert submit["data"]["result"] == [] and proxy.find("POST", "/predict", since=mark)[0].seconds < 5
