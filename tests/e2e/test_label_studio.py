"""End to end: real Label Studio 1.23.2 <-> sam3-backend serving a tiny random SAM 3, on loopback.

Everything goes through Label Studio's own API, the way its UI does it: connecting the backend,
"Retrieve Predictions" in the Data Manager, the smart-tool clicks (interactive-annotating) and
the webhooks its annotation API fires. The recording proxy between LS and the backend (see
``ls_harness.RecordingProxy``) lets the tests also check what the backend answered.

The tiny model is random, so the tests check structure, not quality: with
``SAM3_SCORE_THRESHOLD=0`` every concept query is returned, so counts are > 0.

Run: ``.venv/bin/python -m pytest tests/e2e -m e2e -x -q -s``
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from ls_harness import LABELS, phase

pytestmark = pytest.mark.e2e

OUTPUTS = {"tag": "brushlabels", "kp": "keypointlabels", "rect": "rectanglelabels", "poly": "polygonlabels"}


# --------------------------------------------------------------------------------------------
# Checks on Label Studio result JSON


def check_region(region: dict, size: tuple[int, int]) -> np.ndarray | None:
    """Assert ``region`` is a well-formed LS result for this config; return its mask if a brush."""
    w, h = size
    where = f"region {region.get('id')!r} ({region.get('type')} from {region.get('from_name')})"
    assert region.get("to_name") == "image", where
    assert OUTPUTS.get(region.get("from_name")) == region.get("type"), f"{where}: type does not match from_name"
    got = (region.get("original_width"), region.get("original_height"))
    assert got == (w, h), f"{where}: original size {got} != image size {size}"
    value = region["value"]
    labels = value.get(region["type"])
    assert isinstance(labels, list) and len(labels) == 1 and labels[0] in LABELS, f"{where}: labels {labels}"
    if "score" in region:
        assert isinstance(region["score"], (int, float)) and 0.0 <= region["score"] <= 1.0, where
    if region["type"] == "brushlabels":
        assert value.get("format") == "rle", where
        rle = value.get("rle")
        assert isinstance(rle, list) and rle and all(isinstance(b, int) and 0 <= b <= 255 for b in rle), where
        flat = decode_rle(rle)
        assert flat.size == w * h * 4, f"{where}: RLE decodes to {flat.size} values, want {w}x{h}x4 = {w * h * 4}"
        return flat.reshape(h, w, 4)[:, :, 3] > 0
    if region["type"] == "rectanglelabels":
        for k in ("x", "y", "width", "height"):
            assert 0.0 <= value[k] <= 100.0 + 1e-6, f"{where}: {k}={value[k]} not a percentage"
        assert value["x"] + value["width"] <= 100.0 + 1e-3 and value["y"] + value["height"] <= 100.0 + 1e-3, where
    if region["type"] == "polygonlabels":
        points = value.get("points")
        assert isinstance(points, list) and len(points) >= 3, f"{where}: {points!r}"
        assert all(0.0 <= c <= 100.0 + 1e-6 for pt in points for c in pt), f"{where}: points not percentages"
    return None


def last_model_version(proxy) -> str:
    setups = [e for e in proxy.find("POST", "/setup") if e.status == 200]
    assert setups, "Label Studio never got a 200 from the backend's /setup:\n" + proxy.report()
    version = setups[-1].response_json.get("model_version")
    assert isinstance(version, str) and version, f"/setup answered {setups[-1].response_text!r}"
    return version


# --------------------------------------------------------------------------------------------
# Connection


def test_backend_is_connected(label_studio, backend, proxy, project):
    assert backend.health.get("status") == "UP"
    ml = label_studio.ml_backend(project.ml_id)
    assert ml["readable_state"] == "Connected", ml
    assert ml["is_interactive"] is True

    health = proxy.find("GET", "/health")
    assert health and all(e.status == 200 for e in health), proxy.report()
    setups = proxy.find("POST", "/setup")
    assert setups and all(e.status == 200 for e in setups), proxy.report()
    # Other e2e modules (the browser tests) connect projects of their own to the same backend.
    ours = [e for e in setups if str(e.request_json.get("project", "")).startswith(f"{project.id}.")]
    assert ours, f"no /setup for project {project.id}: {[e.request_json.get('project') for e in setups]}"
    sent = ours[0].request_json
    assert "<BrushLabels" in sent["schema"] and sent["hostname"] == label_studio.url
    assert sent["access_token"] == label_studio.token
    last_model_version(proxy)

    hooks = label_studio.webhooks(project.id)
    assert any(w["url"] == f"{proxy.url}/webhook" for w in hooks), hooks


# --------------------------------------------------------------------------------------------
# Batch prelabeling through the Data Manager


def test_retrieve_predictions(label_studio, proxy, project):
    mark = proxy.mark()
    task_ids = sorted([*project.good_tasks, *project.broken_tasks])
    with phase("retrieve predictions (DM action)"):
        answer = label_studio.retrieve_predictions(project.id, task_ids)
    assert answer.get("processed_items") == len(task_ids), answer

    predicts = proxy.find("POST", "/predict", since=mark)
    assert len(predicts) == 1, "expected ONE batched /predict:\n" + proxy.report()
    batch = predicts[0]
    assert batch.status == 200, batch.summary(3000)
    assert batch.request_json["params"]["context"] is None
    sent_ids = [t["id"] for t in batch.request_json["tasks"]]
    assert sorted(sent_ids) == task_ids
    results = batch.response_json["results"]
    assert len(results) == len(sent_ids), f"{len(results)} results for {len(sent_ids)} tasks"
    by_task = dict(zip(sent_ids, results))
    for task_id in project.broken_tasks:  # [] : Label Studio stores nothing and asks again next time
        assert by_task[task_id] == [], f"broken task {task_id} got: {str(by_task[task_id])[:500]}"

    model_version = last_model_version(proxy)
    for task_id, size in project.good_tasks.items():
        preds = label_studio.predictions(task_id)
        assert len(preds) == 1, f"task {task_id} ({project.task_urls[task_id]}): {len(preds)} predictions"
        pred = preds[0]
        assert pred["model_version"] == model_version
        regions = pred["result"]
        brushes = [r for r in regions if r["type"] == "brushlabels"]
        assert brushes, f"task {task_id}: no brushlabels among {[r['type'] for r in regions]}"
        for region in regions:
            check_region(region, size)
        assert {r["value"]["brushlabels"][0] for r in brushes} == set(
            LABELS
        ), f"task {task_id}: with threshold 0 every label should have regions"
        assert len({r["id"] for r in regions}) == len(regions), f"task {task_id}: duplicate region ids"

    for task_id in project.broken_tasks:
        broken = label_studio.predictions(task_id)
        assert broken == [], f"broken task {task_id} has predictions: {str(broken)[:500]}"


# --------------------------------------------------------------------------------------------
# Interactive (smart tools)


def _keypoint(x: float, y: float, size, positive: bool, rid: str) -> dict:
    w, h = size
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.67, "labels": ["cat"], "keypointlabels": ["cat"]},
        "is_positive": positive,
        "id": rid,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def _rectangle(x: float, y: float, width: float, height: float, size, rid: str) -> dict:
    w, h = size
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": width, "height": height, "rotation": 0, "rectanglelabels": ["cat"]},
        "id": rid,
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def _interactive(label_studio, proxy, project, task_id, context) -> dict:
    mark = proxy.mark()
    answer = label_studio.interactive_annotating(project.ml_id, task_id, context)
    sent = proxy.find("POST", "/predict", since=mark)
    assert sent, f"LS did not call /predict; it answered {answer}"
    assert sent[-1].request_json["params"]["context"] == context
    assert "errors" not in answer, f"LS reports: {answer['errors']}\n{sent[-1].summary(2000)}"
    assert isinstance(answer.get("data"), dict), answer
    return answer["data"]


def _check_interactive_masks(data: dict, size) -> list[np.ndarray]:
    regions = data.get("result")
    assert isinstance(regions, list) and regions, f"no regions: {str(data)[:500]}"
    masks = []
    for region in regions:
        mask = check_region(region, size)
        if mask is not None:
            assert region["value"]["brushlabels"] == ["cat"], region["value"]["brushlabels"]
            masks.append(mask)
    assert masks, f"no brushlabels among {[r['type'] for r in regions]}"
    assert any(m.any() for m in masks), "every returned mask is empty"
    return masks


@pytest.fixture(scope="module")
def interactive_task(project):
    task_id = min(project.good_tasks)
    return task_id, project.good_tasks[task_id]


def test_interactive_positive_keypoint(label_studio, proxy, project, interactive_task):
    task_id, size = interactive_task
    with phase("interactive: keypoint"):
        data = _interactive(
            label_studio, proxy, project, task_id, {"result": [_keypoint(50.0, 50.0, size, True, "kp-pos")]}
        )
    _check_interactive_masks(data, size)


def test_interactive_positive_and_negative_keypoints(label_studio, proxy, project, interactive_task):
    task_id, size = interactive_task
    context = {"result": [_keypoint(50.0, 50.0, size, True, "kp-pos"), _keypoint(10.0, 10.0, size, False, "kp-neg")]}
    data = _interactive(label_studio, proxy, project, task_id, context)
    _check_interactive_masks(data, size)


def test_interactive_rectangle(label_studio, proxy, project, interactive_task):
    task_id, size = interactive_task
    with phase("interactive: rectangle"):
        data = _interactive(
            label_studio, proxy, project, task_id, {"result": [_rectangle(20.0, 20.0, 50.0, 60.0, size, "rect-1")]}
        )
    _check_interactive_masks(data, size)


def test_interactive_empty_context(label_studio, proxy, project, interactive_task):
    task_id, _ = interactive_task
    data = _interactive(label_studio, proxy, project, task_id, {"result": []})
    assert data.get("result") == [], f"expected an empty result, got {str(data)[:500]}"


def test_interactive_on_broken_image_fails_cleanly(label_studio, proxy, project):
    """A click on a task whose image cannot be fetched: an error or nothing, never a 5xx."""
    task_id = project.broken_tasks[0]
    context = {"result": [_keypoint(50.0, 50.0, (64, 48), True, "kp-broken")]}
    mark = proxy.mark()
    answer = label_studio.interactive_annotating(project.ml_id, task_id, context)
    sent = proxy.find("POST", "/predict", since=mark)
    assert sent, f"LS did not call /predict; it answered {answer}"
    assert 400 <= sent[-1].status < 500 or (sent[-1].status == 200 and not answer["data"].get("result")), sent[
        -1
    ].summary(2000)
    assert "errors" in answer or not answer["data"].get("result"), answer


# --------------------------------------------------------------------------------------------
# Webhooks


def test_webhooks_reach_backend(label_studio, proxy, project):
    task_id = max(project.good_tasks)
    w, h = project.good_tasks[task_id]
    mark = proxy.mark()
    region = {
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": 10, "y": 10, "width": 30, "height": 30, "rotation": 0, "rectanglelabels": ["dog"]},
    }
    annotation = label_studio.create_annotation(task_id, [region])
    label_studio.update_annotation(annotation["id"], [])
    label_studio.delete_annotation(annotation["id"])

    wanted = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
    deadline = time.monotonic() + 15  # webhooks may be sent after the API call returns
    while time.monotonic() < deadline:
        hooks = proxy.find("POST", "/webhook", since=mark)
        if wanted <= {e.action for e in hooks}:
            break
        time.sleep(0.2)
    hooks = proxy.find("POST", "/webhook", since=mark)
    assert wanted <= {e.action for e in hooks}, "webhooks that arrived:\n" + proxy.report()
    created = next(e for e in hooks if e.action == "ANNOTATION_CREATED")
    assert created.request_json["annotation"]["id"] == annotation["id"]
    bad = [e for e in hooks if not 200 <= e.status < 300]
    assert not bad, "backend refused webhooks:\n" + "\n".join(e.summary(1000) for e in bad)


# --------------------------------------------------------------------------------------------
# Across the whole session


def test_backend_never_answered_5xx_and_acknowledged_every_webhook(proxy):
    failures = [e for e in proxy.find() if e.status >= 500]
    failures += [e for e in proxy.find("POST", "/webhook") if not 200 <= e.status < 300 and e not in failures]
    assert not failures, "\n".join(e.summary(2000) for e in failures)


def test_label_studio_logged_no_ml_errors(label_studio, project):
    """LS logs (and otherwise hides) a backend reply it cannot use: wrong counts, bad JSON, 4xx/5xx."""
    log = label_studio.process.log_path.read_text(errors="replace")
    problems = sorted(set(re.findall(r"^.*\[ml\.[\w.]+::\w+::\d+\] \[(?:ERROR|WARNING)\].*$", log, re.M)))
    assert not problems, "\n".join(problems)
