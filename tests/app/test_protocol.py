"""The Label Studio protocol through the real Flask app, tiny SAM 3 and real recorded payloads."""

from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from helpers import FULL_CONFIG, recorded

BATCH5 = "predict:batch:image:n=5  [step batch_predict_dm_action_image]"
KEYPOINTS = "predict:interactive:keypointlabels:n=2  [step real_ui_smart_keypoint_rectangle]"
RECTS = "predict:interactive:rectanglelabels:n=2  [step real_ui_smart_keypoint_rectangle]"
KEYPOINT1 = "predict:interactive:keypointlabels:n=1  [step real_ui_smart_keypoint_rectangle]"


def brush_mask(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def test_health_reports_ready_model(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json["status"] == "UP"
    assert r.json["model_version"].startswith("sam3-test-")
    assert r.json["test_model"] is True
    assert client.get("/").status_code == 200


def test_setup_returns_model_version_and_validates_config(client, payloads):
    body = dict(payloads["POST /setup  [step connect_backend_image]"]["json"], schema=FULL_CONFIG)
    r = client.post("/setup", json=body)
    assert r.status_code == 200 and r.json["model_version"].startswith("sam3-test-")
    r = client.post("/setup", json=dict(body, schema="<View><Text name='t' value='$t'/></View>"))
    assert r.status_code == 400
    assert "Image" in r.json["error"]
    for bad in ([], "x", {"schema": 5}):
        r = client.post("/setup", json=bad)
        assert r.status_code == 400 and r.json["error"]


def test_batch_prelabel_answers_every_task_in_order(client, payloads, fake_ls):
    body = recorded(payloads, BATCH5, FULL_CONFIG)
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == len(body["tasks"]) == 5
    # tasks 0-2 are uploads the fake Label Studio serves; 3 is a host that is not allowed,
    # 4 a local file it does not have: those get [] (Label Studio stores nothing and asks again
    # next time), the others still succeed.
    for i in range(3):
        regions = results[i]["result"]
        assert regions, f"task {i} got nothing at threshold 0"
        assert {reg["type"] for reg in regions} == {"brushlabels", "rectanglelabels"}
        for reg in regions:
            label_key = reg["type"]
            assert reg["value"][label_key][0] in {"cat", "dog"}
            assert reg["from_name"] in {"tag", "rect"} and reg["to_name"] == "image"
        brush = [reg for reg in regions if reg["type"] == "brushlabels"]
        assert all(brush_mask(reg).any() for reg in brush)
        assert 0.0 <= results[i]["score"] <= 1.0
        assert results[i]["model_version"] == r.json["model_version"]
    assert results[3] == [] and results[4] == []


def test_prelabel_respects_the_score_threshold(make_app, payloads):
    body = recorded(payloads, BATCH5, FULL_CONFIG)
    every = make_app(score_threshold=0.0).test_client().post("/predict", json=body).json["results"][0]["result"]
    scores = sorted({reg["score"] for reg in every})
    assert len(scores) >= 4
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    r = make_app(score_threshold=cut).test_client().post("/predict", json=body)
    assert r.status_code == 200
    kept = r.json["results"][0]["result"]
    assert kept and all(reg["score"] > cut for reg in kept)
    assert len(kept) == sum(reg["score"] > cut for reg in every) < len(every)


def test_interactive_keypoints_positive_and_negative(client, payloads, engine, loaded_model):
    """The recorded positive click + Alt-click give the mask of (positive, negative) points at
    their pixel positions, and the tracker receives labels 1 then 0."""
    from sam3_backend.types import GeometryPrompt, Point

    body = recorded(payloads, KEYPOINTS, FULL_CONFIG)
    seen = []
    hook = loaded_model.tracker.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_labels"]), with_kwargs=True
    )
    try:
        r = client.post("/predict", json=body)
    finally:
        hook.remove()
    assert seen[0][0, 0].tolist() == [1, 0]
    assert r.status_code == 200
    [result] = r.json["results"]
    brush = [reg for reg in result["result"] if reg["type"] == "brushlabels"]
    assert len(brush) == 1
    assert brush[0]["value"]["brushlabels"] == ["cat"]
    mask = brush_mask(brush[0])
    assert mask.shape == (48, 64)
    clicks = body["params"]["context"]["result"]
    assert [c["is_positive"] for c in clicks] == [True, False]
    image = client.application.extensions["sam3"]["service"].fetcher.fetch_image(body["tasks"][0]["data"]["image"])

    def mask_for(signs):
        points = tuple(Point(c["value"]["x"] * 64 / 100, c["value"]["y"] * 48 / 100, s) for c, s in zip(clicks, signs))
        return engine.segment_objects(image, [GeometryPrompt(points=points)])[0].mask

    assert np.array_equal(mask, mask_for([True, False]))


def _all_manual(body):
    for region in body["params"]["context"]["result"]:
        region["origin"] = "manual"
    return body


def test_interactive_rectangles_give_one_mask_each(client, payloads):
    r = client.post("/predict", json=_all_manual(recorded(payloads, RECTS, FULL_CONFIG)))
    assert r.status_code == 200
    brush = [reg for reg in r.json["results"][0]["result"] if reg["type"] == "brushlabels"]
    assert len(brush) == 2
    assert all(reg["value"]["brushlabels"] == ["cat"] for reg in brush)


def test_regions_from_predictions_are_not_prompts(client, payloads, engine):
    """Recorded in the real UI: the second smart rectangle's context also holds the accepted
    suggestion of the first (origin "prediction"). Only the user's own rectangle is segmented."""
    body = recorded(payloads, RECTS, FULL_CONFIG)
    origins = [region["origin"] for region in body["params"]["context"]["result"]]
    assert origins == ["prediction", "manual"]
    r = client.post("/predict", json=body)
    [region] = r.json["results"][0]["result"]
    manual = body["params"]["context"]["result"][1]["value"]
    from sam3_backend.ls.geometry import ls_rect_to_box
    from sam3_backend.types import GeometryPrompt

    image = client.application.extensions["sam3"]["service"].fetcher.fetch_image(body["tasks"][0]["data"]["image"])
    box = ls_rect_to_box(manual["x"], manual["y"], manual["width"], manual["height"], 0, image.width, image.height)
    [expected] = engine.segment_objects(image, [GeometryPrompt(box=box)])
    assert np.array_equal(brush_mask(region), expected.mask)


def test_second_click_reuses_cached_features(make_app, payloads):
    app = make_app()
    client = app.test_client()
    engine = app.extensions["sam3"]["holder"].engine
    body = recorded(payloads, KEYPOINT1, FULL_CONFIG)
    assert client.post("/predict", json=body).status_code == 200
    assert engine.stats.vision_encoder_calls == 1
    body2 = recorded(payloads, KEYPOINTS, FULL_CONFIG)  # same image, one more (negative) click
    assert client.post("/predict", json=body2).status_code == 200
    assert engine.stats.vision_encoder_calls == 1
    assert engine.features.stats().hits >= 1


def test_empty_context_returns_empty_result_without_fetching(client, payloads, fake_ls):
    body = recorded(payloads, KEYPOINTS, FULL_CONFIG)
    body["params"]["context"] = {"result": []}
    before = len(fake_ls.requests)
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    assert r.json["results"][0]["result"] == []
    assert len(fake_ls.requests) == before


def test_typed_text_is_a_concept_prompt(client):
    config = FULL_CONFIG.replace("</View>", '<TextArea name="prompt" toName="image"/></View>')
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["dog"]}, "original_width": 64, "original_height": 48}]}
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/8db9e49a-img0.png"}}],
            "label_config": config, "params": {"context": context}}
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    regions = r.json["results"][0]["result"]
    assert regions
    assert all(reg["value"][reg["type"]] == ["dog"] for reg in regions)


