"""The ``track`` job: one video task tracked through its clip, its tracks collected as it goes.

Glue like ``service.py`` (it knows both sides): it drives a propagation generator of
``engine.video.tracker.Sam3VideoEngine`` and turns what it has collected into Label Studio
``videorectangle`` regions with ``ls.video_results``. A request handler starts it, waits for it up
to the deadline and answers with ``snapshot()`` (complete or partial); when the job outlives the
request, it writes the full result into the task as a prediction (``finish``) itself.

Written against the job-layer contract (``jobs.executor.JobContext``: ``progress``, ``cancelled``),
as ``run_track(ctx, ...) -> dict``; the only state it keeps is in ``TrackAccumulator``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..ls.video_config import VideoProjectConfig
from ..ls.video_results import Track, TrackSample, encode_track, frame_at, frames_count
from ..types import Box, VideoFrameResult, VideoInfo

log = logging.getLogger(__name__)


class JobContext(Protocol):
    """What a job function gets (``jobs.executor.JobContext``)."""

    def progress(self, *, done=None, total=None, failed=None, **extra) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class TrackObject:
    """How one engine object becomes a region: its Label Studio ``region_id`` and ``label``."""

    region_id: str
    label: str | None


class TrackAccumulator:
    """Per-object boxes of the frames processed so far; thread-safe (the job writes, requests read).

    ``objects`` maps engine object ids to regions (interactive: known up front; text tracking:
    ``name_object`` names each new object when it first shows up).
    """

    def __init__(self, info: VideoInfo, planned: tuple[int, ...], name_object: Callable[[int, int], TrackObject],
                 objects: dict[int, TrackObject] | None = None):
        self.info = info
        self.planned = planned
        self._name = name_object
        self.objects: dict[int, TrackObject] = dict(objects or {})
        self._boxes: dict[int, dict[int, tuple[Box | None, float]]] = {}
        self._lock = threading.Lock()
        self.frames_done = 0
        self.finished = threading.Event()
        self.error: str | None = None

    def add(self, result: VideoFrameResult) -> None:
        with self._lock:
            self.frames_done += 1
            visible = {o.object_id: o for o in result.objects}
            for obj_id in set(result.tracked) | set(visible):
                if obj_id not in self.objects:
                    self.objects[obj_id] = self._name(obj_id, result.prompt_index.get(obj_id, 0))
                seen = visible.get(obj_id)
                per_frame = self._boxes.setdefault(obj_id, {})
                per_frame[result.index] = (seen.box, seen.score) if seen is not None else (None, 0.0)

    def tracks(self, fps: float) -> list[Track]:
        """The tracks so far, frames mapped to Label Studio's 1-based frames at ``fps``.

        A track is ``complete`` when its samples reach the last planned frame and that is the end of
        the video (not a frame limit); a Label Studio frame hit by two source frames (variable
        frame rate) keeps the later one.
        """
        with self._lock:
            snapshot = {k: dict(v) for k, v in self._boxes.items()}
            objects = dict(self.objects)
        last = self.planned[-1] if self.planned else 0
        step = self.planned[-1] - self.planned[-2] if len(self.planned) > 1 else 1
        reaches_end = last + step >= self.info.frames  # a frame limit stops short of the end
        out = []
        for obj_id, per_frame in sorted(snapshot.items()):
            samples: dict[int, TrackSample] = {}
            scores = []
            for index in sorted(per_frame):
                box, score = per_frame[index]
                frame = frame_at(float(self.info.times[index]), fps)
                samples[frame] = TrackSample(frame, box)
                if box is not None:
                    scores.append(score)
            if not scores:
                continue
            obj = objects[obj_id]
            out.append(Track(
                region_id=obj.region_id, label=obj.label, score=sum(scores) / len(scores),
                samples=tuple(samples[f] for f in sorted(samples)), complete=reaches_end and max(per_frame) >= last,
            ))
        return out

    def regions(self, config: VideoProjectConfig, tolerance: float) -> list[dict]:
        """Label Studio ``videorectangle`` regions of the tracks so far (empty tracks left out)."""
        frames = frames_count(self.info.duration, config.framerate)
        out = []
        for track in self.tracks(config.framerate):
            region = encode_track(track, config, width=self.info.width, height=self.info.height, frames=frames,
                                  duration=self.info.duration, tolerance=tolerance)
            if region is not None:
                out.append(region)
        return out


def run_track(
    ctx: JobContext,
    *,
    frames: Iterator[VideoFrameResult],
    accumulator: TrackAccumulator,
    finish: Callable[[TrackAccumulator, bool], None] | None = None,
    total: int | None = None,
) -> dict:
    """Drain ``frames`` into ``accumulator``, reporting progress; stop early when cancelled.

    finish(accumulator, complete) runs at the end (writing the prediction when the request that
    started the job has already answered). total: frame steps expected (default: the planned
    frames; box tracking visits frames before the first keyframe in a second, backward pass).
    Returns a summary for the job's result.
    """
    started = time.perf_counter()
    total = len(accumulator.planned) if total is None else total
    ctx.progress(done=0, total=total, stage="tracking")
    complete = True
    try:
        for result in frames:
            accumulator.add(result)
            ctx.progress(done=min(accumulator.frames_done, total), total=total)
            if ctx.cancelled():
                complete = False
                break
    except Exception as exc:
        accumulator.error = f"{type(exc).__name__}: {exc}"
        complete = False
        raise
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
        try:
            if finish is not None:
                finish(accumulator, complete)
        finally:
            accumulator.finished.set()
    seconds = time.perf_counter() - started
    return {"frames": accumulator.frames_done, "objects": len(accumulator.objects), "complete": complete,
            "seconds": round(seconds, 3)}


__all__ = ["JobContext", "TrackAccumulator", "TrackObject", "run_track"]
