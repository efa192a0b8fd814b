"""Video projects through the real Flask app, the tiny model and a loopback Label Studio stand-in
that serves the videos and records prediction writes (``/api/predictions``)."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TOKEN, png
from sam3_backend.ls.video_config import parse_video_config
from sam3_backend.ls.video_prompts import parse_video_context
from sam3_backend.ls.video_results import interpolated_rect
from video_clips import Shape, displayed_box, make_clip, set_display_matrix

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "payloads-video-1.23.2.json"
VIDEO = json.loads(FIXTURE.read_text())
CONFIG = VIDEO["label_config"]  # the recorded project: framerate 24, labels car and person
URL = "/data/upload/1/408ac210-clip.webm"


class FakeLabelStudioApi:
    """Serves /data/upload/... files and a minimal /api/predictions, only with the right token."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.predictions: dict[int, dict] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status, body=None, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self):
                with outer.lock:
                    outer.requests.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self._reply(401, {"detail": "no"})
                    return False
                return True

            def _json(self):
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self):  # noqa: N802
                if not self._authorized():
                    return
                if self.path.startswith("/api/predictions"):
                    task = re.search(r"task=(\d+)", self.path)
                    with outer.lock:
                        rows = [p for p in outer.predictions.values() if not task or p["task"] == int(task.group(1))]
                    return self._reply(200, rows)
                body = outer.files.get(self.path)
                if body is None:
                    return self._reply(404, {"detail": "not found"})
                self._reply(200, body, "video/webm")

            def do_POST(self):  # noqa: N802
                if not self._authorized():
                    return
                body = self._json()
                with outer.lock:
                    pid = len(outer.predictions) + 1
                    outer.predictions[pid] = {"id": pid, **body}
                    row = outer.predictions[pid]
                self._reply(201, row)

            def do_PATCH(self):  # noqa: N802
                if not self._authorized():
                    return
                pid = int(re.search(r"/api/predictions/(\d+)", self.path).group(1))
                with outer.lock:
                    outer.predictions[pid].update(self._json())
                    row = outer.predictions[pid]
                self._reply(200, row)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def media_requests(self) -> int:
        with self.lock:
            return sum(1 for method, path in self.requests if path.startswith("/data/"))

    def close(self):
        self.server.shutdown()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHAPES = [
    Shape((20, 60), (3, 0), (60, 40), (220, 40, 40)),  # the car: right 3 px per frame
    Shape((230, 20), (0, 2), (30, 50), (40, 200, 60), hidden=set(range(40, 50))),  # the person leaves and returns
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    out["recorded"] = (folder / "clip.webm", make_clip(folder / "clip.webm", frames=72, width=320, height=240, shapes=SHAPES))
    out["mp4"] = (folder / "clip.mp4", make_clip(folder / "clip.mp4", frames=30, width=96, height=64))
    out["long"] = (folder / "long.webm", make_clip(folder / "long.webm", frames=120, width=64, height=48))
    return out


@pytest.fixture
def fake(clips):
    ls = FakeLabelStudioApi()
    ls.files[URL] = clips["recorded"][0].read_bytes()
    ls.files["/data/upload/1/b-clip.mp4"] = clips["mp4"][0].read_bytes()
    ls.files["/data/upload/1/long.webm"] = clips["long"][0].read_bytes()
    ls.files["/data/upload/1/garbage.webm"] = b"<html>login</html>" * 40
    ls.files["/data/upload/1/photo.png"] = png(48, 64, 0)
    yield ls
    ls.close()


@pytest.fixture
def make_app(loaded_model, fake, tmp_path):
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine

    def build(**overrides):
        # random weights: SAM 3's hot-start would drop every object (its detections never match)
        values = dict(label_studio_url=fake.url, label_studio_api_key=TOKEN, model_dir=tmp_path / "model",
                      video_score_threshold=0.0, video_max_objects=3, video_hotstart_frames=0)
        values.update(overrides)
        return create_app(Settings.from_env({}, **values), engine=Sam3ImageEngine(loaded_model))

    return build


def _interactive_body(context: dict, url: str = URL) -> dict:
    """The recorded interactive /predict (label "car" turned on), pointed at our video."""
    body = copy.deepcopy(next(i["backend_received"]["json"] for i in VIDEO["interactive"] if i["n"] == 6))
    body["tasks"][0]["data"]["video"] = url
    body["params"]["context"] = context
    body["label_config"] = CONFIG
    return body


def _recorded_context(n: int = 6) -> dict:
    return copy.deepcopy(next(i["backend_received"]["json"]["params"]["context"] for i in VIDEO["interactive"] if i["n"] == n))


def _check_region(region: dict, frames: int, duration: float) -> None:
    assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
    value = region["value"]
    assert value["framesCount"] == frames and value["duration"] == pytest.approx(duration, abs=0.01)
    assert all(label in ("car", "person") for label in value.get("labels", []))
    sequence = value["sequence"]
    assert sequence and [k["frame"] for k in sequence] == sorted({k["frame"] for k in sequence})
    for key in sequence:
        assert 1 <= key["frame"] <= frames and isinstance(key["frame"], int)
        assert key["time"] == pytest.approx(key["frame"] / 24)
        assert 0 <= key["x"] and key["x"] + key["width"] <= 100 + 1e-6 and key["width"] > 0
        assert 0 <= key["y"] and key["y"] + key["height"] <= 100 + 1e-6 and key["height"] > 0
        assert key["rotation"] == 0 and isinstance(key["enabled"], bool)
    assert 0 <= region["score"] <= 1


def test_setup_accepts_the_recorded_video_config(make_app):
    client = make_app().test_client()
    setup = VIDEO["connect"]["setup_request"]["json"]
    r = client.post("/setup", json=dict(setup, access_token=TOKEN))
    assert r.status_code == 200 and r.json["model_version"].startswith("sam3-test-")
    bad = client.post("/setup", json={"project": "1.1", "schema": '<View><Video name="v" value="$v"/></View>'})
    assert bad.status_code == 400 and "VideoRectangle" in bad.json["error"]


def test_prelabel_answers_every_task_and_isolates_broken_ones(make_app, fake):
    client = make_app().test_client()
    tasks = [
        {"id": 1, "data": {"video": URL}},
        {"id": 2, "data": {"video": "/data/upload/1/garbage.webm"}},
        {"id": 3, "data": {"video": "/data/upload/1/photo.png"}},  # an image task in a video project
        {"id": 4, "data": {"image": URL}},  # no video field
        {"id": 5, "data": {"video": "/data/upload/1/missing.webm"}},
        {"id": 6, "data": {"video": "/data/upload/1/b-clip.mp4"}},
    ]
    r = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG, "params": {"context": None}})
    assert r.status_code == 200, r.json
    results = r.json["results"]
    assert len(results) == 6
    version = r.json["model_version"]
    for i in (1, 2, 3, 4):  # [] : Label Studio stores nothing, the next Retrieve predictions asks again
        assert results[i] == [], i
    for i, frames, duration in ((0, 72, 3.0), (5, 30, 1.25)):
        regions = results[i]["result"]
        assert regions, f"task {tasks[i]['id']}: no tracks (threshold 0 keeps every detection)"
        assert len({reg["id"] for reg in regions}) == len(regions) <= 3  # video_max_objects
        for region in regions:
            _check_region(region, frames, duration)
        assert results[i]["model_version"] == version
    assert fake.predictions == {}  # finished within the deadline: nothing written behind Label Studio's back


