"""``sam3-backend``: serve (gunicorn), predict (one image, no Label Studio), tiny-model, doctor,
healthcheck, prelabel (a whole project), jobs, train, versions, rollback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import Settings


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "workers": args.workers,
                                    "threads": args.threads}.items() if v is not None}
    settings = Settings.from_env(**overrides)
    _prepare_weights(settings)
    if args.dev:
        from .app import create_app

        create_app(settings).run(host=settings.host, port=settings.port, threaded=True)
        return 0
    from gunicorn.app.base import BaseApplication

    from .gunicorn_conf import options

    class _Gunicorn(BaseApplication):
        def load_config(self):
            for key, value in options(settings).items():
                self.cfg.set(key, value)

        def load(self):
            from .app import create_app

            return create_app(settings)  # in the worker: each worker loads its own model

    _Gunicorn().run()
    return 0


def _prepare_weights(settings: Settings) -> None:
    """Resolve (first start: download) the weights once, before gunicorn forks its workers.

    Torch-free, so CUDA is never initialised in the master; fails fast (exit 2, the fix in the
    message) when they cannot be had, e.g. HF_HUB_OFFLINE=1 without them in the hub cache.
    """
    import logging

    from .engine.weights import resolve_weights

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resolve_weights(settings.sam3_model, settings.hf_token)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor_main

    return doctor_main(json_output=args.json, project_id=args.project, task_id=args.task, timeout=args.timeout)


def _healthcheck(args: argparse.Namespace) -> int:
    from .doctor import healthcheck

    return healthcheck(Settings.from_env())


def _parse_floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"--{what} {text!r}: expected comma-separated numbers") from None
    if len(values) not in n:
        raise SystemExit(f"--{what} {text!r}: expected {' or '.join(map(str, n))} numbers")
    return values


def _predict(args: argparse.Namespace) -> int:
    from .video_cli import is_video_path, predict_video

    if is_video_path(args.image):
        return predict_video(args)
    import numpy as np
    from PIL import Image

    from .engine.image import Sam3ImageEngine
    from .engine.loading import ModelSource, load_sam3
    from .ls.media import load_image
    from .types import Box, ConceptPrompt, GeometryPrompt, Point

    settings = Settings.from_env()
    image = load_image(Path(args.image).read_bytes())
    points = []
    for p in args.point or []:
        v = _parse_floats(p, (2, 3), "point")
        points.append(Point(v[0], v[1], positive=len(v) == 2 or v[2] != 0))
    boxes = [Box(*_parse_floats(b, (4,), "box")) for b in args.box or []]
    for b in boxes:
        if not (b.x0 < b.x1 and b.y0 < b.y1):
            raise SystemExit(f"--box {b}: needs X0 < X1 and Y0 < Y1")
    if not (args.text or points or boxes):
        raise SystemExit("give at least one prompt: --text, --point or --box")
    engine = Sam3ImageEngine(load_sam3(ModelSource(settings.sam3_model, token=settings.hf_token),
                                       settings.device, settings.dtype))
    threshold = settings.score_threshold if args.threshold is None else args.threshold
    if args.text:
        instances = engine.segment_concepts([image], [ConceptPrompt(args.text, tuple(boxes))],
                                            threshold=threshold, max_instances=settings.max_instances)[0]
    elif len(boxes) > 1:
        instances = engine.segment_objects(image, [GeometryPrompt(box=b) for b in boxes])
    else:
        instances = engine.segment_objects(image, [GeometryPrompt(tuple(points), boxes[0] if boxes else None)])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlay = image.pixels.astype(np.float32)
    palette = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]], np.float32)
    records = []
    for i, inst in enumerate(instances):
        name = f"mask_{i:03d}.png"
        Image.fromarray(inst.mask.astype(np.uint8) * 255).save(out / name)
        color = palette[i % len(palette)]
        overlay[inst.mask] = overlay[inst.mask] * 0.45 + color * 0.55
        records.append({"mask": name, "score": round(inst.score, 4), "box_xyxy": [round(v, 1) for v in inst.box],
                        "area": int(inst.mask.sum())})
    Image.fromarray(overlay.clip(0, 255).astype(np.uint8)).save(out / "overlay.png")
    summary = {"image": str(args.image), "width": image.width, "height": image.height,
               "model_version": engine.model_version, "test_model": engine.is_test_model, "instances": records}
    (out / "instances.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "instances"} | {"instances": len(records)}))
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from .engine.tiny import install_in_hub_cache, write_tiny_checkpoint

    folder = write_tiny_checkpoint(args.dir, seed=args.seed, image_size=args.image_size)
    print(f"wrote a RANDOMLY INITIALISED SAM 3 test model to {folder} (use SAM3_MODEL={folder})")
    if args.hub_cache:
        snapshot = install_in_hub_cache(folder, args.hub_cache)
        print(f"installed as facebook/sam3 in the hub cache {args.hub_cache} ({snapshot})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the Label Studio ML backend (gunicorn, gthread workers)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="processes; each loads its own model (default WORKERS or 1)")
    s.add_argument("--threads", type=int, help="threads per worker (default THREADS or 16)")
    s.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")
    s.set_defaults(func=_serve)

    p = sub.add_parser("predict", help="segment an image or track objects in a video, without Label Studio")
    p.add_argument("image", help="an image, or a video (mp4, webm, mov, mkv, ...)")
    p.add_argument("--text", help="concept prompt, e.g. 'yellow school bus' (image: boxes become exemplars)")
    p.add_argument("--point", action="append", help="X,Y[,1|0] in pixels; 0 = negative; repeatable (images)")
    p.add_argument("--box", action="append",
                   help="X0,Y0,X1,Y1 in pixels (image), FRAME,X0,Y0,X1,Y1 with a 1-based frame (video); repeatable")
    p.add_argument("--threshold", type=float, help="score threshold for --text (default SAM3_SCORE_THRESHOLD; "
                   "SAM3_VIDEO_SCORE_THRESHOLD for videos)")
    p.add_argument("--out", required=True, help="folder for the results: mask PNGs, instances.json and overlay.png "
                   "(image); tracks.json and preview.mp4 (video)")
    p.add_argument("--fps", type=float, help="video: the <Video framerate> of your project (default the video's rate)")
    p.add_argument("--stride", type=int, help="video: track every Nth frame (default SAM3_VIDEO_STRIDE)")
    p.add_argument("--tolerance", type=float, help="video: keyframe tolerance in %% of the frame")
    p.add_argument("--label", help="video: the label written into the tracks (default the --text)")
    p.add_argument("--preview", choices=("mp4", "sheet"), default="mp4", help="video: preview.mp4 or a preview.png sheet")
    p.set_defaults(func=_predict)

    t = sub.add_parser("tiny-model", help="write a tiny random-init SAM 3 checkpoint (tests, demos)")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--image-size", type=int, default=112)
    t.add_argument("--hub-cache", help="also install it as facebook/sam3 in this offline hub cache")
    t.set_defaults(func=_tiny_model)

    d = sub.add_parser("doctor", help="check weights, device, disk, Label Studio, token, media, Ray; print fixes")
    d.add_argument("--project", type=int, help="fetch media from this project's first task")
    d.add_argument("--task", type=int, help="fetch media from this task")
    d.add_argument("--timeout", type=float, default=5.0, help="seconds per network check (default 5)")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.set_defaults(func=_doctor)

    h = sub.add_parser("healthcheck", help="exit 0 when the backend on this machine says UP (Docker HEALTHCHECK)")
    h.set_defaults(func=_healthcheck)
    from .jobs.cli import add_job_commands

    add_job_commands(sub)  # prelabel, jobs
    from .cli_train import add_subcommands

    add_subcommands(sub)  # train, versions, rollback
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import BackendError, ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, ModelLoadError, BackendError) as exc:  # bad settings, file, weights: say so
        print(f"sam3-backend {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