POLY = '<PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>'


def test_prelabels_fill_every_output_the_config_has(client, payloads):
    config = FULL_CONFIG.replace("</View>", POLY + "</View>")
    r = client.post("/predict", json=recorded(payloads, BATCH5, config))
    types = {reg["type"] for reg in r.json["results"][0]["result"]}
    assert types == {"polygonlabels", "brushlabels", "rectanglelabels"}


def test_interactive_suggestions_are_one_region_per_object(client, payloads):
    """A click answers with the richest output only: brush if configured, else polygon."""
    config = FULL_CONFIG.replace("</View>", POLY + "</View>")
    r = client.post("/predict", json=_all_manual(recorded(payloads, RECTS, config)))
    assert [reg["type"] for reg in r.json["results"][0]["result"]] == ["brushlabels", "brushlabels"]
    no_brush = config.replace('<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>', "")
    r = client.post("/predict", json=recorded(payloads, KEYPOINT1, no_brush))
    types = {reg["type"] for reg in r.json["results"][0]["result"]}
    assert types == {"polygonlabels"}


def test_several_rectangles_keep_their_own_labels(client, payloads):
    body = _all_manual(recorded(payloads, RECTS, FULL_CONFIG))
    body["params"]["context"]["result"][1]["value"]["rectanglelabels"] = ["dog"]
    r = client.post("/predict", json=body)
    labels = sorted(reg["value"]["brushlabels"][0] for reg in r.json["results"][0]["result"])
    assert labels == ["cat", "dog"]


