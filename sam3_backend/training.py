"""Fine-tuning glue for the app: annotation webhooks, training triggers, served versions.

``TrainingService`` owns the annotation store, the job store and executor, the version store
and the per-process ``ServedModels``. The app calls it from three places:

* ``/webhook``: annotation actions are written to the store before the reply; ``START_TRAINING``
  (and enough changed annotations, with ``TRAIN_AUTO_AFTER``) queue a training job; the job runs
  in a thread of this process, never inside the request;
* ``/setup`` and ``/predict``: ``service_for`` gives the request a view of the prediction
  service whose engine is the one the project serves (base or fine-tuned version);
* the blueprint in ``training_routes`` (``/train``, ``/versions``, rollback, job status).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from .config import Settings
from .engine.versions import ServedModels, VersionError, VersionStore, model_version
from .errors import BadRequest
from .jobs.executor import InProcessExecutor
from .jobs.store import Job, JobConflict, JobStore
from .ls.client import LabelStudioClient, LabelStudioUnavailable
from .jobs.train import KIND, TrainDeps, TrainTrigger, run_train, scope_of
from .store.annotations import STORE_ACTIONS, AnnotationStore, Limits

log = logging.getLogger(__name__)


def project_id(value: Any) -> int | None:
    """Label Studio's project id from ``{"id": N}``, ``N`` or ``"N.<created_at>"``; None if absent."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        head = value.split(".")[0].strip()
        return int(head) if head.isdigit() and 0 < int(head) < 2**63 else None
    return None


