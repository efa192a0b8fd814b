"""SAM 3 on video: text- and box-prompted multi-object tracking, one frame in memory at a time.

The sam2 video predictor's split: a session is a value (``sessions.TextTrackSession`` /
``BoxTrackSession``) built by ``text_session`` / ``box_session``; ``propagate_text`` /
``propagate_boxes`` are generators of per-frame results that a caller can stop at any frame and
resume later from the same session. The engine holds no per-video state.

* Text: every concept is a prompt of one ``Sam3VideoModel`` session, so each frame gets one
  vision pass for all concepts; objects found mid-clip start their own tracks; SAM 3's hot-start
  heuristics (drop tracks that vanish or duplicate another within ``hotstart_delay`` frames) are
  kept by holding outputs back that many frames, as ``propagate_in_video_iterator`` does.
* Boxes: every keyframe of an object is a conditioning frame of its ``Sam3TrackerVideoModel``
  session; tracking then runs forwards from each object's first keyframe to the end and
  backwards from it to the start. One vision pass per frame serves all objects.

Each frame takes the model through the shared ``ModelScheduler`` for exactly that frame (priority
per frame from the caller, so an interactive track can drop to background once answered).
Boxes come from the low-resolution masks (``boxes.boxes_from_logits``), never from upsampled
ones. Coordinates in and out: XYXY pixels of the displayed (upright) video frame
(``VideoInfo.width`` x ``height``; ``decode`` hands out frames already turned by the display matrix).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ...errors import BadRequest
from ...types import Box, TrackedBox, VideoFrameResult, VideoInfo, VideoObjectPrompt
from ..scheduler import ModelScheduler, Priority
from .boxes import boxes_from_logits
from .decode import read_frames, read_frames_reversed
from .models import VideoModels
from .sessions import BoxTrackSession, TextTrackSession, new_tracker_state, new_video_state, prune

log = logging.getLogger(__name__)

PriorityLike = Priority | Callable[[], Priority]


def plan_frames(info: VideoInfo, *, stride: int = 1, max_frames: int | None = None, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Source frames to process: every ``stride``-th from the first, at most ``max_frames`` of
    them (counting from the start), plus the ``extra`` ones (keyframes), ascending."""
    if stride < 1:
        raise ValueError("stride must be >= 1")
    frames = list(range(0, info.frames, stride))
    if max_frames is not None:
        frames = frames[: max(1, max_frames)]
    return tuple(sorted(set(frames) | {int(e) for e in extra if 0 <= int(e) < info.frames}))