@pytest.mark.parametrize(
    "mutate, status, needle",
    [
        (lambda b: "not json", 400, "JSON"),
        (lambda b: {"label_config": b["label_config"]}, 400, "tasks"),
        (lambda b: dict(b, tasks="x"), 400, "tasks"),
        (lambda b: dict(b, label_config="<View><Video name='v' value='$v'/></View>"), 400, ""),
        (lambda b: dict(b, label_config="<View"), 400, ""),
        (lambda b: _with_point(b, 130.0, 10.0), 400, "outside"),
        (lambda b: _with_from_name(b, "nope"), 400, "nope"),
        (lambda b: _with_image(b, "/data/upload/1/not-an-image.png"), 422, ""),
        (lambda b: _with_image(b, "/data/upload/1/missing.png"), 422, "404"),
        (lambda b: _with_image(b, "http://203.0.113.9/x.png"), 422, "MEDIA_ALLOWED_HOSTS"),
        (lambda b: dict(b, params={"context": "x"}), 400, "context"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, payloads, mutate, status, needle):
    body = mutate(recorded(payloads, KEYPOINTS, FULL_CONFIG))
    if isinstance(body, str):
        r = client.post("/predict", data=body, content_type="application/json")
    else:
        r = client.post("/predict", json=body)
    assert r.status_code == status, r.json
    assert needle in r.json["error"]
    assert client.get("/health").status_code == 200  # still serving


def _with_point(body, x, y):
    body["params"]["context"]["result"][0]["value"].update(x=x, y=y)
    return body


def _with_from_name(body, name):
    body["params"]["context"]["result"][0]["from_name"] = name
    return body


def _with_image(body, url):
    body["tasks"][0]["data"]["image"] = url
    return body


def test_every_recorded_webhook_is_acknowledged(client, payloads):
    hooks = [v["json"] for k, v in payloads.items() if k.startswith("webhook:")]
    assert len(hooks) >= 6
    for hook in hooks:
        r = client.post("/webhook", json=hook)
        assert r.status_code == 201 and r.json["action"] == hook["action"]
    assert client.post("/webhook", json={"no": "action"}).status_code == 400
    metrics = client.get("/metrics?format=json").json
    assert metrics["service"]["webhooks"]["START_TRAINING"] == 1


def test_versions_and_metrics(client, payloads):
    client.post("/predict", json=recorded(payloads, KEYPOINT1, FULL_CONFIG))
    assert client.get("/versions").json["versions"][0].startswith("sam3-test-")
    m = client.get("/metrics?format=json").json
    assert m["engine"]["vision_encoder_calls"] == 1
    assert m["feature_cache"]["entries"] >= 1
    assert m["decoded_image_cache"]["entries"] == 1 and m["media"]["misses"] == 1
    assert m["service"]["interactive_requests"] == 1


def test_basic_auth(make_app):
    client = make_app(basic_auth_user="u", basic_auth_pass="p").test_client()
    assert client.get("/health").status_code == 401
    token = base64.b64encode(b"u:p").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {token}"}).status_code == 200
    bad = base64.b64encode(b"u:x").decode()
    assert client.post("/predict", json={}, headers={"Authorization": f"Basic {bad}"}).status_code == 401


def test_health_is_503_while_loading_and_after_a_failed_load(loaded_model, tmp_path):
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings

    gate = threading.Event()

    def slow_factory(settings):
        gate.wait(10)
        raise RuntimeError("weights are gated")

    app = create_app(Settings.from_env({}, model_dir=tmp_path), engine_factory=slow_factory)
    client = app.test_client()
    r = client.get("/health")
    assert r.status_code == 503 and r.json["status"] == "LOADING"
    r = client.post("/predict", json={"tasks": [], "label_config": FULL_CONFIG})
    assert r.status_code == 503 and "loading" in r.json["error"]
    gate.set()
    for _ in range(100):
        if client.get("/health").json["status"] != "LOADING":
            break
        threading.Event().wait(0.05)
    r = client.get("/health")
    assert r.status_code == 503 and r.json["status"] == "ERROR" and "gated" in r.json["error"]
    r = client.post("/setup", json={"schema": FULL_CONFIG})
    assert r.status_code == 503 and "failed to load" in r.json["error"]


def test_unexpected_errors_become_a_generic_500_without_traceback(make_app, payloads):
    app = make_app()
    engine = app.extensions["sam3"]["holder"].engine

    def boom(*a, **k):
        raise ZeroDivisionError("secret internals")

    engine.segment_objects = boom
    r = app.test_client().post("/predict", json=recorded(payloads, KEYPOINT1, FULL_CONFIG))
    assert r.status_code == 500
    assert "secret" not in r.get_data(as_text=True)


def _tasks(urls):
    return [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(urls)]


SIZES = {  # (width, height) of the fake Label Studio's files
    "/data/upload/1/8db9e49a-img0.png": (64, 48),
    "/data/upload/1/b04a6451-img2.png": (40, 60),
}


def test_large_batches_stream_in_chunks_and_keep_task_order(make_app):
    client = make_app(prelabel_batch_size=1).test_client()  # chunks of 2 tasks
    urls = ["/data/upload/1/8db9e49a-img0.png", "/data/upload/1/missing.png", "/data/upload/1/b04a6451-img2.png",
            "/data/upload/1/b04a6451-img2.png", "/data/upload/1/not-an-image.png", "/data/upload/1/8db9e49a-img0.png",
            "/data/upload/1/b04a6451-img2.png"]
    r = client.post("/predict", json={"tasks": _tasks(urls), "label_config": FULL_CONFIG})
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == len(urls)
    for url, result in zip(urls, results):
        if url in SIZES:
            assert result["result"], url
            region = result["result"][0]
            assert (region["original_width"], region["original_height"]) == SIZES[url]
        else:
            assert result == []
    assert client.get("/metrics?format=json").json["service"]["task_errors"] == 2


def test_a_model_failure_on_one_image_costs_only_that_task(make_app):
    app = make_app()
    engine = app.extensions["sam3"]["holder"].engine
    real = engine.segment_concepts

    def fails_on_tall_images(images, concepts, **kwargs):
        if any(im.height == 60 for im in images):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(images, concepts, **kwargs)

    engine.segment_concepts = fails_on_tall_images
    client = app.test_client()
    urls = ["/data/upload/1/8db9e49a-img0.png", "/data/upload/1/b04a6451-img2.png", "/data/upload/1/8db9e49a-img0.png"]
    r = client.post("/predict", json={"tasks": _tasks(urls), "label_config": FULL_CONFIG})
    assert r.status_code == 200
    got = [bool(res) and bool(res["result"]) for res in r.json["results"]]
    assert got == [True, False, True] and r.json["results"][1] == []
    assert client.get("/metrics?format=json").json["service"]["task_errors"] == 1
