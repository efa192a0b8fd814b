"""Streaming video decode with PyAV: one frame in memory at a time, at the model's input size.

``probe_video`` demuxes the file once without decoding (packet timestamps and keyframe flags
only) to learn the frame count, each frame's presentation time (variable frame rates included)
and where a decoder can start, and decodes the first frame to prove the codec works.
``read_frames`` then yields the wanted frames in order, each converted by FFmpeg's scaler
straight to ``size`` x ``size`` RGB (the square SAM 3 input), so a 4K frame never exists as a
full-size RGB array. ``read_frames_reversed`` walks backwards one keyframe-aligned chunk at a time
(at most ``chunk`` frames held), for tracking towards the start of a clip.

Display rotation: phone videos are often stored sideways with a display matrix (ISO-BMFF ``tkhd``,
FFmpeg's display-matrix side data) telling players to turn them. Label Studio's player (Chromium)
shows them turned, and the boxes users draw are percentages of that upright picture, so every frame
handed out here is turned the same way (after scaling, on the small array) and ``VideoInfo``
reports the displayed size. Like Chromium, only exact quarter turns (and their mirror images) are
honoured; any other matrix is shown unrotated by Chromium and so decoded unrotated here, with a
warning (measured with Chromium 150: 30, 45, 89.99 and 135 degrees play unrotated).

Errors are ``MediaUnavailable`` with a sentence a user can act on: not a video, an image, no
video stream, a codec this FFmpeg cannot decode, zero frames, too many pixels.
A decode error in the middle of a stream (a truncated or damaged file) ends the stream there
with a warning: the frames before it are still tracked.

Containers: whatever the bundled FFmpeg reads (mp4, mov, webm, mkv, avi, ...).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ...errors import MediaUnavailable
from ...types import VideoInfo

log = logging.getLogger(__name__)

# Demuxers and codecs that hold a still image, not a video (Label Studio's player cannot play them).
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif_pipe", "qoi_pipe"}
_IMAGE_CODECS = {"png", "bmp", "tiff", "webp", "jpeg2000", "qoi", "ppm", "pgm", "gif"}
MAX_CONSECUTIVE_DECODE_ERRORS = 8


def _open(path: Path):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.EOFError as exc:
        raise MediaUnavailable("the task's video has no frames (the file ends before the first one)") from exc
    except av.FFmpegError as exc:
        raise MediaUnavailable(f"the task's file is not a video FFmpeg can read ({_short(exc)})") from exc


def _short(exc: Exception) -> str:
    """The error without the file name (a private temporary path means nothing to a user)."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _video_stream(container, name: str):
    if not container.streams.video:
        raise MediaUnavailable(f"{name} has no video stream (is it audio only?)")
    stream = container.streams.video[0]
    return stream


def _has_decoder(codec: str | None) -> bool:
    import av

    if not codec or codec == "none":
        return False
    try:
        av.codec.Codec(codec, "r")
    except Exception:  # UnknownCodecError and friends
        return False
    return True


