"""Admission control: a worker takes on a bounded number of model-bound requests, per kind.

Requests beyond the bound are answered 503 with ``Retry-After`` at once instead of queueing
without bound (a queue that only grows turns every answer into a timeout). Clicks and batch
requests have separate allowances, so a burst of prelabel requests never turns clicks away.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Overloaded


class Admission:
    def __init__(self, capacity: int, retry_after: int = 5):
        self.capacity = capacity
        self.retry_after = retry_after
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, kind: str) -> Iterator[None]:
        """Hold one of ``capacity`` places for ``kind``; raise ``Overloaded`` when none is free."""
        with self._lock:
            if self._in_flight.get(kind, 0) >= self.capacity:
                raise Overloaded(
                    f"the backend is busy: {self.capacity} {kind} requests are already waiting for the model "
                    f"(MAX_PENDING_REQUESTS); retry in {self.retry_after} s",
                    self.retry_after,
                )
            self._in_flight[kind] = self._in_flight.get(kind, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[kind] -= 1

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._in_flight)


__all__ = ["Admission"]
