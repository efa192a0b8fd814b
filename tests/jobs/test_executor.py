"""The in-process executor: results, failures, cancel, bounded workers, shutdown, exclusivity."""

from __future__ import annotations

import threading
import time

import pytest

from sam3_backend.errors import MediaUnavailable
from sam3_backend.jobs.executor import InProcessExecutor, JobCancelled
from sam3_backend.jobs.store import JobState, JobStore


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite3")


def _wait(store, job_id, states, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {store.get(job_id).state}")


def test_a_job_runs_reports_progress_and_keeps_its_result(store):
    ex = InProcessExecutor(store)
    job = store.create("demo", 1, {"n": 3})

    def fn(ctx):
        assert ctx.job.params == {"n": 3} and ctx.job.state == JobState.RUNNING
        for i in range(3):
            ctx.progress(done=i + 1, total=3, stage="counting")
        return {"counted": 3}

    ex.submit(job, fn)
    assert ex.wait_idle(10)
    done = store.get(job.id)
    assert done.state == JobState.DONE and done.result == {"counted": 3} and done.done == 3
    assert done.progress == {"stage": "counting"}


def test_a_failing_job_records_the_reason_and_the_worker_survives(store):
    ex = InProcessExecutor(store)
    bad = store.create("demo", 1, {})
    ex.submit(bad, lambda ctx: (_ for _ in ()).throw(MediaUnavailable("Label Studio answered 401: check the token")))
    crash = store.create("demo", 1, {})
    ex.submit(crash, lambda ctx: 1 / 0)
    good = store.create("demo", 1, {})
    ex.submit(good, lambda ctx: {"ok": True})
    assert ex.wait_idle(10)
    assert store.get(bad.id).reason == "Label Studio answered 401: check the token"
    assert store.get(crash.id).reason == "ZeroDivisionError: division by zero"
    assert store.get(good.id).state == JobState.DONE


def test_cancel_stops_a_running_job_which_keeps_its_partial_result(store):
    ex = InProcessExecutor(store)
    job = store.create("demo", 1, {})
    started = threading.Event()

    def fn(ctx):
        done = 0
        while not ctx.cancelled():
            started.set()
            done += 1
            time.sleep(0.01)
        return {"done": done}

    ex.submit(job, fn)
    assert started.wait(5)
    store.cancel(job.id)
    ended = _wait(store, job.id, {JobState.CANCELLED})
    assert ended.result["done"] > 0 and ended.reason == "cancelled on request"

    raising = store.create("demo", 1, {})

    def fn2(ctx):
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    ex.submit(raising, fn2)
    _wait(store, raising.id, {JobState.RUNNING})
    store.cancel(raising.id)
    assert _wait(store, raising.id, {JobState.CANCELLED}).state == JobState.CANCELLED


def test_workers_are_bounded_and_queued_jobs_wait(store):
    ex = InProcessExecutor(store, workers=2)
    running = []
    peak = []
    lock = threading.Lock()

    def fn(ctx):
        with lock:
            running.append(ctx.job.id)
            peak.append(len(running))
        time.sleep(0.15)
        with lock:
            running.remove(ctx.job.id)
        return {}

    jobs = [store.create("demo", i, {}) for i in range(5)]
    for job in jobs:
        ex.submit(job, fn)
    time.sleep(0.05)
    assert sum(store.get(j.id).state == JobState.QUEUED for j in jobs) >= 3
    assert ex.wait_idle(10)
    assert max(peak) == 2
    assert all(store.get(j.id).state == JobState.DONE for j in jobs)


def test_shutdown_interrupts_running_and_queued_jobs_resumably(store):
    ex = InProcessExecutor(store, workers=1)
    started = threading.Event()

    def slow(ctx):
        started.set()
        while not ctx.cancelled():
            time.sleep(0.01)
        return {"written": 7, "stopped_early": True}

    running = store.create("demo", 1, {})
    queued = store.create("demo", 2, {})
    ex.submit(running, slow)
    ex.submit(queued, slow)
    assert started.wait(5)
    ex.shutdown(timeout=5)
    a, b = store.get(running.id), store.get(queued.id)
    assert a.state == JobState.FAILED and a.reason.startswith("interrupted") and a.result == {"written": 7,
                                                                                              "stopped_early": True}
    assert b.state == JobState.FAILED and b.reason.startswith("interrupted")
    with pytest.raises(RuntimeError):
        ex.submit(store.create("demo", 3, {}), slow)


def test_exclusive_jobs_of_one_project_run_one_after_another(store):
    ex = InProcessExecutor(store, workers=2)
    order = []

    def fn(ctx):
        order.append(("start", ctx.job.id))
        time.sleep(0.2)
        order.append(("end", ctx.job.id))
        return {}

    a = store.create("prelabel", 4, {})
    b = store.create("prelabel", 4, {})
    ex.submit(a, fn, exclusive=True)
    time.sleep(0.05)
    ex.submit(b, fn, exclusive=True)
    assert ex.wait_idle(15)
    assert order == [("start", a.id), ("end", a.id), ("start", b.id), ("end", b.id)]


def test_check_cancelled_raises(store):
    from sam3_backend.jobs.executor import JobContext

    job = store.create("demo", 1, {})
    store.start(job.id, "me")
    ctx = JobContext(store.get(job.id), store, poll_seconds=0)
    ctx.check_cancelled()
    store.cancel(job.id)
    with pytest.raises(JobCancelled):
        ctx.check_cancelled()
