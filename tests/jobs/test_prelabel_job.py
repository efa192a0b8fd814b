"""The bulk prelabel job on the tiny model against a fake Label Studio API: predictions written
once, resumable, idempotent; per-task failures with reasons; retries; clear job failures."""

from __future__ import annotations

import threading
import time

import pytest

from fake_ls_api import add_image_tasks
from helpers import FULL_CONFIG
from sam3_backend.errors import BadRequest
from sam3_backend.jobs.prelabel import PrelabelParams
from sam3_backend.jobs.store import JobState


def _run(runtime, connection, timeout=60, **params):
    job = runtime.prelabel(PrelabelParams.from_dict(params), connection)
    assert runtime.executor.wait_idle(timeout), "the job did not end in time"
    return runtime.store.get(job.id)


def _versions(api, task_id):
    return [p["model_version"] for p in api.predictions_of(task_id)]


def test_every_task_gets_one_prediction_and_a_rerun_writes_nothing(runtime, connection, fake_api, image_project, engine):
    project, tasks = image_project
    job = _run(runtime, connection, project=project)
    assert job.state == JobState.DONE, job.reason
    r = job.result
    assert (r["tasks"], r["predicted"], r["written"], r["failed"], r["skipped_existing"]) == (10, 10, 10, 0, 0)
    assert r["model_version"] == engine.model_version and r["executor"] == "in-process"
    assert job.done == job.total == 10 and job.progress["stage"] == "done"
    assert r["label_studio_api"]["calls"] > 0 and r["images_per_s"] > 0
    for task_id in tasks:
        preds = fake_api.predictions_of(task_id)
        assert len(preds) == 1 and preds[0]["model_version"] == engine.model_version
        types = {region["type"] for region in preds[0]["result"]}
        assert {"brushlabels", "rectanglelabels"} <= types
        assert {region["value"][region["type"]][0] for region in preds[0]["result"]} == {"cat", "dog"}
    assert engine.stats.vision_encoder_calls == 5  # 10 images, 2 per pass

    again = _run(runtime, connection, project=project)
    assert again.state == JobState.DONE
    assert (again.result["skipped_existing"], again.result["written"], again.result["predicted"]) == (10, 0, 0)
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)
    assert engine.stats.vision_encoder_calls == 5  # nothing predicted again


def test_labels_subset_filter_and_explicit_tasks(runtime, connection, fake_api, image_project):
    project, tasks = image_project
    fake_api.state.tasks[tasks[0]]["annotations"] = 1
    job = _run(runtime, connection, project=project, labels="DOG", task_ids=tasks[:4])
    assert job.state == JobState.DONE, job.reason
    assert job.result["tasks"] == 3 and job.result["labels"] == ["dog"]  # the annotated task is left out
    assert fake_api.predictions_of(tasks[0]) == [] and fake_api.predictions_of(tasks[5]) == []
    labels = {r["value"][r["type"]][0] for t in tasks[1:4] for r in fake_api.predictions_of(t)[0]["result"]}
    assert labels == {"dog"}
    everything = _run(runtime, connection, project=project, filter="all")
    assert everything.result["tasks"] == 10 and everything.result["skipped_existing"] == 3
    assert len(fake_api.predictions_of(tasks[0])) == 1


def test_a_bad_task_fails_alone_with_its_reason(runtime, connection, fake_api, image_project):
    project, tasks = image_project
    missing = fake_api.add_task(project, {"image": f"/data/upload/{project}/missing.png"})
    no_image = fake_api.add_task(project, {"text": "no image here"})
    fake_api.state.files[f"/data/upload/{project}/garbage.png"] = b"<html>not an image</html>"
    garbage = fake_api.add_task(project, {"image": f"/data/upload/{project}/garbage.png"})
    job = _run(runtime, connection, project=project)
    assert job.state == JobState.DONE
    r = job.result
    assert (r["written"], r["failed"]) == (10, 3) and job.failed == 3
    assert r["failures_by_reason"] == {"media": 2, "no_image": 1}
    by_task = {f["task"]: f for f in r["failures"]}
    assert "404" in by_task[missing]["error"] and by_task[no_image]["reason"] == "no_image"
    assert by_task[garbage]["reason"] == "media"
    assert fake_api.predictions_of(missing) == []
    # failed tasks are not "done": a re-run tries them again, and only them
    again = _run(runtime, connection, project=project)
    assert again.result["skipped_existing"] == 10 and again.result["failed"] == 3


