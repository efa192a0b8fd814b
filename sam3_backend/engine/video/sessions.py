"""Tracking sessions: values the video engine takes and updates, with bounded state.

transformers' inference sessions keep every frame they were given and every per-frame output
forever (pixel tensors, memory features of ~0.7 MB per object per frame at full size, per-frame
score dicts it deep-copies on every frame), so memory and per-frame time grow with clip length.
SAM 3 only ever reads a window of that history: the last ``num_maskmem`` memory frames, the
last ``max_object_pointers_in_encoder`` object pointers, ``hotstart_delay`` frames of hot-start
bookkeeping, and up to ``max_cond_frame_num`` conditioning frames. ``prune`` drops the rest after
every frame, which keeps a session's size flat in clip length:

* frames: only the current frame's pixels are held (vision features: one frame);
* non-conditioning outputs and tracked-frame marks: within ``window`` frames of the current frame
  or of a ``pivot`` (box tracking keeps the frames after the first prompt for the backward pass,
  as transformers' forward-then-reverse propagation would find them);
* conditioning outputs (text tracking adds one per new object and per re-conditioning every 16
  frames): the first and the latest ``max_cond_frame_num - 1`` per object. This is the one
  approximation: transformers would also hand the pruned ones' object pointers to the memory
  attention;
* per-frame metadata (tracker scores, suppressed ids, unmatched and overlap frame lists): within
  ``window`` frames (the hot-start heuristics only look ``hotstart_delay`` frames back).

The session subclasses report the clip's real length as ``num_frames`` (transformers derives it
from the frames it holds, which would cap object pointers at one frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...types import VideoInfo, VideoObjectPrompt


def _session_classes():
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoInferenceSession
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    class WindowedVideoSession(Sam3VideoInferenceSession):
        """``Sam3VideoInferenceSession`` fed one frame at a time; ``num_frames`` is the clip's."""

        total_frames = 0

        @property
        def num_frames(self) -> int:
            return self.total_frames

    class WindowedTrackerSession(Sam3TrackerVideoInferenceSession):
        """``Sam3TrackerVideoInferenceSession`` that never holds pixels (features are cached
        per frame by the engine); ``num_frames`` is the clip's."""

        total_frames = 0

        @property
        def num_frames(self) -> int:
            return self.total_frames

        def get_frame(self, frame_idx: int):
            raise RuntimeError(f"frame {frame_idx} has no cached vision features; the engine must add them first")

    return WindowedVideoSession, WindowedTrackerSession


def new_video_state(total_frames: int, height: int, width: int, device, dtype):
    cls, _ = _session_classes()
    state = cls(video_height=height, video_width=width, inference_device=device, inference_state_device=device,
                video_storage_device=device, dtype=dtype)
    state.total_frames = total_frames
    state.processed_frames = {}
    return state


def new_tracker_state(total_frames: int, height: int, width: int, device, dtype):
    _, cls = _session_classes()
    state = cls(video_height=height, video_width=width, inference_device=device, inference_state_device=device,
                video_storage_device=device, dtype=dtype)
    state.total_frames = total_frames
    return state


def _near(frame: int, anchors: tuple[int, ...], window: int) -> bool:
    return any(abs(frame - a) <= window for a in anchors)