class Sam3VideoEngine:
    """Tracking on the video models built over the image engine's weights.

    scheduler: the image engine's (``engine.scheduler``): one model, most urgent call first.
    new_object_threshold: detection score a text-prompted object needs to start a track (SAM 3's
    ``new_det_thresh``); detections below ``detection_threshold`` are ignored altogether.
    max_objects: tracks per text session (SAM 3's ``max_num_objects``). hotstart_frames: SAM 3's
    hot-start delay (a new object that vanishes or duplicates another within that many frames is
    dropped, and results lag that much; None keeps the model's, 0 turns it off). reverse_chunk:
    frames held while tracking backwards.
    """

    def __init__(
        self,
        models: VideoModels,
        scheduler: ModelScheduler | None = None,
        *,
        new_object_threshold: float = 0.7,
        detection_threshold: float = 0.5,
        max_objects: int = 64,
        hotstart_frames: int | None = None,
        reverse_chunk: int = 32,
        wait_timeout: float | None = None,
    ):
        self.models = models
        self.scheduler = scheduler or ModelScheduler()
        self.device = models.device
        self.dtype = models.dtype
        self.size = models.image_size
        self.reverse_chunk = reverse_chunk
        self.wait_timeout = wait_timeout
        video = models.video
        video.new_det_thresh = float(new_object_threshold)
        video.score_threshold_detection = float(min(detection_threshold, new_object_threshold))
        video.max_num_objects = int(max_objects)
        if hotstart_frames is not None:
            video.hotstart_delay = int(hotstart_frames)
            video.hotstart_unmatch_thresh = min(video.hotstart_unmatch_thresh, video.hotstart_delay)
            video.hotstart_dup_thresh = min(video.hotstart_dup_thresh, video.hotstart_delay)
        cfg = models.tracker.config
        self.window = int(max(cfg.num_maskmem, cfg.max_object_pointers_in_encoder, video.hotstart_delay)) + 1
        self.max_cond = max(2, int(cfg.max_cond_frame_num))
        processor = models.processor.video_processor
        self._mean = torch.tensor(processor.image_mean, dtype=torch.float32, device=self.device)[:, None, None]
        self._std = torch.tensor(processor.image_std, dtype=torch.float32, device=self.device)[:, None, None]
        self._rescale = float(processor.rescale_factor)

    @property
    def model_version(self) -> str:
        return self.models.version

    # ------------------------------------------------------------------ helpers
    def _slot(self, priority: PriorityLike):
        p = priority() if callable(priority) else priority
        return self.scheduler.slot(p, self.wait_timeout)

    def pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 RGB -> (3, S, S) normalised as the video processor does, on the device."""
        t = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1).float()
        return ((t * self._rescale - self._mean) / self._std).to(self.dtype)

    def _to_pixels(self, boxes: torch.Tensor, info: VideoInfo) -> list[Box]:
        scale = np.array([info.width, info.height, info.width, info.height], dtype=np.float64)
        return [Box(*map(float, b)) for b in boxes.double().numpy() * scale]

    # ------------------------------------------------------------------ text
    def text_session(self, path: str | Path, info: VideoInfo, concepts: Sequence[str], *, frames: Sequence[int]) -> TextTrackSession:
        """A session that tracks every object of every concept (noun phrases) over ``frames``."""
        concepts = tuple(concepts)
        if not concepts:
            raise BadRequest("text tracking needs at least one concept (a label to look for)")
        state = new_video_state(info.frames, info.height, info.width, self.device, self.dtype)
        prompt_concept: dict[int, int] = {}
        for i, text in enumerate(concepts):
            before = set(state.prompts)
            self.models.processor.add_text_prompt(state, text)
            new = set(state.prompts) - before
            prompt_id = new.pop() if new else next(p for p, t in state.prompts.items() if t == text)
            prompt_concept.setdefault(prompt_id, i)
        return TextTrackSession(Path(path), info, tuple(sorted(frames)), concepts, state, prompt_concept)

    def propagate_text(self, session: TextTrackSession, *, priority: PriorityLike = Priority.BATCH) -> Iterator[VideoFrameResult]:
        """Track ``session`` frame by frame from where it stopped; yields one result per frame, in
        order, ``hotstart_delay`` frames behind the model (all of them at the end)."""
        video = self.models.video
        state = session.state
        delay = int(video.hotstart_delay)
        todo = session.frames[session.position:]
        if todo:
            for index, rgb in read_frames(session.path, session.info, todo, self.size):
                pixels = self.pixels(rgb)
                del rgb
                with self._slot(priority):
                    state.processed_frames[index] = pixels
                    out = video(inference_session=state, frame_idx=index)
                    ids = sorted(out.obj_id_to_mask)
                    logits = torch.cat([out.obj_id_to_mask[i] for i in ids]) if ids else torch.zeros(0, 1, 1)
                    boxes, present = boxes_from_logits(logits)
                    prune(state, index, window=self.window, max_cond=self.max_cond)
                del pixels
                state.hotstart_removed_obj_ids.update(out.removed_obj_ids or ())
                session.pending.append((
                    index, ids, boxes, present, set(out.suppressed_obj_ids or ()),
                    {i: float(out.obj_id_to_score.get(i, 0.0)) for i in ids}, list(out.object_ids or ()),
                ))
                session.position = session.frames.index(index, session.position) + 1
                last = session.position >= len(session.frames)
                while session.pending and (last or len(session.pending) > max(delay - 1, 0)):
                    yield self._text_result(session, session.pending.pop(0))
        while session.pending:  # frames ran out early (a damaged stream): flush
            session.position = len(session.frames)
            yield self._text_result(session, session.pending.pop(0))

    def _text_result(self, session: TextTrackSession, entry) -> VideoFrameResult:
        index, ids, boxes, present, suppressed, scores, tracked = entry
        state = session.state
        removed = set(state.hotstart_removed_obj_ids)
        pixel_boxes = self._to_pixels(boxes, session.info) if len(ids) else []
        objects = []
        for i, obj_id in enumerate(ids):
            if present[i] and obj_id not in suppressed and obj_id not in removed:
                objects.append(TrackedBox(int(obj_id), pixel_boxes[i], scores[obj_id]))
        prompt_index = {
            int(o): session.prompt_concept.get(state.obj_id_to_prompt_id.get(o, -1), 0)
            for o in set(ids) | set(tracked) if o not in removed
        }
        return VideoFrameResult(
            index=int(index), time=float(session.info.times[index]), objects=tuple(objects),
            tracked=frozenset(int(o) for o in tracked if o not in removed), prompt_index=prompt_index,
        )

    # ------------------------------------------------------------------ boxes
    def box_session(
        self, path: str | Path, info: VideoInfo, objects: Sequence[VideoObjectPrompt], *, frames: Sequence[int]
    ) -> BoxTrackSession:
        """A session that tracks each object from its keyframe boxes over ``frames`` (+ keyframes)."""
        objects = tuple(objects)
        if not objects:
            raise BadRequest("box tracking needs at least one object with a keyframe")
        ids = [o.object_id for o in objects]
        if len(set(ids)) != len(ids):
            raise ValueError(f"object ids must be unique, got {ids}")
        keyframes: set[int] = set()
        for obj in objects:
            if not obj.keyframes:
                raise BadRequest(f"object {obj.object_id} has no keyframe")
            for index, box in obj.keyframes:
                if not 0 <= index < info.frames:
                    raise BadRequest(f"a keyframe is on frame {index + 1}, but the video has {info.frames} frames")
                if not (box.x0 < box.x1 and box.y0 < box.y1):
                    raise BadRequest(f"object {obj.object_id} has an empty box on frame {index + 1}")
                keyframes.add(index)
        frames = tuple(sorted(set(frames) | keyframes))
        states = {o.object_id: new_tracker_state(info.frames, info.height, info.width, self.device, self.dtype) for o in objects}
        first = {o.object_id: min(k for k, _ in o.keyframes) for o in objects}
        start, latest = min(first.values()), max(first.values())
        return BoxTrackSession(
            Path(path), info, frames, objects, states, first,
            forward=deque(f for f in frames if f >= start), backward=deque(f for f in reversed(frames) if f < latest),
        )

    def _tracker_features(self, pixels: torch.Tensor):
        """Vision features of one frame for the tracker: the shared ViT, then the tracker's neck."""
        backbone = self.models.video.detector_model.vision_encoder.backbone
        hidden = backbone(pixels[None]).last_hidden_state
        feats, pos = self.models.video.get_vision_features_for_tracker(SimpleNamespace(last_hidden_state=hidden))
        return {"vision_feats": feats, "vision_pos_embeds": pos}

    def _box_prompt(self, state, obj_id: int, index: int, box: Box, info: VideoInfo) -> None:
        """Add a box on frame ``index`` as SAM's two labelled corner points (labels 2 and 3), in
        the model's square input frame: what ``Sam3TrackerVideoProcessor`` does for ``input_boxes``."""
        sx, sy = self.size / info.width, self.size / info.height
        coords = torch.tensor([[[[box.x0 * sx, box.y0 * sy], [box.x1 * sx, box.y1 * sy]]]], dtype=torch.float32)
        labels = torch.tensor([[[2, 3]]], dtype=torch.int32)
        obj_idx = state.obj_id_to_idx(obj_id)
        state.add_point_inputs(obj_idx, index, {"point_coords": coords, "point_labels": labels})
        state.remove_mask_inputs(obj_idx, index)
        state.obj_with_new_inputs = [obj_id]

    def propagate_boxes(self, session: BoxTrackSession, *, priority: PriorityLike = Priority.BATCH) -> Iterator[VideoFrameResult]:
        """Encode the keyframes, then track forwards, then backwards; one result per frame and
        pass (a frame before some objects' first keyframes comes once in each pass, with the
        objects tracked there listed in ``tracked``). Resumable: a new call continues."""
        info = session.info
        tracker = self.models.tracker
        if not session.conditioned:
            by_frame: dict[int, list[tuple[int, Box]]] = {}
            for obj in session.objects:
                for index, box in obj.keyframes:
                    by_frame.setdefault(index, []).append((obj.object_id, box))
            for index, rgb in read_frames(session.path, info, sorted(by_frame), self.size):
                pixels = self.pixels(rgb)
                with self._slot(priority), torch.inference_mode():
                    features = self._tracker_features(pixels)
                    for obj_id, box in by_frame[index]:
                        state = session.states[obj_id]
                        state.cache.cache_vision_features(index, features)
                        self._box_prompt(state, obj_id, index, box, info)
                        tracker(inference_session=state, frame_idx=index)
            session.conditioned = True

        def step(index: int, rgb: np.ndarray, reverse: bool) -> VideoFrameResult:
            pixels = self.pixels(rgb)
            active = [o for o, k in session.first_keyframe.items() if (k > index if reverse else k <= index)]
            found: list[TrackedBox] = []
            with self._slot(priority), torch.inference_mode():
                features = self._tracker_features(pixels)
                logits, scores = [], []
                for obj_id in active:
                    state = session.states[obj_id]
                    state.cache.cache_vision_features(index, features)
                    out = tracker(inference_session=state, frame_idx=index, reverse=reverse)
                    logits.append(out.pred_masks.reshape(-1, *out.pred_masks.shape[-2:])[:1])
                    scores.append(out.object_score_logits.reshape(-1)[:1])
                    prune(state, index, window=self.window, max_cond=self.max_cond,
                          pivots=(session.first_keyframe[obj_id],), prune_cond=False)
                if active:
                    boxes, present = boxes_from_logits(torch.cat(logits))
                    probs = torch.cat(scores).float().sigmoid().cpu().tolist()
                    for i, (obj_id, box) in enumerate(zip(active, self._to_pixels(boxes, info))):
                        if present[i]:
                            found.append(TrackedBox(obj_id, box, float(probs[i])))
            return VideoFrameResult(index=index, time=float(info.times[index]), objects=tuple(found),
                                    tracked=frozenset(active))

        if session.forward:
            for index, rgb in read_frames(session.path, info, list(session.forward), self.size):
                while session.forward and session.forward[0] < index:
                    session.forward.popleft()  # never decoded (damaged stream)
                result = step(index, rgb, reverse=False)
                session.forward.popleft()
                yield result
            session.forward.clear()
        if session.backward:
            for index, rgb in read_frames_reversed(session.path, info, list(session.backward), self.size,
                                                   chunk=self.reverse_chunk):
                while session.backward and session.backward[0] > index:
                    session.backward.popleft()
                result = step(index, rgb, reverse=True)
                session.backward.popleft()
                yield result
            session.backward.clear()


__all__ = ["PriorityLike", "Sam3VideoEngine", "plan_frames"]
