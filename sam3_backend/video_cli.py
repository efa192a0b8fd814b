"""``sam3-backend predict VIDEO``: track objects in a video file without Label Studio.

    sam3-backend predict clip.mp4 --text "car" --out out/
    sam3-backend predict clip.mp4 --box 1,40,60,200,180 --box 30,300,20,360,90 --out out/

``--text`` tracks every object the phrase finds; each ``--box FRAME,X0,Y0,X1,Y1`` (1-based frame,
pixels of the picture as players show it, upright for a phone video) is one object, tracked
forwards and backwards from that box. Writes ``tracks.json`` (a Label Studio task with the
tracks as a ``videorectangle`` prediction, importable as is; ``framerate`` is the video's
unless ``--fps`` says what the project's ``<Video framerate>`` is) and a preview of what Label
Studio will show: ``preview.mp4`` (H.264, the boxes interpolated from the keyframes) or, with
``--preview sheet``, ``preview.png`` (a contact sheet). A progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .config import Settings

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".ogv", ".wmv", ".flv"}
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _boxes(values: list[str] | None) -> list[tuple[int, tuple[float, float, float, float]]]:
    out = []
    for text in values or []:
        try:
            numbers = [float(v) for v in text.split(",")]
        except ValueError:
            raise SystemExit(f"--box {text!r}: expected FRAME,X0,Y0,X1,Y1 (numbers) for a video") from None
        if len(numbers) != 5 or not all(math.isfinite(v) for v in numbers):
            raise SystemExit(f"--box {text!r}: expected FRAME,X0,Y0,X1,Y1 for a video (FRAME from 1)")
        frame, x0, y0, x1, y1 = numbers
        if frame != int(frame) or frame < 1:
            raise SystemExit(f"--box {text!r}: FRAME must be a whole number from 1")
        if not (x0 < x1 and y0 < y1):
            raise SystemExit(f"--box {text!r}: needs X0 < X1 and Y0 < Y1")
        out.append((int(frame), (x0, y0, x1, y1)))
    return out


def predict_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .engine.loading import ModelSource, load_sam3
    from .engine.video.decode import probe_video
    from .engine.video.models import build_video_models
    from .engine.video.tracker import Sam3VideoEngine, plan_frames
    from .jobs.track import TrackAccumulator, TrackObject, run_track
    from .ls.label_config import ControlTag
    from .ls.video_config import VideoProjectConfig
    from .ls.video_results import frame_start, frames_count
    from .types import Box, VideoObjectPrompt

    settings = Settings.from_env()
    path = Path(args.image)
    if args.point:
        raise SystemExit("--point is for images; on a video give --text or --box FRAME,X0,Y0,X1,Y1")
    boxes = _boxes(args.box)
    if bool(args.text) == bool(boxes):
        raise SystemExit("give a video either --text or one or more --box FRAME,X0,Y0,X1,Y1")
    info = probe_video(path, max_pixels=settings.video_max_pixels)
    fps = float(args.fps or info.fps)
    label = args.label or args.text
    config = VideoProjectConfig(
        video_name="video", video_value="video", framerate=fps,
        box=ControlTag("box", "VideoRectangle", "video", (), False),
        labels=(label,) if label else (), region_labels=ControlTag("label", "Labels", "video", (label,) if label else (), False),
    )
    for frame, (x0, y0, x1, y1) in boxes:
        if frame > frames_count(info.duration, fps):
            raise SystemExit(f"--box on frame {frame}: the video has {frames_count(info.duration, fps)} frames at {fps:g} fps")
        if x1 > info.width or y1 > info.height or x0 < 0 or y0 < 0:
            raise SystemExit(f"--box {x0:g},{y0:g},{x1:g},{y1:g} reaches outside the {info.width}x{info.height} frame")

    loaded = load_sam3(ModelSource(settings.sam3_model, token=settings.hf_token), settings.device, settings.dtype)
    threshold = settings.video_score_threshold if args.threshold is None else args.threshold
    engine = Sam3VideoEngine(build_video_models(loaded), new_object_threshold=threshold,
                             detection_threshold=min(0.5, threshold), max_objects=settings.video_max_objects,
                             hotstart_frames=settings.video_hotstart_frames)
    stride = args.stride or settings.video_stride
    if args.text:
        frames = plan_frames(info, stride=stride, max_frames=settings.video_max_frames)
        session = engine.text_session(path, info, [args.text], frames=frames)
        results = engine.propagate_text(session)
        steps = len(frames)
        accumulator = TrackAccumulator(info, frames, lambda obj_id, _: TrackObject(f"obj{obj_id}", label))
    else:
        keyed = [(info.index_at(frame_start(f, fps)), b) for f, b in boxes]
        objects = [VideoObjectPrompt(i, ((index, Box(*b)),)) for i, (index, b) in enumerate(keyed)]
        frames = plan_frames(info, stride=stride, max_frames=settings.video_max_frames, extra=[k for k, _ in keyed])
        session = engine.box_session(path, info, objects, frames=frames)
        results = engine.propagate_boxes(session)
        steps = len(session.forward) + len(session.backward)
        named = {o.object_id: TrackObject(f"box{o.object_id + 1}", label) for o in objects}
        accumulator = TrackAccumulator(info, frames, lambda obj_id, _: named[obj_id], named)

    class _Bar:
        def __init__(self):
            self.bar = tqdm(total=steps, unit="frame", desc=f"tracking {path.name}", file=sys.stderr)

        def progress(self, *, done=None, total=None, failed=None, **extra):
            self.bar.n = min(done or self.bar.n, steps)
            self.bar.refresh()

        def cancelled(self):
            return False

    bar = _Bar()
    summary = run_track(bar, frames=results, accumulator=accumulator, total=steps)
    bar.bar.close()
    regions = accumulator.regions(config, args.tolerance if args.tolerance is not None else settings.video_keyframe_tolerance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
    task = {"data": {"video": str(path)},
            "predictions": [{"model_version": engine.model_version, "score": score, "result": regions}]}
    (out / "tracks.json").write_text(json.dumps([task], indent=1))
    preview = _contact_sheet(path, info, regions, fps, out) if args.preview == "sheet" else _preview_mp4(path, info, regions, fps, out)
    print(json.dumps({"video": str(path), "frames": info.frames, "fps": round(info.fps, 3), "framerate_written": fps,
                      "width": info.width, "height": info.height, "tracks": len(regions),
                      "frames_tracked": summary["frames"], "model_version": engine.model_version,
                      "test_model": loaded.is_test_model, "tracks_json": str(out / "tracks.json"), "preview": str(preview)}))
    return 0


def _display_size(info, max_width: int = 640) -> tuple[int, int]:
    scale = min(1.0, max_width / info.width)
    w, h = max(2, int(info.width * scale) // 2 * 2), max(2, int(info.height * scale) // 2 * 2)
    return w, h


def _draw(rgb: np.ndarray, regions: list[dict], ls_frame: int) -> np.ndarray:
    import cv2

    from .ls.video_results import interpolated_rect

    h, w = rgb.shape[:2]
    canvas = np.ascontiguousarray(rgb)
    for i, region in enumerate(regions):
        rect = interpolated_rect(region["value"]["sequence"], ls_frame)
        if rect is None:
            continue
        x, y, rw, rh = rect
        p0 = (int(round(x / 100 * w)), int(round(y / 100 * h)))
        p1 = (int(round((x + rw) / 100 * w)), int(round((y + rh) / 100 * h)))
        color = PALETTE[i % len(PALETTE)]
        cv2.rectangle(canvas, p0, p1, color, 2)
        text = (region["value"].get("labels") or [region["id"]])[0]
        cv2.putText(canvas, f"{text} {region['id']}", (p0[0], max(p0[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1)
    return canvas


def _preview_mp4(path, info, regions, fps, out: Path) -> Path:
    """Every frame with the boxes Label Studio will show (interpolated keyframes), H.264 MP4."""
    import av

    from .engine.video.decode import read_frames
    from .ls.video_results import frame_at

    size = _display_size(info)
    target = out / "preview.mp4"
    rate = max(1, int(round(info.fps)))
    with av.open(str(target), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index, rgb in read_frames(path, info, range(info.frames), size):
            frame = av.VideoFrame.from_ndarray(_draw(rgb, regions, frame_at(float(info.times[index]), fps)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target


def _contact_sheet(path, info, regions, fps, out: Path, tiles: int = 12) -> Path:
    from PIL import Image

    from .engine.video.decode import read_frames
    from .ls.video_results import frame_at

    size = _display_size(info, 320)
    picks = sorted({int(round(i)) for i in np.linspace(0, info.frames - 1, min(tiles, info.frames))})
    images = [_draw(rgb, regions, frame_at(float(info.times[i]), fps)) for i, rgb in read_frames(path, info, picks, size)]
    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    sheet = np.zeros((rows * size[1], cols * size[0], 3), np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        sheet[r * size[1] : (r + 1) * size[1], c * size[0] : (c + 1) * size[0]] = image
    target = out / "preview.png"
    Image.fromarray(sheet).save(target)
    return target


__all__ = ["VIDEO_SUFFIXES", "is_video_path", "predict_video"]
