"""One process's job machinery: the store, an executor, and how a prelabel job is put together.

Shared by the HTTP API (``jobs.http``), the /predict deadline hand-off (``jobs.handoff``) and the
CLI, so a job started any of these ways runs the same code. The Label Studio connection (URL +
key) is always passed in explicitly: it can differ per project or per request.

A prelabel job predicts with the version its project serves when the job starts (a fine-tuned
one after a promotion, see ``engine.versions``), in this process and on Ray actors alike, and its
predictions carry that version's ``model_version``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

from ..config import Settings
from ..engine.versions import ServedModels, VersionStore, model_version
from ..errors import BadRequest
from ..ls.client import LabelStudioClient, ApiAccess
from .executor import InProcessExecutor, JobContext
from .prelabel import KIND, LocalPredictor, PrelabelParams, job_prelabeler, run_prelabel
from .store import Job, JobNotFound, JobStore
from .train import scope_of

log = logging.getLogger(__name__)


def connection_from_settings(settings: Settings) -> ApiAccess | None:
    """LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, or None when either is missing."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        return None
    return ApiAccess(settings.label_studio_url, settings.label_studio_api_key)


class JobsRuntime:
    """``engine`` returns the image engine for in-process jobs (called inside the job, so a model
    that fails to load fails the job with the reason, not the request that queued it)."""

    def __init__(self, settings: Settings, *, engine: Callable[[], object], store: JobStore | None = None,
                 executor=None, ls_backoff: float = 1.0, model_version: Callable[[], str] | None = None,
                 engine_for: Callable[[object, object], object] | None = None):
        self.settings = settings
        self.versions = VersionStore(settings.versions_dir)
        if engine_for is None:  # the CLI: follow MODEL_DIR's served versions like the server does
            served = ServedModels(self.versions, settings.served_versions_max)
            engine_for = lambda project, engine: served.engine_for(scope_of(project), engine)  # noqa: E731
        self._engine_for = engine_for  # (project, base engine) → the engine the project serves (fine-tuning)
        self._model_version = model_version  # the base's, known without loading the model (the CLI)
        self.store = store or JobStore(settings.jobs_db)
        self.executor = executor or InProcessExecutor(self.store, workers=settings.jobs_workers)
        self._engine = engine
        self._ls_backoff = ls_backoff
        self._lock = threading.Lock()

    def client(self, connection: ApiAccess) -> LabelStudioClient:
        return LabelStudioClient(connection, timeout=self.settings.label_studio_timeout,
                                 retries=self.settings.label_studio_retries, backoff=self._ls_backoff)

    def served_version(self, project) -> str | None:
        """The fine-tuned version ``project`` serves (None: the base model)."""
        return self.versions.served(scope_of(project))

    def predictor(self, params: PrelabelParams, connection: ApiAccess):
        served = self.served_version(params.project)
        if params.ray:
            from .ray_prelabel import RayPredictor

            return RayPredictor.from_settings(self.settings, connection, actors=params.actors,
                                              served=served, versions=self.versions)
        version = model_version(self._model_version(), served) if self._model_version else None
        return LocalPredictor(lambda: job_prelabeler(self.settings, self._project_engine(params.project), connection),
                              model_version=version)

    def _project_engine(self, project):
        """The engine for a job of ``project``: its fine-tuned version when one is served."""
        return self._engine_for(project, self._engine())

    def prelabel(self, params: PrelabelParams, connection: ApiAccess | None, *, exclusive: bool = True,
                 resumed_from: str | None = None) -> Job:
        """Queue a prelabel job. ``exclusive``: refuse (409) while one is queued or running for the
        project; without it the job waits for the running one to end (the /predict hand-off)."""
        if connection is None:
            raise BadRequest("no Label Studio connection for the job: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                             "(a legacy token or a personal access token)")
        job = self.store.create(KIND, params.project, params.to_dict(), exclusive=exclusive,
                                resumed_from=resumed_from)
        self.executor.submit(job, partial(self._run, params, connection), exclusive=True)
        return job

    def _run(self, params: PrelabelParams, connection: ApiAccess, ctx: JobContext) -> dict:
        predictor = self.predictor(params, connection)
        try:
            return run_prelabel(ctx, params, self.client(connection), predictor,
                                write_batch=self.settings.bulk_write_batch)
        finally:
            predictor.close()

    def resume(self, job_id: str, connection: ApiAccess | None) -> Job:
        """A new job with the stored params of ``job_id`` (it skips the tasks already done)."""
        old = self.store.get(job_id)
        if old is None:
            raise JobNotFound(job_id)
        if old.kind != KIND:
            raise BadRequest(f"job {job_id} is a {old.kind} job; only prelabel jobs resume here")
        if old.state.active:
            raise BadRequest(f"job {job_id} is still {old.state.value}; it needs no resume")
        return self.prelabel(PrelabelParams.from_dict(old.params), connection, resumed_from=job_id)

    def shutdown(self, timeout: float = 10.0) -> None:
        self.executor.shutdown(timeout)


__all__ = ["JobsRuntime", "connection_from_settings"]
