"""The /jobs HTTP API and the /predict deadline hand-off, through the real Flask app."""

from __future__ import annotations

import time

import pytest

from fake_ls_api import add_image_tasks
from fake_ls_api import TOKEN
from helpers import FULL_CONFIG


@pytest.fixture
def make_jobs_app(loaded_model, fake_api, tmp_path):
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine

    apps = []

    def build(**overrides):
        values = dict(label_studio_url=fake_api.url, label_studio_api_key=TOKEN, model_dir=tmp_path / "model",
                      score_threshold=0.0, max_instances=2, prelabel_batch_size=2, bulk_write_batch=4)
        values.update(overrides)
        app = create_app(Settings.from_env({}, **values), engine=Sam3ImageEngine(loaded_model, feature_cache_bytes=64 << 20))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["sam3"]["jobs"].shutdown(timeout=5)


def _wait_job(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json["job"]
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_prelabel_over_http_watch_list_rerun(make_jobs_app, fake_api, image_project):
    project, tasks = image_project
    client = make_jobs_app().test_client()
    r = client.post("/jobs/prelabel", json={"project": project, "labels": ["cat"]})
    assert r.status_code == 202, r.json
    job = r.json["job"]
    assert r.headers["Location"] == f"/jobs/{job['id']}" and job["state"] == "queued" and job["params"]["source"] == "http"
    done = _wait_job(client, job["id"])
    assert done["state"] == "done", done["reason"]
    assert (done["done"], done["total"], done["failed"]) == (10, 10, 0)
    assert done["result"]["written"] == 10 and done["result"]["labels"] == ["cat"]
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)
    listed = client.get(f"/jobs?project={project}&state=done").json["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    again = _wait_job(client, client.post("/jobs/prelabel", json={"project": project}).json["job"]["id"])
    assert again["result"]["written"] == 0 and again["result"]["skipped_existing"] == 10


def test_conflict_cancel_resume_and_errors(make_jobs_app, fake_api, image_project):
    project, tasks = image_project
    fake_api.media_delay = 0.05
    client = make_jobs_app().test_client()
    first = client.post("/jobs/prelabel", json={"project": project}).json["job"]
    conflict = client.post("/jobs/prelabel", json={"project": project})
    assert conflict.status_code == 409 and first["id"] in conflict.json["error"]
    cancelled = client.post(f"/jobs/{first['id']}/cancel")
    assert cancelled.status_code == 202
    ended = _wait_job(client, first["id"])
    assert ended["state"] == "cancelled"
    fake_api.media_delay = 0.0
    resumed = client.post(f"/jobs/{first['id']}/resume")
    assert resumed.status_code == 202 and resumed.json["job"]["resumed_from"] == first["id"]
    assert _wait_job(client, resumed.json["job"]["id"])["state"] == "done"
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)

    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/jobs/nope/cancel").status_code == 404
    bad = client.post("/jobs/prelabel", json={"project": "x"})
    assert bad.status_code == 400 and "project" in bad.json["error"]
    assert client.post("/jobs/prelabel", data="not json").status_code == 400
    assert client.get("/jobs?state=sleeping").status_code == 400
    no_ls = make_jobs_app(label_studio_url=None, label_studio_api_key=None).test_client()
    r = no_ls.post("/jobs/prelabel", json={"project": project})
    assert r.status_code == 400 and "LABEL_STUDIO_URL" in r.json["error"]


def _tasks(fake_api, project, ids):
    return [{"id": t, "data": fake_api.state.tasks[t]["data"], "project": project, "annotations": []} for t in ids]


def test_predict_past_the_deadline_answers_part_and_a_bulk_job_writes_the_rest(make_jobs_app, fake_api, image_project):
    project, tasks = image_project
    tasks += add_image_tasks(fake_api, project, 6)
    app = make_jobs_app(predict_deadline=0.001)  # only the first chunk (2 x batch 2) fits
    client = app.test_client()
    r = client.post("/predict", json={"tasks": _tasks(fake_api, project, tasks), "label_config": FULL_CONFIG,
                                      "project": f"{project}.1700000000", "params": {"context": None}})
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == len(tasks)
    answered = [t for t, res in zip(tasks, results) if isinstance(res, dict)]
    deferred = [t for t, res in zip(tasks, results) if res == []]
    assert answered == tasks[:4] and deferred == tasks[4:]
    assert all(res["result"] for res in results[:4])
    jobs = client.get(f"/jobs?project={project}").json["jobs"]
    assert len(jobs) == 1 and jobs[0]["params"]["task_ids"] == deferred and jobs[0]["params"]["source"] == "predict"
    done = _wait_job(client, jobs[0]["id"])
    assert done["state"] == "done" and done["result"]["written"] == len(deferred)
    for t in deferred:
        assert len(fake_api.predictions_of(t)) == 1
    for t in answered:  # Label Studio stores these from the response; the job never writes them
        assert fake_api.predictions_of(t) == []
    assert app.extensions["sam3"]["service"].bulk_handoff.handed_off == len(deferred)


def test_predict_leaves_tasks_of_a_running_job_to_it(make_jobs_app, fake_api, image_project):
    project, tasks = image_project
    fake_api.media_delay = 0.1
    client = make_jobs_app().test_client()
    running = client.post("/jobs/prelabel", json={"project": project, "task_ids": tasks[:4]}).json["job"]
    r = client.post("/predict", json={"tasks": _tasks(fake_api, project, tasks[:6]), "label_config": FULL_CONFIG,
                                      "project": str(project)})
    results = r.json["results"]
    assert results[:4] == [[], [], [], []]  # the running job writes those
    assert all(isinstance(res, dict) and res["result"] for res in results[4:])
    _wait_job(client, running["id"])
    assert [len(fake_api.predictions_of(t)) for t in tasks[:6]] == [1, 1, 1, 1, 0, 0]


def test_without_a_connection_unfinished_tasks_are_answered_empty_lists(make_jobs_app, fake_api, image_project):
    project, tasks = image_project
    client = make_jobs_app(predict_deadline=0.001, label_studio_api_key=None).test_client()
    payload = {"tasks": [{"id": t, "data": {"image": f"data:image/png;base64,"
                                                     f"{__import__('base64').b64encode(fake_api.state.files[fake_api.state.tasks[t]['data']['image']]).decode()}"}}
                         for t in tasks[:7]],
               "label_config": FULL_CONFIG, "project": str(project)}
    results = client.post("/predict", json=payload).json["results"]
    assert [isinstance(r, dict) for r in results] == [True] * 4 + [False] * 3
    assert results[4:] == [[], [], []]
    assert client.get("/jobs").json["jobs"] == []
