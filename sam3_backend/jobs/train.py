"""The training job: a project's annotations → fine-tuned SAM 3 version → promoted or not.

Glue, like ``service.py``: it knows Label Studio JSON (through ``ls/``) and the model side
(through ``engine/``). Stages, each reported as job progress:

1. reconcile — the annotation store is made to match Label Studio's API (or the ``/train``
   payload), so annotations made before the backend was connected count;
2. data — one annotation per task (``ls.annotations.choose_annotation``), its image through the
   media layer, its regions → masks; everything unusable is skipped and counted by reason;
3. encoding / evaluating / training / evaluating — ``engine.training.run.fine_tune``;
4. the version is saved; it is served only if it beats the served model by the margin.

Bad data never crashes anything: too few usable images fail the job with the counts and reasons.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..config import Settings
from ..errors import BackendError, BadRequest, EngineNotReady
from ..ls.annotations import SkipCounter, annotation_masks, choose_annotation
from ..ls.label_config import ImageProjectConfig, parse_label_config
from ..ls.video_config import is_video_config
from ..store.annotations import AnnotationStore, StoredAnnotation
from .executor import JobContext

log = logging.getLogger(__name__)

KIND = "train"


def scope_of(project: int | str) -> str:
    """The version scope of a Label Studio project."""
    return f"project-{int(project)}"


@dataclass(frozen=True)
class TrainTrigger:
    """Why and for which project training runs. ``tasks``: the ``/train`` payload's annotated
    tasks (Label Studio's export), which then replace the store's copy of the project."""

    project: int
    source: str  # START_TRAINING | /train | auto | cli | http
    label_config: str | None = None
    tasks: list | None = None


@dataclass
class TrainDeps:
    """What a training job runs with (all owned by the app or the CLI)."""

    settings: Settings
    engine: Callable[[], object]  # the base Sam3ImageEngine (never a fine-tuned variant), once loaded
    fetcher: object  # ls.media.MediaFetcher
    annotations: AnnotationStore
    versions: object  # engine.versions.VersionStore
    served: object  # engine.versions.ServedModels
    export: Callable[[int], object] | None = None  # project → ls.project_export.ProjectExport


class _Progress:
    """Job progress, written at most every ``interval`` seconds unless the stage changes."""

    def __init__(self, ctx: JobContext, interval: float = 0.5):
        self.ctx, self.interval = ctx, interval
        self.stage, self.last = None, 0.0

    def __call__(self, stage: str, done: int, total: int | None, extra: dict) -> None:
        now = time.monotonic()
        if stage != self.stage:
            log.info("training job %s: %s", self.ctx.job.id, stage)
        if stage == "training" and total and done % max(1, total // 10) == 0:
            log.info("training job %s: step %d/%d, loss %s", self.ctx.job.id, done, total, extra.get("loss"))
        if stage != self.stage or now - self.last >= self.interval or (total is not None and done >= total):
            self.ctx.progress(done=done, total=total, stage=stage, **extra)
            self.stage, self.last = stage, now
        self.ctx.check_cancelled()


def reconcile(trigger: TrainTrigger, deps: TrainDeps) -> dict:
    """Bring the store up to date for the project; returns what happened (never raises for an
    unreachable Label Studio: training then uses what the webhooks stored, and says so)."""
    store = deps.annotations
    if trigger.tasks is not None:
        done = store.replace_project(trigger.project, trigger.tasks, trigger.label_config)
        return {"source": "/train payload", **done.as_dict()}
    if not deps.settings.train_reconcile or deps.export is None:
        return {"source": "webhooks only", "note": "reconciliation with Label Studio is off"}
    try:
        export = deps.export(trigger.project)
    except BackendError as exc:
        log.warning("project %s: %s; training on the annotations received by webhook", trigger.project, exc)
        return {"source": "webhooks only", "note": str(exc)}
    done = store.replace_project(trigger.project, export.tasks, export.label_config)
    return {"source": "Label Studio API", "tasks": len(export.tasks), **done.as_dict()}


def _label_config(trigger: TrainTrigger, deps: TrainDeps) -> ImageProjectConfig:
    xml = trigger.label_config or deps.annotations.label_config(trigger.project)
    if not xml:
        raise BadRequest(f"no label config is known for project {trigger.project}: connect the backend to the "
                         "project in Label Studio (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY) and train again")
    if is_video_config(xml):
        raise BadRequest("fine-tuning learns from image annotations (brush, polygon, rectangle); this is a video "
                         "project, whose tracks come from the base model: train an image project with frames of "
                         "these videos to adapt the detector")
    return parse_label_config(xml)


def build_training_data(project: int, stored: list[StoredAnnotation], task_data: dict[int, dict],
                        config: ImageProjectConfig, fetch_image, *, max_side: int, max_images: int,
                        skipped: SkipCounter, progress=None):
    """Examples for ``engine.training`` from stored annotations: one per task (its chosen
    annotation), images fetched with ``fetch_image(url, task_id)`` (8 at a time, 16 in memory at
    full size), scaled so the longer side is at most ``max_side``. Unusable items are counted in
    ``skipped``. Returns (data, number of tasks tried)."""
    from ..engine.training.data import TrainingData, TrainingExample, fit_example

    by_task: dict[int, list[dict]] = defaultdict(list)
    for ann in stored:
        by_task[ann.task].append(ann.as_ls())
    chosen = []
    for task_id in sorted(by_task):
        ann = choose_annotation(by_task[task_id])
        if ann is None:
            skipped["cancelled"] += 1
            continue
        if not ann["result"]:
            skipped["empty_result"] += 1
            continue
        url = (task_data.get(task_id) or {}).get(config.image_value)
        if not isinstance(url, str) or not url:
            skipped["no_image_url"] += 1
            continue
        chosen.append((task_id, url, ann))
    chosen = chosen[:max_images]
    labels = list(config.labels)
    index = {label: i for i, label in enumerate(labels)}
    examples = []

    def load(item):
        task_id, url, _ = item
        try:
            return fetch_image(url, task_id)
        except BackendError as exc:
            log.warning("training, task %s: image unavailable: %s", task_id, exc)
        except Exception:
            log.exception("training, task %s: unexpected error while loading its image", task_id)
        return None

    chunk = 16  # images in flight at full size; each is scaled down before the next chunk
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="train-media") as pool:
        for start in range(0, len(chosen), chunk):
            items = chosen[start : start + chunk]
            for n, (item, image) in enumerate(zip(items, pool.map(load, items)), start=start + 1):
                if progress is not None:
                    progress("data", n, len(chosen), {})
                task_id, _, ann = item
                if image is None:
                    skipped["image_unavailable"] += 1
                    continue
                regions = annotation_masks(ann["result"], config, image.width, image.height, skipped)
                if not regions:
                    continue
                example = TrainingExample(
                    image=image,
                    masks=np.stack([r.mask for r in regions]),
                    concepts=np.array([index[r.label] for r in regions], dtype=np.int64),
                    key=f"task-{task_id}",
                )
                examples.append(fit_example(example, max_side))
    concepts = tuple(config.concept_text(label) for label in labels)
    return TrainingData(concepts, tuple(examples)), len(chosen)


def fine_tune_settings(settings: Settings):
    from ..engine.training.loop import TrainConfig
    from ..engine.training.run import FineTuneSettings

    train = TrainConfig(mode=settings.train_mode, steps=settings.train_steps, batch_size=settings.train_batch_size,
                        lr=settings.train_lr, seed=settings.train_seed)
    return FineTuneSettings(train=train, held_out_fraction=settings.train_held_out_fraction,
                            split_seed=settings.train_seed, min_images=settings.train_min_images,
                            margin=settings.train_promotion_margin, metric=settings.train_promotion_metric,
                            batch_size=max(1, settings.prelabel_batch_size),
                            feature_device=settings.train_feature_device)


def run_train(ctx: JobContext, trigger: TrainTrigger, deps: TrainDeps) -> dict:
    """The job function (see the module docstring); its dict becomes the job's result."""
    from ..engine.training.run import TrainingDataError, fine_tune

    engine = deps.engine()
    if not hasattr(engine, "with_detector"):
        raise EngineNotReady("the SAM 3 model is not loaded; start training again once /health says UP")
    progress = _Progress(ctx)
    project = trigger.project
    progress("reconciling", 0, None, {})
    deps.annotations.mark_trained(project)
    reconciled = reconcile(trigger, deps)
    config = _label_config(trigger, deps)
    skipped = SkipCounter()
    data, tasks = build_training_data(
        project, deps.annotations.annotations(project), deps.annotations.task_data(project), config,
        partial(deps.fetcher.fetch_image, project=deps.fetcher.connections.setup_key(project)),
        max_side=engine.model.image_size, max_images=deps.settings.train_max_images,
        skipped=skipped, progress=progress,
    )
    counts = {"tasks": tasks, "images": len(data.examples), "skipped": skipped.describe(),
              "instances": data.instance_counts()}
    ctx.progress(stage="data", data=counts)
    log.info("training job %s, project %s: %d usable image(s) of %d annotated task(s); skipped: %s", ctx.job.id,
             project, len(data.examples), tasks, dict(skipped) or "none")
    scope = scope_of(project)
    served_engine = deps.served.engine_for(scope, engine)
    served_version = None if served_engine is engine else deps.versions.served(scope)
    try:
        outcome = fine_tune(engine, served_engine, served_version, data, scope=scope, store=deps.versions,
                            settings=fine_tune_settings(deps.settings), progress=progress,
                            report_extra={"job": ctx.job.id, "trigger": trigger.source, "project": project,
                                          "skipped": skipped.describe(), "reconcile": reconciled})
    except TrainingDataError as exc:
        reasons = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())) or "none"
        raise TrainingDataError(f"{exc} (skipped: {reasons})") from None
    return {
        "version": outcome.version.id,
        "promoted": outcome.promoted,
        "reason": outcome.reason,
        "model_version": outcome.model_version,
        "served_version": outcome.model_version if outcome.promoted else (
            served_engine.model_version),
        "metrics": outcome.metrics,
        "data": counts,
        "reconcile": reconciled,
        "report": str(outcome.version.path / "report.json"),
        "plot": str(outcome.version.path / "report.png"),
    }
