"""The jobs HTTP API (a Flask blueprint) and the /predict hand-off, installed by ``create_app``.

    POST /jobs/prelabel        {"project": 12, "labels": [...], "filter": "unlabeled"|"all",
                                "batch_size": N, "ray": false, "actors": N}  → 202 {"job": ...}
    GET  /jobs                 ?kind=&project=&state=&limit=                 → {"jobs": [...]}
    GET  /jobs/<id>                                                          → {"job": ...}
    POST /jobs/<id>/cancel                                                   → 202 {"job": ...}
    POST /jobs/<id>/resume     a new job with the same params, skipping finished tasks → 202

The Label Studio connection of a job comes from ``connection_for(project)`` (default:
LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY), never from the request body, so the API cannot be
used to send the key elsewhere. In-process jobs use the app's model once it has loaded.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable

from flask import Blueprint, Flask, jsonify, request

from ..config import Settings
from ..errors import BadRequest, EngineNotReady
from ..ls.client import ApiAccess
from .handoff import BulkHandoff
from .prelabel import PrelabelParams
from .runtime import JobsRuntime, connection_from_settings
from .store import JobNotFound, JobState

log = logging.getLogger(__name__)
MODEL_WAIT_SECONDS = 900.0  # how long a queued in-process job waits for the model to load


def ready_engine(holder, timeout: float = MODEL_WAIT_SECONDS):
    """The app's engine once loaded (a job queued at startup waits for it); EngineNotReady if it failed."""
    deadline = time.monotonic() + timeout
    while holder.state == "loading" and time.monotonic() < deadline:
        time.sleep(0.5)
    if holder.state != "ready":
        raise EngineNotReady(holder.error or "the SAM 3 model did not finish loading; check /health")
    return holder.engine


def install_jobs(app: Flask, settings: Settings, holder, service, *,
                 connection_for: Callable[[str | int], ApiAccess | None] | None = None,
                 engine_for: Callable[[object, object], object] | None = None) -> JobsRuntime:
    """Register the /jobs routes, the /predict hand-off, and job recovery/shutdown for this process.
    ``engine_for(project, base engine)``: the engine a project serves (its fine-tuned version)."""
    connection_for = connection_for or (lambda project: connection_from_settings(settings))
    runtime = JobsRuntime(settings, engine=lambda: ready_engine(holder), engine_for=engine_for)
    recovered = runtime.store.recover()
    if recovered:
        log.warning("%d job(s) of stopped processes marked interrupted (resume them): %s", len(recovered),
                    ", ".join(j.id for j in recovered))
    atexit.register(runtime.shutdown)
    service.bulk_handoff = BulkHandoff(runtime, settings, connection_for)
    service.video.jobs = runtime.store  # video tracks that outlive their request are recorded as jobs
    bp = Blueprint("jobs", __name__)

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest('the body must be a JSON object like {"project": 12}')
        return data

    def require(job_id: str):
        job = runtime.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    @bp.post("/jobs/prelabel")
    def prelabel():
        data = dict(body())
        data.setdefault("ray", bool(settings.ray_address))
        data["source"] = "http"
        params = PrelabelParams.from_dict(data)
        job = runtime.prelabel(params, connection_for(params.project))
        return jsonify({"job": job.to_dict()}), 202, {"Location": f"/jobs/{job.id}"}

    @bp.get("/jobs")
    def list_jobs():
        args = request.args
        states = [s for s in args.get("state", "").split(",") if s]
        try:
            states = [JobState(s) for s in states]
            limit = int(args.get("limit", 50))
        except ValueError as exc:
            raise BadRequest(f"bad query: {exc}; state is one of {', '.join(s.value for s in JobState)}") from exc
        jobs = runtime.store.list(kind=args.get("kind") or None, project=args.get("project") or None,
                                  states=states or None, limit=max(1, min(limit, 500)))
        return jsonify({"jobs": [j.to_dict() for j in jobs]})

    @bp.get("/jobs/<job_id>")
    def show(job_id: str):
        return jsonify({"job": require(job_id).to_dict()})

    @bp.post("/jobs/<job_id>/cancel")
    def cancel(job_id: str):
        require(job_id)
        return jsonify({"job": runtime.store.cancel(job_id).to_dict()}), 202

    @bp.post("/jobs/<job_id>/resume")
    def resume(job_id: str):
        old = require(job_id)
        job = runtime.resume(job_id, connection_for(int(old.project)) if old.project else None)
        return jsonify({"job": job.to_dict()}), 202, {"Location": f"/jobs/{job.id}"}

    app.register_blueprint(bp)
    app.extensions["sam3"]["jobs"] = runtime
    return runtime


__all__ = ["install_jobs"]