def test_interactive_recorded_request_tracks_the_region_through_the_clip(make_app, fake):
    app = make_app()
    client = app.test_client()
    body = _interactive_body(_recorded_context())
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.json
    [region] = r.json["results"][0]["result"]
    assert region["id"] == "BgZqBK5TBN" and region["value"]["labels"] == ["car"]
    _check_region(region, 72, 3.0)
    frames = [k["frame"] for k in region["value"]["sequence"]]
    assert frames[0] == 1 and frames[-1] == 72 and region["value"]["sequence"][-1]["enabled"]
    fetched = fake.media_requests()

    # the same click again (label off, then on): returned as it was, no download, no tracking
    video = app.extensions["sam3"]["service"].video
    again = client.post("/predict", json=body)
    assert again.json["results"][0]["result"] == [region] and video.stats["cached_regions"] == 1
    # Label Studio applied the answer: a click on the region now sends our keyframes back
    applied = copy.deepcopy(body)
    applied["params"]["context"]["result"][0]["value"]["sequence"] = copy.deepcopy(region["value"]["sequence"])
    del applied["params"]["context"]["result"][0]["value"]["labels"]  # the label turned off: no labels key
    off = client.post("/predict", json=applied).json["results"][0]["result"]
    assert [r["id"] for r in off] == ["BgZqBK5TBN"] and "labels" not in off[0]["value"]
    assert off[0]["value"]["sequence"] == region["value"]["sequence"] and video.stats["cached_regions"] == 2
    assert fake.media_requests() == fetched

    # the user drags the box on frame 50: a new prompt, tracked again (with the original prompts)
    moved = copy.deepcopy(applied)
    moved["params"]["context"]["result"][0]["value"]["sequence"].append(
        {"frame": 50, "enabled": True, "rotation": 0, "x": 60.0, "y": 25.0, "width": 18.75, "height": 16.7, "time": 50 / 24})
    [region_now] = parse_video_context(moved["params"]["context"], parse_video_config(CONFIG)).regions
    prompts = video.memory.prompts(body["tasks"][0]["id"], region_now)
    assert [k.frame for k in prompts] == [1, 20, 50]  # what the first request carried + the new one
    retracked = client.post("/predict", json=moved)
    assert retracked.status_code == 200 and video.stats["cached_regions"] == 2


