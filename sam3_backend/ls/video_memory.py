"""What the backend answered for each video region, so a repeated request is answered as it was.

Label Studio sends an interactive video request with every region of the clicked label, keyframes
and all. A region whose keyframes are exactly those this backend last answered with needs no new
tracking (``RegionMemory.answer``); after an answer, only the keyframes the user added or moved
count as new prompts, next to those the first request carried (``RegionMemory.prompts``).
Regions are Label Studio dicts (``videorectangle`` results); keyframes are ``ls.video_prompts.Keyframe``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .video_prompts import Keyframe, VideoRegionPrompt

_ANSWERS_PER_REGION = 8  # keyframe sets remembered per region (the latest ones)


@dataclass
class _RegionEntry:
    prompts: tuple[Keyframe, ...]
    emitted: set[tuple] = field(default_factory=set)
    answers: dict[tuple, dict | None] = field(default_factory=dict)


class RegionMemory:
    """What this backend answered for each (task, region), bounded (LRU by entries).

    ``answer(task, region)``: the region returned last time if its keyframes are exactly those
    of that answer (or of the request that produced it). ``prompts(task, region)``: the keyframes
    to track from: all of them for a region never answered; else the first request's prompts
    plus every keyframe the user added or moved since (one per frame, the user's wins).
    """

    def __init__(self, entries: int):
        self.capacity = max(0, int(entries))
        self._items: OrderedDict[tuple, _RegionEntry] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: tuple) -> _RegionEntry | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    def answer(self, task_id: Any, region: VideoRegionPrompt) -> tuple[bool, dict | None]:
        with self._lock:
            entry = self._get((task_id, region.region_id))
            fp = region.fingerprint()
            if entry is None or fp not in entry.answers:
                return False, None
            return True, entry.answers[fp]

    def prompts(self, task_id: Any, region: VideoRegionPrompt) -> tuple[Keyframe, ...]:
        with self._lock:
            entry = self._get((task_id, region.region_id))
        if entry is None:
            return region.keyframes
        user = [k for k in region.keyframes if k.fingerprint() not in entry.emitted]
        merged = {k.frame: k for k in entry.prompts}
        merged.update({k.frame: k for k in user})
        return tuple(merged[f] for f in sorted(merged)) or region.keyframes

    def remember(self, task_id: Any, region: VideoRegionPrompt | None, region_id: str, prompts: tuple[Keyframe, ...],
                 answer: dict | None) -> None:
        """Record ``answer`` (a region dict, or None: nothing visible) for the request ``region``
        (None for prelabel answers, which had no keyframes)."""
        if self.capacity == 0:
            return
        emitted = _sequence_fingerprints(answer)
        with self._lock:
            key = (task_id, region_id)
            entry = self._items.get(key)
            if entry is None:
                entry = self._items[key] = _RegionEntry(prompts=prompts)
            entry.prompts = prompts or entry.prompts
            entry.emitted |= set(emitted)
            if region is not None:
                entry.answers[region.fingerprint()] = answer
            if answer is not None:
                entry.answers[tuple(emitted)] = answer
            while len(entry.answers) > _ANSWERS_PER_REGION:
                entry.answers.pop(next(iter(entry.answers)))
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def replace(self, task_id: Any, region_id: str, old: dict | None, new: dict) -> None:
        """A background job finished ``old`` (a partial answer): every request that got it gets ``new``."""
        emitted = _sequence_fingerprints(new)
        with self._lock:
            entry = self._items.get((task_id, region_id))
            if entry is None:
                return
            for fp, answer in list(entry.answers.items()):
                if answer is old:
                    entry.answers[fp] = new
            entry.emitted |= set(emitted)
            entry.answers[tuple(emitted)] = new


def _sequence_fingerprints(region: dict | None) -> list[tuple]:
    if not region:
        return []
    out = []
    for item in region["value"]["sequence"]:
        out.append(Keyframe(item["frame"], item["x"], item["y"], item["width"], item["height"],
                            float(item.get("rotation", 0) or 0), bool(item.get("enabled", True))).fingerprint())
    return out


__all__ = ["RegionMemory"]
