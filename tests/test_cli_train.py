"""``sam3-backend train | versions | rollback | jobs`` as a user runs them (subprocesses)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

from PIL import Image

from sam3_backend.engine.training.synthetic import synthetic_shapes
from sam3_backend.ls.rle import encode_rle
from sam3_backend.store.annotations import AnnotationStore

CLI = [sys.executable, "-m", "sam3_backend.cli"]
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="disc"/><Label value="square"/></BrushLabels></View>')


def _data_uri(pixels) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fill_store(model_dir, project: int, n: int) -> None:
    """Annotations as webhooks would have stored them, images as data: URIs (no Label Studio)."""
    store = AnnotationStore(model_dir / "annotations.sqlite3")
    for i, ex in enumerate(synthetic_shapes(n, seed=2).examples, start=1):
        result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 112,
                   "original_height": 112, "value": {"format": "rle", "rle": encode_rle(m),
                                                     "brushlabels": [("disc", "square")[int(c)]]}}
                  for m, c in zip(ex.masks, ex.concepts)]
        store.ingest({"action": "ANNOTATION_CREATED", "project": {"id": project, "label_config": CONFIG},
                      "annotation": {"id": i, "task": i, "result": result, "updated_at": "2026-01-01"},
                      "task": {"id": i, "data": {"image": _data_uri(ex.image.pixels)}}})


def _run(args, env, check=True):
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, check=check, timeout=600)


def test_train_versions_rollback_jobs(tmp_path, tiny_checkpoint):
    model_dir = tmp_path / "model"
    _fill_store(model_dir, 5, 6)
    env = dict(os.environ, SAM3_MODEL=str(tiny_checkpoint), MODEL_DIR=str(model_dir), SAM3_DEVICE="cpu",
               TRAIN_RECONCILE="false", HF_HUB_OFFLINE="1")
    out = _run(["train", "--project", "5", "--steps", "3", "--min-images", "4", "--margin", "-1"], env)
    summary = json.loads(out.stdout)
    assert summary["version"] == "project-5-v1" and summary["promoted"] is True
    assert "training" in out.stderr  # the progress bar
    assert (model_dir / "versions/project-5/project-5-v1/report.png").exists()

    listing = _run(["versions"], env).stdout
    assert "project-5: serving project-5-v1" in listing and "* project-5-v1" in listing
    data = json.loads(_run(["versions", "--json"], env).stdout)
    assert data["projects"]["project-5"]["versions"][0]["metrics"]["new"]["AP50"] is not None

    assert "serves the base model" in _run(["rollback", "base", "--project", "5"], env).stdout
    assert "project-5: serving the base model" in _run(["versions"], env).stdout
    assert "now serves project-5-v1" in _run(["rollback", "project-5-v1"], env).stdout
    bad = _run(["rollback", "project-5-v9"], env, check=False)
    assert bad.returncode == 2 and "no version project-5-v9" in bad.stderr

    jobs = _run(["jobs"], env).stdout
    assert "train" in jobs and "done" in jobs
    failed = _run(["train", "--project", "6", "--steps", "1"], env, check=False)  # nothing stored for it
    assert failed.returncode == 1 and "no label config is known for project 6" in failed.stderr
    assert json.loads(_run(["jobs", "--json"], env).stdout)[0]["state"] == "failed"
