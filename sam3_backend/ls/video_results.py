"""Object tracks -> Label Studio ``videorectangle`` regions with sparse keyframes.

The result Label Studio 1.23.2 renders (``payloads-video-1.23.2.json``)::

    {"id": "...", "from_name": "box", "to_name": "video", "type": "videorectangle", "score": 0.93,
     "value": {"framesCount": 72, "duration": 3.0, "labels": ["car"],
               "sequence": [{"frame": 1, "enabled": true, "rotation": 0, "x": 6.25, "y": 25.0,
                             "width": 18.75, "height": 16.67, "time": 0.0417}, ...]}}

How the editor reads a sequence (its ``VideoRectangleRegionModel``): between two keyframes every
box property is interpolated linearly (``enabled`` aside); after the last keyframe the last box
holds; a keyframe with ``enabled: false`` is shown on its own frame and hides the region until the
next ``enabled: true`` keyframe. So a track becomes, per stretch of frames where the object is
visible ("run"): a keyframe where it starts, the keyframes linear interpolation needs to stay
within ``tolerance`` percent of the frame on every edge, and a last keyframe, ``enabled: false``
when the object leaves (or tracking stopped) before the end of the video.

Frames and times: Label Studio frames are 1-based and its player assumes the config's frame rate:
frame N shows the picture presented at (N - 1) / fps seconds, and results carry
``time = N / fps`` (what the editor itself writes).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..types import Box
from .geometry import box_to_ls_rect
from .video_config import VideoProjectConfig


def frame_time(frame: int, fps: float) -> float:
    """The ``time`` Label Studio writes next to 1-based ``frame`` (``frame / fps``)."""
    return frame / fps


def frame_at(seconds: float, fps: float) -> int:
    """The 1-based Label Studio frame that shows the picture presented at ``seconds``."""
    return int(math.floor(max(seconds, 0.0) * fps + 0.5)) + 1


def frame_start(frame: int, fps: float) -> float:
    """Seconds into the video at which Label Studio shows 1-based ``frame``."""
    return (frame - 1) / fps


def frames_count(duration: float, fps: float) -> int:
    """``framesCount`` of a ``duration``-second video played at ``fps`` (at least 1)."""
    return max(1, int(math.floor(duration * fps + 0.5)))


def stable_region_id(*parts: object) -> str:
    """A 10-character region id derived from ``parts`` (same inputs, same id)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class TrackSample:
    """The object on one processed frame: 1-based Label Studio ``frame``; ``box`` in pixels of
    the video frame (XYXY), or None where the object is not visible."""

    frame: int
    box: Box | None


@dataclass(frozen=True)
class Track:
    """One object through the processed frames (increasing ``frame``, one sample per frame).

    ``complete``: the samples reach the end of the video; when False (a frame limit, a deadline)
    the track ends with ``enabled: false`` at its last sample instead of holding to the end.
    """

    region_id: str
    label: str | None
    score: float
    samples: tuple[TrackSample, ...]
    complete: bool = True


def _edges(box: Box, width: int, height: int) -> tuple[float, float, float, float, float, float, float, float]:
    """(x, y, w, h) in percent plus the (x0, y0, x1, y1) edges the error is measured on."""
    x, y, w, h = box_to_ls_rect(box, width, height)
    return x, y, w, h, x, y, x + w, y + h