class TrainingService:
    def __init__(self, settings: Settings, holder, fetcher, *, executor: InProcessExecutor | None = None,
                 engine: Callable[[], object] | None = None):
        self.settings = settings
        self.holder = holder  # app.EngineHolder: .engine is the base engine once loaded
        self.fetcher = fetcher  # ls.media.MediaFetcher: images, and the project's Label Studio connection
        self.annotations = AnnotationStore(settings.annotations_db, Limits(max_bulk=10_000))
        self.jobs = JobStore(settings.jobs_db)
        # Training has its own worker: a long bulk prelabel never holds a training job back, and the
        # reverse (they share the model through the scheduler, one call at a time).
        self.executor = executor or InProcessExecutor(self.jobs, workers=1)
        self._engine = engine or (lambda: holder.engine)  # for jobs: the loaded base engine (may wait)
        self.versions = VersionStore(settings.versions_dir)
        self.served = ServedModels(self.versions, settings.served_versions_max)

    # ------------------------------------------------------------------ serving
    def engine_for(self, project: int | None, base=None):
        base = self.holder.engine if base is None else base
        return base if project is None else self.served.engine_for(scope_of(project), base)

    def service_for(self, service, payload: Any):
        """``service`` itself, or a shallow copy of it that predicts with the project's version."""
        project = project_id(payload.get("project")) if isinstance(payload, dict) else None
        engine = self.engine_for(project, service.engine)
        if engine is service.engine:
            return service
        view = copy.copy(service)  # shares metrics, fetcher, label configs and the pool
        view.engine = engine
        return view

    # ------------------------------------------------------------------ webhooks
    def on_webhook(self, payload: dict) -> dict:
        """Store annotation actions (durably, before the reply) and start training when asked;
        returns what to add to the webhook's reply. A malformed annotation payload is acknowledged
        (the reply says why nothing was stored); ``START_TRAINING`` without a project is a 400, so
        Label Studio shows that training did not start."""
        action = payload.get("action")
        if action in STORE_ACTIONS:
            try:
                result = self.annotations.ingest(payload)
            except BadRequest as exc:  # acknowledged like every webhook (Label Studio cannot fix it), not stored
                log.warning("webhook %s not stored: %s", action, exc)
                return {"store": {"error": str(exc)}}
            reply: dict = {"store": result.as_dict()}
            if result.project is not None and action != "ANNOTATIONS_DELETED":
                reply |= self._maybe_auto_train(result.project)
            return reply
        if action == "START_TRAINING":
            project = project_id(payload.get("project"))
            if project is None:
                raise BadRequest("START_TRAINING needs 'project' with the project's id")
            config = payload["project"].get("label_config") if isinstance(payload.get("project"), dict) else None
            job, created = self.start(TrainTrigger(project, "START_TRAINING", config if isinstance(config, str) else None))
            return {"job": job.id, "job_state": job.state.value, "queued": created}
        return {}

    def _maybe_auto_train(self, project: int) -> dict:
        n = self.settings.train_auto_after
        if n <= 0 or self.annotations.changes_since_training(project) < n:
            return {}
        job, created = self.start(TrainTrigger(project, "auto"))
        return {"job": job.id, "job_state": job.state.value, "queued": created} if created else {}

    # ------------------------------------------------------------------ jobs
    def deps(self) -> TrainDeps:
        return TrainDeps(self.settings, self._engine, self.fetcher, self.annotations, self.versions, self.served,
                         self.export)

    def start(self, trigger: TrainTrigger) -> tuple[Job, bool]:
        """Queue a training job for the project unless one is queued or running: (job, created)."""
        try:
            job = self.jobs.create(KIND, str(trigger.project), {"source": trigger.source}, exclusive=True)
        except JobConflict as conflict:
            log.info("training for project %s requested (%s) while job %s is %s", trigger.project,
                     trigger.source, conflict.existing.id, conflict.existing.state.value)
            return conflict.existing, False
        deps = self.deps()
        self.executor.submit(job, lambda ctx: run_train(ctx, trigger, deps), exclusive=True)
        log.info("training job %s queued for project %s (%s)", job.id, trigger.project, trigger.source)
        return job, True

    def export(self, project: int):
        """Label Studio's annotated tasks of ``project``, with the project's connection (the
        environment's URL + key, else the hostname + token of that project's /setup)."""
        from .ls.client import ProjectExport

        access = self.fetcher.connections.api_access(project)
        if access is None:
            raise LabelStudioUnavailable("no Label Studio connection for the project: set LABEL_STUDIO_URL and "
                                         "LABEL_STUDIO_API_KEY, or connect the backend from Label Studio")
        client = LabelStudioClient(access, timeout=self.settings.label_studio_timeout,
                                   retries=self.settings.label_studio_retries)
        config = client.project(project).label_config
        tasks = [t for page in client.annotated_tasks(project) for t in page][: self.settings.train_max_images * 4]
        return ProjectExport(config or None, tasks)

    # ------------------------------------------------------------------ versions
    def listing(self, project: int | None = None) -> dict:
        base = self.holder.engine
        try:
            base_version = base.model.backbone_version
        except Exception:  # not loaded yet
            base_version = None
        scopes = [scope_of(project)] if project is not None else self.versions.scopes()
        projects = {}
        for scope in scopes:
            served = self.versions.served(scope)
            projects[scope] = {
                "served": served,
                "served_model_version": model_version(base_version, served) if base_version else None,
                "versions": [v.summary() | {"model_version": model_version(v.base_version, v.id),
                                            "served": v.id == served} for v in self.versions.list(scope)],
            }
        names = ([base_version] if base_version else []) + [
            model_version(v["base_version"], v["id"]) for p in projects.values() for v in p["versions"]]
        return {"versions": names, "base_model_version": base_version, "projects": projects,
                "model_dir": str(self.settings.model_dir)}

    def rollback(self, version: str | None, project: int | None = None) -> dict:
        """Serve ``version`` (None or "base": the base model of ``project``) from now on, atomically."""
        if version in (None, "", "base"):
            if project is None:
                raise BadRequest("to go back to the base model, name the project")
            scope, version = scope_of(project), None
        else:
            version = version.split("+")[-1]  # a full model_version works too
            try:
                scope = VersionStore.scope_of(version)
            except VersionError as exc:
                raise BadRequest(str(exc)) from None
            if project is not None and scope != scope_of(project):
                raise BadRequest(f"version {version} belongs to {scope}, not to project {project}")
        base = self.holder.engine
        base_version = getattr(getattr(base, "model", None), "backbone_version", None)
        try:
            pointer = self.versions.set_served(scope, version, reason="rollback", base_version=base_version)
        except VersionError as exc:
            raise BadRequest(str(exc)) from None
        return {"scope": scope, **pointer}