def probe_video(path: str | Path, *, max_pixels: int = 8192 * 4320) -> VideoInfo:
    """Frame count, times, keyframes, rate, duration and size of the video at ``path``.

    Raises ``MediaUnavailable`` for anything that is not a decodable video of at most
    ``max_pixels`` pixels per frame.
    """
    import av

    path = Path(path)
    name = "the task's video"
    container = _open(path)
    try:
        fmt = container.format.name.split(",")[0]
        stream = _video_stream(container, name)
        codec = stream.codec_context.name if stream.codec_context is not None else None
        if fmt in _IMAGE_FORMATS or (codec in _IMAGE_CODECS and (stream.frames or 0) <= 1):
            raise MediaUnavailable(
                f"the task holds an image ({codec or fmt}), not a video: this project's label config "
                "has a <Video>; import videos (mp4, webm, ...) or use an <Image> project"
            )
        if not _has_decoder(codec):
            raise MediaUnavailable(
                f"{name} uses a codec this backend's FFmpeg cannot decode ({codec or 'unknown'}); re-encode it "
                "as H.264 MP4 or VP9 WebM, which Label Studio's player also plays"
            )
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if width <= 0 or height <= 0:
            raise MediaUnavailable(f"{name} has no frame size ({width}x{height}); the file is damaged")
        if width * height > max_pixels:
            raise MediaUnavailable(
                f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels per frame), above the limit of "
                f"{max_pixels / 1e6:.1f} megapixels (SAM3_VIDEO_MAX_PIXELS); downscale it"
            )
        rotation, mirrored = _first_frame_orientation(container, stream, path.name)
        average_rate = float(stream.average_rate or 0) or 25.0
        base = float(stream.time_base) if stream.time_base else None
    finally:
        container.close()
    if rotation in (90, 270):
        width, height = height, width  # the displayed size
    if rotation or mirrored:
        log.debug("video %s: displayed turned %d degrees clockwise%s; decoded frames are turned alike",
                  path.name, rotation, " and mirrored" if mirrored else "")

    pts: list[int] = []
    keys: list[bool] = []
    container = _open(path)
    try:
        stream = _video_stream(container, name)
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.size == 0:
                    continue
                pts.append(int(stamp))
                keys.append(bool(packet.is_keyframe))
        except av.FFmpegError as exc:  # truncated / damaged: keep what was readable
            log.warning("video %s: stopped reading packets after %d frames: %s", path.name, len(pts), _short(exc))
    finally:
        container.close()
    if not pts:
        raise MediaUnavailable(f"{name} has no frames")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    stamps = np.asarray(pts, dtype=np.int64)[order]
    keyframes = np.asarray(keys, dtype=bool)[order]
    keyframes[0] = True  # decoding starts at the first packet anyway
    if base is None:
        times, origin = np.arange(len(stamps), dtype=np.float64) / average_rate, 0.0
    else:
        times, origin = (stamps - stamps[0]).astype(np.float64) * base, float(stamps[0]) * base
    steps = np.diff(times)
    typical = float(np.median(steps)) if len(steps) else 1.0 / average_rate
    if typical <= 0:
        typical = 1.0 / average_rate
    duration = float(times[-1] + typical)
    # uneven beyond timestamp rounding (WebM stores milliseconds: 1/24 s is 41 or 42 ms)
    slack = 0.01 * typical + 1.01 * (base or 0.0) + 1e-6
    vfr = bool(len(steps) > 1 and np.abs(steps - typical).max() > slack)
    fps = len(times) / duration
    return VideoInfo(
        frames=len(times), times=times, keyframes=keyframes, fps=fps, duration=duration, width=width,
        height=height, codec=codec, container=fmt, variable_frame_rate=vfr, origin=origin, rotation=rotation,
        mirrored=mirrored,
    )


def _first_frame_orientation(container, stream, name: str) -> tuple[int, bool]:
    """Decode the first frame (proves the codec works) and return how a player orients it."""
    import av

    try:
        for frame in container.decode(stream):
            return display_orientation(_display_matrix(frame), name)
    except av.FFmpegError as exc:
        raise MediaUnavailable(f"the task's video cannot be decoded: {_short(exc)}") from exc
    raise MediaUnavailable("the task's video has no decodable frame")


def _display_matrix(frame) -> tuple[int, ...] | None:
    """The frame's 3x3 display matrix (FFmpeg's side data, the container's ``tkhd`` matrix:
    a, b, u, c, d, v, x, y, w in 16.16 / 2.30 fixed point), or None."""
    from av.sidedata.sidedata import Type

    data = frame.side_data.get(Type.DISPLAYMATRIX)
    if data is None or data.buffer_size != 36:
        return None
    return struct.unpack("=9i", bytes(data))


def display_orientation(matrix: Sequence[int] | None, name: str = "video") -> tuple[int, bool]:
    """(clockwise degrees, mirrored) that a player applies to a coded frame to show it.

    ``matrix`` maps a coded pixel (p, q) to the displayed (a*p + c*q, b*p + d*q) (ISO-BMFF,
    y down). It is read as a turn by ``rotation`` degrees clockwise, then (``mirrored``) a flip
    left-right, which is how Chromium applies it. Only signed permutations (quarter turns, flips)
    count, as in Chromium; anything else is shown unrotated there, so it is returned as (0, False)
    with a warning rather than rounded to a quarter turn the player does not show.
    """
    if matrix is None:
        return 0, False
    a, b, _, c, d = (int(v) for v in matrix[:5])
    if not ((b == c == 0 and a != 0 and abs(a) == abs(d)) or (a == d == 0 and b != 0 and abs(b) == abs(c))):
        log.warning("video %s: its display matrix %s is not a quarter turn; players (Chromium) show it unrotated, "
                    "and so does the tracker", name, [a, b, c, d])
        return 0, False
    mirrored = a * d - b * c < 0
    cos, sin = (-a if mirrored else a), b  # the turn alone: [[cos, sin], [-sin, cos]]
    rotation = {(1, 0): 0, (0, 1): 90, (-1, 0): 180, (0, -1): 270}[(_sign(cos), _sign(sin))]
    return rotation, mirrored


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _to_rgb(frame, size: int | tuple[int, int], info: VideoInfo) -> np.ndarray:
    """A decoded frame as upright (h, w, 3) uint8 RGB, ``size`` = side of a square or the displayed
    (w, h): FFmpeg's bilinear scaler to the coded orientation (no full-size copy), then turned."""
    width, height = (size, size) if isinstance(size, int) else size
    if info.rotation in (90, 270):
        width, height = height, width
    rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
    return upright(rgb, info.rotation, info.mirrored)


