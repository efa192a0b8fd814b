"""A thread-safe LRU cache bounded by the total size of its values (bytes, or any unit).

Shared by both sides: the engine keeps image features in one, the media layer keeps decoded
images in one. Counts hits, misses and evictions for /metrics and the tests.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Hashable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    capacity_bytes: int = 0


class SizedLRU:
    """``sizeof(value)`` gives each value's size; the total stays ≤ ``capacity``.

    A value larger than the whole capacity is not stored (evicting everything for it would
    only make the next request miss too).
    """

    def __init__(self, capacity: int, sizeof: Callable[[Any], int]):
        self._capacity = int(capacity)
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = self._sizeof(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self._capacity:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self._capacity and self._items:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, self.evictions, len(self._items), self._bytes, self._capacity)
