"""Bulk prelabeling on a real local Ray (2 CPUs, tiny model): exactly once over two actors, an
actor killed mid-job loses nothing, a re-run writes nothing; the Ray executor relays progress
and cancel. One Ray session for the module: starting Ray costs seconds."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fake_ls_api import add_image_tasks
from sam3_backend.jobs.prelabel import PrelabelParams
from sam3_backend.jobs.store import JobState

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_runtime(local_ray, job_settings, tiny_checkpoint):
    from sam3_backend.jobs.runtime import JobsRuntime

    settings = job_settings.with_overrides(sam3_model=str(tiny_checkpoint), device="cpu", ray_cpus_per_actor=1.0)

    def no_local_engine():
        raise AssertionError("a Ray job must not load the model in the driver")

    rt = JobsRuntime(settings, engine=no_local_engine, ls_backoff=0.01)
    yield rt
    rt.shutdown(timeout=10)


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_actors_predict_each_task_once_an_actor_killed_mid_job_loses_nothing_and_a_rerun_writes_nothing(
        ray_runtime, connection, fake_api, image_project, engine):
    project, tasks = image_project
    tasks += add_image_tasks(fake_api, project, 14)
    fake_api.media_delay = 0.15  # slow storage: the job is still running when an actor dies
    job = ray_runtime.prelabel(PrelabelParams(project=project, ray=True, actors=2, batch_size=1), connection)
    workers = _wait_for(lambda: ray_runtime.store.get(job.id).progress.get("workers"), 180, "the first results")
    victim = next(iter(workers))
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
    assert ray_runtime.executor.wait_idle(240)
    done = ray_runtime.store.get(job.id)
    assert done.state == JobState.DONE, done.reason
    r = done.result
    assert r["executor"] == "ray" and r["model_version"] == engine.model_version
    assert (r["tasks"], r["predicted"], r["written"], r["failed"], r["not_reached"]) == (24, 24, 24, 0, 0)
    assert sum(r["workers"].values()) == 24
    print(f"\nkilled {victim}; results per worker: {r['workers']}")
    # two actors shared the work, and the killed one was replaced by a new process
    assert len(r["workers"]) >= 3 or (len(r["workers"]) == 2 and victim in r["workers"]), r["workers"]
    for t in tasks:
        preds = fake_api.predictions_of(t)
        assert len(preds) == 1 and preds[0]["model_version"] == engine.model_version and preds[0]["result"]

    fake_api.media_delay = 0.0
    again = ray_runtime.prelabel(PrelabelParams(project=project, ray=True, actors=2), connection)
    assert ray_runtime.executor.wait_idle(60)
    rerun = ray_runtime.store.get(again.id)
    assert rerun.state == JobState.DONE
    assert (rerun.result["skipped_existing"], rerun.result["written"], rerun.result["predicted"]) == (24, 0, 0)
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)


def test_ray_executor_runs_a_job_remotely_with_progress_and_cancel(local_ray, tmp_path):
    from sam3_backend.jobs.executor import RayExecutor
    from sam3_backend.jobs.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    ex = RayExecutor(store, remote_options={"num_cpus": 0})

    def count(ctx):
        import os as _os

        for i in range(3):
            ctx.progress(done=i + 1, total=3, where=_os.getpid())
        return {"counted": 3, "pid": _os.getpid()}

    job = store.create("demo", 1, {})
    ex.submit(job, count)
    assert ex.wait_idle(120)
    done = store.get(job.id)
    assert done.state == JobState.DONE, done.reason
    assert done.result["counted"] == 3 and done.result["pid"] != os.getpid()
    assert done.done == 3 and done.progress["where"] == done.result["pid"]

    def forever(ctx):
        import time as _time

        while True:
            ctx.check_cancelled()
            ctx.progress(stage="looping")
            _time.sleep(0.05)

    looping = store.create("demo", 2, {})
    ex.submit(looping, forever)
    _wait_for(lambda: store.get(looping.id).progress.get("stage") == "looping", 60, "the remote loop")
    store.cancel(looping.id)
    assert ex.wait_idle(60)
    assert store.get(looping.id).state == JobState.CANCELLED

    def broken(ctx):
        raise ValueError("bad params: say what to fix")

    failing = store.create("demo", 3, {})
    ex.submit(failing, broken)
    assert ex.wait_idle(60)
    assert store.get(failing.id).reason == "ValueError: bad params: say what to fix"


def test_actors_that_cannot_load_the_model_fail_the_job_once_with_the_reason(
        local_ray, job_settings, tiny_checkpoint, connection, image_project, tmp_path):
    """Weights that do not fit the architecture: the driver reads the version from the files, the
    actors refuse to load them; the job fails quickly with the loader's message, no restart loop."""
    import json
    import shutil

    from sam3_backend.jobs.runtime import JobsRuntime

    broken = tmp_path / "broken-checkpoint"
    shutil.copytree(tiny_checkpoint, broken)
    config = json.loads((broken / "config.json").read_text())

    def widen(node):
        for key, value in node.items():
            if isinstance(value, dict):
                widen(value)
            elif key == "hidden_size" and isinstance(value, int):
                node[key] = value + 8

    widen(config)
    (broken / "config.json").write_text(json.dumps(config))
    project, tasks = image_project
    rt = JobsRuntime(job_settings.with_overrides(sam3_model=str(broken), device="cpu"), engine=lambda: None)
    try:
        job = rt.prelabel(PrelabelParams(project=project, ray=True, actors=1), connection)
        assert rt.executor.wait_idle(180)
        failed = rt.store.get(job.id)
    finally:
        rt.shutdown()
    assert failed.state == JobState.FAILED
    assert failed.reason.startswith("the Ray model actors failed: ") and "ModelLoadError" in failed.reason, failed.reason
    assert "\x1b[" not in failed.reason and "Traceback" not in failed.reason


def test_actors_predict_with_the_fine_tuned_version_the_project_serves(
        ray_runtime, runtime, loaded_model, engine, connection, fake_api, image_project):
    """The version's delta travels to the actors with their spec (no shared MODEL_DIR needed):
    the Ray job's predictions carry the fine-tuned version and equal the in-process job's."""
    from helpers import serve_perturbed_version

    project, tasks = image_project
    twin = fake_api.add_project(fake_api.state.projects[project]["label_config"])
    twins = [fake_api.add_task(twin, fake_api.state.tasks[t]["data"]) for t in tasks]
    for rt, proj in ((ray_runtime, project), (runtime, twin)):  # the same delta (seed) in both scopes
        version = serve_perturbed_version(rt.versions, f"project-{proj}", loaded_model, seed=7)
    tuned = f"{engine.model_version}+project-{project}-v1"
    on_ray = ray_runtime.prelabel(PrelabelParams(project=project, ray=True, actors=1), connection)
    assert ray_runtime.executor.wait_idle(180)
    local = runtime.prelabel(PrelabelParams(project=twin), connection)
    assert runtime.executor.wait_idle(60)
    on_ray, local = ray_runtime.store.get(on_ray.id), runtime.store.get(local.id)
    assert on_ray.state == local.state == JobState.DONE, (on_ray.reason, local.reason)
    assert on_ray.result["model_version"] == tuned and version == f"project-{twin}-v1"
    for a, b in zip(tasks, twins):
        (ray_pred,), (local_pred,) = fake_api.predictions_of(a), fake_api.predictions_of(b)
        assert ray_pred["model_version"] == tuned
        assert [r["score"] for r in ray_pred["result"]] == pytest.approx([r["score"] for r in local_pred["result"]],
                                                                         abs=1e-3)
