"""The glue: Label Studio request → prompts → engine → Label Studio results.

The only module besides ``app`` that knows both sides. Each request is three steps: decode
(Label Studio JSON → typed prompts, validated before any download), predict (engine), encode
(instances → regions). Batch prelabeling is ``prelabeler.ConceptPrelabeler`` (shared with bulk
jobs); it isolates failures per task: one broken image gives that task no prediction (``[]``)
and a logged error, never a failed request. With a bulk hand-off installed (``jobs.handoff``), a
selection too large for the request deadline is partly answered and partly handed to a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol
from collections.abc import Sequence

from .config import Settings
from .engine.scheduler import Priority
from .errors import BadRequest, EngineNotReady
from .ls.connections import MAX_PROJECTS
from .ls.label_config import ImageProjectConfig
from .ls.media import MediaFetcher
from .ls.prompts import parse_context, to_engine_prompts
from .ls.results import prediction
from .ls.video_config import VideoProjectConfig, parse_project_config
from .metrics import Metrics
from .prelabeler import ConceptPrelabeler, TaskOutcome, encode_prediction, image_url
from .video_service import VideoService
from .types import ConceptPrompt, EngineStats, GeometryPrompt, ImageInput, Instance

log = logging.getLogger(__name__)


class ImageEngine(Protocol):
    """What the service needs from the model side (``engine.image.Sam3ImageEngine``)."""

    model_version: str
    is_test_model: bool
    stats: EngineStats

    def segment_objects(self, image: ImageInput, objects: Sequence[GeometryPrompt], *, priority) -> list[Instance]: ...

    def segment_concepts(
        self, images: Sequence[ImageInput], concepts: Sequence[ConceptPrompt], *, threshold: float,
        max_instances: int, batch_size: int, priority,
    ) -> list[list[Instance]]: ...


# Webhook actions Label Studio 1.23 sends; anything else is counted as "other" (bounded labels).
WEBHOOK_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
    "START_TRAINING", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED",
    "REVIEW_CREATED", "REVIEW_UPDATED", "REVIEWS_DELETED",
})


def project_key(payload: dict) -> str | None:
    """Label Studio's ``project`` field (``"<id>.<created_at>"``, sometimes a bare id) as a key."""
    project = payload.get("project")
    if project is None or project == "":
        return None
    if isinstance(project, bool) or not isinstance(project, (str, int)):
        raise BadRequest(f"'project' must be a string like \"3.1712345678\" or an integer, got {project!r}")
    key = str(project).strip()
    if len(key) > 100:
        raise BadRequest("'project' is too long (more than 100 characters)")
    return key


