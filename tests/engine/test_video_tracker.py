"""Video tracking through the real model code (tiny checkpoint): equal to transformers' own
pipelines, bounded session state, per-frame scheduling, and known motion with pinned masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_backend.engine.scheduler import ModelScheduler, Priority
from sam3_backend.engine.video.boxes import boxes_from_logits
from sam3_backend.engine.video.decode import probe_video, read_frames
from sam3_backend.engine.video.models import build_video_models
from sam3_backend.engine.video.sessions import state_size
from sam3_backend.engine.video.tracker import Sam3VideoEngine, plan_frames
from sam3_backend.types import Box, VideoObjectPrompt
from video_clips import Shape, make_clip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def video_models(loaded_model):
    return build_video_models(loaded_model)


def _square_clip(tmp_path, size, frames):
    """A clip at exactly the model's input size, so transformers' resize and ours are identities."""
    path = tmp_path / f"square{frames}.webm"
    shapes = [Shape((4, 20), (1.5, 0.5), (24, 18), (220, 40, 40)), Shape((70, 8), (-0.5, 1.0), (16, 30), (40, 200, 60))]
    truth = make_clip(path, frames=frames, width=size, height=size, shapes=shapes)
    return path, probe_video(path), truth


@pytest.fixture
def square_clip(tmp_path, loaded_model):
    return _square_clip(tmp_path, loaded_model.image_size, 24)


def _boxes_by_object(ids, logits, size):
    boxes, present = boxes_from_logits(logits)
    return {int(i): (boxes[k] * size).tolist() for k, i in enumerate(ids) if present[k]}


def test_text_tracking_equals_transformers_video_pipeline(video_models, square_clip, tiny_checkpoint):
    from transformers import Sam3VideoModel

    path, info, _ = square_clip
    size = video_models.image_size
    video_models.video.nms_iou = None  # transformers skips NMS without `kernels`: compare like for like
    # Random detections never match their tracks, so hot-start would remove every object within
    # 8 frames: without it the objects live and every frame compares boxes.
    video_models.video.hotstart_delay = 0
    engine = Sam3VideoEngine(video_models, new_object_threshold=0.0, detection_threshold=0.0, max_objects=3)
    ours = {r.index: {o.object_id: [o.box.x0, o.box.y0, o.box.x1, o.box.y1] for o in r.objects}
            for r in engine.propagate_text(engine.text_session(path, info, ["car", "person"], frames=plan_frames(info)))}

    reference = Sam3VideoModel.from_pretrained(str(tiny_checkpoint)).eval()
    reference.score_threshold_detection = reference.new_det_thresh = 0.0
    reference.max_num_objects = 3
    reference.hotstart_delay = 0
    frames = [rgb for _, rgb in read_frames(path, info, range(info.frames), size)]
    session = video_models.processor.init_video_session(video=frames, inference_device="cpu")
    video_models.processor.add_text_prompt(session, ["car", "person"])
    theirs = {}
    with torch.inference_mode():
        for out in reference.propagate_in_video_iterator(inference_session=session):
            hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
            ids = [i for i in sorted(out.obj_id_to_mask) if i not in hidden]
            logits = torch.cat([out.obj_id_to_mask[i] for i in ids]) if ids else torch.zeros(0, 1, 1)
            theirs[out.frame_idx] = _boxes_by_object(ids, logits, size)
    assert list(ours) == list(theirs) == list(range(24))
    assert sum(len(v) for v in ours.values()) >= 2 * 24, "too few objects to compare"
    for frame in ours:
        assert ours[frame].keys() == theirs[frame].keys(), frame
        for obj in ours[frame]:
            np.testing.assert_allclose(ours[frame][obj], theirs[frame][obj], atol=1e-3, err_msg=f"frame {frame}")


def test_box_tracking_equals_transformers_tracker_pipeline(video_models, tmp_path, tiny_checkpoint):
    """Every keyframe a conditioning frame, forward then backward from the first, per object;
    over 48 frames the windowed session state drops frames transformers keeps: same answers."""
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    size = video_models.image_size
    path, info, truth = _square_clip(tmp_path, size, 48)
    keyframes = {0: [(6, Box(*truth[0][6])), (30, Box(*truth[0][30]))], 1: [(12, Box(*truth[1][12]))]}
    engine = Sam3VideoEngine(video_models)
    session = engine.box_session(path, info, [VideoObjectPrompt(o, tuple(k)) for o, k in keyframes.items()],
                                 frames=plan_frames(info))
    ours: dict[int, dict[int, list]] = {0: {}, 1: {}}
    passes = []
    for r in engine.propagate_boxes(session):
        passes.append((r.index, tuple(sorted(r.tracked))))
        for o in r.objects:
            ours[o.object_id][r.index] = [o.box.x0, o.box.y0, o.box.x1, o.box.y1]
    # forward from frame 6 (object 1 from 12), then backward from 11 (object 1) and 5 (both)
    assert [i for i, _ in passes] == list(range(6, 48)) + list(range(11, -1, -1))
    assert dict(passes[:7])[11] == (0,) and passes[6] == (12, (0, 1))
    assert passes[42] == (11, (1,)) and passes[-1] == (0, (0, 1))
    assert session.done

    reference = Sam3TrackerVideoModel.from_pretrained(str(tiny_checkpoint)).eval()
    processor = Sam3TrackerVideoProcessor.from_pretrained(str(tiny_checkpoint))
    frames = [rgb for _, rgb in read_frames(path, info, range(info.frames), size)]
    for obj, keys in keyframes.items():
        state = processor.init_video_session(video=frames, inference_device="cpu")
        with torch.inference_mode():
            for index, box in keys:
                processor.add_inputs_to_inference_session(state, frame_idx=index, obj_ids=[obj],
                                                          input_boxes=[[[box.x0, box.y0, box.x1, box.y1]]])
                reference(inference_session=state, frame_idx=index)
            theirs = {}
            start = keys[0][0]
            for reverse in (False, True):
                for out in reference.propagate_in_video_iterator(state, start_frame_idx=start, reverse=reverse):
                    theirs.update({out.frame_idx: b for b in _boxes_by_object([obj], out.pred_masks[:, 0], size).values()})
        assert ours[obj].keys() == theirs.keys() and len(theirs) == 48, obj
        for frame in theirs:
            np.testing.assert_allclose(ours[obj][frame], theirs[frame], atol=1e-3, err_msg=f"object {obj} frame {frame}")


def test_session_state_stays_flat_in_clip_length(video_models, tmp_path):
    path = tmp_path / "long.webm"
    make_clip(path, frames=120, width=64, height=48)
    info = probe_video(path)
    video_models.video.hotstart_delay = 0  # random detections: keep the same two objects throughout
    engine = Sam3VideoEngine(video_models, new_object_threshold=0.0, detection_threshold=0.0, max_objects=2)
    box = VideoObjectPrompt(0, ((0, Box(5, 5, 30, 30)),))
    session = engine.box_session(path, info, [box], frames=plan_frames(info))
    sizes = {}
    for r in engine.propagate_boxes(session):
        if r.index in (40, 80, 119):
            sizes[r.index] = state_size(session.states[0])
    assert sizes[40] == sizes[80] == sizes[119], sizes
    # memory outputs and tracked-frame marks, within a window of the current frame and the prompt
    assert sizes[119][1] <= 2 * 2 * (engine.window + 1) + 1

    text = engine.text_session(path, info, ["car"], frames=plan_frames(info))
    sizes = {}
    for r in engine.propagate_text(text):
        if r.index in (50, 80, 110):
            sizes[r.index] = (len(text.state.obj_ids), *state_size(text.state))
    assert sizes[50][0] == sizes[110][0] >= 1, sizes  # the same objects: the state may not grow
    assert sizes[110][2] <= sizes[50][2] and sizes[110][1] <= sizes[50][1] * 1.05, sizes
    assert not text.state.processed_frames or len(text.state.processed_frames) <= 1


class RecordingScheduler(ModelScheduler):
    def __init__(self):
        super().__init__()
        self.priorities = []

    def acquire(self, priority=Priority.BATCH, timeout=None):
        self.priorities.append(Priority(priority))
        super().acquire(priority, timeout)


def test_every_frame_takes_the_model_once_at_the_callers_priority(video_models, square_clip):
    path, info, truth = square_clip
    scheduler = RecordingScheduler()
    engine = Sam3VideoEngine(video_models, scheduler)
    session = engine.box_session(path, info, [VideoObjectPrompt(0, ((0, Box(*truth[0][0])),))], frames=plan_frames(info))
    current = [Priority.INTERACTIVE]
    results = []
    for r in engine.propagate_boxes(session, priority=lambda: current[0]):
        results.append(r.index)
        if len(results) == 10:
            current[0] = Priority.BACKGROUND  # the request answered: the rest runs in the background
    assert len(scheduler.priorities) == 1 + 24  # the keyframe, then one slot per frame
    assert set(scheduler.priorities[:11]) == {Priority.INTERACTIVE}
    assert set(scheduler.priorities[11:]) == {Priority.BACKGROUND}
    assert not scheduler.busy


def test_propagation_stops_and_resumes_where_it_left_off(video_models, tmp_path):
    path, info, _ = _square_clip(tmp_path, video_models.image_size, 48)
    engine = Sam3VideoEngine(video_models, new_object_threshold=0.0, detection_threshold=0.0, max_objects=1)
    delay = video_models.video.hotstart_delay
    assert delay > 2
    session = engine.text_session(path, info, ["car"], frames=plan_frames(info, stride=2, max_frames=delay + 4))
    first = []
    for r in engine.propagate_text(session):
        # SAM 3 may still drop an object within hotstart_delay frames: results lag that much
        assert session.position == min(len(first) + delay, len(session.frames))
        first.append(r.index)
        if len(first) == 2:
            break
    rest = [r.index for r in engine.propagate_text(session)]
    assert first == [0, 2] and session.done
    assert first + rest == list(range(0, 2 * (delay + 4), 2))


def _pin(module, logits_for):
    """Replace a model's mask logits per call (the real forward still runs): known motion."""
    original = module.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        logits_for(out, kwargs)
        return out

    module.forward = forward


