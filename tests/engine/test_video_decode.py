"""PyAV streaming decode: containers and codecs, frame times (VFR too), order, memory, bad files."""

from __future__ import annotations

import tracemalloc
import av
import numpy as np
import pytest

from sam3_backend.engine.video import decode
from sam3_backend.engine.video.decode import probe_video, read_frames, read_frames_reversed
from sam3_backend.errors import MediaUnavailable
from video_clips import Shape, displayed_box, make_clip, set_display_matrix

SIZE = 32  # decode straight to the model's square input; small for tests


@pytest.mark.parametrize("ext, codec", [("webm", "vp8"), ("mp4", "h264"), ("mov", "h264"), ("mkv", "vp9")])
def test_containers_and_codecs(tmp_path, ext, codec):
    path = tmp_path / f"clip.{ext}"
    truth = make_clip(path, frames=30, fps=24, gop=8)
    info = probe_video(path)
    assert (info.frames, info.width, info.height, info.codec) == (30, 96, 64, codec)
    assert info.fps == pytest.approx(24, rel=0.02) and info.duration == pytest.approx(30 / 24, abs=0.01)
    assert info.times[0] == 0 and np.all(np.diff(info.times) > 0) and not info.variable_frame_rate
    assert info.keyframes[[0, 8, 16, 24]].all()
    got = list(read_frames(path, info, range(0, 30, 3), SIZE))
    assert [i for i, _ in got] == list(range(0, 30, 3))
    for index, rgb in got:
        assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
        x0, y0, x1, y1 = truth[0][index]  # the red car: its centre, scaled to the square frame
        cx, cy = int((x0 + x1) / 2 / 96 * SIZE), int((y0 + y1) / 2 / 64 * SIZE)
        r, g, b = rgb[cy, cx].astype(int)
        assert r > 150 and g < 110, (index, rgb[cy, cx])


