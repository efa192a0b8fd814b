"""The (minimal) job store and executor the training job runs on: states, exclusivity across
store instances, cancellation, and recovery of jobs whose process died."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from sam3_backend.jobs.executor import InProcessExecutor, JobCancelled, run_job
from sam3_backend.jobs.store import JobConflict, JobState, JobStore


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite3")


def test_lifecycle_and_progress(store):
    job = store.create("train", "3", {"source": "test"})
    assert job.state == JobState.QUEUED and job.params == {"source": "test"}

    def work(ctx):
        ctx.progress(done=1, total=4, stage="training", loss=0.5)
        ctx.progress(done=2, stage="training")
        return {"version": "project-3-v1"}

    done = run_job(store, job, work)
    assert done.state == JobState.DONE and done.result == {"version": "project-3-v1"}
    assert (done.done, done.total, done.progress) == (2, 4, {"stage": "training", "loss": 0.5})
    assert done.started_at and done.finished_at and done.owner
    failed = run_job(store, store.create("train", "3", {}), lambda ctx: 1 / 0)
    assert failed.state == JobState.FAILED and "ZeroDivisionError" in failed.reason
    assert [j.state for j in store.list(kind="train", project="3")] == [JobState.FAILED, JobState.DONE]


def test_one_active_job_per_kind_and_project_across_store_instances(tmp_path):
    a, b = JobStore(tmp_path / "j.sqlite3"), JobStore(tmp_path / "j.sqlite3")  # two worker processes
    first = a.create("train", "3", {}, exclusive=True)
    with pytest.raises(JobConflict) as conflict:
        b.create("train", "3", {}, exclusive=True)
    assert conflict.value.existing.id == first.id
    b.create("train", "4", {}, exclusive=True)  # another project
    b.create("prelabel", "3", {}, exclusive=True)  # another kind
    run_job(a, first, lambda ctx: {})
    b.create("train", "3", {}, exclusive=True)  # the first one is done


def test_cancel_queued_and_running(store):
    queued = store.create("train", "1", {})
    store.cancel(queued.id)
    assert store.get(queued.id).state == JobState.CANCELLED
    running = store.create("train", "2", {})
    started = threading.Event()

    def work(ctx):
        started.set()
        while True:
            ctx.check_cancelled()

    executor = InProcessExecutor(store)
    executor.submit(running, work)
    started.wait(10)
    store.cancel(running.id)
    executor.join(running.id, 10)
    assert store.get(running.id).state == JobState.CANCELLED
    with pytest.raises(JobCancelled):
        raise JobCancelled("x")


def test_a_job_whose_process_died_is_failed_and_can_run_again(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    job = store.create("train", "3", {}, exclusive=True)
    store.start(job.id, f"{socket.gethostname()}:{int(dead.stdout)}")  # as if that process had run it
    recovered = store.recover()
    assert [j.id for j in recovered] == [job.id]
    assert store.get(job.id).state == JobState.FAILED and "interrupted" in store.get(job.id).reason
    assert store.create("train", "3", {}, exclusive=True).state == JobState.QUEUED


def test_exclusive_create_ignores_a_dead_running_job_without_recover(store):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    job = store.create("train", "3", {}, exclusive=True)
    store.start(job.id, f"{socket.gethostname()}:{int(dead.stdout)}")
    store.create("train", "3", {}, exclusive=True)
    assert store.get(job.id).state == JobState.FAILED