def _rect_logits(box, width, height, n):
    """Mask logits whose zero level is the box: signed distance to its edges, in cells."""
    if box is None:
        return torch.full((n, n), -8.0)
    c = torch.arange(n, dtype=torch.float32) + 0.5
    dx = torch.minimum(c - box[0] / width * n, box[2] / width * n - c)
    dy = torch.minimum(c - box[1] / height * n, box[3] / height * n - c)
    return torch.minimum(dy[:, None], dx[None, :])


def test_box_tracks_follow_pinned_masks_leave_and_come_back(video_models, tmp_path):
    width, height = 96, 64
    shapes = [Shape((2, 10), (2, 0.5), (20, 14), (220, 40, 40), hidden=set(range(12, 18))),
              Shape((60, 40), (-1, -0.5), (12, 12), (40, 200, 60))]
    path = tmp_path / "pinned.mp4"
    truth = make_clip(path, frames=30, width=width, height=height, shapes=shapes)
    info = probe_video(path)
    n = video_models.mask_size

    def pin(out, kwargs):
        state, index = kwargs["inference_session"], kwargs["frame_idx"]
        box = truth[state.obj_ids[0]][index]
        out.pred_masks = _rect_logits(box, width, height, n)[None, None]
        out.object_score_logits = torch.tensor([5.0 if box is not None else -5.0])

    _pin(video_models.tracker, pin)
    engine = Sam3VideoEngine(video_models)
    objects = [VideoObjectPrompt(0, ((3, Box(*truth[0][3])),)), VideoObjectPrompt(1, ((0, Box(*truth[1][0])),))]
    seen = {0: {}, 1: {}}
    steps = []
    for r in engine.propagate_boxes(engine.box_session(path, info, objects, frames=plan_frames(info))):
        steps.append((r.index, set(r.tracked)))
        for o in r.objects:
            seen[o.object_id][r.index] = o.box
    # forward from frame 0 (object 1; object 0 joins at its keyframe 3), then back from 2 (object 0)
    assert steps == [(i, {1} if i < 3 else {0, 1}) for i in range(30)] + [(i, {0}) for i in (2, 1, 0)]
    for obj in (0, 1):
        for index, box in enumerate(truth[obj]):
            if box is None:
                assert index not in seen[obj], (obj, index)
                continue
            got = seen[obj][index]
            np.testing.assert_allclose([got.x0, got.y0, got.x1, got.y1], np.clip(box, 0, [width, height] * 2),
                                       atol=1e-3, err_msg=f"object {obj} frame {index}")