def upright(rgb: np.ndarray, rotation: int, mirrored: bool = False) -> np.ndarray:
    """``rgb`` (h, w, C) as displayed: turned ``rotation`` degrees clockwise, then flipped
    left-right if ``mirrored``. A contiguous copy only when it changes."""
    if rotation:
        rgb = np.rot90(rgb, k=-(rotation // 90))  # np.rot90 turns counter-clockwise for k > 0
    if mirrored:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


def _decode_from(container, stream, info: VideoInfo, start: int) -> Iterator[tuple[int, object]]:
    """Decoded frames with their index, from the keyframe at or before ``start`` on.

    Frames are matched to indices by presentation time; a frame without a timestamp takes the
    next index. Decode errors skip a packet; too many in a row end the stream (damaged file).
    """
    import av

    key = int(np.flatnonzero(info.keyframes[: start + 1])[-1]) if start > 0 else 0
    base = float(stream.time_base) if stream.time_base else None
    if key > 0 and base:
        target = int(round((info.times[key] + info.origin) / base))
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError:
            log.warning("video: seeking failed; decoding from the start")
            container.seek(0)
    index = -1
    errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as exc:
            log.warning("video: demuxing stopped: %s", _short(exc))
            break
        try:
            decoded = packet.decode()
            errors = 0
        except av.FFmpegError as exc:
            errors += 1
            log.warning("video: skipped an undecodable packet: %s", _short(exc))
            if errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
                log.warning("video: %d undecodable packets in a row; the rest of the stream is unreadable", errors)
                break
            continue
        for frame in decoded:
            if frame.pts is not None and base:
                seconds = frame.pts * base - info.origin
                index = int(np.searchsorted(info.times, seconds - 1e-6, side="left"))
            else:
                index += 1
            if index >= info.frames:
                return
            yield index, frame


def read_frames(
    path: str | Path, info: VideoInfo, indices: Sequence[int], size: int | tuple[int, int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for the wanted frame ``indices`` (ascending), rgb (size, size, 3)
    uint8 (or (h, w, 3) for ``size=(w, h)``, e.g. previews), upright as a player shows it.

    One frame is converted and held at a time; frames in between are decoded (codecs need them)
    but never converted. Missing frames (a damaged stream) are skipped.
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    if wanted[0] < 0 or wanted[-1] >= info.frames:
        raise ValueError(f"frame indices must be in [0, {info.frames}), got {wanted[0]}..{wanted[-1]}")
    container = _open(Path(path))
    try:
        stream = _video_stream(container, "the task's video")
        stream.thread_type = "AUTO"
        position = 0
        for index, frame in _decode_from(container, stream, info, wanted[0]):
            while position < len(wanted) and wanted[position] < index:
                position += 1  # never decoded (damaged stream): skipped
            if position == len(wanted):
                return
            if index == wanted[position]:
                yield index, _to_rgb(frame, size, info)
                position += 1
                if position == len(wanted):
                    return
    finally:
        container.close()


def read_frames_reversed(
    path: str | Path, info: VideoInfo, indices: Sequence[int], size: int, *, chunk: int = 32
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for ``indices`` from the last to the first.

    Decoders only run forwards, so the wanted frames are taken in chunks of at most ``chunk``
    frames, each decoded forwards from its keyframe and yielded in reverse: at most ``chunk``
    converted frames are held at once.
    """
    wanted = sorted(set(int(i) for i in indices), reverse=True)
    while wanted:
        top = wanted[0]
        key = int(np.flatnonzero(info.keyframes[: top + 1])[-1])
        # A chunk never crosses back over a keyframe: one seek and decode from ``key`` covers it.
        group = [i for i in wanted[:chunk] if i >= key]
        frames = list(read_frames(path, info, sorted(group), size))
        for index, rgb in reversed(frames):
            yield index, rgb
        del frames
        taken = set(group)
        wanted = [i for i in wanted if i not in taken]


__all__ = [
    "MAX_CONSECUTIVE_DECODE_ERRORS", "display_orientation", "probe_video", "read_frames", "read_frames_reversed",
    "upright",
]
