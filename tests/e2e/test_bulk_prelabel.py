"""End to end: bulk prelabel jobs against real Label Studio 1.23.2 with the tiny model.

* the CLI (in-process, then on a local Ray) and the HTTP API prelabel projects of generated
  images; predictions are read back through Label Studio's API; re-runs write nothing;
* "Retrieve predictions" on a selection too large for SAM3_PREDICT_DEADLINE: Label Studio stores
  what the backend finished, a bulk job writes the rest, and no task ends with an empty or a
  second prediction;
* bad input: a revoked personal access token, an unreachable Label Studio, a project whose
  config has nothing to predict: a clear message and a failed job, no traceback.

Its own backend (deadline 0.5 s, batch 2) serves a project of its own, so the other e2e tests
are unaffected. Run: ``SAM3_E2E=1 .venv/bin/python -m pytest tests/e2e/test_bulk_prelabel.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

import ls_harness as h
from ls_harness import LABEL_CONFIG, LABELS, phase

pytestmark = pytest.mark.e2e

N_IMAGES = 36  # "a few dozen"
DEADLINE = 0.5  # seconds: far less than 36 tasks need on 2 cores, more than the first batch


def _images(folder: Path, n: int, prefix: str) -> list[Path]:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h_ = 40 + (i % 5) * 8, 30 + (i % 3) * 10
        img = Image.new("RGB", (w, h_), (10 + 7 * i % 200, 40, 60))
        ImageDraw.Draw(img).ellipse((w * 0.2, h_ * 0.2, w * 0.7, h_ * 0.8), fill=(220, 160, 40 + 5 * i % 200))
        path = folder / f"{prefix}{i:03d}.png"
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def bulk_backend(label_studio, backend_cli, tmp_path_factory):
    be = h.Backend(tmp_path_factory.mktemp("bulk-backend"), label_studio_url=label_studio.url,
                   api_key=label_studio.token, cli=backend_cli,
                   extra_env={"SAM3_SCORE_THRESHOLD": "0.0", "SAM3_MAX_INSTANCES": "2", "SAM3_DEVICE": "cpu",
                              "SAM3_PREDICT_DEADLINE": str(DEADLINE), "SAM3_PRELABEL_BATCH_SIZE": "2",
                              "SAM3_BULK_WRITE_BATCH": "10", "LOG_LEVEL": "INFO"})
    with phase("bulk: tiny model + backend start"):
        be.write_tiny_model()
        be.start()
    yield be
    be.stop()


def _project(ls, tmp_path_factory, title: str, n: int, config: str = LABEL_CONFIG) -> tuple[int, list[int]]:
    p = ls.create_project(title, config)
    if n:
        ls.upload_files(p["id"], _images(tmp_path_factory.mktemp(title.replace(" ", "-")), n, "img"))
    return p["id"], [t["id"] for t in ls.tasks(p["id"])]


def _predictions(ls, project: int) -> dict[int, list[dict]]:
    by_task: dict[int, list[dict]] = {}
    for pred in ls.api("GET", "/api/predictions", params={"project": project}):
        by_task.setdefault(pred["task"], []).append(pred)
    return by_task


def _check_once(ls, project: int, task_ids: list[int], model_version: str) -> None:
    preds = _predictions(ls, project)
    counts = {t: len(preds.get(t, [])) for t in task_ids}
    assert all(c == 1 for c in counts.values()), f"predictions per task: {counts}"
    for t in task_ids:
        pred = preds[t][0]
        assert pred["model_version"] == model_version
        regions = pred["result"]
        assert regions, f"task {t}: an empty prediction"
        assert {r["value"][r["type"]][0] for r in regions} <= set(LABELS)
        assert {r["type"] for r in regions} >= {"brushlabels", "rectanglelabels", "polygonlabels"}


def _cli(args: list[str], be: h.Backend, ls, tmp: Path, *, key: str | None = None, url: str | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(be.env)
    env.update({"LABEL_STUDIO_URL": url or ls.url, "LABEL_STUDIO_API_KEY": key or ls.token, "MODEL_DIR": str(tmp),
                "SAM3_PREDICT_DEADLINE": "0", "LABEL_STUDIO_RETRIES": "1"})
    return subprocess.run([str(be.cli), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=h.REPO_ROOT)


def _summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _version(be: h.Backend) -> str:
    return requests.get(f"{be.url}/health", timeout=10).json()["model_version"]


def test_cli_prelabels_a_project_and_a_rerun_writes_nothing(label_studio, bulk_backend, tmp_path_factory):
    ls = label_studio
    project, tasks = _project(ls, tmp_path_factory, "bulk cli", N_IMAGES)
    tmp = tmp_path_factory.mktemp("cli-model-dir")
    with phase("bulk: CLI prelabel (in-process)"):
        proc = _cli(["prelabel", "--project", str(project), "--batch-size", "4"], bulk_backend, ls, tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = _summary(proc)
    assert (s["state"], s["tasks"], s["written"], s["failed"]) == ("done", N_IMAGES, N_IMAGES, 0), s
    _check_once(ls, project, tasks, _version(bulk_backend))
    print(f"\nCLI bulk: {s['images_per_s']} images/s, Label Studio API {s['label_studio_api']}")

    again = _summary(_cli(["prelabel", "--project", str(project), "--no-progress"], bulk_backend, ls, tmp))
    assert (again["skipped_existing"], again["written"]) == (N_IMAGES, 0), again
    _check_once(ls, project, tasks, _version(bulk_backend))

    # the server's HTTP API sees the same project as done too
    r = requests.post(f"{bulk_backend.url}/jobs/prelabel", json={"project": project}, timeout=30)
    assert r.status_code == 202, r.text
    job = _wait_job(bulk_backend, r.json()["job"]["id"])
    assert job["state"] == "done" and job["result"]["written"] == 0 and job["result"]["skipped_existing"] == N_IMAGES


def _wait_job(be: h.Backend, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        job = requests.get(f"{be.url}/jobs/{job_id}", timeout=10).json()["job"]
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.get('state')}: {job}\n{be.process.log_tail(40)}")


def test_http_job_prelabels_a_project(label_studio, bulk_backend, tmp_path_factory):
    ls = label_studio
    project, tasks = _project(ls, tmp_path_factory, "bulk http", 12)
    annotated = tasks[0]
    ls.create_annotation(annotated, [])
    with phase("bulk: HTTP job"):
        r = requests.post(f"{bulk_backend.url}/jobs/prelabel", json={"project": project, "batch_size": 4}, timeout=30)
        assert r.status_code == 202, r.text
        job = _wait_job(bulk_backend, r.json()["job"]["id"])
    assert job["state"] == "done", job
    assert (job["done"], job["total"], job["result"]["written"]) == (11, 11, 11), job
    assert job["progress"]["rate"] > 0
    _check_once(ls, project, tasks[1:], _version(bulk_backend))
    assert annotated not in _predictions(ls, project)  # --filter unlabeled is the default
    listed = requests.get(f"{bulk_backend.url}/jobs", params={"project": project}, timeout=10).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_cli_on_local_ray_then_in_process_rerun(label_studio, bulk_backend, tmp_path_factory):
    ls = label_studio
    project, tasks = _project(ls, tmp_path_factory, "bulk ray", 12)
    tmp = tmp_path_factory.mktemp("ray-model-dir")
    with phase("bulk: CLI prelabel --ray (local Ray, 2 actors)"):
        proc = _cli(["prelabel", "--project", str(project), "--ray", "--actors", "2", "--no-progress"],
                    bulk_backend, ls, tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = _summary(proc)
    assert (s["executor"], s["written"], s["failed"]) == ("ray", 12, 0), s
    _check_once(ls, project, tasks, _version(bulk_backend))
    again = _summary(_cli(["prelabel", "--project", str(project), "--no-progress"], bulk_backend, ls, tmp))
    assert (again["executor"], again["skipped_existing"], again["written"]) == ("in-process", 12, 0)


def test_retrieve_predictions_on_a_large_selection_answers_part_and_a_job_writes_the_rest(
        label_studio, bulk_backend, tmp_path_factory):
    ls = label_studio
    project, tasks = _project(ls, tmp_path_factory, "bulk retrieve", N_IMAGES)
    proxy = h.RecordingProxy(bulk_backend.url).start()
    try:
        ls.connect_ml_backend(project, proxy.url, title="sam3 bulk (e2e)", interactive=False)
        mark = proxy.mark()
        with phase("bulk: retrieve predictions on 36 tasks (deadline 0.5 s)"):
            answer = ls.retrieve_predictions(project, tasks)
        assert answer.get("processed_items") == N_IMAGES, answer
        predicts = proxy.find("POST", "/predict", since=mark)
        assert len(predicts) == 1 and predicts[0].status == 200, proxy.report()
        results = predicts[0].response_json["results"]
        assert len(results) == N_IMAGES
        finished = [t["id"] for t, r in zip(predicts[0].request_json["tasks"], results) if isinstance(r, dict)]
        later = [t["id"] for t, r in zip(predicts[0].request_json["tasks"], results) if r == []]
        assert finished and later and len(finished) + len(later) == N_IMAGES, (len(finished), len(later))
        assert predicts[0].seconds < DEADLINE + 10

        # Label Studio stored the finished ones and nothing for the rest, which the hand-off job may
        # already be writing (each task exactly once: checked below, once the job is done)
        stored_now = set(_predictions(ls, project))
        assert set(finished) <= stored_now <= set(finished) | set(later), (sorted(stored_now), sorted(finished))
        jobs = requests.get(f"{bulk_backend.url}/jobs", params={"project": project}, timeout=10).json()["jobs"]
        assert len(jobs) == 1 and sorted(jobs[0]["params"]["task_ids"]) == sorted(later), jobs
        job = _wait_job(bulk_backend, jobs[0]["id"])
        assert job["state"] == "done" and job["result"]["written"] == len(later), job
        _check_once(ls, project, tasks, _version(bulk_backend))

        # again: Label Studio skips every task (all carry this model version): nothing new anywhere
        mark = proxy.mark()
        ls.retrieve_predictions(project, tasks)
        assert all(r == [] or r is None for e in proxy.find("POST", "/predict", since=mark)
                   for r in (e.response_json or {}).get("results", [])) or not proxy.find("POST", "/predict", since=mark)
        _check_once(ls, project, tasks, _version(bulk_backend))
    finally:
        proxy.stop()
    log = ls.process.log_path.read_text(errors="replace")
    assert "results field must be a list with at least one item" not in log
    assert "Number of tasks and responses are not equal" not in log
    assert "returns an incorrect prediction" not in log


def test_bad_input_fails_with_a_clear_message(label_studio, bulk_backend, tmp_path_factory):
    ls = label_studio
    tmp = tmp_path_factory.mktemp("bad-model-dir")
    project, _ = _project(ls, tmp_path_factory, "bulk bad input", 2)

    # a personal access token, revoked
    pat = ls.api("POST", "/api/token/")["token"]
    ls.api("POST", "/api/token/blacklist/", json={"refresh": pat}, expect=(200, 201, 204))
    revoked = _cli(["prelabel", "--project", str(project), "--no-progress"], bulk_backend, ls, tmp, key=pat)
    assert revoked.returncode == 1 and "refused the API key" in revoked.stderr, revoked.stderr[-2000:]
    assert "Traceback" not in revoked.stderr
    assert _summary(revoked)["state"] == "failed"

    # Label Studio unreachable
    port = h.free_port()
    gone = _cli(["prelabel", "--project", str(project), "--no-progress"], bulk_backend, ls, tmp,
                url=f"http://{h.LOOPBACK}:{port}")
    assert gone.returncode == 1 and "cannot reach Label Studio" in gone.stderr, gone.stderr[-2000:]

    # a config with no image and no output tag
    text_project = ls.create_project("bulk text", '<View><Text name="t" value="$text"/>'
                                     '<Choices name="c" toName="t"><Choice value="a"/></Choices></View>')
    ls.import_tasks(text_project["id"], [{"data": {"text": "hello"}}])
    text = _cli(["prelabel", "--project", str(text_project["id"]), "--no-progress"], bulk_backend, ls, tmp)
    assert text.returncode == 1 and "Image" in text.stderr, text.stderr[-2000:]

    # the jobs store shows them all failed, with their reasons, and nothing is left running
    listed = json.loads(_cli(["jobs", "list", "--json"], bulk_backend, ls, tmp).stdout)
    assert [j["state"] for j in listed] == ["failed"] * 3 and all(j["reason"] for j in listed)
    assert os.path.exists(tmp / "jobs.sqlite3")