def _optional_string(payload: dict, name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string, got {type(value).__name__}")
    return value


class PredictionService:
    def __init__(self, settings: Settings, engine: ImageEngine, fetcher: MediaFetcher, metrics: Metrics | None = None):
        self.settings = settings
        self.engine = engine
        self.fetcher = fetcher
        self.metrics = metrics or Metrics()
        self._projects: OrderedDict[str, str] = OrderedDict()  # project → label config from /setup (bounded)
        self._projects_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="media")
        self.prelabeler = ConceptPrelabeler(settings, engine, fetcher, pool=self._pool,
                                            observe=self.metrics.observe_stage)
        self.bulk_handoff = None  # jobs.handoff.BulkHandoff, installed by the jobs blueprint
        self.video = VideoService(settings, lambda: self.engine, fetcher)

    # ------------------------------------------------------------------ /setup
    def setup(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise BadRequest("the /setup body must be a JSON object with 'schema' (the label config)")
        project = project_key(payload)
        hostname = _optional_string(payload, "hostname")
        token = _optional_string(payload, "access_token")
        schema = payload.get("schema")
        if schema is None:
            schema = payload.get("label_config")
        if schema is not None:
            if not isinstance(schema, str):
                raise BadRequest("'schema' must be the project's label config XML string")
            parse_project_config(schema)  # validate now: Label Studio shows this message on Connect
            if project is not None:
                with self._projects_lock:
                    self._projects.pop(project, None)
                    self._projects[project] = schema
                    while len(self._projects) > MAX_PROJECTS:
                        self._projects.popitem(last=False)
        self.fetcher.setup(project, hostname, token)
        return {"model_version": self.engine.model_version}

    # ------------------------------------------------------------------ /predict
    def predict(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise BadRequest("the request body must be a JSON object with 'tasks'")
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        project = project_key(payload)
        config = parse_project_config(self._label_config(payload, project))
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        context = params.get("context")
        mode = "batch" if context is None else "interactive"
        if isinstance(config, VideoProjectConfig):
            self.metrics.predictions.labels(f"video_{mode}").inc()
            return self.video.predict(tasks, context, config, project)  # video projects: video_service
        started = time.perf_counter()
        self.metrics.predictions.labels(mode).inc()
        if context is None:
            results = self._prelabel(tasks, config, project)
        else:
            results = [self._interactive(tasks, context, config, project)] if tasks else []
        self.metrics.tasks.labels(mode).inc(len(tasks))
        log.info(
            "predict: %s, %d task(s), %d region(s), %.3f s",
            mode, len(tasks), sum(len(r["result"]) for r in results if isinstance(r, dict)),
            time.perf_counter() - started,
        )
        return {"results": results, "model_version": self.engine.model_version}

    def _label_config(self, payload: dict, project: str | None) -> str:
        xml = payload.get("label_config")
        if isinstance(xml, str) and xml.strip():
            return xml
        with self._projects_lock:
            known = self._projects.get(project) if project is not None else None
        if known is not None:
            return known
        raise BadRequest("no 'label_config' in the request and no /setup seen for this project")

    def _load(self, task: dict, config: ImageProjectConfig, project: str | None) -> ImageInput:
        return self.fetcher.fetch_image(image_url(task, config), task.get("id"), project)

    def _empty(self) -> dict:
        return prediction([], [], self.engine.model_version)

    def _prelabel(self, tasks: list[dict], config: ImageProjectConfig, project: str | None) -> list[dict]:
        """All tasks, one result each, in order; every label of the config is a concept."""
        self.prelabeler.engine = self.engine  # the app swaps the engine in once loading finishes
        if self.bulk_handoff is not None:
            return self.bulk_handoff.prelabel(self, tasks, config, project)
        return [self.answer(o) for chunk in self.prelabeler.run(tasks, config, project=project) for o in chunk]

    def answer(self, outcome: TaskOutcome) -> dict | list:
        """A task's /predict item: its prediction, or ``[]`` when it has none (counted as a task
        error). Label Studio stores nothing for ``[]``, so a task whose image could not be read
        (a wrong token, a file not there yet) is asked for again by the next "Retrieve
        predictions"; an empty prediction would make it skip that task for this model version.
        A task whose image was read but holds no instance gets an empty prediction, as it should."""
        if outcome.ok:
            return outcome.prediction
        self.metrics.task_errors.labels(outcome.reason or "internal").inc()
        return []

    def _encode(self, instances, labels, config, image: ImageInput) -> dict:
        return encode_prediction(instances, labels, config, image, polygon_tolerance=self.settings.polygon_tolerance,
                                 model_version=self.engine.model_version, observe=self.metrics.observe_stage)

    def _interactive(self, tasks: list[dict], context: Any, config: ImageProjectConfig, project: str | None) -> dict:
        if not isinstance(context, dict):
            raise BadRequest("'params.context' must be an object with a 'result' list")
        query = parse_context(context, config)
        if query is None or query.is_empty():
            return self._empty()
        image = self._load(tasks[0], config, project)
        prompts = to_engine_prompts(query, image.width, image.height)
        fallback = query.label or self._label_for_text(query.text, config)
        if prompts.concept is not None:
            instances = self.engine.segment_concepts(
                [image], [prompts.concept], threshold=self.settings.score_threshold,
                max_instances=self.settings.max_instances, batch_size=1, priority=Priority.INTERACTIVE,
            )[0]
            labels = [fallback] * len(instances)
        else:
            instances = self.engine.segment_objects(image, prompts.objects, priority=Priority.INTERACTIVE)
            per_object = list(prompts.object_labels) or [None] * len(prompts.objects)
            labels = [per_object[inst.prompt_index] or fallback for inst in instances]
        return self._encode(instances, labels, _suggestion_outputs(config), image)

    @staticmethod
    def _label_for_text(text: str | None, config: ImageProjectConfig) -> str | None:
        """A typed concept gets the config label it names (case-insensitive), else the first label;
        a config without labels (``<Brush>`` with a smart ``<KeyPoint>``) gets unlabelled regions."""
        if text:
            for label in config.labels:
                if label.lower() == text.strip().lower():
                    return label
        return config.labels[0] if config.labels else None

    # ------------------------------------------------------------------ /webhook
    def webhook(self, payload: Any) -> dict:
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            raise BadRequest("a webhook body must be a JSON object with an 'action'")
        action = payload["action"]
        self.metrics.webhooks.labels(action if action in WEBHOOK_ACTIONS else "other").inc()
        log.info("webhook %s acknowledged", action[:64])
        return {"status": "ok", "action": action[:64]}


def _suggestion_outputs(config: ImageProjectConfig) -> ImageProjectConfig:
    """Interactive answers are suggestions for the object(s) just prompted: one region each, in
    the richest output the config has (brush, else polygon, else rectangle). Prelabels fill all."""
    if config.brush is not None:
        return replace(config, polygon=None, rectangle=None)
    if config.polygon is not None:
        return replace(config, rectangle=None)
    return config


class NotReadyEngine:
    """Placeholder while the model loads (or after it failed): every use says why."""

    is_test_model = False
    stats = EngineStats()

    def __init__(self, reason: str = "the SAM 3 model is still loading; retry in a moment"):
        self.reason = reason

    @property
    def model_version(self) -> str:
        raise EngineNotReady(self.reason)

    def segment_objects(self, *a, **k):
        raise EngineNotReady(self.reason)

    def segment_concepts(self, *a, **k):
        raise EngineNotReady(self.reason)
