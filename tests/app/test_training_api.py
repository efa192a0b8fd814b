"""Fine-tuning through the real Flask app: webhooks → store → Start Training → job → version →
predictions tagged with it; not-promoted, rollback, legacy /train, auto-start and bad data."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from helpers import torch_threads
from sam3_backend.engine.training.synthetic import synthetic_shapes
from sam3_backend.ls.rle import encode_rle


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="disc"/><Label value="square"/></BrushLabels></View>')
LABELS = ("disc", "square")
PROJECT = 9


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shapes():
    return synthetic_shapes(8, size=112, seed=5)


@pytest.fixture
def tasks(fake_ls, shapes):
    """Task id → (image URL, annotation result) with the synthetic images served by the fake LS."""
    out = {}
    for i, ex in enumerate(shapes.examples, start=1):
        url = f"/data/upload/{PROJECT}/shape{i}.png"
        fake_ls.files[url] = _png(ex.image.pixels)
        result = [{"id": f"r{i}-{j}", "from_name": "tag", "to_name": "image", "type": "brushlabels",
                   "original_width": 112, "original_height": 112, "image_rotation": 0,
                   "value": {"format": "rle", "rle": encode_rle(m), "brushlabels": [LABELS[int(c)]]}}
                  for j, (m, c) in enumerate(zip(ex.masks, ex.concepts))]
        out[100 + i] = (url, result)
    return out


def created(task_id, url, result, annotation_id=None):
    return {"action": "ANNOTATION_CREATED", "project": {"id": PROJECT, "label_config": CONFIG},
            "annotation": {"id": annotation_id or task_id, "task": task_id, "project": PROJECT, "result": result,
                           "updated_at": "2026-03-01T10:00:00.000000Z", "was_cancelled": False},
            "task": {"id": task_id, "data": {"image": url}, "project": PROJECT}}


def predict(client, task_id=101, url=f"/data/upload/{PROJECT}/shape1.png"):
    r = client.post("/predict", json={"tasks": [{"id": task_id, "data": {"image": url}}], "project": f"{PROJECT}.1700000000",
                                      "label_config": CONFIG, "params": {"context": None}})
    assert r.status_code == 200, r.json
    return r.json


def wait_job(client, job_id, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json["job"]
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")


FAST = dict(train_steps=4, train_min_images=4, train_reconcile=False, train_lr=1e-3)


def test_start_training_webhook_to_served_version_and_rollback(make_app, tasks):
    client = make_app(**FAST, train_promotion_margin=-1.0).test_client()  # any new version wins
    base_version = predict(client)["model_version"]
    for task_id, (url, result) in tasks.items():
        assert client.post("/webhook", json=created(task_id, url, result)).status_code == 201
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT, "title": "x"}})
    assert r.status_code == 201 and r.json["queued"] is True
    job = wait_job(client, r.json["job"])
    assert job["state"] == "done", job
    result = job["result"]
    assert result["promoted"] is True and result["version"] == f"project-{PROJECT}-v1"
    assert result["data"]["images"] == len(tasks) and result["data"]["skipped"] == {}
    assert job["progress"]["stage"] == "evaluating new version"
    assert client.post("/job_status", json={"job": job["id"]}).json["job_status"] == "finished"
    new_version = f"{base_version}+project-{PROJECT}-v1"
    assert result["model_version"] == new_version

    assert predict(client)["model_version"] == new_version
    setup = client.post("/setup", json={"project": f"{PROJECT}.1700000000", "schema": CONFIG})
    assert setup.json["model_version"] == new_version
    other = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG})
    assert other.json["model_version"] == base_version  # other projects keep the base model
    listing = client.get("/versions").json
    assert new_version in listing["versions"] and base_version in listing["versions"]
    info = listing["projects"][f"project-{PROJECT}"]
    assert info["served"] == f"project-{PROJECT}-v1" and info["versions"][0]["metrics"]["new"]["AP"] is not None
    assert client.get(f"/versions/project-{PROJECT}-v1/plot.png").data[:4] == b"\x89PNG"
    assert client.post("/job_status", json={"job": job["id"]}).json["job_status"] == "finished"

    r = client.post("/versions/rollback", json={"version": "base", "project": PROJECT})
    assert r.status_code == 200 and r.json["version"] is None
    assert predict(client)["model_version"] == base_version
    r = client.post("/versions/rollback", json={"version": new_version})  # the full model_version works too
    assert r.status_code == 200 and predict(client)["model_version"] == new_version
    assert client.post("/versions/rollback", json={"version": "project-9-v7"}).status_code == 400
    assert client.post("/versions/rollback", json={"version": "../x"}).status_code == 400


def test_not_promoted_keeps_serving_the_base_model(make_app, tasks):
    client = make_app(**FAST, train_promotion_margin=2.0).test_client()  # nothing can beat AP by 2
    base_version = predict(client)["model_version"]
    for task_id, (url, result) in tasks.items():
        client.post("/webhook", json=created(task_id, url, result))
    r = client.post("/train/start", json={"project": PROJECT})
    job = wait_job(client, r.json["job"])
    assert job["state"] == "done" and job["result"]["promoted"] is False
    assert "does not beat" in job["result"]["reason"] and job["result"]["served_version"] == base_version
    assert predict(client)["model_version"] == base_version
    listing = client.get("/versions").json["projects"][f"project-{PROJECT}"]
    assert listing["served"] is None and listing["versions"][0]["promotion"]["promoted"] is False


def test_legacy_train_endpoint_and_one_job_per_project(make_app, tasks):
    client = make_app(**{**FAST, "train_steps": 30}).test_client()
    body = {"annotations": [{"id": tid, "data": {"image": url},
                             "annotations": [{"id": tid, "result": result, "was_cancelled": False}]}
                            for tid, (url, result) in tasks.items()],
            "project": f"{PROJECT}.1700000000", "label_config": CONFIG, "params": {"login": None, "password": None}}
    first = client.post("/train", json=body)
    second = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    assert first.status_code == 201 and first.json["queued"] is True
    assert second.json["job"] == first.json["job"] and second.json["queued"] is False
    job = wait_job(client, first.json["job"])
    assert job["state"] == "done", job
    assert job["result"]["reconcile"]["source"] == "/train payload" and job["result"]["data"]["images"] == len(tasks)
    assert client.post("/train", json={"project": 1}).status_code == 400


def test_bad_annotations_are_counted_and_too_few_fail_the_job(make_app, tasks, fake_ls):
    client = make_app(**{**FAST, "train_min_images": 6}).test_client()
    items = list(tasks.items())
    for task_id, (url, result) in items[:4]:
        client.post("/webhook", json=created(task_id, url, result))
    (t5, (u5, r5)), (t6, (u6, r6)), (t7, (u7, r7)), (t8, (u8, r8)) = items[4:]
    unknown = [dict(r, value=dict(r["value"], brushlabels=["zebra"])) for r in r5]
    broken = [dict(r, value=dict(r["value"], rle=[1, 2, 3])) for r in r6]
    client.post("/webhook", json=created(t5, u5, unknown))
    client.post("/webhook", json=created(t6, u6, broken))
    client.post("/webhook", json=created(t7, f"/data/upload/{PROJECT}/gone.png", r7))
    client.post("/webhook", json=created(t8, u8, []))
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    job = wait_job(client, r.json["job"])
    assert job["state"] == "failed"
    reason = job["reason"]
    assert "4 annotated image(s)" in reason and "at least 6" in reason
    for why in ("unknown_label", "broken_rle", "image_unavailable", "empty_result"):
        assert why in reason, reason
    assert client.get("/versions").json["projects"] == {}  # nothing saved, nothing served


def test_auto_training_after_n_changed_annotations(make_app, tasks):
    client = make_app(**FAST, train_auto_after=3).test_client()
    replies = [client.post("/webhook", json=created(tid, url, res)).json for tid, (url, res) in list(tasks.items())[:4]]
    assert "job" not in replies[0] and "job" not in replies[1]
    assert replies[2]["queued"] is True
    job = wait_job(client, replies[2]["job"])
    assert job["params"]["source"] == "auto"


def test_unreachable_label_studio_api_falls_back_to_webhooks(make_app, tasks):
    client = make_app(**{**FAST, "train_reconcile": True}).test_client()  # the fake LS has no /api
    for task_id, (url, result) in tasks.items():
        client.post("/webhook", json=created(task_id, url, result))
    job = wait_job(client, client.post("/train/start", json={"project": PROJECT}).json["job"])
    assert job["state"] == "done"
    assert job["result"]["reconcile"]["source"] == "webhooks only" and "Label Studio" in job["result"]["reconcile"]["note"]


def test_webhook_limits_and_junk(make_app):
    client = make_app(webhook_max_bytes=2000).test_client()
    big = created(1, "/x.png", [{"type": "brushlabels", "value": {"rle": [0] * 1000}}])
    assert client.post("/webhook", json=big).status_code == 413
    junk = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": 5})
    assert junk.status_code == 201 and "annotation" in junk.json["store"]["error"]  # acknowledged, not stored
    assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 400
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": "x"}}).status_code == 400
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/job_status", json={"job": "nope"}).status_code == 410


def test_annotations_made_before_connecting_count_through_the_api(loaded_model, tmp_path, shapes):
    """No webhook ever arrived: Start Training reads the project's annotations from Label Studio's
    API (a loopback fake of it, which also serves the images)."""
    from fake_ls_api import TOKEN, FakeLabelStudioAPI

    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine

    api = FakeLabelStudioAPI()
    try:
        project = api.add_project(CONFIG)
        for i, ex in enumerate(shapes.examples):
            path = f"/data/upload/{project}/shape{i}.png"
            api.state.files[path] = _png(ex.image.pixels)
            result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 112,
                       "original_height": 112, "value": {"format": "rle", "rle": encode_rle(m),
                                                         "brushlabels": [LABELS[int(c)]]}}
                      for m, c in zip(ex.masks, ex.concepts)]
            api.add_task(project, {"image": path}, [{"id": 500 + i, "result": result, "was_cancelled": False}])
        api.add_task(project, {"image": f"/data/upload/{project}/none.png"})  # not annotated: not listed
        settings = Settings.from_env({}, label_studio_url=api.url, label_studio_api_key=TOKEN,
                                     model_dir=tmp_path / "model", **FAST | {"train_reconcile": True})
        client = create_app(settings, engine=Sam3ImageEngine(loaded_model)).test_client()
        r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}})
        job = wait_job(client, r.json["job"])
        assert job["state"] == "done", job
        assert job["result"]["reconcile"]["source"] == "Label Studio API"
        assert job["result"]["reconcile"]["tasks"] == len(shapes.examples)
        assert job["result"]["data"]["images"] == len(shapes.examples) and job["result"]["data"]["skipped"] == {}
    finally:
        api.close()


def test_start_training_on_a_video_project_fails_the_job_saying_why(make_app):
    video = ('<View><Video name="video" value="$video"/><VideoRectangle name="box" toName="video"/>'
             '<Labels name="videoLabels" toName="video"><Label value="car"/></Labels></View>')
    client = make_app(**FAST).test_client()
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 31, "label_config": video}})
    job = wait_job(client, r.json["job"])
    assert job["state"] == "failed" and "learns from image annotations" in job["reason"], job
    assert client.get("/versions").json["projects"] == {}