def sparsify(frames: np.ndarray, values: np.ndarray, tolerance: float) -> list[int]:
    """Indices of the samples to keep so that linear interpolation between kept samples misses
    no sample by more than ``tolerance`` in any column of ``values``.

    frames: (N,) increasing; values: (N, K). Greedy: from each kept sample, the next one kept is
    the farthest whose interpolation still covers every sample in between. First and last kept.
    """
    n = len(frames)
    if n <= 2:
        return list(range(n))
    frames = np.asarray(frames, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    kept = [0]
    anchor = 0
    end = anchor + 1
    while end < n - 1:
        candidate = end + 1
        span = slice(anchor + 1, candidate)
        t = (frames[span] - frames[anchor]) / (frames[candidate] - frames[anchor])
        line = values[anchor] + t[:, None] * (values[candidate] - values[anchor])
        if np.abs(line - values[span]).max() > tolerance:
            kept.append(end)
            anchor = end
        end = candidate
    kept.append(n - 1)
    return kept


def _runs(samples: Sequence[TrackSample]) -> list[list[TrackSample]]:
    runs: list[list[TrackSample]] = []
    current: list[TrackSample] = []
    for sample in samples:
        if sample.box is None:
            if current:
                runs.append(current)
                current = []
        else:
            current.append(sample)
    if current:
        runs.append(current)
    return runs


def track_sequence(track: Track, width: int, height: int, fps: float, *, tolerance: float, last_frame: int) -> list[dict]:
    """The sparse keyframes of ``track`` on a ``width`` x ``height`` video shown at ``fps``.

    last_frame: the video's last Label Studio frame (``framesCount``). A run that reaches the last
    sample of a complete track, or the last frame, stays enabled; any other run ends with an
    ``enabled: false`` keyframe on its last visible frame.
    """
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0 (percent of the frame)")
    samples = sorted(track.samples, key=lambda s: s.frame)
    final = samples[-1].frame if samples else 0
    sequence: list[dict] = []
    for run in _runs(samples):
        rows = [_edges(s.box, width, height) for s in run]
        frames = np.array([s.frame for s in run], dtype=np.float64)
        values = np.array([r[4:] for r in rows], dtype=np.float64)
        keep = sparsify(frames, values, tolerance)
        ends_visible = run[-1].frame >= last_frame or (track.complete and run[-1].frame == final)
        for i in keep:
            x, y, w, h = rows[i][:4]
            frame = run[i].frame
            sequence.append({
                "frame": frame,
                "enabled": bool(i != len(run) - 1 or ends_visible),
                "rotation": 0,
                "x": x,
                "y": y,
                "width": w,
                "height": h,
                "time": frame_time(frame, fps),
            })
    return sequence


def encode_track(
    track: Track,
    config: VideoProjectConfig,
    *,
    width: int,
    height: int,
    frames: int,
    duration: float,
    tolerance: float,
) -> dict | None:
    """One ``videorectangle`` region for ``track``, or None if the object is never visible.

    frames / duration: ``framesCount`` and ``duration`` of the video as Label Studio counts them
    (``frames_count(duration, config.framerate)``). The label goes in ``value.labels`` (omitted
    when None, as the editor does for a region whose label was turned off).
    """
    sequence = track_sequence(track, width, height, config.framerate, tolerance=tolerance, last_frame=frames)
    if not sequence:
        return None
    value: dict = {"framesCount": int(frames), "duration": float(duration), "sequence": sequence}
    if track.label is not None:
        value["labels"] = [track.label]
    return {
        "id": track.region_id,
        "from_name": config.box.name,
        "to_name": config.video_name,
        "type": "videorectangle",
        "score": float(track.score),
        "value": value,
    }


def interpolated_rect(sequence: Sequence[dict], frame: int) -> tuple[float, float, float, float] | None:
    """(x, y, width, height) in percent that Label Studio's editor shows on ``frame``, or None
    where the region is hidden: its ``getRectangle`` and ``isInLifespan``, for tests and checks."""
    keys = sorted(sequence, key=lambda k: k["frame"])
    prev = next_ = None
    for key in keys:
        if key["frame"] == frame:
            return (key["x"], key["y"], key["width"], key["height"])
        if key["frame"] > frame:
            next_ = key
            break
        prev = key
    if prev is None or not prev.get("enabled", True):
        return None
    if next_ is None:
        return (prev["x"], prev["y"], prev["width"], prev["height"])
    r = (frame - prev["frame"]) / (next_["frame"] - prev["frame"])
    return tuple(prev[k] + (next_[k] - prev[k]) * r for k in ("x", "y", "width", "height"))  # type: ignore[return-value]


def with_label(region: dict, label: str | None) -> dict:
    """The region with the request's label (the editor puts the active label over it anyway)."""
    value = dict(region["value"])
    if label is None:
        value.pop("labels", None)
    else:
        value["labels"] = [label]
    return {**region, "value": value}


__all__ = [
    "Track",
    "TrackSample",
    "encode_track",
    "frame_at",
    "frame_start",
    "frame_time",
    "frames_count",
    "interpolated_rect",
    "sparsify",
    "stable_region_id",
    "track_sequence",
    "with_label",
]
