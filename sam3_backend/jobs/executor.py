"""Run job functions and keep their store record honest: started, progress, result or reason.

A job function is ``fn(ctx: JobContext) -> dict``: it reports progress through ``ctx``, polls
``ctx.cancelled()`` between units of work, and returns its summary (the job's ``result``). It
must be resumable: a resumed job is the same function with the same parameters, run again.

* ``InProcessExecutor`` (default): a bounded pool of daemon threads in this process. Queued jobs
  wait in the store as QUEUED. On shutdown running jobs are asked to stop and end as FAILED
  "interrupted" (resumable), never as silently lost threads.
* ``RayExecutor``: runs the function as a Ray task (``ray.remote(**remote_options)``, e.g.
  ``num_gpus=1`` for training on a GPU node), with Ray's task retries; a small Ray actor relays
  its progress and the cancel flag, and a local thread writes them to the store (which stays on
  this machine).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import BackendError
from .store import HEARTBEAT_SECONDS, Job, JobState, JobStore, process_owner

log = logging.getLogger(__name__)

START_POLL_SECONDS = 1.0  # how often a job waiting for a peer job of its project tries to start
INTERRUPTED = "interrupted: the backend process stopped while the job ran; resume it to continue where it left off"


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled`` so a job can unwind from deep inside its loop."""


class JobContext:
    """What a running job sees: its record, progress reporting, the cancel flag.

    ``cancelled()`` is True once someone cancelled the job or the executor is shutting down; it
    reads the store at most every ``poll_seconds``, so calling it per item is cheap.
    """

    def __init__(self, job: Job, store: JobStore, *, stop: threading.Event | None = None, poll_seconds: float = 0.5):
        self.job = job
        self.store = store
        self._stop = stop or threading.Event()
        self._poll_seconds = poll_seconds
        self._checked_at = 0.0
        self._cancelled = False
        self._last_push = None

    def progress(self, *, done: int | None = None, total: int | None = None, failed: int | None = None,
                 **extra: Any) -> None:
        self.store.progress(self.job.id, done=done, total=total, failed=failed, **extra)

    def cancelled(self) -> bool:
        if self._cancelled or self._stop.is_set():
            return True
        now = time.monotonic()
        if now - self._checked_at >= self._poll_seconds:
            self._checked_at = now
            self._cancelled = self.store.cancel_requested(self.job.id)
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job.id} was cancelled")

    @property
    def stopping(self) -> bool:
        """The process is shutting down (as opposed to a user's cancel)."""
        return self._stop.is_set()


JobFn = Callable[[JobContext], dict]


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError wraps the job's own exception
    if isinstance(cause, BaseException):
        exc = cause
    if isinstance(exc, BackendError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_job(store: JobStore, job: Job, fn: JobFn, *, owner: str, exclusive: bool = False,
            stop: threading.Event | None = None, on_start: Callable[[str], None] | None = None,
            on_end: Callable[[str], None] | None = None) -> Job | None:
    """Start ``job`` (waiting, with ``exclusive``, while a peer of its kind runs for the project),
    run ``fn`` and record how it ended. Returns the final record."""
    stop = stop or threading.Event()
    while True:
        started = store.start(job.id, owner, exclusive=exclusive)
        if started is not None:
            break
        current = store.get(job.id)
        if current is None or current.state != JobState.QUEUED:
            return current  # cancelled (or recovered) while queued
        if stop.is_set():
            return store.fail(job.id, "interrupted: the backend process stopped before the job started; resume it")
        store.heartbeat(job.id)
        time.sleep(START_POLL_SECONDS)
    if on_start:
        on_start(job.id)
    ctx = JobContext(started, store, stop=stop)
    try:
        result = fn(ctx)
    except JobCancelled:
        if stop.is_set() and not store.cancel_requested(job.id):
            return store.fail(job.id, INTERRUPTED)
        return store.finish(job.id, {}, cancelled=True)
    except Exception as exc:
        log.error("job %s (%s) failed: %s", job.id, job.kind, _reason(exc), exc_info=not isinstance(exc, BackendError))
        return store.fail(job.id, _reason(exc))
    finally:
        if on_end:
            on_end(job.id)
    result = result if isinstance(result, dict) else {"value": result}
    if store.cancel_requested(job.id):
        return store.finish(job.id, result, cancelled=True)
    if stop.is_set() and result.get("stopped_early"):
        return store.fail(job.id, INTERRUPTED, result)
    return store.finish(job.id, result)


class _Heartbeat:
    """One daemon thread refreshing ``heartbeat_at`` of this process's running jobs, so a long
    step without progress reports never looks like a dead owner to another host."""

    def __init__(self, store: JobStore, every: float = HEARTBEAT_SECONDS):
        self._store, self._every = store, every
        self._jobs: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, job_id: str) -> None:
        with self._lock:
            self._jobs.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="job-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)

    def _loop(self) -> None:
        while True:
            time.sleep(self._every)
            with self._lock:
                jobs = list(self._jobs)
            for job_id in jobs:
                try:
                    self._store.heartbeat(job_id)
                except Exception:  # a locked or vanished database must not kill the beat for the others
                    log.warning("heartbeat for job %s failed", job_id, exc_info=True)


