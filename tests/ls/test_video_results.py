"""Tracks -> videorectangle regions: sparse keyframes within the tolerance, lifespans, frames, times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam3_backend.ls.video_config import parse_video_config
from sam3_backend.ls.video_results import (
    Track,
    TrackSample,
    encode_track,
    frame_at,
    frame_start,
    frame_time,
    frames_count,
    interpolated_rect,
    sparsify,
    stable_region_id,
    track_sequence,
)
from sam3_backend.types import Box

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "payloads-video-1.23.2.json"
VIDEO = json.loads(FIXTURE.read_text())
CONFIG = parse_video_config(VIDEO["label_config"])  # framerate 24
W, H = 320, 240


def _edges(rect):
    x, y, w, h = rect
    return np.array([x, y, x + w, y + h])


def _truth(box: Box):
    return np.array([box.x0 / W * 100, box.y0 / H * 100, box.x1 / W * 100, box.y1 / H * 100])


def _check_within(track: Track, sequence: list[dict], tolerance: float) -> None:
    """What the editor shows on every sampled frame is within ``tolerance`` % of the track."""
    for sample in track.samples:
        shown = interpolated_rect(sequence, sample.frame)
        if sample.box is None:
            assert shown is None, f"frame {sample.frame}: hidden object shown at {shown}"
        else:
            assert shown is not None, f"frame {sample.frame}: visible object hidden"
            err = np.abs(_edges(shown) - _truth(sample.box)).max()
            assert err <= tolerance + 1e-9, f"frame {sample.frame}: off by {err:.4f}% > {tolerance}%"


boxes = st.builds(
    lambda x, y, w, h: Box(x, y, min(x + w, W), min(y + h, H)),
    st.floats(0, W - 2), st.floats(0, H - 2), st.floats(1, W), st.floats(1, H),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(st.none(), boxes), min_size=1, max_size=60),
    st.floats(0.0, 5.0),
    st.booleans(),
)
def test_interpolated_keyframes_stay_within_the_tolerance(samples, tolerance, complete):
    track = Track("r1", "car", 0.9, tuple(TrackSample(i + 1, b) for i, b in enumerate(samples)), complete=complete)
    sequence = track_sequence(track, W, H, 24.0, tolerance=tolerance, last_frame=len(samples))
    if all(b is None for b in samples):
        assert sequence == []
        return
    _check_within(track, sequence, tolerance)
    assert [k["frame"] for k in sequence] == sorted({k["frame"] for k in sequence})


def test_linear_motion_needs_only_its_end_points():
    samples = tuple(TrackSample(f, Box(2.0 * f, 30, 2.0 * f + 40, 90)) for f in range(1, 73))
    sequence = track_sequence(Track("r", "car", 0.9, samples), W, H, 24, tolerance=0.1, last_frame=72)
    assert [k["frame"] for k in sequence] == [1, 72] and all(k["enabled"] for k in sequence)


def test_a_turn_gets_a_keyframe_and_tolerance_zero_keeps_every_bend():
    path = [Box(4.0 * f, 20, 4.0 * f + 30, 60) if f <= 30 else Box(120, 20 + 4.0 * (f - 30), 150, 60 + 4.0 * (f - 30))
            for f in range(1, 61)]
    track = Track("r", "car", 0.9, tuple(TrackSample(f, b) for f, b in zip(range(1, 61), path)))
    loose = track_sequence(track, W, H, 24, tolerance=0.5, last_frame=60)
    assert [k["frame"] for k in loose] == [1, 30, 60]
    jitter = Track("r", None, 0.5, tuple(TrackSample(f, Box(f % 2, 0, 50 + f % 3, 40)) for f in range(1, 21)))
    assert len(track_sequence(jitter, W, H, 24, tolerance=0.0, last_frame=20)) == 20


def test_leaving_ends_the_lifespan_and_coming_back_starts_it_again():
    samples = []
    for f in range(1, 41):
        visible = not 11 <= f <= 25
        samples.append(TrackSample(f, Box(5.0 * f, 10, 5.0 * f + 20, 50) if visible else None))
    track = Track("car-1", "car", 0.8, tuple(samples))
    sequence = track_sequence(track, W, H, 24, tolerance=0.5, last_frame=40)
    assert [(k["frame"], k["enabled"]) for k in sequence] == [(1, True), (10, False), (26, True), (40, True)]
    _check_within(track, sequence, 0.5)
    assert interpolated_rect(sequence, 10) is not None  # shown on its own frame, hidden after
    assert interpolated_rect(sequence, 11) is None and interpolated_rect(sequence, 25) is None


def test_an_unfinished_track_ends_disabled_and_a_finished_one_holds():
    samples = tuple(TrackSample(f, Box(10, 10, 50, 50)) for f in range(1, 11))
    assert track_sequence(Track("r", None, 1, samples, complete=False), W, H, 24, tolerance=1, last_frame=72)[-1]["enabled"] is False
    assert track_sequence(Track("r", None, 1, samples, complete=True), W, H, 24, tolerance=1, last_frame=72)[-1]["enabled"] is True
    # reaching the video's last frame always holds
    assert track_sequence(Track("r", None, 1, samples, complete=False), W, H, 24, tolerance=1, last_frame=10)[-1]["enabled"] is True


def test_region_shape_matches_what_label_studio_stored():
    stored = next(r for r in VIDEO["stored_annotation_GET_api_tasks_id_annotations"][0]["result"] if r["id"] == "trk_ef75e2")
    samples = tuple(TrackSample(f, Box(230, 20 + 2.0 * f, 260, 70 + 2.0 * f)) for f in range(1, 73))
    region = encode_track(Track("trk_1", "person", 0.93, samples), CONFIG, width=W, height=H, frames=72, duration=3.0,
                          tolerance=0.5)
    assert set(region) == set(stored) - {"origin"}
    assert set(region["value"]) == set(stored["value"])
    assert set(region["value"]["sequence"][0]) == set(stored["value"]["sequence"][0])
    assert (region["type"], region["from_name"], region["to_name"]) == ("videorectangle", "box", "video")
    assert region["value"]["labels"] == ["person"] and region["value"]["framesCount"] == 72
    assert region["value"]["duration"] == 3.0
    first, last = region["value"]["sequence"][0], region["value"]["sequence"][-1]
    assert first["frame"] == 1 and first["time"] == pytest.approx(1 / 24) and last["time"] == pytest.approx(3.0)
    unlabelled = encode_track(Track("t", None, 0.5, samples), CONFIG, width=W, height=H, frames=72, duration=3, tolerance=1)
    assert "labels" not in unlabelled["value"]
    assert encode_track(Track("t", "car", 0.5, (TrackSample(1, None),)), CONFIG, width=W, height=H, frames=72,
                        duration=3, tolerance=1) is None


def test_frames_are_one_based_and_times_follow_the_editor():
    # recorded: frame 1 at time 1/24, frame 36 at 1.5, frame 72 at 3.0 (framerate 24)
    for item in VIDEO["stored_annotation_GET_api_tasks_id_annotations"][0]["result"][0]["value"]["sequence"]:
        assert frame_time(item["frame"], 24) == pytest.approx(item["time"])
    assert frame_at(0.0, 24) == 1 and frame_at(1 / 24, 24) == 2 and frame_at(2.958, 24) == 72
    assert frame_start(1, 24) == 0.0 and frame_start(72, 24) == pytest.approx(71 / 24)
    assert frames_count(3.0, 24) == 72 and frames_count(0.01, 24) == 1
    assert frame_at(frame_start(37, 25), 25) == 37


def test_sparsify_edge_cases_and_ids():
    assert sparsify(np.array([1.0]), np.zeros((1, 4)), 1.0) == [0]
    assert sparsify(np.array([1.0, 2.0]), np.zeros((2, 4)), 1.0) == [0, 1]
    assert stable_region_id(1, "v", 3) == stable_region_id(1, "v", 3) != stable_region_id(1, "v", 4)
    assert len(stable_region_id("x")) == 10


def test_a_frame_limit_is_not_the_end_of_the_video():
    from sam3_backend.jobs.track import TrackAccumulator, TrackObject
    from sam3_backend.types import TrackedBox, VideoFrameResult, VideoInfo

    info = VideoInfo(frames=100, times=np.arange(100) / 24, keyframes=np.ones(100, bool), fps=24, duration=100 / 24,
                     width=W, height=H, codec="vp8", container="matroska")
    for planned, ends_enabled in ((tuple(range(40)), False), (tuple(range(0, 100, 3)), True)):
        acc = TrackAccumulator(info, planned, lambda obj_id, _: TrackObject("r", "car"))
        for index in planned:
            acc.add(VideoFrameResult(index, float(info.times[index]), (TrackedBox(0, Box(10, 10, 60, 60), 0.9),),
                                     frozenset({0})))
        [region] = acc.regions(CONFIG, 0.5)
        assert region["value"]["sequence"][-1]["enabled"] is ends_enabled, planned[-1]


def test_variable_frame_rate_and_stride_land_on_the_frames_label_studio_shows():
    """Source frames map to Label Studio frames by their timestamps at the config's rate."""
    from sam3_backend.jobs.track import TrackAccumulator, TrackObject
    from sam3_backend.types import TrackedBox, VideoFrameResult, VideoInfo

    times = np.array([0.0, 0.04, 0.08, 0.2, 0.24, 0.5, 0.54])
    info = VideoInfo(frames=7, times=times, keyframes=np.ones(7, bool), fps=12.9, duration=0.58, width=W, height=H,
                     codec="vp9", container="matroska", variable_frame_rate=True)
    acc = TrackAccumulator(info, tuple(range(7)), lambda obj_id, _: TrackObject("r", "car"))
    for i in range(7):
        box = Box(10 + 40 * i * i, 10, 60 + 40 * i * i, 60)  # accelerating: every sample is a keyframe
        acc.add(VideoFrameResult(i, float(times[i]), (TrackedBox(0, box, 0.9),), frozenset({0})))
    [track] = acc.tracks(25.0)
    assert [s.frame for s in track.samples] == [1, 2, 3, 6, 7, 14, 15]  # nearest frame, halves up
    stride = TrackAccumulator(info, (0, 3, 6), lambda obj_id, _: TrackObject("r", "car"))
    for i in (0, 3, 6):
        stride.add(VideoFrameResult(i, float(times[i]), (TrackedBox(0, Box(10, 10, 60, 60), 0.9),), frozenset({0})))
    [track] = stride.tracks(25.0)
    assert [s.frame for s in track.samples] == [1, 6, 15] and track.complete
