"""Concept prelabeling of many tasks: the one pipeline behind ``/predict`` batches and bulk jobs.

Every label of the project's config (or the chosen subset) is a SAM 3 concept. Tasks go through
in chunks of twice the model batch size; the next chunk's images download while the model works
on this one, so a 1000-task request never holds 1000 decoded images. Each task ends as a
``TaskOutcome``: a Label Studio prediction, or why it has none. One task's failure (no image in
its data, an image that cannot be fetched or decoded, a model error on that image) never costs
another task its result: a failed batched model call is retried image by image.

Glue like ``service``: it knows the Label Studio side (config, media, results) and the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .engine.scheduler import Priority, SchedulerTimeout
from .errors import BackendError, BadRequest, EngineNotReady
from .ls.label_config import ImageProjectConfig, task_media_url
from .ls.media import MediaFetcher
from .ls.results import encode_regions, prediction
from .types import ConceptPrompt, ImageInput, Instance

log = logging.getLogger(__name__)

# Failure categories, as counted in a bulk job's summary.
NO_IMAGE = "no_image"  # the task's data has no image at the config's $variable
MEDIA = "media"  # the image could not be fetched or decoded
MODEL = "model"  # the model failed on the image
INTERNAL = "internal"  # anything unexpected (see the log)


@dataclass(frozen=True)
class TaskOutcome:
    """What became of one task: ``prediction`` ({"result", "score", "model_version"}) or, when it
    is None, ``reason`` (a category above) and ``error`` (the message, which says what to fix)."""

    task_id: Any
    prediction: dict | None
    reason: str | None = None
    error: str | None = None
    worker: str | None = None  # which process predicted it (bulk jobs on Ray: host:pid of the actor)

    @property
    def ok(self) -> bool:
        return self.prediction is not None


def image_url(task: dict, config: ImageProjectConfig) -> str:
    """The task's image URL, at ``data.<value of the config's <Image>>``."""
    return task_media_url(task, config.image_value, "image")


def encode_prediction(instances: Sequence[Instance], labels: Sequence[str | None], config: ImageProjectConfig,
                      image: ImageInput, *, polygon_tolerance: float, model_version: str,
                      observe: Callable[[str, float], None] | None = None) -> dict:
    """Instances (pixel masks of ``image``) → one Label Studio prediction for the config's outputs."""
    regions = encode_regions(instances, labels, config, image.width, image.height, polygon_tolerance=polygon_tolerance,
                             observe=observe)
    return prediction(regions, [inst.score for inst in instances if not inst.is_empty], model_version)


def select_labels(config: ImageProjectConfig, wanted: Sequence[str] | None) -> tuple[str, ...]:
    """The config's labels, or the subset ``wanted`` names (case-insensitive), in config order."""
    if not wanted:
        return config.labels
    by_lower = {label.lower(): label for label in config.labels}
    unknown = [w for w in wanted if w.strip().lower() not in by_lower]
    if unknown:
        raise BadRequest(f"label(s) {', '.join(map(repr, unknown))} are not in the project's label config; "
                         f"it has {', '.join(config.labels) or 'no labels'}")
    chosen = {by_lower[w.strip().lower()] for w in wanted}
    return tuple(label for label in config.labels if label in chosen)