def test_random_access_and_reverse_order_in_bounded_chunks(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    make_clip(path, frames=40, gop=10)
    info = probe_video(path)
    assert [i for i, _ in read_frames(path, info, [25, 21, 33], SIZE)] == [21, 25, 33]
    groups = []
    original = decode.read_frames

    def spy(path, info, indices, size):
        groups.append(list(indices))
        return original(path, info, indices, size)

    monkeypatch.setattr(decode, "read_frames", spy)
    order = [i for i, _ in read_frames_reversed(path, info, range(40), SIZE, chunk=4)]
    assert order == list(range(39, -1, -1))
    assert max(len(g) for g in groups) <= 4
    # a chunk never crosses back over a keyframe (one seek decodes it)
    assert all(min(g) // 10 == max(g) // 10 for g in groups)


def test_variable_frame_rate_times(tmp_path):
    times = [0.0, 0.04, 0.08, 0.2, 0.24, 0.5, 0.54]
    for ext in ("mkv", "mp4"):
        path = tmp_path / f"vfr.{ext}"
        make_clip(path, frames=len(times), times=times)
        info = probe_video(path)
        assert info.variable_frame_rate
        np.testing.assert_allclose(info.times, times, atol=1e-3)
        assert [i for i, _ in read_frames(path, info, range(len(times)), SIZE)] == list(range(len(times)))
        assert info.index_at(0.3) == 4 and info.index_at(0.0) == 0 and info.index_at(9.0) == 6


def test_frames_are_streamed_not_held(tmp_path):
    path = tmp_path / "long.webm"
    make_clip(path, frames=150, width=64, height=48)
    info = probe_video(path)
    size = 96
    frame_bytes = size * size * 3

    def peak_while_reading(n):
        tracemalloc.start()
        count = 0
        for _, rgb in read_frames(path, info, range(n), size):
            count += int(rgb[0, 0, 0] >= 0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == n
        return peak

    short, long = peak_while_reading(10), peak_while_reading(150)
    assert long < short + 4 * frame_bytes, (short, long)  # 150 frames would be 60x one frame
    assert long < 10 * frame_bytes


def test_bad_files_get_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"<html>login</html>" * 50)
    with pytest.raises(MediaUnavailable, match="not a video"):
        probe_video(garbage)

    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=6)
    unknown = tmp_path / "unknown.mkv"
    unknown.write_bytes(clip.read_bytes().replace(b"V_VP9", b"V_QQ9"))  # a codec id FFmpeg does not know
    with pytest.raises(MediaUnavailable, match="codec"):
        probe_video(unknown)

    webm = tmp_path / "five.webm"
    make_clip(webm, frames=5)
    data = webm.read_bytes()
    header_only = tmp_path / "zero.webm"
    header_only.write_bytes(data[: data.find(bytes.fromhex("1F43B675"))])  # cut before the first cluster
    with pytest.raises(MediaUnavailable, match="no frames"):
        probe_video(header_only)

    audio = tmp_path / "audio.webm"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(MediaUnavailable, match="no video stream"):
        probe_video(audio)

    from PIL import Image

    for name in ("still.png", "still.jpg"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
        with pytest.raises(MediaUnavailable, match="holds an image"):
            probe_video(tmp_path / name)

    with pytest.raises(MediaUnavailable, match="megapixels"):
        probe_video(clip, max_pixels=96 * 64 - 1)
    assert probe_video(clip, max_pixels=96 * 64).frames == 6


def test_truncated_video_keeps_the_readable_frames(tmp_path):
    path = tmp_path / "full.webm"
    make_clip(path, frames=40)
    cut = tmp_path / "cut.webm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    info = probe_video(cut)
    assert 0 < info.frames < 40
    assert [i for i, _ in read_frames(cut, info, range(info.frames), SIZE)] == list(range(info.frames))
    mp4 = tmp_path / "full.mp4"
    make_clip(mp4, frames=40)
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # no index at the end: unreadable
    with pytest.raises(MediaUnavailable):
        probe_video(cut_mp4)


def test_frame_indices_outside_the_video_are_a_programming_error(tmp_path):
    path = tmp_path / "c.webm"
    make_clip(path, frames=5)
    info = probe_video(path)
    with pytest.raises(ValueError):
        list(read_frames(path, info, [5], SIZE))
    assert list(read_frames(path, info, [], SIZE)) == []


# Display matrices (a, b, c, d) as phones and muxers write them: a coded pixel (p, q) is shown at
# (a*p + c*q, b*p + d*q). With the (rotation, mirrored) probe_video must report. Where Chromium
# 150 shows each was measured; tests/e2e/test_video_rotation_browser.py checks it live.
ORIENTATIONS = {
    "upright": ((1, 0, 0, 1), 0, False),
    "turn 90 (portrait phone video)": ((0, 1, -1, 0), 90, False),
    "turn 180 (upside down)": ((-1, 0, 0, -1), 180, False),
    "turn 270": ((0, -1, 1, 0), 270, False),
    "mirrored": ((-1, 0, 0, 1), 0, True),
    "transposed": ((0, 1, 1, 0), 90, True),
}
W, H = 96, 64
MARK = Shape((0, 0), (0, 0), (24, 16), (250, 250, 250))  # white, in the coded top-left corner
CAR = Shape((30, 40), (3, 0), (16, 12), (230, 30, 30))  # red, moving right in the coded frame


def _bright_box(rgb, channel=None):
    """XYXY pixel box of the white mark (or of the pixels where ``channel`` dominates)."""
    if channel is None:
        mask = rgb.min(axis=2) > 200
    else:
        others = np.delete(rgb.astype(int), channel, axis=2).max(axis=2)
        mask = (rgb[..., channel].astype(int) > 150) & (others < 110)
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def _phone_clip(tmp_path, abcd, ext="mp4", frames=12):
    path = tmp_path / f"phone.{ext}"
    truth = make_clip(path, frames=frames, width=W, height=H, shapes=[MARK, CAR], gop=4)
    set_display_matrix(path, abcd, W, H)
    return path, truth


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_phone_videos_decode_upright_as_players_show_them(tmp_path, name):
    abcd, rotation, mirrored = ORIENTATIONS[name]
    path, truth = _phone_clip(tmp_path, abcd)
    info = probe_video(path)
    turned = rotation in (90, 270)
    assert (info.rotation, info.mirrored) == (rotation, mirrored)
    assert (info.width, info.height) == ((H, W) if turned else (W, H))  # the displayed size
    assert info.coded_size == (W, H) and info.frames == 12

    # previews at the displayed size: the mark and the car where the spec puts them
    frames = dict(read_frames(path, info, range(12), (info.width, info.height)))
    assert frames[0].shape == (info.height, info.width, 3)
    np.testing.assert_allclose(_bright_box(frames[0]), displayed_box(abcd, MARK.box(0), W, H), atol=1)
    for index in (0, 5, 11):
        np.testing.assert_allclose(_bright_box(frames[index], channel=0), displayed_box(abcd, truth[1][index], W, H),
                                   atol=1.5, err_msg=f"frame {index}")

    # the square model input: the same picture, scaled (forwards and backwards alike)
    square = dict(read_frames(path, info, range(12), SIZE))
    backwards = list(read_frames_reversed(path, info, range(12), SIZE, chunk=3))
    assert [i for i, _ in backwards] == list(range(11, -1, -1))
    for index, rgb in backwards:
        assert rgb.shape == (SIZE, SIZE, 3) and rgb.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(rgb, square[index])
        x0, y0, x1, y1 = displayed_box(abcd, truth[1][index], W, H)
        cx, cy = int((x0 + x1) / 2 / info.width * SIZE), int((y0 + y1) / 2 / info.height * SIZE)
        r, g, b = rgb[cy, cx].astype(int)
        assert r > 150 and g < 110, (index, rgb[cy, cx])


def test_a_quarter_turn_is_clockwise_like_the_player(tmp_path):
    """The sign is easy to get backwards: FFmpeg (PyAV's ``VideoFrame.rotation``) reads the
    portrait-phone matrix as -90 (counter-clockwise degrees), players turn it 90 clockwise: the
    coded top-left corner is shown top-right (Chromium 150, measured)."""
    path, _ = _phone_clip(tmp_path, ORIENTATIONS["turn 90 (portrait phone video)"][0], frames=2)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == -90
    info = probe_video(path)
    (_, rgb), = read_frames(path, info, [0], (info.width, info.height))
    x0, y0, x1, y1 = _bright_box(rgb)
    assert rgb.shape == (96, 64, 3) and x0 >= 40 and x1 == 64 and y0 == 0 and y1 <= 26  # top right

    path, _ = _phone_clip(tmp_path, ORIENTATIONS["turn 270"][0], frames=2)
    info = probe_video(path)
    (_, rgb), = read_frames(path, info, [0], (info.width, info.height))
    x0, y0, x1, y1 = _bright_box(rgb)
    assert info.rotation == 270 and x0 == 0 and x1 <= 26 and y0 >= 70 and y1 == 96  # bottom left


def test_a_display_matrix_that_is_not_a_quarter_turn_is_shown_unrotated(tmp_path, caplog):
    """Chromium plays 30, 45, 89.99 degree matrices unrotated (measured): so does the tracker,
    with a warning, rather than round to a turn the user never sees."""
    c, s = np.cos(np.radians(89.99)), np.sin(np.radians(89.99))
    path, _ = _phone_clip(tmp_path, (c, s, -s, c), frames=2)
    with caplog.at_level("WARNING"):
        info = probe_video(path)
    assert (info.rotation, info.mirrored, info.width, info.height) == (0, False, W, H)
    assert "not a quarter turn" in caplog.text
    (_, rgb), = read_frames(path, info, [0], (W, H))
    assert _bright_box(rgb) == (0, 0, 24, 16)
