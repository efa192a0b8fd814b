"""The bulk prelabel job: every (unlabeled) task of a project, predicted and written back.

Steps: read the project's label config (a config with nothing to predict fails the job at once);
scan the tasks by id (all, or only those without annotations, or an explicit list) and leave
out those that already carry a prediction of this model version (a resumed or repeated run
redoes nothing); predict the rest in batches (a ``Predictor``: this process's engine at
BACKGROUND priority, or a pool of Ray actors); write the predictions back in batches.

Writes never duplicate. Before each import the batch's tasks are checked again for a
prediction of this model version (another run, or "Retrieve predictions", may have written
one meanwhile); a failed import is retried only after that check, because a request that
timed out may still have been stored. A 400 is narrowed down: tasks deleted meanwhile are
recorded as failures ("deleted") and the rest written; otherwise the batch is split until the
prediction Label Studio rejects is alone.

Per-task failures (no image, media, model, deleted, rejected) are recorded with their reason
and never stop the job; the summary counts them by reason. Label Studio unreachable beyond the
retries, a refused key, or the project gone end the job as FAILED with what to do.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..config import Settings
from ..engine.scheduler import Priority
from ..errors import BadRequest
from ..ls.client import (
    IMPORT_BATCH_MAX,
    LabelStudioApiError,
    LabelStudioAuthError,
    LabelStudioClient,
    ApiAccess,
    LabelStudioNotFound,
    LabelStudioUnavailable,
    TaskRef,
)
from ..ls.label_config import ImageProjectConfig, parse_label_config
from ..ls.media import MediaFetcher
from ..prelabeler import ConceptPrelabeler, TaskOutcome, select_labels
from .executor import JobContext

log = logging.getLogger(__name__)

KIND = "prelabel"
DELETED = "deleted"  # the task was deleted from the project while the job ran
REJECTED = "rejected"  # Label Studio refused to store the prediction
MAX_FAILURE_RECORDS = 200  # per-task failure records kept in the job result (all are counted)
PROGRESS_EVERY = 1.0  # seconds between progress writes to the store


@dataclass(frozen=True)
class PrelabelParams:
    """What a prelabel job does; stored as the job's params, so a resume repeats it exactly."""

    project: int
    labels: tuple[str, ...] = ()  # a subset of the config's labels; empty: all
    filter: str = "unlabeled"  # "unlabeled" (tasks without annotations) or "all"
    batch_size: int | None = None  # images per model pass; None: SAM3_PRELABEL_BATCH_SIZE
    task_ids: tuple[int, ...] | None = None  # only these tasks (the /predict hand-off)
    ray: bool = False  # predict on Ray actors instead of this process's engine
    actors: int | None = None  # Ray model actors; None: SAM3_RAY_ACTORS
    source: str = "cli"  # who started it: cli, http, predict (the deadline hand-off)

    @classmethod
    def from_dict(cls, data: Any) -> PrelabelParams:
        """Validated params from JSON (an HTTP body, a stored job); BadRequest says what is wrong."""
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object like {\"project\": 12}")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        project = data.get("project")
        if isinstance(project, str) and project.split(".")[0].isdigit():
            project = int(project.split(".")[0])
        if isinstance(project, bool) or not isinstance(project, int) or project < 1:
            raise BadRequest(f"'project' must be a Label Studio project id (a positive integer), got {project!r}")
        labels = data.get("labels") or ()
        if isinstance(labels, str):
            labels = [part for part in labels.split(",")]
        if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise BadRequest("'labels' must be a list of label names (or a comma-separated string)")
        flt = data.get("filter", "unlabeled")
        if flt not in ("unlabeled", "all"):
            raise BadRequest(f"'filter' must be 'unlabeled' or 'all', got {flt!r}")
        batch = data.get("batch_size")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 256):
            raise BadRequest(f"'batch_size' must be an integer from 1 to 256, got {batch!r}")
        ids = data.get("task_ids")
        if ids is not None and (not isinstance(ids, (list, tuple)) or
                                not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise BadRequest("'task_ids' must be a list of task ids")
        actors = data.get("actors")
        if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
            raise BadRequest(f"'actors' must be a positive integer, got {actors!r}")
        return cls(project=project, labels=tuple(x.strip() for x in labels), filter=flt, batch_size=batch,
                   task_ids=None if ids is None else tuple(ids), ray=bool(data.get("ray", False)), actors=actors,
                   source=str(data.get("source", "cli")))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["labels"] = list(self.labels)
        data["task_ids"] = None if self.task_ids is None else list(self.task_ids)
        return data


class Predictor(Protocol):
    """Turns tasks into outcomes, somewhere: this process (``LocalPredictor``) or Ray actors."""

    model_version: str
    name: str

    def close(self) -> None: ...

    def predict(self, tasks: Sequence[TaskRef], config_xml: str, *, labels: Sequence[str], batch_size: int | None,
                stop: Callable[[], bool]) -> Iterator[list[TaskOutcome]]: ...


class LocalPredictor:
    """This process's engine, at BACKGROUND priority: a click or a /predict goes first.

    ``prelabeler`` may be a factory, called on the first prediction, with ``model_version``
    given up front: a re-run that finds every task done then never loads the model.
    """

    name = "in-process"

    def __init__(self, prelabeler: ConceptPrelabeler | Callable[[], ConceptPrelabeler], *,
                 model_version: str | None = None):
        self._prelabeler = prelabeler if isinstance(prelabeler, ConceptPrelabeler) else None
        self._make = None if self._prelabeler is not None else prelabeler
        self._model_version = model_version

    @property
    def prelabeler(self) -> ConceptPrelabeler:
        if self._prelabeler is None:
            self._prelabeler = self._make()
        return self._prelabeler

    @property
    def model_version(self) -> str:
        return self._model_version or self.prelabeler.engine.model_version

    def close(self) -> None:
        if self._prelabeler is not None:
            self._prelabeler.close()

    def predict(self, tasks: Sequence[TaskRef], config_xml: str, *, labels: Sequence[str], batch_size: int | None,
                stop: Callable[[], bool]) -> Iterator[list[TaskOutcome]]:
        config = parse_label_config(config_xml)
        dicts = [{"id": t.id, "data": t.data} for t in tasks]
        yield from self.prelabeler.run(dicts, config, labels=labels, priority=Priority.BACKGROUND,
                                       batch_size=batch_size, stop=stop)


def job_prelabeler(settings: Settings, engine, connection: ApiAccess) -> ConceptPrelabeler:
    """A prelabeler whose media requests go to ``connection`` (its URL, its key): a job may work
    for another Label Studio than the one /setup configured. Decoded images are not kept: a bulk
    job sees each image once."""
    fetcher = MediaFetcher(settings.with_overrides(label_studio_url=connection.url,
                                                   label_studio_api_key=connection.api_key, media_image_cache_mb=0))
    return ConceptPrelabeler(settings, engine, fetcher)


# --------------------------------------------------------------------------- writing


@dataclass
class _Tally:
    skipped_existing: int = 0
    predicted: int = 0
    written: int = 0
    already_written: int = 0
    failed: int = 0
    by_reason: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    workers: Counter = field(default_factory=Counter)

    def fail(self, task_id: Any, reason: str, error: str | None) -> None:
        self.failed += 1
        self.by_reason[reason] += 1
        if len(self.failures) < MAX_FAILURE_RECORDS:
            self.failures.append({"task": task_id, "reason": reason, "error": error})


class PredictionWriter:
    """Buffers predictions and imports them in batches, never twice for a task (see module doc)."""

    def __init__(self, client: LabelStudioClient, project: int, model_version: str, tally: _Tally, *,
                 batch: int = 100, attempts: int = 5):
        self.client = client
        self.project = project
        self.model_version = model_version
        self.tally = tally
        self.batch = max(1, min(batch, IMPORT_BATCH_MAX))
        self.attempts = attempts
        self._buffer: list[dict] = []

    def add(self, outcome: TaskOutcome) -> None:
        pred = dict(outcome.prediction)
        pred["task"] = int(outcome.task_id)
        pred["model_version"] = self.model_version
        self._buffer.append(pred)
        if len(self._buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        pending, self._buffer = self._buffer, []
        if pending:
            self._write(pending)

    def _write(self, preds: list[dict]) -> None:
        for attempt in range(self.attempts):
            ids = [p["task"] for p in preds]
            have = self.client.tasks_with_prediction(self.project, self.model_version, task_ids=ids)
            if have:
                self.tally.already_written += len(have)
                preds = [p for p in preds if p["task"] not in have]
                if not preds:
                    return
            try:
                self.client.import_predictions(self.project, preds)
            except LabelStudioUnavailable as exc:
                if attempt + 1 >= self.attempts:
                    raise
                delay = self.client.delay(attempt, getattr(exc, "retry_after", None))
                log.warning("writing %d predictions failed (%s); checking and retrying in %.1f s", len(preds), exc,
                            delay)
                time.sleep(delay)
                continue
            except (LabelStudioAuthError, LabelStudioNotFound):
                raise
            except LabelStudioApiError as exc:
                self._narrow(preds, exc)
                return
            self.tally.written += len(preds)
            return

    def _narrow(self, preds: list[dict], exc: LabelStudioApiError) -> None:
        """A 400 on a batch: drop tasks deleted meanwhile, else split until the rejected one is alone."""
        ids = {p["task"] for p in preds}
        alive = self.client.existing_tasks(self.project, ids)
        gone = ids - alive
        for task_id in sorted(gone):
            self.tally.fail(task_id, DELETED, "the task was deleted from the project while the job ran")
        rest = [p for p in preds if p["task"] in alive]
        if gone:
            if rest:
                self._write(rest)
            return
        if len(rest) == 1:
            self.tally.fail(rest[0]["task"], REJECTED, str(exc))
            return
        half = len(rest) // 2
        self._write(rest[:half])
        self._write(rest[half:])


# --------------------------------------------------------------------------- the job


def _config(client: LabelStudioClient, project: int) -> tuple[str, ImageProjectConfig]:
    info = client.project(project)
    return info.label_config, parse_label_config(info.label_config)  # UnsupportedConfig says what is missing


def _scan(ctx: JobContext, client: LabelStudioClient, params: PrelabelParams) -> list[TaskRef]:
    tasks: list[TaskRef] = []
    for page, total in client.iter_tasks(params.project, filter=params.filter, task_ids=params.task_ids):
        tasks.extend(page)
        ctx.progress(total=total if total is not None else None, stage="scanning", scanned=len(tasks))
        if ctx.cancelled():
            break
    return tasks


def run_prelabel(ctx: JobContext, params: PrelabelParams, client: LabelStudioClient, predictor: Predictor, *,
                 write_batch: int = 100) -> dict:
    """The job function (bind ``params``, ``client`` and ``predictor``; the executor gives ``ctx``)."""
    started = time.monotonic()
    tally = _Tally()
    config_xml, config = _config(client, params.project)
    labels = select_labels(config, params.labels)
    model_version = predictor.model_version
    ctx.progress(stage="scanning", model_version=model_version, executor=predictor.name)

    candidates = _scan(ctx, client, params)
    finished = client.tasks_with_prediction(params.project, model_version,
                                            task_ids=[t.id for t in candidates] if params.task_ids else None)
    todo = [t for t in candidates if t.id not in finished]
    tally.skipped_existing = len(candidates) - len(todo)
    total = len(candidates)
    ctx.progress(done=tally.skipped_existing, total=total, failed=0, stage="predicting", skipped=tally.skipped_existing)
    log.info("prelabel project %s: %d task(s), %d already carry %s, %d to predict on %s", params.project, total,
             tally.skipped_existing, model_version, len(todo), predictor.name)

    writer = PredictionWriter(client, params.project, model_version, tally, batch=write_batch)
    predict_started = time.monotonic()
    last_report = 0.0

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if not force and now - last_report < PROGRESS_EVERY:
            return
        last_report = now
        processed = tally.predicted + tally.failed
        rate = processed / max(now - predict_started, 1e-6) if processed else 0.0
        remaining = len(todo) - processed
        ctx.progress(done=tally.skipped_existing + processed, total=total, failed=tally.failed,
                     rate=round(rate, 3), eta=round(remaining / rate, 1) if rate > 0 else None,
                     written=tally.written, workers=dict(tally.workers))

    stopped = False
    if todo and not ctx.cancelled():
        for chunk in predictor.predict(todo, config_xml, labels=labels, batch_size=params.batch_size,
                                       stop=ctx.cancelled):
            for outcome in chunk:
                worker = getattr(outcome, "worker", None)
                if worker:
                    tally.workers[worker] += 1
                if outcome.ok:
                    if outcome.prediction.get("model_version") not in (None, model_version):
                        raise LabelStudioApiError(
                            f"a worker predicted with model {outcome.prediction['model_version']}, not {model_version}:"
                            " point SAM3_MODEL at the same weights on every node")
                    tally.predicted += 1
                    writer.add(outcome)
                else:
                    tally.fail(outcome.task_id, outcome.reason or "internal", outcome.error)
            report()
            if ctx.cancelled():
                break
    writer.flush()
    processed = tally.predicted + tally.failed
    stopped = processed < len(todo)
    report(force=True)
    seconds = time.monotonic() - started
    predict_seconds = time.monotonic() - predict_started
    result = {
        "project": params.project,
        "model_version": model_version,
        "executor": predictor.name,
        "filter": params.filter,
        "labels": list(labels),
        "tasks": total,
        "skipped_existing": tally.skipped_existing,
        "predicted": tally.predicted,
        "written": tally.written,
        "already_written": tally.already_written,
        "failed": tally.failed,
        "failures_by_reason": dict(tally.by_reason),
        "failures": tally.failures,
        "not_reached": len(todo) - processed,
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / predict_seconds, 3) if processed and predict_seconds > 0 else 0.0,
        "label_studio_api": client.stats.snapshot(),
        "workers": dict(tally.workers),
    }
    if stopped:
        result["stopped_early"] = True
    ctx.progress(stage="done" if not stopped else "stopped", eta=None)
    log.info("prelabel project %s: %d written, %d failed %s, %d skipped, %.1f s", params.project, tally.written,
             tally.failed, dict(tally.by_reason), tally.skipped_existing, seconds)
    return result


__all__ = ["KIND", "LocalPredictor", "PredictionWriter", "PrelabelParams", "Predictor", "job_prelabeler", "run_prelabel"]
