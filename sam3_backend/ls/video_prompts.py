"""Label Studio's interactive video context -> typed box prompts, in Label Studio's units.

What Label Studio 1.23.2's labeling UI sends (recorded in ``payloads-video-1.23.2.json``): clicking
a label while a video region is selected posts ``params.context = {"result": [...]}`` with that
region and every other region of the same label, one ``videorectangle`` result per object::

    {"id": "BgZqBK5TBN", "type": "videorectangle", "from_name": "box", "to_name": "video",
     "origin": "manual", "value": {"framesCount": 72, "duration": 3, "labels": ["car"],
       "sequence": [{"frame": 1, "enabled": true, "rotation": 0, "x": 5.78, "y": 24.17,
                     "width": 20, "height": 18.33, "time": 0.0417}, ...]}}

Frames are 1-based Label Studio frames; x, y, width, height are percent of the frame; there is no
``original_width/height``. ``value.labels`` is missing (not ``[]``) when the label was just turned
off. Every keyframe of a region is a box prompt for that object. Submit sends ``{"result": []}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BadRequest
from ..types import Box, VideoInfo, VideoObjectPrompt
from .prompts import context_results
from .video_config import VideoProjectConfig
from .video_results import frame_start, frames_count

MAX_KEYFRAMES_PER_REGION = 10_000

# Results that may ride along in a video context without being prompts.
_IGNORED_TYPES = {"labels", "relation", "choices", "textarea", "taxonomy", "number", "rating", "datetime",
                  "timelinelabels"}


@dataclass(frozen=True)
class Keyframe:
    """One keyframe of a Label Studio video region: 1-based ``frame``; x, y (top-left corner),
    width, height in percent of the frame; ``rotation`` in degrees; ``enabled=False`` ends the
    region's lifespan after this frame."""

    frame: int
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    enabled: bool = True

    def fingerprint(self) -> tuple:
        """Equality that survives a JSON round trip through Label Studio (floats to 1e-6 %)."""
        return (self.frame, round(self.x, 6), round(self.y, 6), round(self.width, 6), round(self.height, 6),
                round(self.rotation, 6), self.enabled)


@dataclass(frozen=True)
class VideoRegionPrompt:
    """One object of the context: its Label Studio id, label (None when turned off) and keyframes
    (sorted by frame, one per frame)."""

    region_id: str
    label: str | None
    keyframes: tuple[Keyframe, ...]

    def fingerprint(self) -> tuple:
        return tuple(k.fingerprint() for k in self.keyframes)


@dataclass(frozen=True)
class VideoQuery:
    """The regions of one interactive video request, in context order (empty after Submit)."""

    regions: tuple[VideoRegionPrompt, ...] = ()

    def is_empty(self) -> bool:
        return not self.regions


def _number(value: object, key: str, what: str) -> float:
    if value is None:
        raise BadRequest(f"{what} has no {key}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{what} has {key}={value!r}; it must be a finite number")
    return float(value)