def test_several_regions_in_one_pass_each_under_its_own_id(make_app):
    client = make_app().test_client()
    context = _recorded_context()
    person = copy.deepcopy(_recorded_context(4)["result"][0])  # keyframe on frame 20 only
    person["value"]["labels"] = ["car"]
    context["result"].append(person)
    r = client.post("/predict", json=_interactive_body(context))
    regions = r.json["results"][0]["result"]
    assert [x["id"] for x in regions] == ["BgZqBK5TBN", "fyMXoer9nX"]
    # the second one starts on frame 20: tracked forwards to the end and backwards to frame 1
    frames = [k["frame"] for k in regions[1]["value"]["sequence"]]
    assert frames[0] == 1 and frames[-1] == 72


def test_bad_interactive_requests_are_4xx(make_app, fake):
    client = make_app().test_client()
    before = fake.media_requests()
    empty = client.post("/predict", json=_interactive_body({"result": []}))  # Submit
    assert empty.status_code == 200 and empty.json["results"][0]["result"] == []
    assert fake.media_requests() == before  # answered at once: nothing fetched

    late = _recorded_context()
    late["result"][0]["value"]["sequence"][1]["frame"] = 90  # the clip has 72 frames
    r = client.post("/predict", json=_interactive_body(late))
    assert r.status_code == 400 and "frame 90" in r.json["error"] and "72 frames" in r.json["error"]

    image = client.post("/predict", json=_interactive_body(_recorded_context(), url="/data/upload/1/photo.png"))
    assert image.status_code == 422 and "holds an image" in image.json["error"]
    broken = client.post("/predict", json=_interactive_body(_recorded_context(), url="/data/upload/1/garbage.webm"))
    assert broken.status_code == 422 and "not a video" in broken.json["error"]
    other = _recorded_context()
    other["result"][0]["from_name"] = "videoLabels"
    assert client.post("/predict", json=_interactive_body(other)).status_code == 400


def test_known_motion_comes_back_within_the_tolerance(make_app, clips):
    """Pinned masks (the real tracker runs, its masks are replaced by the drawn shapes): the
    keyframes Label Studio interpolates stay within SAM3_VIDEO_KEYFRAME_TOLERANCE of the truth,
    the person's exit and return become enabled:false / enabled:true."""
    app = make_app(video_keyframe_tolerance=1.0)
    service = app.extensions["sam3"]["service"]
    _, truth = clips["recorded"]
    engine = service.video.engine()
    n = engine.models.mask_size
    regions_by_object = {0: 0, 1: 1}  # object i of the request is region i: car, then person

    original = engine.models.tracker.forward

    def pinned(*args, **kwargs):
        out = original(*args, **kwargs)
        state, index = kwargs["inference_session"], kwargs["frame_idx"]
        box = truth[regions_by_object[state.obj_ids[0]]][index]
        logits = torch.full((n, n), -8.0)
        if box is not None:  # signed distance to the box's edges, in cells: exact sub-cell edges
            c = torch.arange(n, dtype=torch.float32) + 0.5
            dx = torch.minimum(c - box[0] / 320 * n, box[2] / 320 * n - c)
            dy = torch.minimum(c - box[1] / 240 * n, box[3] / 240 * n - c)
            logits = torch.minimum(dy[:, None], dx[None, :])
        out.pred_masks = logits[None, None]
        out.object_score_logits = torch.tensor([4.0 if box is not None else -4.0])
        return out

    engine.models.tracker.forward = pinned
    context = _recorded_context()
    person = copy.deepcopy(_recorded_context(4)["result"][0])
    person["value"]["labels"] = ["person"]
    context["result"].append(person)
    r = app.test_client().post("/predict", json=_interactive_body(context))
    car, walker = r.json["results"][0]["result"]
    assert len(car["value"]["sequence"]) <= 4  # linear motion: a handful of keyframes for 72 frames
    for region, shape in ((car, 0), (walker, 1)):
        for frame in range(1, 73):
            shown = interpolated_rect(region["value"]["sequence"], frame)
            box = truth[shape][frame - 1]
            if box is None:
                assert shown is None, (region["id"], frame)
                continue
            want = np.array([box[0] / 3.2, box[1] / 2.4, box[2] / 3.2, box[3] / 2.4])
            got = np.array([shown[0], shown[1], shown[0] + shown[2], shown[1] + shown[3]])
            assert np.abs(got - want).max() <= 1.0 + 1e-3, (region["id"], frame, got, want)
    flags = [(k["frame"], k["enabled"]) for k in walker["value"]["sequence"] if not k["enabled"]]
    assert flags == [(40, False)]  # visible on frames 1-40 (LS), hidden 41-50, back from 51
    assert any(k["frame"] == 51 and k["enabled"] for k in walker["value"]["sequence"])


