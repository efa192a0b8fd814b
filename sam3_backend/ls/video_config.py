"""A video project's label config, and the dispatcher that tells video projects from image ones.

Label Studio's video object-tracking template::

    <Video name="video" value="$video" framerate="25"/>
    <VideoRectangle name="box" toName="video"/>
    <Labels name="videoLabels" toName="video"><Label value="car"/><Label value="person"/></Labels>

``parse_video_config(xml)`` reads it into a ``VideoProjectConfig``: the ``<Video>`` (its task data
key and the frame rate Label Studio's player assumes), the ``<VideoRectangle>`` we fill, and the
labels of the ``<Labels>`` on the video (they become ``value.labels`` of each track and, as on
images, SAM 3 concepts; a ``sam3_prompt`` attribute sends another phrase). Label Studio 1.23 has
no video mask tag, so ``videorectangle`` is the only output.

``parse_project_config(xml)`` is what ``/setup`` and ``/predict`` call: a config with a ``<Video>``
and a ``<VideoRectangle>`` on it is a video project, anything else goes to the image parser
(which explains what an image config needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from ..errors import UnsupportedConfig
from .label_config import (
    ControlTag,
    ImageProjectConfig,
    _LabelledProject,
    _read_config,
    parse_label_config,
    task_media_url,
)

DEFAULT_FRAMERATE = 24.0  # Label Studio's <Video framerate> default

_EXAMPLE = (
    '<Video name="video" value="$video" framerate="25"/> '
    '<VideoRectangle name="box" toName="video"/> '
    '<Labels name="videoLabels" toName="video"><Label value="car"/></Labels>'
)


@dataclass(frozen=True)
class VideoProjectConfig(_LabelledProject):
    """What the backend needs to know about a video project. Build with ``parse_video_config``.

    video_name: the ``<Video name>``, ``to_name`` of every result. video_value: the task data key
    (``"video"`` for ``value="$video"``). framerate: frames per second Label Studio's player assumes
    (the config's ``framerate``, default 24): frame N of a result is shown at (N - 1) / framerate s.
    box: the ``<VideoRectangle>`` we fill. region_labels: the first ``<Labels>`` on the video.
    labels: its label values as Label Studio writes them (alias if set), in config order.
    controls: every control on the video, in config order.
    """

    video_name: str
    video_value: str
    framerate: float
    box: ControlTag
    labels: tuple[str, ...]
    region_labels: ControlTag | None = None
    controls: tuple[ControlTag, ...] = ()
    concept_texts: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def _framerate(raw: str | None, video: str) -> float:
    if raw is None or not str(raw).strip():
        return DEFAULT_FRAMERATE
    try:
        rate = float(raw)
    except ValueError:
        rate = float("nan")
    if not math.isfinite(rate) or rate <= 0 or rate > 1000:
        raise UnsupportedConfig(
            f'video "{video}" has framerate="{raw}"; it must be a positive number of frames per second, e.g. "25"'
        )
    return rate


def is_video_config(xml: str) -> bool:
    """Whether ``xml`` has a ``<Video>`` object (cheap; parsing errors count as "no")."""
    try:
        reading = _read_config(xml)
    except UnsupportedConfig:
        return False
    return any(obj.kind.lower() == "video" for obj in reading.objects)


@lru_cache(maxsize=64)
def parse_video_config(xml: str) -> VideoProjectConfig:
    """Parse a Label Studio label config with a ``<Video>`` into a ``VideoProjectConfig``.

    Raises ``UnsupportedConfig`` (HTTP 400) when there is no ``<Video>``, no ``<VideoRectangle>``
    on it, or ``value``/``framerate`` are unusable; the message says what to write instead.
    """
    reading = _read_config(xml)
    videos = [obj for obj in reading.objects if obj.kind.lower() == "video"]
    if not videos:
        raise UnsupportedConfig("the label config has no <Video>; a video project needs " + _EXAMPLE)
    chosen = None
    for video in videos:
        if any(c.tag.kind == "VideoRectangle" and video.name in c.to_names for c in reading.controls):
            chosen = video
            break
    if chosen is None:
        name = videos[0].name
        raise UnsupportedConfig(
            f'video "{name}" has no <VideoRectangle>, the only video output Label Studio 1.23 has: add '
            f'<VideoRectangle name="box" toName="{name}"/> and <Labels name="videoLabels" toName="{name}">...</Labels>'
        )
    value = (chosen.value or "").strip()
    if not value.startswith("$") or len(value) < 2:
        raise UnsupportedConfig(
            f'video "{chosen.name}" has value="{value}"; it must name a task data field, e.g. value="$video"'
        )
    framerate = _framerate(chosen.attr("framerate"), chosen.name)

    on_video = [c for c in reading.controls if chosen.name in c.to_names]
    box = next(c for c in on_video if c.tag.kind == "VideoRectangle")
    region_labels = next((c for c in on_video if c.tag.kind == "Labels"), None)
    labels: list[str] = []
    concept_texts: list[tuple[str, str]] = []
    for label in region_labels.label_info if region_labels is not None else ():
        if label.result_value not in labels:
            labels.append(label.result_value)
            concept_texts.append((label.result_value, label.prompt or label.value))

    def retarget(tag: ControlTag) -> ControlTag:
        return replace(tag, to_name=chosen.name)

    return VideoProjectConfig(
        video_name=chosen.name,
        video_value=value[1:],
        framerate=framerate,
        box=retarget(box.tag),
        labels=tuple(labels),
        region_labels=retarget(region_labels.tag) if region_labels is not None else None,
        controls=tuple(retarget(c.tag) for c in on_video),
        concept_texts=tuple(concept_texts),
    )


@lru_cache(maxsize=64)
def parse_project_config(xml: str) -> ImageProjectConfig | VideoProjectConfig:
    """The project's config, image or video: ``/setup`` and ``/predict`` go through this.
    Cached per config string: every click sends the config, and parsing it costs ~0.7 ms.

    A ``<Video>`` with a ``<VideoRectangle>`` makes a video project; a config with a ``<Video>``
    and no ``<Image>`` gets the video parser's refusal (what to add); everything else is an image
    project (``parse_label_config``).
    """
    reading = _read_config(xml)
    kinds = {obj.kind.lower() for obj in reading.objects}
    if "video" in kinds:
        has_track_output = any(c.tag.kind == "VideoRectangle" for c in reading.controls)
        if has_track_output or "image" not in kinds:
            return parse_video_config(xml)
    return parse_label_config(xml)


def video_url(task: dict, config: VideoProjectConfig) -> str:
    """The task's video URL, at ``data.<value of the config's <Video>>``."""
    return task_media_url(task, config.video_value, "video")


__all__ = [
    "DEFAULT_FRAMERATE",
    "VideoProjectConfig",
    "is_video_config",
    "parse_project_config",
    "parse_video_config",
    "video_url",
]