def _frame(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{what} has frame={value!r}; Label Studio frames are integers from 1")
    if float(value) != int(value) or int(value) < 1:
        raise BadRequest(f"{what} has frame={value!r}; Label Studio frames are integers from 1")
    return int(value)


def _keyframe(item: object, what: str) -> Keyframe:
    if not isinstance(item, dict):
        raise BadRequest(f"{what} must be an object with frame, x, y, width and height")
    frame = _frame(item.get("frame"), what)
    numbers = [_number(item.get(k), k, what) for k in ("x", "y", "width", "height")]
    rotation = item.get("rotation", 0.0)
    rotation = 0.0 if rotation is None else _number(rotation, "rotation", what)
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        raise BadRequest(f"{what} has width={w:g}% and height={h:g}%; both must be positive")
    enabled = item.get("enabled", True)
    if enabled is None:
        enabled = True
    if not isinstance(enabled, bool):
        raise BadRequest(f"{what} has enabled={enabled!r}; it must be true or false")
    return Keyframe(frame, x, y, w, h, rotation, enabled)


def _label(value: dict) -> str | None:
    labels = value.get("labels")
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    return None


def parse_video_context(context: object, config: VideoProjectConfig) -> VideoQuery | None:
    """Parse ``params.context`` of a ``/predict`` call on a video project.

    Returns None for ``context=None`` (batch prelabel) and an empty query for ``{"result": []}``.
    Raises ``BadRequest`` for regions of another control or object, malformed keyframes and
    result types that cannot be prompts.
    """
    results = context_results(context)
    if results is None:
        return None

    regions: list[VideoRegionPrompt] = []
    seen: set[str] = set()
    for index, item in enumerate(results):
        if not isinstance(item, dict):
            raise BadRequest(f"params.context.result[{index}] must be an object, got {type(item).__name__}")
        result_type = item.get("type")
        if result_type in _IGNORED_TYPES:
            continue
        region_id = item.get("id")
        what = f"region {region_id!r}" if region_id is not None else f"region #{index}"
        if result_type != "videorectangle":
            raise BadRequest(
                f'{what} has type "{result_type}"; on a video only videorectangle regions (drawn with '
                f'"{config.box.name}") can be prompts'
            )
        if item.get("from_name") != config.box.name:
            raise BadRequest(
                f'{what} comes from "{item.get("from_name")}", but this project\'s VideoRectangle is '
                f'"{config.box.name}"; reconnect the backend after changing the labeling interface'
            )
        to_name = item.get("to_name", config.video_name)
        if to_name != config.video_name:
            raise BadRequest(f'{what} targets "{to_name}", but this backend tracks video "{config.video_name}"')
        if not isinstance(region_id, str) or not region_id:
            raise BadRequest(f"{what} has no string 'id'; Label Studio needs it to replace the region")
        if region_id in seen:
            continue  # the same region twice: the first copy counts
        value = item.get("value")
        if not isinstance(value, dict):
            raise BadRequest(f"{what} has no 'value' object")
        sequence = value.get("sequence")
        if not isinstance(sequence, list) or not sequence:
            raise BadRequest(f"{what} has no keyframes (value.sequence); draw a box on a frame first")
        if len(sequence) > MAX_KEYFRAMES_PER_REGION:
            raise BadRequest(f"{what} has {len(sequence)} keyframes; at most {MAX_KEYFRAMES_PER_REGION} are accepted")
        by_frame: dict[int, Keyframe] = {}
        for k, entry in enumerate(sequence):
            key = _keyframe(entry, f"keyframe {k} of {what}")
            by_frame[key.frame] = key  # a frame twice: the later entry wins, as in the editor
        seen.add(region_id)
        regions.append(VideoRegionPrompt(region_id, _label(value), tuple(by_frame[f] for f in sorted(by_frame))))
    return VideoQuery(tuple(regions))


def keyframe_box(key: Keyframe, width: int, height: int, what: str = "keyframe") -> Box:
    """A keyframe's rectangle as an XYXY pixel ``Box`` of a ``width`` x ``height`` frame.

    Unlike image prompts, a video box may hang over the frame's edge (the player lets one drag it
    there): it is clipped to the frame; a box entirely outside is a ``BadRequest``. A rotated
    box becomes its axis-aligned bounding box (rotation about the top-left corner, as drawn).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    ax, ay = key.x / 100.0 * width, key.y / 100.0 * height
    wp, hp = key.width / 100.0 * width, key.height / 100.0 * height
    theta = math.radians(key.rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    corners = [(ax + dx * cos - dy * sin, ay + dx * sin + dy * cos) for dx, dy in ((0, 0), (wp, 0), (wp, hp), (0, hp))]
    x0 = max(min(c[0] for c in corners), 0.0)
    x1 = min(max(c[0] for c in corners), float(width))
    y0 = max(min(c[1] for c in corners), 0.0)
    y1 = min(max(c[1] for c in corners), float(height))
    if not (x0 < x1 and y0 < y1):
        raise BadRequest(f"{what} on frame {key.frame} lies outside the video frame")
    return Box(x0, y0, x1, y1)


def object_prompts(regions: list[VideoRegionPrompt], info: VideoInfo, config: VideoProjectConfig,
                   prompts_of: Callable[[VideoRegionPrompt], tuple[Keyframe, ...]],
                   ) -> tuple[list[VideoObjectPrompt], dict[int, VideoRegionPrompt], dict]:
    """Label Studio regions ↔ engine objects, in one place: object ``i`` is ``regions[i]``;
    its keyframes (``prompts_of(region)``: ``RegionMemory.prompts``) become (frame index, pixel
    box) prompts. Returns the objects, region by object, and the keyframes used per region id."""
    last = frames_count(info.duration, config.framerate)
    objects, by_object, used = [], {}, {}
    for i, region in enumerate(regions):
        prompts = prompts_of(region)
        keyframes = []
        for key in prompts:
            if key.frame > last:
                raise BadRequest(
                    f"region {region.region_id!r} has a keyframe on frame {key.frame}, but the video has {last} frames "
                    f"at the config's framerate={config.framerate:g} ({info.duration:.2f} s)"
                )
            index = info.index_at(frame_start(key.frame, config.framerate))
            keyframes.append((index, keyframe_box(key, info.width, info.height, f"keyframe of region {region.region_id!r}")))
        dedup = {}
        for index, box in keyframes:
            dedup[index] = box  # two Label Studio frames on one source frame: the later wins
        objects.append(VideoObjectPrompt(i, tuple(sorted(dedup.items()))))
        by_object[i] = region
        used[region.region_id] = prompts
    return objects, by_object, used


__all__ = ["Keyframe", "MAX_KEYFRAMES_PER_REGION", "VideoQuery", "VideoRegionPrompt", "keyframe_box",
           "object_prompts", "parse_video_context"]
