"""``sam3-backend train | versions | rollback``: fine-tuning from the command line (``sam3-backend jobs``
lists training jobs with the others).

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

    holder = SimpleNamespace(engine=engine)
    return TrainingService(settings, holder, MediaFetcher(settings), engine=lambda: holder.engine)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


class _Bars:
    """One tqdm bar per stage of the job (encoding, training, evaluating ...) on stderr."""

    def __init__(self):
        self.bars: dict = {}

    def update(self, stage: str, done: int, total: int | None, loss=None) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            self.close()
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="step" if stage == "training" else "it",
                                          file=sys.stderr, leave=True)
        bar.n = done
        if loss is not None:
            bar.set_postfix(loss=loss)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _WithBars:
    """The job's context, also drawing the progress it reports."""

    def __init__(self, ctx, bars: _Bars):
        self._ctx, self._bars, self.job = ctx, bars, ctx.job

    def progress(self, *, done=None, total=None, failed=None, **extra) -> None:
        self._ctx.progress(done=done, total=total, failed=failed, **extra)
        if extra.get("stage") and done is not None:
            self._bars.update(extra["stage"], done, total, extra.get("loss"))

    def cancelled(self) -> bool:
        return self._ctx.cancelled()

    def check_cancelled(self) -> None:
        self._ctx.check_cancelled()


def _train(args: argparse.Namespace) -> int:
    from .engine.image import Sam3ImageEngine
    from .engine.loading import ModelSource, load_sam3
    from .jobs.executor import run_job
    from .jobs.store import JobConflict, process_owner
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
        training.holder.engine = Sam3ImageEngine(load_sam3(ModelSource(settings.sam3_model, token=settings.hf_token),
                                                           settings.device, settings.dtype))
    except BaseException as exc:
        training.jobs.fail(job.id, f"the model did not load: {exc}")
        raise
    deps = training.deps()
    bars = _Bars()
    trigger = TrainTrigger(int(args.project), "cli")
    try:
        finished = run_job(training.jobs, job, lambda ctx: run_train(_WithBars(ctx, bars), trigger, deps),
                           owner=process_owner())
    finally:
        bars.close()
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