def test_transient_errors_are_retried_and_a_write_stored_despite_an_error_is_not_repeated(
        runtime, connection, fake_api, image_project):
    project, tasks = image_project
    fake_api.fail_next("GET", r"^/api/tasks/$", 429, times=2, retry_after=0.01)
    fake_api.fail_next("POST", r"/import/predictions$", 503, times=1)
    fake_api.fail_next("POST", r"/import/predictions$", 504, times=1, store_anyway=True)
    job = _run(runtime, connection, project=project)
    assert job.state == JobState.DONE, job.reason
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks), [len(fake_api.predictions_of(t)) for t in tasks]
    assert job.result["written"] + job.result["already_written"] == 10
    assert job.result["already_written"] == 4  # the batch stored behind the 504 was seen and not sent again
    assert job.result["label_studio_api"]["retries"] >= 2


def test_tasks_deleted_mid_run_are_recorded_and_the_rest_written(runtime, connection, fake_api, image_project):
    project, tasks = image_project
    doomed = tasks[-3:]

    def delete_later_tasks(api, items):
        api.on_import = None
        for t in doomed:
            api.delete_task(t)

    fake_api.on_import = delete_later_tasks
    job = _run(runtime, connection, project=project)
    assert job.state == JobState.DONE, job.reason
    assert job.result["failures_by_reason"] == {"deleted": 3}
    assert {f["task"] for f in job.result["failures"]} == set(doomed)
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks[:-3])


def test_a_rejected_prediction_is_isolated(runtime, connection, fake_api, image_project):
    project, tasks = image_project
    fake_api.fail_next("POST", r"/import/predictions$", 400, times=1)
    job = _run(runtime, connection, project=project)
    assert job.state == JobState.DONE
    # the 400 came once: the split halves went through, nothing lost, nothing doubled
    assert job.result["failed"] == 0 and all(len(fake_api.predictions_of(t)) == 1 for t in tasks)


@pytest.mark.parametrize("breakage, needle", [
    ("revoked", "refused the API key"),
    ("unreachable", "cannot reach Label Studio"),
    ("no project", "project 99 does not exist"),
    ("no image tag", "Image"),
])
def test_job_failures_say_what_to_do(runtime, connection, fake_api, image_project, breakage, needle):
    from sam3_backend.ls.client import ApiAccess

    project, _ = image_project
    conn = connection
    if breakage == "revoked":
        fake_api.revoked = True
    elif breakage == "unreachable":
        conn = ApiAccess("http://127.0.0.1:9", "x")
    elif breakage == "no project":
        project = 99
    else:
        project = fake_api.add_project('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                                       '<Choice value="a"/></Choices></View>')
    job = _run(runtime, conn, project=project)
    assert job.state == JobState.FAILED
    assert needle in job.reason, job.reason


def test_revoked_mid_run_fails_the_job_and_keeps_what_was_written(runtime, connection, fake_api, image_project):
    project, tasks = image_project

    def revoke(api, items):
        api.revoked = True

    fake_api.on_import = revoke
    job = _run(runtime, connection, project=project)
    assert job.state == JobState.FAILED and "refused the API key" in job.reason
    written = sum(len(fake_api.predictions_of(t)) for t in tasks)
    assert written == 4  # the first batch
    fake_api.revoked, fake_api.on_import = False, None
    resumed = runtime.resume(job.id, connection)
    assert runtime.executor.wait_idle(60)
    done = runtime.store.get(resumed.id)
    assert done.state == JobState.DONE and done.resumed_from == job.id
    assert done.result["skipped_existing"] == 4 and done.result["written"] == 6
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)


