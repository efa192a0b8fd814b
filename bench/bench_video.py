"""Video: frames/s and peak RSS vs clip length, tiny SAM 3 video model on CPU.

    .venv/bin/python bench/bench_video.py [--lengths 8,16,32] [--objects 1,5] [--no-write]

The model path the backend's video support will use: transformers' ``Sam3VideoModel`` +
``Sam3VideoProcessor`` with a text prompt (``init_video_session`` on the whole clip,
``add_text_prompt``, ``propagate_in_video_iterator``, ``postprocess_outputs`` to 1080p masks).

The project's tiny checkpoint cannot track: its tracker is 32 wide and the memory path needs a
multiple of 64 above 64 (tracking one object fails in ``_prepare_memory_conditioned_features``
with "Tensors must have same number of dimensions: got 3 and 4"). So this uses
``sam3_backend.engine.tiny.tiny_video_config`` (ViT 32 wide, 2 layers, 112 px; every tracker width 128) and pins
the number of tracked objects with ``_models.force_video_objects`` (random weights detect
nothing useful). Each (length, objects) point runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _models import env_info, env_line, fmt_ms, fmt_num, peak_rss_mb, rss_mb, summary, synthetic_clip  # noqa: E402
from _results import markdown_table, write_section  # noqa: E402


def worker(length: int, objects: int, width: int, height: int, threads: int) -> dict:
    """One point, in this process: build, make frames, session, propagate + post-process."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    rss0 = rss_mb()
    model, processor = _models.build_video("cpu", "float32", size="tiny")
    n_params = sum(p.numel() for p in model.parameters())
    _models.force_video_objects(model, objects)
    # Warm-up on a 2-frame clip (first-call allocations, lazy imports), then a fresh session.
    warm = processor.init_video_session(video=synthetic_clip(2, width, height, seed=9), inference_device="cpu")
    processor.add_text_prompt(warm, "object")
    for out in model.propagate_in_video_iterator(warm):
        _models.pin_video_masks(out)
        processor.postprocess_outputs(warm, out)
    del warm, out
    rss_model = rss_mb()

    frames = synthetic_clip(length, width, height, seed=3)
    rss_frames = rss_mb()
    t0 = time.perf_counter()
    session = processor.init_video_session(video=frames, inference_device="cpu", dtype=torch.float32)
    processor.add_text_prompt(session, "object")
    init_s = time.perf_counter() - t0
    rss_session = rss_mb()
    model_s, post_s, tracked = [], [], []
    iterator = model.propagate_in_video_iterator(session)
    while True:
        t0 = time.perf_counter()
        try:
            out = next(iterator)
        except StopIteration:
            break
        t1 = time.perf_counter()
        _models.pin_video_masks(out)
        res = processor.postprocess_outputs(session, out)
        post_s.append(time.perf_counter() - t1)
        model_s.append(t1 - t0)
        tracked.append(len(out.object_ids))
        assert tuple(res["masks"].shape) == (objects, height, width), res["masks"].shape
        del res, out
    return {
        "length": length,
        "objects": objects,
        "frames": len(model_s),
        "params": n_params,
        "init_s": init_s,
        "model_fps": len(model_s) / sum(model_s),
        "fps_with_post": len(model_s) / (sum(model_s) + sum(post_s)),
        "frame_model": summary(model_s),
        "frame_post": summary(post_s),
        "tracked_min": min(tracked),
        "tracked_max": max(tracked),
        "rss_start_mb": rss0,
        "rss_model_mb": rss_model,
        "rss_frames_mb": rss_frames,
        "rss_session_mb": rss_session,
        "rss_end_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="8,16,32")
    ap.add_argument("--objects", default="1,5")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see bench_interactive)")
    ap.add_argument("--worker", nargs=2, type=int, metavar=("LENGTH", "OBJECTS"), help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.width, args.height, args.threads)))
        return {}

    info = env_info()
    info["cpu_threads"] = args.threads  # the workers' setting
    load = os.getloadavg()
    started = time.perf_counter()
    _models.tiny_checkpoint()  # fail early if the checkpoint cannot be written
    points = []
    for objects in [int(x) for x in args.objects.split(",")]:
        for length in [int(x) for x in args.lengths.split(",")]:
            cmd = [sys.executable, __file__, "--worker", str(length), str(objects), "--width", str(args.width),
                   "--height", str(args.height), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                raise RuntimeError(f"worker {length} frames / {objects} objects failed:\n{proc.stderr[-3000:]}")
            points.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            p = points[-1]
            print(f"{length} frames, {objects} objects: {p['model_fps']:.2f} model fps, peak RSS {p['peak_rss_mb']:.0f} MiB",
                  file=sys.stderr)

    rows = []
    for p in points:
        rows.append([
            str(p["objects"]), str(p["length"]), fmt_num(p["model_fps"]), fmt_num(p["fps_with_post"]),
            fmt_ms(p["frame_model"]["p50_ms"]), fmt_ms(p["frame_model"]["p95_ms"]),
            fmt_ms(p["frame_post"]["p50_ms"]), fmt_ms(p["frame_post"]["p95_ms"]),
            f"{p['init_s']:.2f}", f"{p['rss_session_mb'] - p['rss_model_mb']:,.0f}",
            f"{p['peak_rss_mb'] - p['rss_model_mb']:,.0f}", f"{p['peak_rss_mb']:,.0f}",
        ])
    table = markdown_table(
        ["objects", "frames", "model frames/s", "frames/s incl. post-process", "model ms/frame p50", "p95",
         "post-process ms/frame p50", "p95", "session init s", "frames + session MiB", "growth to peak MiB", "peak RSS MiB"],
        rows,
    )
    by = {(p["objects"], p["length"]): p for p in points}
    lengths = sorted({p["length"] for p in points})
    growth = []
    for objects in sorted({p["objects"] for p in points}):
        a, b = by[(objects, lengths[0])], by[(objects, lengths[-1])]
        per_frame = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (lengths[-1] - lengths[0]) if lengths[-1] > lengths[0] else float("nan")
        growth.append(f"{objects} object{'s' if objects > 1 else ''}: {per_frame:.1f} MiB per extra frame")
    post_share = sum(p["frame_post"]["mean_ms"] * p["frames"] for p in points) / sum(
        (p["frame_post"]["mean_ms"] + p["frame_model"]["mean_ms"]) * p["frames"] for p in points)
    p0 = points[0]
    md = "\n".join(
        [
            f"## Video: frames/s and peak RSS vs clip length (tiny video model, CPU, {args.width}×{args.height})",
            "",
            f"{env_line(info)}; load average at start {load[0]:.2f}.",
            f"`Sam3VideoModel` + `Sam3VideoProcessor`, text prompt, whole clip in `init_video_session`, then"
            " `propagate_in_video_iterator` and `postprocess_outputs` (masks at the frame size) per frame."
            f" Video-capable tiny config ({p0['params'] / 1e6:.1f}M parameters, 112 px; the project's tiny checkpoint"
            " cannot track: tracker width 32, the memory path needs a multiple of 64 above 64); object count pinned"
            " with `force_video_objects` (hot-start removal off, so every track lives to the end) and each object's"
            " low-res mask replaced by a disc (`pin_video_masks`) before post-processing, so every frame yields one"
            " mask per object (random masks can be empty and are then dropped unprocessed). Each point in a fresh"
            f" process; RSS figures relative to the built model ({p0['rss_model_mb']:,.0f} MiB incl. Python, torch,"
            " transformers). Synthetic clip of drifting shapes, frames held as uint8 arrays."
            " Command: `.venv/bin/python bench/bench_video.py`.",
            "",
            table,
            "",
            f"Peak RSS growth: {'; '.join(growth)} (one {args.width}×{args.height} uint8 frame is"
            f" {args.width * args.height * 3 / 2**20:.1f} MiB). Post-processing p50 at {lengths[-1]} frames: "
            + ", ".join(f"{o} object{'s' if o > 1 else ''} {fmt_ms(by[(o, lengths[-1])]['frame_post']['p50_ms'])} ms/frame"
                        for o in sorted({p['objects'] for p in points}))
            + f": `Sam3VideoProcessor.postprocess_outputs` resizes every object's mask to the frame size and applies its"
            " non-overlap constraints on those full-resolution float masks, which is"
            f" {100 * post_share:.0f}% of all time here; with the tiny model"
            " the per-frame model time is mostly the tracker's per-object work and Python overhead, not the encoder."
            f" Script ran {time.perf_counter() - started:.0f} s.",
        ]
    )
    print(md)
    result = {"env": info, "loadavg": load, "points": points}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        print(f"\nwrote {write_section('video', md)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
