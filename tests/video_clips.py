"""Small generated video clips for tests: moving shapes encoded with PyAV in codecs a browser plays.

``make_clip`` writes a clip and returns the ground truth: each shape's XYXY pixel box per frame
(None where the shape is off-screen). Shapes move linearly; a shape may leave and come back.

``set_display_matrix`` turns an MP4/MOV into a "phone video": it writes a display matrix into the
track header, as cameras do for video stored sideways; ``displayed_box`` says where the ISO-BMFF
spec (and Chromium, measured) shows a coded box then.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

# (container extension, codec, pixel format) that Chromium plays (VP8/VP9 WebM, H.264 MP4), and
# two more containers FFmpeg reads (mov, mkv).
BROWSER_CODECS = {"webm": ("libvpx", "yuv420p"), "mp4": ("libx264", "yuv420p")}
OTHER_CONTAINERS = {"mov": ("libx264", "yuv420p"), "mkv": ("libvpx-vp9", "yuv420p")}


@dataclass
class Shape:
    """A filled rectangle of ``size`` (w, h) pixels moving from ``start`` (x, y top-left) by
    ``step`` pixels per frame; hidden on frames in ``hidden``."""

    start: tuple[float, float]
    step: tuple[float, float]
    size: tuple[int, int]
    color: tuple[int, int, int]
    hidden: set[int] = field(default_factory=set)

    def box(self, i: int) -> tuple[float, float, float, float] | None:
        if i in self.hidden:
            return None
        x = self.start[0] + self.step[0] * i
        y = self.start[1] + self.step[1] * i
        return (x, y, x + self.size[0], y + self.size[1])


def default_shapes(width: int, height: int) -> list[Shape]:
    return [
        Shape((4, height * 0.25), (2, 0), (width // 6, height // 5), (220, 40, 40)),
        Shape((width * 0.7, 2), (0, 1), (width // 8, height // 4), (40, 200, 60)),
    ]


def render(i: int, width: int, height: int, shapes: list[Shape]) -> np.ndarray:
    frame = np.full((height, width, 3), (30, 30, 60), np.uint8)
    frame[:, :, 2] = np.linspace(40, 120, width, dtype=np.uint8)[None, :]
    for shape in shapes:
        b = shape.box(i)
        if b is None:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in b)
        frame[max(y0, 0) : max(min(y1, height), 0), max(x0, 0) : max(min(x1, width), 0)] = shape.color
    return frame


def make_clip(
    path: Path,
    frames: int = 24,
    width: int = 96,
    height: int = 64,
    fps: int = 24,
    shapes: list[Shape] | None = None,
    codec: str | None = None,
    times: list[float] | None = None,
    gop: int | None = None,
) -> list[list[tuple[float, float, float, float] | None]]:
    """Encode ``frames`` frames into ``path`` (container from the suffix); return per-shape boxes.

    times: presentation time of each frame in seconds (variable frame rate); default i / fps.
    gop: keyframe interval (default: the codec's).
    """
    import av

    path = Path(path)
    ext = path.suffix.lstrip(".")
    default_codec, pix_fmt = {**BROWSER_CODECS, **OTHER_CONTAINERS}.get(ext, ("libx264", "yuv420p"))
    shapes = default_shapes(width, height) if shapes is None else shapes
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or default_codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        if gop is not None:
            stream.codec_context.gop_size = gop
        if (codec or default_codec) == "libx264":
            stream.options = {"bf": "0"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render(i, width, height, shapes), format="rgb24")
            if times is not None:
                frame.pts = int(round(times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return [[shape.box(i) for i in range(frames)] for shape in shapes]


def _box_content(data: bytes, path: tuple[bytes, ...], start: int = 0, end: int | None = None) -> int:
    """Offset of the content of the first ISO-BMFF box at ``path`` (e.g. moov/trak/tkhd)."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[at + 8 : at + 16])[0], 16
        elif size == 0:
            size = end - at
        if kind == path[0]:
            return at + header if len(path) == 1 else _box_content(data, path[1:], at + header, at + size)
        at += size
    raise ValueError(f"no {path[0]!r} box in this MP4/MOV")


def set_display_matrix(path: Path, abcd: tuple[float, float, float, float], width: int, height: int) -> None:
    """Write the display matrix of the first track of the MP4/MOV at ``path`` (in place).

    ``abcd`` is its 2x2 part with ISO-BMFF's meaning: a coded pixel (p, q) of the ``width`` x
    ``height`` frame is shown at (a*p + c*q + x, b*p + d*q + y); the translation (x, y) puts the
    shown picture at the origin, as muxers write it (players ignore it). Layout of ``tkhd``:
    version/flags, times, track id and duration (20 bytes, or 32 in version 1), 16 more bytes,
    then the nine 32-bit matrix values a, b, u, c, d, v, x, y, w (16.16 fixed point, u v w 2.30).
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    content = _box_content(bytes(data), (b"moov", b"trak", b"tkhd"))
    at = content + 4 + (32 if data[content] == 1 else 20) + 16
    a, b, c, d = abcd
    corners = [(a * p + c * q, b * p + d * q) for p in (0, width) for q in (0, height)]
    x, y = -min(u for u, _ in corners), -min(v for _, v in corners)
    one = 1 << 16
    values = [round(a * one), round(b * one), 0, round(c * one), round(d * one), 0,
              round(x * one), round(y * one), 1 << 30]
    data[at : at + 36] = struct.pack(">9i", *values)
    path.write_bytes(bytes(data))


def displayed_box(abcd: tuple[float, float, float, float], box, width: int, height: int) -> tuple[float, ...]:
    """Where a player shows the coded XYXY ``box`` of a ``width`` x ``height`` frame under the
    display matrix ``abcd`` (``set_display_matrix``): the spec's mapping, moved to the origin."""
    a, b, c, d = abcd

    def shown(points):
        return [(a * p + c * q, b * p + d * q) for p, q in points]

    frame = shown([(p, q) for p in (0, width) for q in (0, height)])
    ox, oy = min(u for u, _ in frame), min(v for _, v in frame)
    corners = shown([(p, q) for p in (box[0], box[2]) for q in (box[1], box[3])])
    xs, ys = [u - ox for u, _ in corners], [v - oy for _, v in corners]
    return (min(xs), min(ys), max(xs), max(ys))


__all__ = [
    "BROWSER_CODECS", "OTHER_CONTAINERS", "Shape", "default_shapes", "displayed_box", "make_clip", "render",
    "set_display_matrix",
]
