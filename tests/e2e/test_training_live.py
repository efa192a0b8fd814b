"""End to end: fine-tuning from real Label Studio 1.23.2.

A project of its own: images uploaded, two annotated BEFORE the backend is connected (no webhook
ever reaches it: only reconciliation through Label Studio's API can count them), the rest after
(ANNOTATION_CREATED webhooks: brush, polygon and rectangle regions). Then the ML backend's train
API (the model settings' "Start Training"), which makes Label Studio send START_TRAINING; the job
runs; "Retrieve Predictions" returns predictions tagged with the new version.

The tiny model is random and trains for a few steps, so "better than the base model" is not
reliable here: the backend runs with ``TRAIN_PROMOTION_MARGIN=-1`` (every version is promoted).
The promotion rule itself is proven where training really learns
(tests/engine/test_training_learns.py) and for the not-promoted branch in tests/app.
"""

from __future__ import annotations

import time

import pytest
import requests
from PIL import Image

from ls_harness import phase

pytestmark = pytest.mark.e2e

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="disc"/><Label value="square"/></BrushLabels>'
          '<PolygonLabels name="poly" toName="image"><Label value="disc"/><Label value="square"/></PolygonLabels>'
          '<RectangleLabels name="rect" toName="image"><Label value="disc"/><Label value="square"/></RectangleLabels>'
          "</View>")
N_IMAGES = 6
BEFORE_CONNECT = 2


def _regions(example, kind: str) -> list[dict]:
    """Label Studio regions of ``kind`` for a synthetic example (through the backend's own encoder)."""
    from sam3_backend.engine.training.synthetic import CONCEPTS
    from sam3_backend.ls.label_config import parse_label_config
    from sam3_backend.ls.results import encode_regions
    from sam3_backend.types import Instance

    instances = []
    for mask in example.masks:
        ys, xs = mask.nonzero()
        instances.append(Instance(mask, 1.0, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))
    labels = [CONCEPTS[int(c)] for c in example.concepts]
    w, h = example.image.width, example.image.height
    regions = encode_regions(instances, labels, parse_label_config(CONFIG), w, h)
    return [{k: v for k, v in r.items() if k not in ("score", "readonly")} for r in regions if r["type"] == kind]


def test_start_training_in_label_studio_serves_a_new_version(label_studio, backend, proxy, tmp_path):
    from sam3_backend.engine.training.synthetic import synthetic_example

    ls = label_studio
    examples = [synthetic_example(i, size=112, seed=11) for i in range(N_IMAGES)]
    with phase("training: project, uploads, annotations"):
        project = ls.create_project("sam3 training e2e", CONFIG)
        paths = []
        for i, ex in enumerate(examples):
            path = tmp_path / f"shape{i}.png"
            Image.fromarray(ex.image.pixels).save(path)
            paths.append(path)
        ls.upload_files(project["id"], paths)
        tasks = ls.tasks(project["id"])
        assert len(tasks) == N_IMAGES
        by_name = {t["data"]["image"].rsplit("-", 1)[-1]: t["id"] for t in tasks}
        task_ids = [by_name[f"shape{i}.png"] for i in range(N_IMAGES)]
        kinds = ["brushlabels", "polygonlabels", "rectanglelabels"]
        for i in range(BEFORE_CONNECT):  # no backend yet: Label Studio sends these nowhere
            ls.create_annotation(task_ids[i], _regions(examples[i], kinds[i % 3]))

        mark = proxy.mark()
        ml = ls.connect_ml_backend(project["id"], proxy.url, title="sam3 (training e2e)")
        for i in range(BEFORE_CONNECT, N_IMAGES):
            ls.create_annotation(task_ids[i], _regions(examples[i], kinds[i % 3]))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            hooks = [e for e in proxy.find("POST", "/webhook", since=mark) if e.action == "ANNOTATION_CREATED"]
            if len(hooks) >= N_IMAGES - BEFORE_CONNECT:
                break
            time.sleep(0.2)
        assert len(hooks) == N_IMAGES - BEFORE_CONNECT, proxy.report()
        assert all(e.status == 201 and e.response_json["store"]["stored"] == 1 for e in hooks), proxy.report()

    with phase("training: Start Training → job done"):
        mark = proxy.mark()
        ls.api("POST", f"/api/ml/{ml['id']}/train", json={})
        starts = [e for e in proxy.find("POST", "/webhook", since=mark) if e.action == "START_TRAINING"]
        assert len(starts) == 1 and starts[0].status == 201, proxy.report()
        assert starts[0].request_json["project"]["id"] == project["id"]
        job_id = starts[0].response_json["job"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = requests.get(f"{backend.url}/jobs/{job_id}", timeout=10).json()["job"]
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert job["state"] == "done", job
    result = job["result"]
    assert result["reconcile"]["source"] == "Label Studio API", result["reconcile"]
    assert result["data"]["images"] == N_IMAGES, result["data"]  # the two made before connecting count
    assert result["data"]["skipped"] == {}, result["data"]
    assert result["promoted"] is True, result
    new_version = result["model_version"]
    assert new_version.endswith(f"+project-{project['id']}-v1")

    with phase("training: retrieve predictions with the new version"):
        answer = ls.retrieve_predictions(project["id"], task_ids)
        assert answer.get("processed_items") == N_IMAGES, answer
    for task_id in task_ids:
        preds = ls.predictions(task_id)
        assert [p["model_version"] for p in preds] == [new_version], preds
    listing = requests.get(f"{backend.url}/versions", timeout=10).json()
    assert listing["projects"][f"project-{project['id']}"]["served"] == f"project-{project['id']}-v1"
    assert new_version in listing["versions"]
    status = requests.post(f"{proxy.url}/job_status", json={"job": job_id}, timeout=10).json()
    assert status["job_status"] == "finished"
