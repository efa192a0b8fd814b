"""Torch-free values that cross the boundary between the Label Studio side and the engine.

Coordinates: everything here is in **pixels of the original image**, origin top-left,
x to the right, y down; boxes are XYXY. Conversions from Label Studio's percentages live in
``ls/geometry.py``; conversions to SAM 3's normalised boxes live in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Point:
    """A click at (x, y) pixels; ``positive=False`` marks background (Alt-click in Label Studio)."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (x0, y0, x1, y1) in pixels, x0 < x1 and y0 < y1."""

    x0: float
    y0: float
    x1: float
    y1: float
    positive: bool = True

    def contains(self, p: Point) -> bool:
        return self.x0 <= p.x <= self.x1 and self.y0 <= p.y <= self.y1


@dataclass(frozen=True)
class ImageInput:
    """Decoded RGB pixels (H, W, 3) uint8 plus a content key (hash of the media bytes).

    The key lets the engine reuse vision features across requests on the same image without
    hashing megabytes of pixels again.
    """

    pixels: np.ndarray
    key: str

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class GeometryPrompt:
    """Points and/or boxes that describe ONE object (SAM-style interactive segmentation)."""

    points: tuple[Point, ...] = ()
    box: Box | None = None


@dataclass(frozen=True)
class ConceptPrompt:
    """A SAM 3 concept: a noun phrase, optionally with exemplar boxes (positive or negative).

    With ``text=None`` the exemplar boxes alone define the concept.
    """

    text: str | None
    exemplars: tuple[Box, ...] = ()


@dataclass(frozen=True)
class Instance:
    """One segmented object.

    mask: (H, W) bool at the original image size. box: XYXY pixels, the mask's tight box
    (x1 = last column + 1), (0, 0, 0, 0) for an empty mask. score: model confidence in [0, 1]. ``prompt_index`` says which
    prompt of the request produced it (index into the request's prompt list).
    """

    mask: np.ndarray
    score: float
    box: tuple[float, float, float, float]
    prompt_index: int = 0

    @property
    def is_empty(self) -> bool:
        """No pixel set (the box is degenerate): read from the box, not a 2-megapixel scan."""
        return self.box[2] <= self.box[0] or self.box[3] <= self.box[1]


@dataclass
class EngineStats:
    """Counters the engine exposes for /metrics and tests."""

    vision_encoder_calls: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    extra: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Video. Frames are 0-based indices in presentation order ("source frames"); times are seconds
# from the first frame's presentation time; boxes are XYXY pixels of the video frame.


@dataclass(frozen=True, eq=False)
class VideoInfo:
    """What the video stream says about itself (from a demux pass; nothing decoded is kept).

    frames: number of video frames. times: (frames,) float64 presentation time of each frame in
    seconds from the first one, increasing (variable frame rate shows as uneven steps).
    keyframes: (frames,) bool, frames a decoder can start from. fps: mean frame rate.
    duration: seconds, as a player reports it.

    width / height: the DISPLAYED frame size in pixels, what a player (Label Studio's) shows and
    what every box and percentage is relative to. A phone video stored sideways with a display
    matrix has them swapped relative to the coded frames (``coded_size``). rotation: clockwise
    degrees (0, 90, 180, 270) the player turns a coded frame to show it, then ``mirrored``: flipped
    left-right after the turn. Decoded frames come out already turned (``engine.video.decode``).
    """

    frames: int
    times: np.ndarray
    keyframes: np.ndarray
    fps: float
    duration: float
    width: int
    height: int
    codec: str
    container: str
    variable_frame_rate: bool = False
    origin: float = 0.0  # the stream's timestamp of the first frame, seconds (decoders report raw ones)
    rotation: int = 0
    mirrored: bool = False

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the frames as stored, before the display rotation."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    def index_at(self, seconds: float) -> int:
        """The frame presented nearest to ``seconds`` (clamped to the video): robust to
        timestamps rounded to the container's clock (WebM stores 1/24 s as 41 or 42 ms)."""
        i = int(np.searchsorted(self.times, seconds))
        if i >= self.frames:
            return self.frames - 1
        if i > 0 and seconds - self.times[i - 1] <= self.times[i] - seconds:
            return i - 1
        return i


@dataclass(frozen=True)
class VideoObjectPrompt:
    """One object to track from boxes: ``keyframes`` are (frame index, box) pairs, each a prompt."""

    object_id: int
    keyframes: tuple[tuple[int, Box], ...]


@dataclass(frozen=True)
class TrackedBox:
    """One object on one frame: XYXY pixel box and the model's confidence in [0, 1]."""

    object_id: int
    box: Box
    score: float


@dataclass(frozen=True)
class VideoFrameResult:
    """What tracking found on source frame ``index`` (presented at ``time`` seconds).

    objects: the objects visible there. tracked: every object whose state was computed on this
    frame, visible or not (an object tracked but not in ``objects`` has left the picture; one
    not tracked here is unknown on this frame, e.g. before it first appeared). prompt_index: for
    text tracking, which concept found each object (object id -> concept index).
    """

    index: int
    time: float
    objects: tuple[TrackedBox, ...]
    tracked: frozenset[int] = frozenset()
    prompt_index: dict[int, int] = field(default_factory=dict)
