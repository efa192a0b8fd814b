""""Retrieve predictions" on a selection too large for the request: answer part, hand off the rest.

Label Studio 1.23 sends every selected task in one ``/predict`` and waits ``ML_TIMEOUT_PREDICT``
(100 s) for the answer; after that it stores nothing at all. What it does with the answer
(``ml/models.py``, ``_get_predictions_from_ml_backend``):

* a ``results`` list whose length differs from the number of tasks: with one item it asks again
  task by task, otherwise it logs an error and stores nothing;
* an item ``{"result": [...]}`` (even ``[]``): stored as a prediction, so ``{"result": []}`` is
  an empty prediction, and the task is skipped by every later "Retrieve predictions" of this
  model version;
* an item without ``result`` (``{}``): logged as an error, nothing stored;
* an item that is a list: each element is a prediction, so ``[]`` stores nothing, silently.

So the answer keeps one item per task, in order: a prediction for each task finished before
SAM3_PREDICT_DEADLINE (below Label Studio's 100 s), and ``[]`` for the others, which stores
neither an empty nor a duplicate prediction (tasks whose image cannot be read get ``[]`` too, so a
later "Retrieve predictions" asks for them again). Those tasks go to a bulk job (``jobs.prelabel``,
``task_ids`` = them) that writes their predictions through the API with the same model version;
it runs after any prelabel job already running for the project and re-checks each task before
writing, so nothing is written twice. Tasks that a queued or running prelabel job of the project
will cover are answered ``[]`` right away (that job writes them). Without a Label Studio
connection there is no hand-off: the unfinished tasks are answered ``[]`` and a later
"Retrieve predictions" asks for them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..engine.scheduler import Priority
from ..ls.client import ApiAccess
from ..ls.label_config import ImageProjectConfig
from .prelabel import KIND, PrelabelParams
from .runtime import JobsRuntime
from .store import ACTIVE_STATES

log = logging.getLogger(__name__)


def project_id(project: Any, tasks: list[dict]) -> int | None:
    """Label Studio's ``"12.1700000000"`` project field (or the tasks' ``project``) as 12."""
    for value in (project, *(t.get("project") for t in tasks[:1])):
        text = str(value or "").split(".")[0]
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


def _covers(params: dict, task: dict) -> bool:
    """Whether an active prelabel job with ``params`` will write ``task``'s prediction."""
    ids = params.get("task_ids")
    if ids is not None:
        return task.get("id") in set(ids)
    if params.get("filter") == "all":
        return True
    annotated = task.get("total_annotations") or len(task.get("annotations") or [])
    return not annotated


class BulkHandoff:
    """Installed on ``PredictionService.bulk_handoff`` by the jobs blueprint."""

    def __init__(self, runtime: JobsRuntime, settings: Settings,
                 connection_for: Callable[[str | int], ApiAccess | None]):
        self.runtime = runtime
        self.settings = settings
        self.connection_for = connection_for
        self.handed_off = 0  # tasks handed to bulk jobs (for /metrics and tests)

    def prelabel(self, service, tasks: list[dict], config: ImageProjectConfig, project: Any) -> list:
        """One item per task, in order: a prediction, an empty prediction (failed), or ``[]`` (later)."""
        started = time.monotonic()
        pid = project_id(project, tasks)
        connection = self.connection_for(project if project is not None else pid) if pid is not None else None
        active = self._active(pid)
        covered = {id(t) for t in tasks if any(_covers(job.params, t) for job in active)}
        todo = [t for t in tasks if id(t) not in covered]
        deadline = started + self.settings.predict_deadline if self.settings.predict_deadline > 0 else None
        answers: dict[int, dict] = {}
        position = 0
        for chunk in service.prelabeler.run(todo, config, priority=Priority.BATCH, deadline=deadline,
                                            project=project):
            for outcome in chunk:
                answers[id(todo[position])] = service.answer(outcome)
                position += 1
        later = [t for t in todo if id(t) not in answers]
        if later:
            self._hand_off(pid, connection, later, started)
        if covered:
            log.info("predict: %d task(s) are left to the prelabel job(s) %s already running for project %s",
                     len(covered), ", ".join(j.id for j in active), pid)
        return [answers.get(id(t), []) for t in tasks]

    def _active(self, pid: int | None) -> list:
        """Queued or running prelabel jobs of the project, after clearing those of dead processes."""
        if pid is None:
            return []
        active = self.runtime.store.list(kind=KIND, project=pid, states=ACTIVE_STATES)
        if active and self.runtime.store.recover():
            active = self.runtime.store.list(kind=KIND, project=pid, states=ACTIVE_STATES)
        return active

    def _hand_off(self, pid: int | None, connection: ApiAccess | None, later: list[dict],
                  started: float) -> None:
        waited = time.monotonic() - started
        ids = [t.get("id") for t in later]
        if pid is None or connection is None or not all(isinstance(i, int) for i in ids):
            log.warning("predict: %d task(s) did not finish within SAM3_PREDICT_DEADLINE (%.0f s) and there is no "
                        "Label Studio connection to write them later (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY);"
                        " they get no prediction now: retrieve predictions for them again", len(later), waited)
            return
        params = PrelabelParams(project=pid, filter="all", task_ids=tuple(ids), source="predict")
        try:
            job = self.runtime.prelabel(params, connection, exclusive=False)
        except Exception:  # the answer for the finished tasks must still go out
            log.exception("predict: could not queue a bulk job for %d unfinished task(s)", len(later))
            return
        self.handed_off += len(later)
        log.info("predict: %d task(s) did not fit SAM3_PREDICT_DEADLINE (%.0f s); bulk job %s writes them "
                 "(GET /jobs/%s)", len(later), self.settings.predict_deadline, job.id, job.id)


__all__ = ["BulkHandoff", "project_id"]