def test_cancel_mid_run_then_resume_predicts_each_task_once(runtime, connection, fake_api, image_project):
    project, _ = image_project
    more = add_image_tasks(fake_api, project, 10)
    tasks = [t for t in fake_api.state.tasks]
    # Downloads after the first 8 wait until the test has cancelled: a mid-run cancel, not a race.
    fake_api.media_gate, fake_api.media_gate_after = threading.Event(), 8
    job = runtime.prelabel(PrelabelParams(project=project), connection)
    deadline = time.monotonic() + 30
    while runtime.store.get(job.id).progress.get("written", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.store.cancel(job.id)
    fake_api.media_gate.set()
    assert runtime.executor.wait_idle(30)
    cancelled = runtime.store.get(job.id)
    assert cancelled.state == JobState.CANCELLED, cancelled.reason
    assert 4 <= cancelled.result["written"] < 20 and cancelled.result["stopped_early"]
    resumed = runtime.resume(job.id, connection)
    assert runtime.executor.wait_idle(60)
    done = runtime.store.get(resumed.id)
    assert done.state == JobState.DONE
    assert done.result["skipped_existing"] == cancelled.result["written"]
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks), more


def test_params_are_validated_with_clear_messages():
    with pytest.raises(BadRequest, match="project"):
        PrelabelParams.from_dict({"project": "twelve"})
    with pytest.raises(BadRequest, match="filter"):
        PrelabelParams.from_dict({"project": 1, "filter": "some"})
    with pytest.raises(BadRequest, match="unknown field"):
        PrelabelParams.from_dict({"project": 1, "bogus": True})
    p = PrelabelParams.from_dict({"project": "12.1700000000", "labels": "cat, dog", "batch_size": 8})
    assert (p.project, p.labels, p.batch_size) == (12, ("cat", "dog"), 8)
    assert PrelabelParams.from_dict(p.to_dict()) == p


def test_unknown_label_fails_the_job_naming_the_labels(runtime, connection, image_project):
    project, _ = image_project
    job = _run(runtime, connection, project=project, labels=["horse"])
    assert job.state == JobState.FAILED and "'horse'" in job.reason and "cat, dog" in job.reason


def test_exclusive_prelabel_refuses_a_second_job_for_the_project(runtime, connection, fake_api, image_project):
    from sam3_backend.jobs.store import JobConflict

    project, _ = image_project
    fake_api.media_delay = 0.05
    first = runtime.prelabel(PrelabelParams(project=project), connection)
    with pytest.raises(JobConflict):
        runtime.prelabel(PrelabelParams(project=project), connection)
    runtime.store.cancel(first.id)
    assert runtime.executor.wait_idle(30)
    assert FULL_CONFIG  # the fixture project uses the shared full config


def _file_number(path: str) -> int:
    return int(path.rsplit("img", 1)[1].split(".")[0])


def _scores(api, task_id) -> list[float]:
    (pred,) = [p for p in api.predictions_of(task_id)]
    return sorted(round(r["score"], 4) for r in pred["result"] if r["type"] == "rectanglelabels")


def test_a_project_serving_a_fine_tuned_version_is_prelabeled_with_it(job_settings, engine, loaded_model, connection,
                                                                       fake_api, image_project):
    """The CLI's runtime (no server, the base version known from the files) follows MODEL_DIR's
    served versions: the job predicts with the promoted delta and tags the predictions with it."""
    from helpers import serve_perturbed_version
    from sam3_backend.engine.versions import VersionStore
    from sam3_backend.jobs.runtime import JobsRuntime

    project, tasks = image_project
    other = fake_api.add_project(FULL_CONFIG)  # the same images, in a project that serves the base model
    twins = [fake_api.add_task(other, {"image": path}) for path in sorted(fake_api.state.files, key=_file_number)]
    version = serve_perturbed_version(VersionStore(job_settings.versions_dir), f"project-{project}", loaded_model)
    tuned = f"{engine.model_version}+{version}"
    rt = JobsRuntime(job_settings, engine=lambda: engine, ls_backoff=0.01, model_version=lambda: engine.model_version)
    try:
        job = _run(rt, connection, project=project)
        base = _run(rt, connection, project=other)
    finally:
        rt.shutdown(timeout=5)
    assert job.state == JobState.DONE and base.state == JobState.DONE, (job.reason, base.reason)
    assert job.result["model_version"] == tuned and base.result["model_version"] == engine.model_version
    assert all(_versions(fake_api, t) == [tuned] for t in tasks)
    assert all(_versions(fake_api, t) == [engine.model_version] for t in twins)
    differ = sum(_scores(fake_api, a) != _scores(fake_api, b) for a, b in zip(tasks, twins))
    assert differ == len(tasks), "the fine-tuned detector was not used"
