"""The job store: persistence, restart recovery, cancel, exclusivity, concurrent writers."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time

import pytest

from sam3_backend.jobs.store import JobConflict, JobNotFound, JobState, JobStore, owner_alive, process_owner


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite3")


def test_a_job_round_trips_and_lists_newest_first(store, tmp_path):
    a = store.create("prelabel", 12, {"labels": ["cat"], "filter": "unlabeled"})
    b = store.create("train", "12", {})
    assert a.state == JobState.QUEUED and a.project == "12" and a.params == {"labels": ["cat"], "filter": "unlabeled"}
    assert a.owner == process_owner()
    assert [j.id for j in store.list()] == [b.id, a.id]
    assert [j.id for j in store.list(kind="prelabel", project=12)] == [a.id]
    assert store.list(states=[JobState.RUNNING]) == []

    started = store.start(a.id, "me")
    assert started.state == JobState.RUNNING and started.owner == "me" and started.started_at
    store.progress(a.id, done=3, total=10, failed=1, rate=2.5, stage="predicting")
    store.progress(a.id, done=5, eta=2.0, stage=None)  # None removes a key
    job = store.get(a.id)
    assert (job.done, job.total, job.failed) == (5, 10, 1)
    assert job.progress == {"rate": 2.5, "eta": 2.0}
    done = store.finish(a.id, {"predicted": 5})
    assert done.state == JobState.DONE and done.result == {"predicted": 5} and done.finished_at

    reopened = JobStore(tmp_path / "jobs.sqlite3")  # another process would see the same
    assert reopened.get(a.id).to_dict()["result"] == {"predicted": 5}
    assert reopened.get("nope") is None


def test_a_job_ends_once(store):
    job = store.create("prelabel", 1, {})
    store.start(job.id, "me")
    store.fail(job.id, "Label Studio unreachable")
    again = store.finish(job.id, {"late": True})
    assert again.state == JobState.FAILED and again.reason == "Label Studio unreachable" and again.result == {}


def test_cancel_ends_a_queued_job_and_flags_a_running_one(store):
    queued = store.create("prelabel", 1, {})
    assert store.cancel(queued.id).state == JobState.CANCELLED
    assert store.start(queued.id, "me") is None  # never starts after a cancel
    assert store.cancel_requested(queued.id)

    running = store.create("prelabel", 2, {})
    store.start(running.id, "me")
    assert not store.cancel_requested(running.id)
    flagged = store.cancel(running.id)
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert store.cancel_requested(running.id)
    assert store.finish(running.id, {"written": 3}, cancelled=True).state == JobState.CANCELLED
    with pytest.raises(JobNotFound):
        store.cancel("missing")


def test_exclusive_create_refuses_a_second_active_job_for_the_project(store):
    first = store.create("prelabel", 7, {}, exclusive=True)
    with pytest.raises(JobConflict) as err:
        store.create("prelabel", 7, {}, exclusive=True)
    assert err.value.existing.id == first.id and err.value.status == 409 and first.id in str(err.value)
    store.create("prelabel", 8, {}, exclusive=True)  # another project
    store.create("train", 7, {}, exclusive=True)  # another kind
    store.start(first.id, "me")
    store.finish(first.id, {})
    store.create("prelabel", 7, {}, exclusive=True)  # the first one ended


def test_exclusive_start_waits_for_a_running_peer(store):
    a = store.create("prelabel", 3, {})
    b = store.create("prelabel", 3, {})
    assert store.start(a.id, "me", exclusive=True) is not None
    assert store.start(b.id, "me", exclusive=True) is None
    assert store.get(b.id).state == JobState.QUEUED
    store.finish(a.id, {})
    assert store.start(b.id, "me", exclusive=True).state == JobState.RUNNING


_CRASHING_OWNER = """
import sys
from sam3_backend.jobs.store import JobStore
store = JobStore(sys.argv[1])
running = store.create("prelabel", 5, {"filter": "all"})
store.start(running.id)
store.progress(running.id, done=4, total=10)
queued = store.create("prelabel", 6, {})
print(running.id, queued.id)
# the process ends here without finishing either job, as a crash or a kill would
"""


def test_recover_marks_jobs_of_a_dead_process_interrupted(store):
    proc = subprocess.run([sys.executable, "-c", _CRASHING_OWNER, str(store.path)], capture_output=True, text=True,
                          check=True)
    running_id, queued_id = proc.stdout.split()
    mine = store.create("prelabel", 9, {})  # this process is alive: never recovered
    store.start(mine.id)

    recovered = {j.id: j for j in store.recover()}
    assert set(recovered) == {running_id, queued_id}
    job = store.get(running_id)
    assert job.state == JobState.FAILED and job.reason.startswith("interrupted") and job.done == 4
    assert store.get(mine.id).state == JobState.RUNNING
    assert store.recover() == []
    # an exclusive create for the crashed project is not blocked by the dead job
    store.create("prelabel", 5, {}, exclusive=True)


def test_owner_of_another_host_is_judged_by_its_heartbeat():
    now = time.time()
    assert owner_alive("elsewhere:123:456", now - 10, stale_after=60, now=now)
    assert not owner_alive("elsewhere:123:456", now - 600, stale_after=60, now=now)
    assert owner_alive(process_owner(), None, stale_after=60)
    assert not owner_alive(None, now, stale_after=60)


def _hammer(path: str, n: int, out) -> None:
    store = JobStore(path)
    ids = []
    for i in range(n):
        job = store.create("prelabel", f"p{i % 3}", {"i": i})
        store.start(job.id)
        for k in range(5):
            store.progress(job.id, done=k + 1, total=5, worker=str(i))
        store.finish(job.id, {"i": i})
        ids.append(job.id)
    out.put(ids)


def test_concurrent_writers_in_threads_and_processes(store):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(store.path), 15, out)) for _ in range(2)]
    for p in procs:
        p.start()
    errors: list[BaseException] = []
    thread_ids: list[str] = []

    def in_thread():
        try:
            local = []
            for i in range(15):
                job = store.create("train", None, {"i": i})
                store.start(job.id)
                store.progress(job.id, done=1, total=1)
                store.finish(job.id, {})
                local.append(job.id)
            thread_ids.extend(local)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=in_thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    proc_ids = [i for _ in procs for i in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not errors, errors
    jobs = store.list(limit=1000)
    assert len(jobs) == len(set(proc_ids + thread_ids)) == 2 * 15 + 3 * 15
    assert all(j.state == JobState.DONE for j in jobs)
    assert all(j.done == j.total for j in jobs)
