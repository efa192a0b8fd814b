"""One tracking run of a video request, and the job record it becomes when it outlives it.

``VideoService`` starts a run per request (interactive) or per task (prelabel) and waits for it
up to the deadline. ``TrackRun`` is what the request and the run share: the accumulator, the
error, and who writes the final result (``claim`` by the request, ``complete`` by the run).
``TrackRunJob`` is the ``JobContext`` surface ``jobs.track.run_track`` reports to; it is
recorded in the job store only once the run is handed off.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..engine.scheduler import Priority
from .track import TrackAccumulator

log = logging.getLogger(__name__)

_STORE_EVERY = 1.0  # seconds between progress writes to the job store


class TrackRunJob:
    """The ``JobContext`` surface of one tracking run (``progress``, ``cancelled``).

    A run starts as a plain thread of this process; when it outlives its request it is recorded
    as a ``track`` job (``attach``): from then on its progress goes to the job store (throttled),
    a cancel there stops it, and ``end`` records how it finished.
    """

    def __init__(self, name: str):
        self.name = name
        self.state: dict[str, Any] = {}
        self._cancel = threading.Event()
        self._store = None
        self._job_id: str | None = None
        self._written_at = 0.0
        self._lock = threading.Lock()

    @property
    def job_id(self) -> str | None:
        return self._job_id

    def attach(self, store, kind: str, project: Any, params: dict) -> None:
        """Record this run as a running job (owner: this process)."""
        try:
            job = store.create(kind, project, params)
            store.start(job.id)
        except Exception:  # the store is bookkeeping: never fail the tracking for it
            log.exception("could not record %s as a job", self.name)
            return
        with self._lock:
            self._store, self._job_id = store, job.id
        self._flush(force=True)

    def progress(self, *, done=None, total=None, failed=None, **extra) -> None:
        with self._lock:
            self.state.update({k: v for k, v in dict(done=done, total=total, failed=failed, **extra).items()
                               if v is not None})
        self._flush()

    def _flush(self, force: bool = False) -> None:
        with self._lock:
            store, job_id, state = self._store, self._job_id, dict(self.state)
            due = force or time.monotonic() - self._written_at >= _STORE_EVERY
            if store is None or not due:
                return
            self._written_at = time.monotonic()
        counters = {k: state.pop(k) for k in ("done", "total", "failed") if k in state}
        try:
            store.progress(job_id, **counters, **state)
            if store.cancel_requested(job_id):
                self._cancel.set()
        except Exception:
            log.warning("progress of job %s could not be recorded", job_id, exc_info=True)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def end(self, error: str | None, result: dict | None = None) -> None:
        """Record how the job ended (no-op for a run that never became a job)."""
        with self._lock:
            store, job_id = self._store, self._job_id
        if store is None:
            return
        self._flush(force=True)
        try:
            if error is not None:
                store.fail(job_id, error)
            else:
                store.finish(job_id, result or {}, cancelled=self._cancel.is_set())
        except Exception:
            log.warning("the end of job %s could not be recorded", job_id, exc_info=True)


@dataclass
class TrackRun:
    """One tracking job and what requests need from it."""

    key: tuple
    task_id: Any
    job: TrackRunJob
    priority: Any
    accumulator: TrackAccumulator | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    completed: bool = False  # the job has its final result (set with ``lock`` held)
    handed_off: bool = False  # a request answered without the final result: the job writes it
    answered: threading.Event = field(default_factory=threading.Event)  # that request is done with the run
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """After waiting: True if the result is final (the request answers with it), else the
        job is handed off to the background (it writes the result itself when done)."""
        with self.lock:
            if self.completed or self.done.is_set():
                return True
            self.handed_off = True
            self.priority = Priority.BACKGROUND
            return False

    def complete(self) -> bool:
        """Called by the job at its end; True if it must write the result itself."""
        with self.lock:
            self.completed = True
            return self.handed_off


__all__ = ["TrackRun", "TrackRunJob"]
