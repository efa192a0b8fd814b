"""Who gets the model next: one model, many threads, most urgent caller first.

A click must never wait behind a whole prelabel request, a video propagation or a training run.
Every piece of model work takes the model for one *model call* (a batch of images through the
encoder and detector, one frame of a video, one training step) through ``slot(priority)`` and
gives it back; when it is free again, the most urgent waiter gets it (FIFO within a priority). So
a click waits at most for the model call in progress, never for the rest of a batch job.

Waiting is bounded: a waiter gives up after ``timeout`` seconds (``SchedulerTimeout``), and the
app turns that into a 503 with ``Retry-After`` rather than a request that hangs.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum


class Priority(IntEnum):
    """Lower goes first."""

    INTERACTIVE = 0  # a click, a box, typed text: a person is waiting
    BATCH = 1  # "Retrieve predictions", prelabel-on-open, a short video answer
    BACKGROUND = 2  # bulk jobs, long video tracks, training steps


class SchedulerTimeout(TimeoutError):
    """The model stayed busy for longer than the caller was willing to wait."""


class ModelScheduler:
    """A re-entrant lock that hands the model to the most urgent waiter first.

    Re-entrant per thread (an engine method holding the model may call another that takes it
    too). ``waiting()`` counts waiters per priority, for /metrics and admission control.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: list[tuple[int, int, int]] = []  # heap of (priority, arrival, thread id)
        self._arrivals = itertools.count()

    def acquire(self, priority: Priority = Priority.BATCH, timeout: float | None = None) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return
            entry = (int(priority), next(self._arrivals), me)
            heapq.heappush(self._queue, entry)
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while not (self._owner is None and self._queue[0] == entry):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise SchedulerTimeout(f"the model stayed busy for more than {timeout:g} s")
                    self._cond.wait(remaining)
            except BaseException:
                self._queue.remove(entry)
                heapq.heapify(self._queue)
                self._cond.notify_all()  # the next waiter may be first now
                raise
            heapq.heappop(self._queue)
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release() by a thread that does not hold the model")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    @contextmanager
    def slot(self, priority: Priority = Priority.BATCH, timeout: float | None = None) -> Iterator[None]:
        """Hold the model for one model call."""
        self.acquire(priority, timeout)
        try:
            yield
        finally:
            self.release()

    def waiting(self) -> dict[str, int]:
        """Waiters per priority name (a snapshot)."""
        with self._cond:
            counts = {p.name.lower(): 0 for p in Priority}
            for priority, _, _ in self._queue:
                counts[Priority(priority).name.lower()] += 1
            return counts

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._owner is not None


__all__ = ["ModelScheduler", "Priority", "SchedulerTimeout"]
