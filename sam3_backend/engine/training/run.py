"""One fine-tuning run, end to end on the model side: split → encode → evaluate the base and the
served model → train → evaluate the new one → save the version → promote it or say why not.

Promotion rule: the new version is served only if its held-out ``metric`` (COCO mask AP or AP50)
beats the *served* model's (the base model, or the version served now) by at least ``margin``,
on the same held-out images in the same run. Otherwise it is kept on disk, not served, and the
reason is in its report and the returned outcome.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import BackendError
from ..versions import VersionInfo, VersionStore, model_version
from .data import TrainingData, split_examples
from .evaluate import Metrics, evaluate_engine
from .features import FrozenFeatures
from .loop import StepInfo, TrainConfig, train_detector
from .report import compact_curve, render_plot
from .weights import delta_tensors, patched_detector

log = logging.getLogger(__name__)

METRICS = ("AP", "AP50")


class TrainingDataError(BackendError, ValueError):
    """Not enough usable data to train and evaluate (the message says what is missing)."""

    status = 422


@dataclass(frozen=True)
class FineTuneSettings:
    train: TrainConfig = field(default_factory=TrainConfig)
    held_out_fraction: float = 0.2
    split_seed: int = 0
    min_images: int = 10
    margin: float = 0.01
    metric: str = "AP"
    batch_size: int = 4  # images per scheduler slot when encoding and evaluating
    feature_device: str | None = None  # where cached backbone outputs live (None: the model's device)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"the promotion metric must be one of {METRICS}, got {self.metric!r}")


@dataclass
class FineTuneOutcome:
    version: VersionInfo
    promoted: bool
    reason: str
    metrics: dict[str, dict]
    model_version: str  # what predictions carry once this version is served


Progress = Callable[[str, int, int | None, dict], None]  # (stage, done, total, extra)


def _value(metrics: Metrics, metric: str) -> float | None:
    return metrics.ap if metric == "AP" else metrics.ap50


def decide(candidate: Metrics, served: Metrics, metric: str, margin: float, served_name: str) -> tuple[bool, str]:
    """(promote?, reason) by the rule in the module docstring."""
    new, old = _value(candidate, metric), _value(served, metric)
    if new is None or old is None:
        return False, f"held-out {metric} could not be computed (no held-out instances); kept, not served"
    if new >= old + margin:
        return True, f"held-out {metric} {new:.3f} beats {served_name}'s {old:.3f} by at least {margin:g}"
    return False, (f"held-out {metric} {new:.3f} does not beat {served_name}'s {old:.3f} by the margin {margin:g}; "
                   "kept, not served")


def fine_tune(engine, served_engine, served_version: str | None, data: TrainingData, *, scope: str,
              store: VersionStore, settings: FineTuneSettings, progress: Progress | None = None,
              report_extra: dict | None = None) -> FineTuneOutcome:
    """Run everything in the module docstring on ``engine`` (the base ``Sam3ImageEngine``).

    ``served_engine`` / ``served_version``: what ``scope`` serves now (the base engine and None when
    no version is served). Model work goes through ``engine.scheduler`` at BACKGROUND priority.
    Raises ``TrainingDataError`` when there are too few images; nothing is saved then.
    """
    report_progress = progress or (lambda *a: None)
    started = time.time()
    examples = [ex for ex in data.examples if ex.n_instances > 0]
    if len(examples) < max(2, settings.min_images):
        raise TrainingDataError(
            f"{len(examples)} annotated image(s) with usable regions; training needs at least "
            f"{max(2, settings.min_images)} (TRAIN_MIN_IMAGES): annotate more tasks and start training again"
        )
    train, held_out = split_examples(examples, settings.held_out_fraction, settings.split_seed)
    model = engine.model
    base_version = model.backbone_version

    features = FrozenFeatures(model, engine.scheduler, batch_size=settings.batch_size,
                              store_device=settings.feature_device)
    report_progress("encoding", 0, len(train), {})
    features.add_images([ex.image for ex in train], lambda done, total: report_progress("encoding", done, total, {}))

    def evaluate(which_engine, name: str) -> Metrics:
        report_progress(f"evaluating {name}", 0, len(held_out), {})
        return evaluate_engine(which_engine, held_out, data.concepts, batch_size=settings.batch_size)

    base_metrics = evaluate(engine, "base")
    served_metrics = base_metrics if served_version is None else evaluate(served_engine, served_version)

    def on_step(info: StepInfo) -> None:
        report_progress("training", info.step, info.total, {"loss": round(info.loss, 5)})

    result = train_detector(model, engine.scheduler, features, train, data.concepts, settings.train, on_step)
    delta = delta_tensors(model.detector, result.trained.merged_modules())
    candidate = engine.with_detector(patched_detector(model.detector, delta), f"candidate-{uuid.uuid4().hex[:8]}")
    new_metrics = evaluate(candidate, "new version")

    served_name = served_version or "the base model"
    promoted, reason = decide(new_metrics, served_metrics, settings.metric, settings.margin, served_name)
    metrics = {"base": base_metrics.as_dict(), "new": new_metrics.as_dict()}
    if served_version is not None:
        metrics["served"] = served_metrics.as_dict() | {"version": served_version}
    curve = compact_curve(result.losses)
    report = {
        "base_version": base_version,
        "created_at": time.time(),
        "metrics": metrics,
        "promotion": {"promoted": promoted, "reason": reason, "metric": settings.metric, "margin": settings.margin,
                      "compared_with": served_name},
        "data": {"concepts": list(data.concepts), "images": len(examples), "train_images": len(train),
                 "held_out_images": len(held_out), "instances": data.instance_counts(),
                 "held_out_keys": [ex.key for ex in held_out]},
        "settings": {"train": settings.train.as_dict(), "held_out_fraction": settings.held_out_fraction,
                     "split_seed": settings.split_seed, "min_images": settings.min_images},
        "loss_curve": curve,
        "loss_terms_last": {k: v[-1] for k, v in result.terms.items()},
        "timing": {"train_seconds": round(result.seconds, 2), "total_seconds": round(time.time() - started, 2),
                   "steps": len(result.losses)},
        "delta": {"tensors": len(delta), "parameters": int(sum(t.numel() for t in delta.values()))},
        **(report_extra or {}),
    }
    plot_metrics = {"base": metrics["base"]}
    if served_version is not None:
        plot_metrics["served"] = metrics["served"]
    plot_metrics["new"] = metrics["new"]
    title = f"{scope}: {'promoted' if promoted else 'not promoted'} ({settings.metric}, margin {settings.margin:g})"
    version = store.save(scope, delta, report, render_plot(curve, plot_metrics, title))
    if promoted:
        store.set_served(scope, version.id, reason=f"training: {reason}", base_version=base_version)
    log.info("%s: %s %s (%s)", scope, version.id, "promoted" if promoted else "kept, not served", reason)
    return FineTuneOutcome(version, promoted, reason, metrics, model_version(base_version, version.id))
