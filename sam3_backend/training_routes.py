"""HTTP for fine-tuning: Label Studio's ``/train`` and ``/job_status``, versions, rollback, jobs.

``init_training(app, settings, holder, fetcher)`` builds the ``TrainingService``, registers this
blueprint and a size guard for webhook bodies; ``app.py`` calls it and routes ``/webhook``,
``/setup`` and ``/predict`` through the service (see ``training``).

* ``POST /train`` — Label Studio's older training call (all annotated tasks in the body)
* ``POST /job_status`` — Label Studio asks about a job it started: ``{"job": id}``
* ``GET /versions`` — base + every version, and per project what it serves, with metrics
* ``GET /versions/<id>`` — a version's report; ``GET /versions/<id>/plot.png`` its plot
* ``POST /versions/rollback`` — ``{"version": "project-3-v1"}`` or ``{"version": "base", "project": 3}``
* training jobs are jobs like any other: ``GET /jobs?kind=train``, ``GET /jobs/<id>``, ``POST /jobs/<id>/cancel``
* ``POST /train/start`` — ``{"project": 3}``: start training from the store (+ Label Studio's API)
"""

from __future__ import annotations

import atexit

from flask import Blueprint, Response, current_app, jsonify, request

from .engine.versions import PLOT, VersionError
from .errors import BadRequest, BackendError
from .jobs.store import JobState
from .jobs.train import KIND, TrainTrigger
from .training import TrainingService, project_id

bp = Blueprint("training", __name__)

# Label Studio's names for job states (its ML-backend /job_status protocol).
_LS_STATES = {JobState.QUEUED: "queued", JobState.RUNNING: "started", JobState.DONE: "finished",
              JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}


class NotFound(BackendError):
    status = 404


def _training() -> TrainingService:
    return current_app.extensions["sam3"]["training"]


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _project_arg(value) -> int | None:
    if value in (None, ""):
        return None
    project = project_id(value)
    if project is None:
        raise BadRequest(f"project {value!r} is not a Label Studio project id")
    return project


def _job_body(job) -> dict:
    body = job.to_dict()
    body["job_status"] = _LS_STATES[job.state]
    return body


@bp.post("/train")
def train_legacy():
    body = _body()
    project = _project_arg(body.get("project"))
    tasks = body.get("annotations")
    if project is None or not isinstance(tasks, list):
        raise BadRequest("/train needs 'project' and 'annotations' (the annotated tasks), as Label Studio sends them")
    config = body.get("label_config") if isinstance(body.get("label_config"), str) else None
    job, created = _training().start(TrainTrigger(project, "/train", config, tasks))
    return jsonify({"job": job.id, "job_state": job.state.value, "queued": created}), 201


@bp.post("/train/start")
def train_start():
    project = _project_arg(_body().get("project"))
    if project is None:
        raise BadRequest("give the project to train: {\"project\": 3}")
    job, created = _training().start(TrainTrigger(project, "http"))
    return jsonify({"job": job.id, "job_state": job.state.value, "queued": created}), 201 if created else 200


@bp.post("/job_status")
def job_status():
    job = _training().jobs.get(str(_body().get("job")))
    if job is None or job.kind != KIND:
        return jsonify({"error": "no such training job"}), 410  # Label Studio reads 410 as "removed"
    return jsonify(_job_body(job))


@bp.get("/versions")
def versions():
    return jsonify(_training().listing(_project_arg(request.args.get("project"))))


def _version(version_id: str):
    try:
        return _training().versions.get(version_id)
    except VersionError as exc:
        raise NotFound(str(exc)) from None


@bp.get("/versions/<version_id>")
def version_report(version_id: str):
    return jsonify(_version(version_id).report)


@bp.get("/versions/<version_id>/plot.png")
def version_plot(version_id: str):
    path = _version(version_id).path / PLOT
    if not path.is_file():
        raise NotFound(f"version {version_id} has no plot")
    return Response(path.read_bytes(), mimetype="image/png")


@bp.post("/versions/rollback")
def rollback():
    body = _body()
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise BadRequest("'version' must be a version id (see GET /versions) or \"base\"")
    return jsonify(_training().rollback(version, _project_arg(body.get("project"))))


def init_training(app, settings, holder, fetcher) -> TrainingService:
    """Build the training service, register the routes and the webhook body-size guard."""
    from .jobs.http import ready_engine  # waits for the model a job needs (as bulk jobs do)

    training = TrainingService(settings, holder, fetcher, engine=lambda: ready_engine(holder))
    atexit.register(training.executor.shutdown)  # a training job cut short ends "interrupted", not lost
    app.extensions["sam3"]["training"] = training
    app.register_blueprint(bp)

    @app.before_request
    def _limit_webhook_bodies():
        if request.path in ("/webhook", "/train"):
            request.max_content_length = settings.webhook_max_bytes  # also bounds chunked bodies
            if (request.content_length or 0) > settings.webhook_max_bytes:
                return jsonify({"error": f"request body larger than WEBHOOK_MAX_BYTES ({settings.webhook_max_bytes} "
                                "bytes)", "type": "PayloadTooLarge"}), 413
        return None

    return training