class ConceptPrelabeler:
    """Prelabels tasks for one engine and fetcher. Thread-safe (the engine schedules the model).

    ``seconds_per_image`` is a running estimate (download + model + encode) that deadline-bound
    callers use to decide whether the next chunk still fits. ``observe(stage, seconds)`` hears
    the time spent encoding results (for /metrics).
    """

    def __init__(self, settings: Settings, engine, fetcher: MediaFetcher, *, pool: ThreadPoolExecutor | None = None,
                 observe: Callable[[str, float], None] | None = None):
        self.settings = settings
        self.engine = engine
        self.fetcher = fetcher
        self.observe = observe
        self._owns_pool = pool is None
        self._pool = pool or ThreadPoolExecutor(max_workers=8, thread_name_prefix="media")
        self.seconds_per_image: float | None = None

    def close(self) -> None:
        """Stop the download threads this prelabeler started (a shared pool is left alone)."""
        if self._owns_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, tasks: Sequence[dict], config: ImageProjectConfig, *, labels: Sequence[str] | None = None,
            priority: Priority = Priority.BATCH, batch_size: int | None = None, deadline: float | None = None,
            stop: Callable[[], bool] | None = None, project: str | None = None) -> Iterator[list[TaskOutcome]]:
        """Outcomes chunk by chunk, in task order. ``project``: Label Studio's project field, which
        decides where relative media URLs are fetched from and with which token (``ls.connections``).

        Ends early, leaving the remaining tasks without an outcome, when ``stop()`` says so or when
        the next chunk would not finish before ``deadline`` (a ``time.monotonic()`` value) by the
        ``seconds_per_image`` estimate. The first chunk always runs when there is no estimate yet.
        """
        names = select_labels(config, labels)
        concepts = [ConceptPrompt(config.concept_text(label)) for label in names]
        batch = max(1, batch_size or self.settings.prelabel_batch_size)
        chunk = batch * 2
        pending = self._prefetch(tasks[:chunk], config, project)
        for start in range(0, len(tasks), chunk):
            todo = tasks[start : start + chunk]
            if start and stop is not None and stop():
                self._drop(pending)
                return
            if deadline is not None and self._would_miss(deadline, len(todo)):
                self._drop(pending)
                return
            t0 = time.monotonic()
            futures = pending
            pending = self._prefetch(tasks[start + chunk : start + 2 * chunk], config, project)
            yield self._chunk(todo, futures, concepts, names, config, priority, batch)
            self._learn(time.monotonic() - t0, len(todo))
        self._drop(pending)

    # -- pieces ------------------------------------------------------------------------------

    def _prefetch(self, tasks: Sequence[dict], config: ImageProjectConfig, project: str | None) -> list[Future]:
        return [self._pool.submit(self._load, task, config, project) for task in tasks]

    @staticmethod
    def _drop(futures: list[Future]) -> None:
        for future in futures:
            future.cancel()

    def _load(self, task: dict, config: ImageProjectConfig, project: str | None) -> ImageInput:
        return self.fetcher.fetch_image(image_url(task, config), task.get("id"), project)

    def _would_miss(self, deadline: float, n: int) -> bool:
        return self.seconds_per_image is not None and time.monotonic() + self.seconds_per_image * n > deadline

    def _learn(self, seconds: float, n: int) -> None:
        per = seconds / max(1, n)
        old = self.seconds_per_image
        self.seconds_per_image = per if old is None else 0.7 * old + 0.3 * max(per, 0.0)

    def _chunk(self, tasks, futures, concepts, names, config, priority, batch) -> list[TaskOutcome]:
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        images: list[ImageInput | None] = []
        for j, (task, future) in enumerate(zip(tasks, futures)):
            image, failure = self._loaded(future, task)
            images.append(image)
            outcomes[j] = failure
        good = [j for j, im in enumerate(images) if im is not None]
        found = self._segment_isolated([images[j] for j in good], concepts, [tasks[j].get("id") for j in good],
                                       priority, batch)
        for j, result in zip(good, found):
            task_id = tasks[j].get("id")
            if isinstance(result, TaskOutcome):
                outcomes[j] = result
                continue
            try:
                pred = encode_prediction(result, [names[inst.prompt_index] for inst in result], config, images[j],
                                         polygon_tolerance=self.settings.polygon_tolerance,
                                         model_version=self.engine.model_version, observe=self.observe)
            except Exception as exc:
                log.exception("task %s: encoding its regions failed", task_id)
                outcomes[j] = TaskOutcome(task_id, None, INTERNAL, f"{type(exc).__name__}: {exc}")
                continue
            outcomes[j] = TaskOutcome(task_id, pred)
        return [o for o in outcomes if o is not None]

    def _loaded(self, future: Future, task: dict) -> tuple[ImageInput | None, TaskOutcome | None]:
        """A task's image, or the outcome that explains why there is none (also logged)."""
        task_id = task.get("id")
        try:
            return future.result(), None
        except BadRequest as exc:
            log.error("task %s: %s", task_id, exc)
            return None, TaskOutcome(task_id, None, NO_IMAGE if "has no image" in str(exc) else MEDIA, str(exc))
        except BackendError as exc:
            log.error("task %s: %s", task_id, exc)
            return None, TaskOutcome(task_id, None, MEDIA, str(exc))
        except Exception as exc:
            log.exception("task %s: unexpected error while loading its image", task_id)
            return None, TaskOutcome(task_id, None, INTERNAL, f"{type(exc).__name__}: {exc}")

    def _segment_isolated(self, images, concepts, task_ids, priority, batch) -> list:
        """The batched engine call; if it fails (a GPU out of memory on a big batch, one odd
        image), each image again on its own, so only the image that fails loses its result.
        Returns per image its instances or a failed ``TaskOutcome``."""
        if not images:
            return []
        kwargs = dict(threshold=self.settings.score_threshold, max_instances=self.settings.max_instances,
                      priority=priority)
        try:
            return self.engine.segment_concepts(images, concepts, batch_size=batch, **kwargs)
        except (EngineNotReady, SchedulerTimeout):  # not this image's fault: the whole request says so
            raise
        except Exception as exc:
            if len(images) == 1:
                log.exception("task %s: the model failed on its image", task_ids[0])
                return [TaskOutcome(task_ids[0], None, MODEL, f"the model failed on this image: {_short(exc)}")]
            log.exception("batched prelabel of %d images failed; retrying them one by one", len(images))
        out: list = []
        for image, task_id in zip(images, task_ids):
            try:
                out.append(self.engine.segment_concepts([image], concepts, batch_size=1, **kwargs)[0])
            except (EngineNotReady, SchedulerTimeout):
                raise
            except Exception as exc:
                log.exception("task %s: the model failed on its image", task_id)
                out.append(TaskOutcome(task_id, None, MODEL, f"the model failed on this image: {_short(exc)}"))
        return out


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


__all__ = ["ConceptPrelabeler", "TaskOutcome", "encode_prediction", "image_url", "select_labels"]
