"""Limits and bad input through the real app: /setup types, bounded state, body and pixel caps,
the /setup hijack on the wire, Prometheus metrics, and configs without labels."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from label_studio_sdk.converter.brush import decode_rle

from helpers import FULL_CONFIG, TOKEN, png, recorded

KEYPOINT1 = "predict:interactive:keypointlabels:n=1  [step real_ui_smart_keypoint_rectangle]"
SETUP = "POST /setup  [step connect_backend_image]"


@pytest.mark.parametrize(
    "field, value",
    [("hostname", 5), ("hostname", ["http://x"]), ("access_token", {"t": 1}), ("access_token", 12),
     ("schema", 5), ("schema", ["<View/>"]), ("project", [1]), ("project", 1.5), ("project", True)],
)
def test_setup_with_wrong_types_is_a_400(client, payloads, field, value):
    body = dict(payloads[SETUP]["json"], schema=FULL_CONFIG)
    body[field] = value
    r = client.post("/setup", json=body)
    assert r.status_code == 400, r.json
    assert field in r.json["error"]


def test_setup_accepts_integer_projects_and_missing_fields(client):
    assert client.post("/setup", json={"schema": FULL_CONFIG, "project": 7}).status_code == 200
    assert client.post("/setup", json={"schema": FULL_CONFIG, "hostname": None, "access_token": None}).status_code == 200


def test_webhook_counters_only_for_known_actions(client):
    for i in range(300):
        assert client.post("/webhook", json={"action": f"MADE_UP_{i}"}).status_code == 201
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 201
    webhooks = client.get("/metrics?format=json").json["service"]["webhooks"]
    assert webhooks == {"other": 300, "ANNOTATION_CREATED": 1}


def test_project_config_table_is_bounded(make_app):
    from sam3_backend.ls.connections import MAX_PROJECTS

    app = make_app()
    client = app.test_client()
    for i in range(MAX_PROJECTS + 20):
        assert client.post("/setup", json={"schema": FULL_CONFIG, "project": f"{i}.1"}).status_code == 200
    service = app.extensions["sam3"]["service"]
    assert len(service._projects) == MAX_PROJECTS
    assert len(service.fetcher.connections._setups) == MAX_PROJECTS


def test_request_body_cap_is_a_clear_413(make_app):
    client = make_app(max_request_mb=1).test_client()
    big = b'{"tasks": [], "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = client.post("/predict", data=big, content_type="application/json")
    assert r.status_code == 413
    assert "MAX_REQUEST_MB" in r.json["error"]
    assert client.get("/health").status_code == 200


def test_decoded_pixel_cap_is_a_per_task_error(make_app, payloads):
    """48x64 images = 3072 pixels: over a 3000-pixel cap, each task fails alone, clearly."""
    app = make_app(media_max_pixels=3000)
    client = app.test_client()
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/8db9e49a-img0.png"}},
             {"id": 2, "data": {"image": "/data/upload/1/b04a6451-img2.png"}}]  # 40x60 = 2400 pixels: fine
    r = client.post("/predict", json={"tasks": tasks, "label_config": FULL_CONFIG})
    assert r.status_code == 200
    first, second = r.json["results"]
    assert first == [] and second["result"]  # [] : Label Studio stores nothing, asks again next time
    assert client.get("/metrics?format=json").json["service"]["task_errors"] == 1
    r = client.post("/predict", json=recorded(payloads, KEYPOINT1, FULL_CONFIG))
    assert r.status_code == 422 and "MEDIA_MAX_PIXELS" in r.json["error"]


class _Recorder:
    """A loopback server serving one PNG for any /data/upload path; records Authorization."""

    def __init__(self):
        self.seen: list[tuple[str, str | None]] = []
        outer, body = self, png(48, 64, 0)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                outer.seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_setup_hostname_hijack_through_the_app(loaded_model, tmp_path, payloads):
    """Label Studio connects project 1 (hostname + token); an attacker then POSTs /setup for the
    same project with its own hostname. The next click's image request reaches the attacker
    without any token, and project 2 keeps talking to the real Label Studio with its token."""
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine

    real, evil = _Recorder(), _Recorder()
    try:
        app = create_app(Settings.from_env({}, model_dir=tmp_path), engine=Sam3ImageEngine(loaded_model))
        client = app.test_client()
        for project in ("1.100", "2.100"):
            r = client.post("/setup", json={"project": project, "schema": FULL_CONFIG, "hostname": real.url,
                                             "access_token": TOKEN})
            assert r.status_code == 200
        client.post("/setup", json={"project": "1.100", "schema": FULL_CONFIG, "hostname": evil.url,
                                    "access_token": ""})
        body = recorded(payloads, KEYPOINT1, FULL_CONFIG)
        body["project"] = "1.100"
        body["tasks"][0]["data"]["image"] = "/data/upload/1/hijacked.png"
        assert client.post("/predict", json=body).status_code == 200
        assert evil.seen == [("/data/upload/1/hijacked.png", None)]
        body["project"] = "2.100"
        body["tasks"][0]["data"]["image"] = "/data/upload/2/fine.png"
        assert client.post("/predict", json=body).status_code == 200
        assert real.seen == [("/data/upload/2/fine.png", f"Token {TOKEN}")]
    finally:
        real.close()
        evil.close()


def test_prometheus_metrics_cover_requests_stages_and_caches(client, payloads):
    body = recorded(payloads, KEYPOINT1, FULL_CONFIG)
    assert client.post("/predict", json=body).status_code == 200
    assert client.post("/predict", json=body).status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    assert 'sam3_requests_total{endpoint="/predict",status="200"} 2.0' in text
    assert 'sam3_request_seconds_count{endpoint="/predict"} 2.0' in text
    for stage in ("fetch", "decode", "encode", "prompt", "postprocess", "rle"):
        assert f'sam3_stage_seconds_count{{stage="{stage}"}}' in text, stage
    assert 'sam3_cache_hits_total{cache="feature"}' in text
    assert 'sam3_cache_hits_total{cache="decoded_image"} 1.0' in text
    assert "sam3_vision_encoder_calls_total 1.0" in text
    assert 'sam3_model_waiting{priority="interactive"} 0.0' in text
    json_view = client.get("/metrics?format=json").json
    assert json_view["service"]["interactive_requests"] == 2


LABELLESS = (
    '<View><Image name="image" value="$image"/><Brush name="mask" toName="image"/>'
    '<KeyPoint name="kp" toName="image" smart="true"/></View>'
)


def test_config_without_labels_returns_unlabelled_brush_regions(client, payloads):
    assert client.post("/setup", json={"schema": LABELLESS, "project": "9.1"}).status_code == 200
    body = recorded(payloads, KEYPOINT1, LABELLESS)
    for region in body["params"]["context"]["result"]:
        region["type"], region["from_name"] = "keypoint", "kp"
        region["value"].pop("keypointlabels", None)
        region["value"].pop("labels", None)
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.json
    [region] = r.json["results"][0]["result"]
    assert region["type"] == "brush" and region["from_name"] == "mask"
    assert set(region["value"]) == {"format", "rle"}
    h, w = region["original_height"], region["original_width"]
    assert (decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0).any()
    # prelabel: no labels means no concepts to look for: an empty answer, not an error
    r = client.post("/predict", json={"tasks": body["tasks"], "label_config": LABELLESS})
    assert r.status_code == 200 and r.json["results"][0]["result"] == []