def prune(state, frame_idx: int, *, window: int, max_cond: int, pivots: tuple[int, ...] = (), prune_cond: bool = True) -> None:
    """Drop what SAM 3 will not read again once ``frame_idx`` is done (see the module docstring)."""
    anchors = (frame_idx, *pivots)
    if getattr(state, "processed_frames", None):
        for f in [f for f in state.processed_frames if f != frame_idx]:
            del state.processed_frames[f]
    for outputs in state.output_dict_per_obj.values():
        non_cond = outputs["non_cond_frame_outputs"]
        for f in [f for f in non_cond if not _near(f, anchors, window)]:
            del non_cond[f]
        cond = outputs["cond_frame_outputs"]
        if prune_cond and len(cond) > max_cond:
            ordered = sorted(cond)
            keep = {ordered[0], *ordered[len(ordered) - (max_cond - 1):]}
            for f in ordered:
                if f not in keep and f != frame_idx:
                    del cond[f]
    for tracked in state.frames_tracked_per_obj.values():
        for f in [f for f in tracked if not _near(f, anchors, window)]:
            del tracked[f]
    for inputs in state.mask_inputs_per_obj.values():
        for f in [f for f in inputs if f != frame_idx]:  # used on their own frame only
            del inputs[f]
    scores = getattr(state, "obj_id_to_tracker_score_frame_wise", None)
    if scores is not None:
        for f in [f for f in scores if not _near(f, anchors, window)]:
            del scores[f]
    suppressed = getattr(state, "suppressed_obj_ids", None)
    if suppressed is not None:
        for f in [f for f in suppressed if not _near(f, anchors, window)]:
            del suppressed[f]
    for name in ("unmatched_frame_inds", "overlap_pair_to_frame_inds"):
        lists = getattr(state, name, None)
        if lists is None:
            continue
        for key in list(lists):
            lists[key] = [f for f in lists[key] if _near(f, anchors, window)]


def state_size(state) -> tuple[int, int]:
    """(tensor bytes, per-frame entries) held by a transformers session: for tests and /metrics."""
    seen: set[int] = set()
    total = 0

    def add(value) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            if id(value) not in seen:
                seen.add(id(value))
                total += value.element_size() * value.nelement()
        elif isinstance(value, dict):
            for v in value.values():
                add(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                add(v)

    add(getattr(state, "processed_frames", None) or {})
    add(state.output_dict_per_obj)
    add(state.mask_inputs_per_obj)
    add(state.point_inputs_per_obj)
    add(state.cache._vision_features)
    entries = sum(len(o["non_cond_frame_outputs"]) + len(o["cond_frame_outputs"]) for o in state.output_dict_per_obj.values())
    entries += sum(len(t) for t in state.frames_tracked_per_obj.values())
    for name in ("obj_id_to_tracker_score_frame_wise", "suppressed_obj_ids"):
        entries += len(getattr(state, name, {}) or {})
    for name in ("unmatched_frame_inds", "overlap_pair_to_frame_inds"):
        entries += sum(len(v) for v in (getattr(state, name, {}) or {}).values())
    return total, entries


@dataclass
class TextTrackSession:
    """One text-prompted tracking run over a clip (returned by ``Sam3VideoEngine.text_session``).

    path / info: the video. frames: source frame indices to process, ascending (stride and frame
    limit applied). concepts: the noun phrases; ``prompt_concept`` maps transformers' prompt ids
    to their index. state: transformers' session, pruned after every frame. position: how many
    of ``frames`` are done (a new ``propagate`` call resumes there). pending: outputs held back
    for hot-start (SAM 3 may remove a new object within ``hotstart_delay`` frames); boxes only.
    """

    path: Path
    info: VideoInfo
    frames: tuple[int, ...]
    concepts: tuple[str, ...]
    state: object
    prompt_concept: dict[int, int]
    position: int = 0
    pending: list = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.position >= len(self.frames) and not self.pending


@dataclass
class BoxTrackSession:
    """One box-prompted tracking run (returned by ``Sam3VideoEngine.box_session``).

    objects: the prompts; every keyframe of an object is a conditioning frame. states: one
    transformers tracker session per object (so an object's keyframes never make the others take
    a step out of order); vision features are computed once per frame for all of them.
    forward / backward: frames still to track after / before each object's first keyframe
    (forward first); conditioned: keyframes already encoded.
    """

    path: Path
    info: VideoInfo
    frames: tuple[int, ...]
    objects: tuple[VideoObjectPrompt, ...]
    states: dict[int, object]
    first_keyframe: dict[int, int]
    forward: list[int] = field(default_factory=list)
    backward: list[int] = field(default_factory=list)
    conditioned: bool = False

    @property
    def done(self) -> bool:
        return self.conditioned and not self.forward and not self.backward


__all__ = ["BoxTrackSession", "TextTrackSession", "new_tracker_state", "new_video_state", "prune", "state_size"]