class InProcessExecutor:
    """Runs jobs on at most ``workers`` daemon threads of this process, in submission order."""

    def __init__(self, store: JobStore, *, workers: int = 1, owner: str | None = None):
        if workers < 1:
            raise ValueError("an executor needs at least one worker")
        self.store = store
        self.owner = owner or process_owner()
        self._workers = workers
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._heartbeat = _Heartbeat(store)
        self._idle = threading.Condition()
        self._busy = 0

    def submit(self, job: Job, fn: JobFn, *, exclusive: bool = False) -> None:
        """Queue ``fn`` for ``job`` (QUEUED in the store). ``exclusive``: start only while no other
        job of its kind runs for the same project (in any process), waiting otherwise."""
        if self._stop.is_set():
            raise RuntimeError("the executor is shut down")
        with self._idle:
            self._busy += 1
        self._queue.put((job, fn, exclusive))
        with self._lock:
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name=f"job-worker-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job, fn, exclusive = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                run_job(self.store, job, fn, owner=self.owner, exclusive=exclusive, stop=self._stop,
                        on_start=self._heartbeat.add, on_end=self._heartbeat.remove)
            except Exception:  # the store itself failed: log, keep the worker alive
                log.exception("job %s: could not record its outcome", job.id)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has ended (tests, the CLI); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask running jobs to stop (they end as FAILED "interrupted", resumable), mark queued ones
        interrupted, and wait up to ``timeout`` seconds for the running ones to unwind."""
        self._stop.set()
        while True:
            try:
                job, _, _ = self._queue.get_nowait()
            except queue.Empty:
                break
            self.store.fail(job.id, "interrupted: the backend process stopped before the job started; resume it")
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()
        self.wait_idle(timeout)


class RayExecutor:
    """Runs each job function as a Ray task; progress and cancel travel through a relay actor.

    ``remote_options`` go to ``ray.remote`` (``num_cpus``, ``num_gpus``, ``max_retries``, ...).
    The function and what it closes over are pickled to the cluster, so it must not hold the
    store or open connections; it gets a ``JobContext``-like object on the worker.
    """

    def __init__(self, store: JobStore, *, address: str | None = None, remote_options: dict | None = None,
                 owner: str | None = None, poll_seconds: float = 0.5):
        self.store = store
        self.address = address
        self.remote_options = {"num_cpus": 1, "max_retries": 2, **(remote_options or {})}
        self.owner = owner or process_owner()
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._heartbeat = _Heartbeat(store)

    def submit(self, job: Job, fn: JobFn, *, exclusive: bool = False) -> None:
        thread = threading.Thread(
            target=run_job, name=f"ray-job-{job.id}", daemon=True,
            args=(self.store, job, lambda ctx: self._run_remote(ctx, fn)),
            kwargs=dict(owner=self.owner, exclusive=exclusive, stop=self._stop, on_start=self._heartbeat.add,
                        on_end=self._heartbeat.remove),
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run_remote(self, ctx: JobContext, fn: JobFn) -> dict:
        import ray

        from .ray_support import ensure_ray

        ensure_ray(self.address)
        channel = ray.remote(num_cpus=0)(_Relay).remote()
        ref = ray.remote(**self.remote_options)(_remote_entry).remote(fn, ctx.job, channel)
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll_seconds)
                for update in ray.get(channel.drain.remote()):
                    ctx.progress(**update)
                if ctx.cancelled():
                    channel.cancel.remote()
                if ready:
                    for update in ray.get(channel.drain.remote()):
                        ctx.progress(**update)
                    try:
                        return ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        if isinstance(getattr(exc, "cause", None), JobCancelled):
                            raise JobCancelled(str(exc.cause)) from exc
                        raise
        finally:
            ray.kill(channel)

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wait_idle(timeout)


class _Relay:
    """Ray actor between a remote job and its driver thread: progress updates in, cancel flag out."""

    def __init__(self):
        self.updates: list[dict] = []
        self.cancel_flag = False

    def push(self, update: dict) -> None:
        self.updates.append(update)

    def drain(self) -> list[dict]:
        out, self.updates = self.updates, []
        return out

    def cancel(self) -> None:
        self.cancel_flag = True

    def cancelled(self) -> bool:
        return self.cancel_flag


class _RemoteContext:
    """``JobContext`` on a Ray worker: progress goes to the relay, the cancel flag comes from it."""

    def __init__(self, job: Job, relay, poll_seconds: float = 0.5):
        self.job = job
        self._relay = relay
        self._poll_seconds = poll_seconds
        self._checked_at = 0.0
        self._cancelled = False
        self._last_push = None

    def progress(self, *, done=None, total=None, failed=None, **extra) -> None:
        self._last_push = self._relay.push.remote(dict(done=done, total=total, failed=failed, **extra))

    def flush(self) -> None:
        """Wait until the relay has every update. Pushes are asynchronous and the driver drains
        the relay once it sees the task end, so without this the last updates could arrive after
        that final drain and be lost (a done job showing done=0). One caller's calls to an actor
        run in order, so waiting for the last push covers the earlier ones."""
        import ray

        if self._last_push is not None:
            ray.get(self._last_push)
            self._last_push = None

    def cancelled(self) -> bool:
        import ray

        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self._poll_seconds:
            self._checked_at = now
            self._cancelled = bool(ray.get(self._relay.cancelled.remote()))
        return self._cancelled

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job.id} was cancelled")

    stopping = False


def _remote_entry(fn: JobFn, job: Job, relay) -> dict:
    ctx = _RemoteContext(job, relay)
    try:
        return fn(ctx)
    finally:
        ctx.flush()


__all__ = ["InProcessExecutor", "JobCancelled", "JobContext", "JobFn", "RayExecutor", "run_job"]
