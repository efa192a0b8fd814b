"""``sam3-backend train | versions | rollback | jobs``: fine-tuning from the command line.

``train`` runs a training job in this process (with a progress bar) against the same stores the
server uses (``MODEL_DIR``): the annotation store, reconciled with Label Studio's API
(``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY``), the job store and the versions. A running
server picks up a promoted version on its next request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import Settings


def _training(settings: Settings, engine=None):
    from types import SimpleNamespace

    from .ls.media import MediaFetcher
    from .training import TrainingService

    return TrainingService(settings, SimpleNamespace(engine=engine), MediaFetcher(settings))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .engine.image import Sam3ImageEngine
    from .engine.loading import ModelSource, load_sam3
    from .jobs.executor import JobContext, run_job
    from .jobs.store import JobConflict
    from .jobs.train import KIND, TrainTrigger, run_train

    overrides = {k: v for k, v in {"train_steps": args.steps, "train_mode": args.mode, "train_lr": args.lr,
                                   "train_promotion_margin": args.margin,
                                   "train_min_images": args.min_images}.items() if v is not None}
    settings = Settings.from_env(**overrides)
    training = _training(settings)
    try:
        job = training.jobs.create(KIND, str(args.project), {"source": "cli"}, exclusive=True)
    except JobConflict as conflict:
        print(f"sam3-backend train: {conflict}; see `sam3-backend jobs`", file=sys.stderr)
        return 1
    print(f"training job {job.id} for project {args.project}: loading SAM 3 ...", file=sys.stderr)
    try:
        engine = Sam3ImageEngine(load_sam3(ModelSource(settings.sam3_model, token=settings.hf_token),
                                           settings.device, settings.dtype))
    except BaseException as exc:
        training.jobs.fail(job.id, f"the model did not load: {exc}")
        raise
    deps = training.deps(engine)
    bars: dict[str, tqdm] = {}

    class BarContext(JobContext):
        def progress(self, *, done=None, total=None, failed=None, **extra):
            super().progress(done=done, total=total, failed=failed, **extra)
            stage = extra.get("stage")
            if stage and done is not None:
                bar = bars.get(stage)
                if bar is None:
                    for old in bars.values():
                        old.close()
                    bar = bars[stage] = tqdm(total=total, desc=stage, unit="step" if stage == "training" else "it",
                                             file=sys.stderr, leave=True)
                bar.n = done
                if "loss" in extra:
                    bar.set_postfix(loss=extra["loss"])
                bar.refresh()

    trigger = TrainTrigger(int(args.project), "cli")
    try:
        finished = run_job(training.jobs, job, lambda ctx: run_train(ctx, trigger, deps), context=BarContext)
    finally:
        for bar in bars.values():
            bar.close()
    if finished.state.value != "done":
        print(f"training job {finished.id} {finished.state.value}: {finished.reason}", file=sys.stderr)
        return 1
    r = finished.result
    m = r["metrics"]
    print(json.dumps({"job": finished.id, "version": r["version"], "promoted": r["promoted"], "reason": r["reason"],
                      "served_version": r["served_version"], "base": {k: m["base"][k] for k in ("AP", "AP50")},
                      "new": {k: m["new"][k] for k in ("AP", "AP50")}, "report": r["report"]}, indent=1))
    return 0


def _versions(args: argparse.Namespace) -> int:
    training = _training(Settings.from_env())
    listing = training.listing(int(args.project) if args.project else None)
    if args.json:
        print(json.dumps(listing, indent=1, default=str))
        return 0
    if not listing["projects"]:
        print("no fine-tuned versions yet (train with `sam3-backend train --project N` or Start Training)")
        return 0
    for scope, info in listing["projects"].items():
        print(f"{scope}: serving {info['served'] or 'the base model'}")
        for v in info["versions"]:
            new = v["metrics"].get("new", {})
            base = v["metrics"].get("base", {})
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created_at"]))
            mark = "*" if v["served"] else " "
            promo = v["promotion"].get("reason", "")
            print(f" {mark} {v['id']:<24} {when}  AP {_fmt(new.get('AP'))} (base {_fmt(base.get('AP'))})  "
                  f"AP50 {_fmt(new.get('AP50'))} (base {_fmt(base.get('AP50'))})  images {v['data'].get('images', '-')}"
                  f"  {promo}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    training = _training(Settings.from_env())
    pointer = training.rollback(args.version, int(args.project) if args.project else None)
    print(f"{pointer['scope']} now serves {pointer['version'] or 'the base model'}; running servers switch on their next request")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from .jobs.store import JobStore

    settings = Settings.from_env()
    store = JobStore(settings.jobs_db)
    store.recover()
    jobs = store.list(kind=args.kind, project=args.project, limit=args.limit)
    if args.json:
        print(json.dumps([j.as_dict() for j in jobs], indent=1, default=str))
        return 0
    for j in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at))
        stage = j.progress.get("stage", "")
        progress = f"{j.done}/{j.total}" if j.total else str(j.done)
        detail = j.reason or (j.result.get("reason") if j.result else "") or ""
        print(f"{j.id}  {j.kind:<8} project {j.project or '-':<5} {j.state.value:<9} {when}  {stage} {progress}  {detail}")
    if not jobs:
        print("no jobs")
    return 0


def add_subcommands(sub) -> None:
    t = sub.add_parser("train", help="fine-tune SAM 3 on a Label Studio project's annotations (in this process)")
    t.add_argument("--project", required=True, type=int, help="Label Studio project id")
    t.add_argument("--steps", type=int, help="training steps (default TRAIN_STEPS)")
    t.add_argument("--mode", choices=("full", "lora"), help="default TRAIN_MODE")
    t.add_argument("--lr", type=float, help="learning rate (default TRAIN_LR)")
    t.add_argument("--margin", type=float, help="promotion margin (default TRAIN_PROMOTION_MARGIN)")
    t.add_argument("--min-images", type=int, help="default TRAIN_MIN_IMAGES")
    t.set_defaults(func=_train)

    v = sub.add_parser("versions", help="list fine-tuned versions with their metrics")
    v.add_argument("--project", help="only this project")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_versions)

    r = sub.add_parser("rollback", help="serve another version (or 'base') for its project, atomically")
    r.add_argument("version", help="a version id such as project-3-v2, or 'base' (then --project)")
    r.add_argument("--project", help="the project (needed with 'base')")
    r.set_defaults(func=_rollback)

    if "jobs" not in sub.choices:
        j = sub.add_parser("jobs", help="list jobs (training, ...) and their state")
        j.add_argument("--kind")
        j.add_argument("--project")
        j.add_argument("--limit", type=int, default=20)
        j.add_argument("--json", action="store_true")
        j.set_defaults(func=_jobs)