def _wait(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_interactive_deadline_answers_part_and_the_job_writes_the_rest(make_app, fake):
    app = make_app(video_deadline=1.0)
    client = app.test_client()
    engine = app.extensions["sam3"]["service"].video.engine()  # built before the clock starts
    original = engine.models.tracker.forward

    def slow(*args, **kwargs):  # 120 frames at >= 20 ms: well past the 1 s deadline
        time.sleep(0.02)
        return original(*args, **kwargs)

    engine.models.tracker.forward = slow
    context = _recorded_context()
    body = _interactive_body(context, url="/data/upload/1/long.webm")
    body["params"]["context"]["result"][0]["value"]["framesCount"] = 120
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    [partial] = r.json["results"][0]["result"]
    last = partial["value"]["sequence"][-1]
    assert last["frame"] < 120 and last["enabled"] is False  # tracked up to here so far
    version = r.json["model_version"]
    assert _wait(lambda: fake.predictions), "the background job wrote nothing"
    [written] = fake.predictions.values()
    assert written["task"] == 4 and written["model_version"] == version + "-tracks"
    [full] = written["result"]
    assert full["id"] == "BgZqBK5TBN" and full["value"]["sequence"][-1]["frame"] == 120
    assert full["value"]["sequence"][-1]["enabled"] is True
    # the background run is a job: visible over HTTP, done, with its frame count
    assert _wait(lambda: client.get("/jobs?kind=track").json["jobs"][0]["state"] == "done")
    [job] = client.get("/jobs?kind=track").json["jobs"]
    assert job["params"]["task"] == 4 and job["params"]["regions"] == ["BgZqBK5TBN"] and job["result"]["frames"] == 120
    text = client.get("/metrics").get_data(as_text=True)
    assert 'sam3_jobs{kind="track",state="done"} 1.0' in text
    assert 'sam3_video_events_total{event="handed_off"} 1.0' in text
    assert 'sam3_video_events_total{event="background_writes"} 1.0' in text
    # Label Studio holds the partial keyframes: the next click gets the full track, untracked
    applied = copy.deepcopy(body)
    applied["params"]["context"]["result"][0]["value"]["sequence"] = partial["value"]["sequence"]
    again = client.post("/predict", json=applied).json["results"][0]["result"]
    assert again[0]["value"]["sequence"] == full["value"]["sequence"]


def test_prelabel_deadline_defers_unfinished_tasks_to_background_writes(make_app, fake):
    app = make_app(video_deadline=0.2, video_max_objects=1)
    tasks = [{"id": 7, "data": {"video": "/data/upload/1/long.webm"}}, {"id": 8, "data": {"video": URL}}]
    r = app.test_client().post("/predict", json={"tasks": tasks, "label_config": CONFIG, "params": {"context": None}})
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == 2 and results[0] == []  # Label Studio stores nothing for []
    version = r.json["model_version"]
    deferred = {t["id"] for t, answer in zip(tasks, results) if answer == []}
    assert _wait(lambda: {p["task"] for p in fake.predictions.values()} >= deferred, timeout=120)
    written = {p["task"]: p for p in fake.predictions.values()}
    assert set(written) == deferred  # finished ones were answered, not written
    assert written[7]["model_version"] == version and written[7]["result"]
    for region in written[7]["result"]:
        _check_region(region, 120, 5.0)
    client = app.test_client()
    assert _wait(lambda: all(j["state"] == "done" for j in client.get("/jobs?kind=track").json["jobs"]))
    assert {j["params"]["task"] for j in client.get("/jobs?kind=track").json["jobs"]} == deferred


def test_stride_writes_keyframes_on_the_tracked_frames(make_app):
    client = make_app(video_stride=4).test_client()
    r = client.post("/predict", json=_interactive_body(_recorded_context()))
    [region] = r.json["results"][0]["result"]
    frames = [k["frame"] for k in region["value"]["sequence"]]
    # tracked source frames 0, 4, 8, ... (+ the keyframe on 20) are Label Studio frames 1, 5, 9, ...
    assert frames and all((f - 1) % 4 == 0 or f == 20 for f in frames), frames
    _check_region(region, 72, 3.0)


def test_phone_video_boxes_are_percent_of_the_displayed_frame(make_app, fake, tmp_path):
    """A video stored sideways (display matrix: turn 90 clockwise, as portrait phone videos are):
    Label Studio shows it upright, 64x96, and the keyframe is drawn there. The tracker runs for
    real with its masks pinned to where the red car is in the frame the model was given; the
    prompt must land on the car in that frame and the answer must follow the car as displayed
    (it moves right in the coded frame, down on screen)."""
    path = tmp_path / "phone.mp4"
    car = Shape((10, 40), (3, 0), (16, 12), (230, 30, 30))  # moves right in the coded 96x64 frame
    coded = make_clip(path, frames=12, width=96, height=64, shapes=[car])[0]
    set_display_matrix(path, (0, 1, -1, 0), 96, 64)
    fake.files["/data/upload/1/phone.mp4"] = path.read_bytes()
    shown = [displayed_box((0, 1, -1, 0), box, 96, 64) for box in coded]  # x0 y0 x1 y1 in the 64x96 picture
    percent = [np.array([b[0] / 0.64, b[1] / 0.96, b[2] / 0.64, b[3] / 0.96]) for b in shown]

    app = make_app(video_keyframe_tolerance=0.5)
    engine = app.extensions["sam3"]["service"].video.engine()
    n, size = engine.models.mask_size, engine.size
    given = {}
    prompts_on_the_car = []

    def car_in(rgb):
        ys, xs = np.nonzero((rgb[..., 0] > 150) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110))
        return xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0

    original_pixels, original_forward = engine.pixels, engine.models.tracker.forward

    def pixels(rgb):
        given["rgb"] = rgb  # the (size, size, 3) frame the model sees next
        return original_pixels(rgb)

    def pinned(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        state, index = kwargs["inference_session"], kwargs["frame_idx"]
        x0, y0, x1, y1 = car_in(given["rgb"])
        prompt = state.point_inputs_per_obj[0].get(index)
        if prompt is not None:  # the keyframe, as SAM's corner points in the model's square frame
            (px0, py0), (px1, py1) = prompt["point_coords"].reshape(2, 2).tolist()
            prompts_on_the_car.append(np.allclose([px0, py0, px1, py1], [x0, y0, x1, y1], atol=2.5))
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * size / n  # cell centres in model pixels
        dx, dy = torch.minimum(c - x0, x1 - c), torch.minimum(c - y0, y1 - c)
        out.pred_masks = (torch.minimum(dy[:, None], dx[None, :]) * n / size)[None, None]
        out.object_score_logits = torch.tensor([4.0])
        return out

    engine.pixels, engine.models.tracker.forward = pixels, pinned
    x0, y0, x1, y1 = percent[0]
    context = {"result": [{
        "id": "phone1", "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
        "value": {"framesCount": 12, "duration": 0.5, "labels": ["car"], "sequence": [
            {"frame": 1, "enabled": True, "rotation": 0, "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0,
             "time": 1 / 24}]},
    }]}
    r = app.test_client().post("/predict", json=_interactive_body(context, url="/data/upload/1/phone.mp4"))
    assert r.status_code == 200, r.json
    [region] = r.json["results"][0]["result"]
    _check_region(region, 12, 0.5)
    assert prompts_on_the_car and all(prompts_on_the_car)  # seen when conditioning and again on frame 1
    for frame in range(1, 13):
        x, y, w, h = interpolated_rect(region["value"]["sequence"], frame)
        got = np.array([x, y, x + w, y + h])
        assert np.abs(got - percent[frame - 1]).max() <= 2.0, (frame, got, percent[frame - 1])
    assert percent[11][1] - percent[0][1] > 30  # the car went down the displayed frame, not across
