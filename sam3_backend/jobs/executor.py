"""Running jobs: ``InProcessExecutor`` runs each job function in a thread of this process.

A job function is ``fn(ctx: JobContext) -> dict``; its dict becomes the job's result. Raising
``JobCancelled`` (``ctx.check_cancelled()``) ends it as cancelled; any other exception as failed,
with the exception's message as the reason (the traceback goes to the log).

(Minimal version written for the training job against the job-layer contract; the job layer's
own issue owns this file.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .store import Job, JobStore, this_owner

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job function to stop it because cancellation was requested."""


@dataclass
class JobContext:
    job: Job
    store: JobStore

    def progress(self, *, done: int | None = None, total: int | None = None, failed: int | None = None, **extra) -> None:
        self.store.progress(self.job.id, done=done, total=total, failed=failed, **extra)

    def cancelled(self) -> bool:
        return self.store.cancel_requested(self.job.id)

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job.id} was cancelled")


def run_job(store: JobStore, job: Job, fn: Callable[[JobContext], dict], context: type = JobContext) -> Job:
    """Run ``fn`` for ``job`` here and now (the CLI does this; the executor does it in a thread).
    ``context``: the ``JobContext`` class to hand ``fn`` (the CLI's also draws progress bars)."""
    store.start(job.id, this_owner())
    log.info("%s job %s (project %s) started", job.kind, job.id, job.project)
    ctx = context(store.get(job.id) or job, store)
    try:
        result = fn(ctx)
    except JobCancelled as exc:
        store.mark_cancelled(job.id, str(exc))
        log.info("%s job %s cancelled", job.kind, job.id)
    except Exception as exc:
        log.error("%s job %s failed: %s", job.kind, job.id, _reason(exc), exc_info=not _ours(exc))
        store.fail(job.id, _reason(exc))
    else:
        store.finish(job.id, result if isinstance(result, dict) else {"value": result})
        log.info("%s job %s done", job.kind, job.id)
    return store.get(job.id) or job


def _ours(exc: Exception) -> bool:
    """Our own exceptions carry messages written for users (no traceback needed)."""
    return type(exc).__module__.startswith("sam3_backend.") and bool(str(exc))


def _reason(exc: Exception) -> str:
    return str(exc) if _ours(exc) else f"{type(exc).__name__}: {exc}"


class InProcessExecutor:
    """One daemon thread per submitted job."""

    def __init__(self, store: JobStore):
        self.store = store
        self._threads: dict[str, threading.Thread] = {}

    def submit(self, job: Job, fn: Callable[[JobContext], dict]) -> None:
        thread = threading.Thread(target=run_job, args=(self.store, job, fn), name=f"job-{job.kind}-{job.id}", daemon=True)
        self._threads[job.id] = thread
        thread.start()

    def join(self, job_id: str, timeout: float | None = None) -> None:
        """Wait for a job submitted here (tests, shutdown)."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
