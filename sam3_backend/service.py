"""The glue: Label Studio request → prompts → engine → Label Studio results.

The only module besides ``app`` that knows both sides. Each request is three steps: decode
(Label Studio JSON → typed prompts, validated before any download), predict (engine), encode
(instances → regions). Batch prelabeling is ``prelabeler.ConceptPrelabeler`` (shared with bulk
jobs); it isolates failures per task: one broken image gives that task an empty result and a
logged error, never a failed request. With a bulk hand-off installed (``jobs.handoff``), a
selection too large for the request deadline is partly answered and partly handed to a job.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from collections.abc import Sequence

from .config import Settings
from .errors import BadRequest, EngineNotReady
from .ls.label_config import ImageProjectConfig, parse_label_config
from .ls.media import MediaFetcher
from .ls.prompts import parse_context, to_engine_prompts
from .ls.results import prediction
from .prelabeler import ConceptPrelabeler, TaskOutcome, encode_prediction, image_url
from .types import ConceptPrompt, EngineStats, GeometryPrompt, ImageInput, Instance

log = logging.getLogger(__name__)


class ImageEngine(Protocol):
    """What the service needs from the model side (``engine.image.Sam3ImageEngine``)."""

    model_version: str
    is_test_model: bool
    stats: EngineStats

    def segment_objects(self, image: ImageInput, objects: Sequence[GeometryPrompt]) -> list[Instance]: ...

    def segment_concepts(
        self, images: Sequence[ImageInput], concepts: Sequence[ConceptPrompt], *, threshold: float,
        max_instances: int, batch_size: int,
    ) -> list[list[Instance]]: ...


@dataclass
class ServiceMetrics:
    predict_requests: int = 0
    interactive_requests: int = 0
    tasks_predicted: int = 0
    task_errors: int = 0
    last_predict_seconds: float = 0.0
    webhooks: dict[str, int] = field(default_factory=dict)


class PredictionService:
    def __init__(self, settings: Settings, engine: ImageEngine, fetcher: MediaFetcher):
        self.settings = settings
        self.engine = engine
        self.fetcher = fetcher
        self.metrics = ServiceMetrics()
        self._projects: dict[str, str] = {}  # project id → label config from /setup
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="media")
        self.prelabeler = ConceptPrelabeler(settings, engine, fetcher, pool=self._pool)
        self.bulk_handoff = None  # jobs.handoff.BulkHandoff, installed by the jobs blueprint

    # ------------------------------------------------------------------ /setup
    def setup(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise BadRequest("the /setup body must be a JSON object with 'schema' (the label config)")
        schema = payload.get("schema") or payload.get("label_config")
        if schema is not None:
            if not isinstance(schema, str):
                raise BadRequest("'schema' must be the project's label config XML string")
            parse_label_config(schema)  # validate now: Label Studio shows this message on Connect
            if payload.get("project"):
                self._projects[str(payload["project"]).split(".")[0]] = schema
        self.fetcher.configure(payload.get("hostname"), payload.get("access_token"))
        return {"model_version": self.engine.model_version}

    # ------------------------------------------------------------------ /predict
    def predict(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise BadRequest("the request body must be a JSON object with 'tasks'")
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        config = parse_label_config(self._label_config(payload))
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        context = params.get("context")
        started = time.perf_counter()
        self.metrics.predict_requests += 1
        if context is None:
            results = self._prelabel(tasks, config, payload.get("project"))
        else:
            self.metrics.interactive_requests += 1
            results = [self._interactive(tasks, context, config)] if tasks else []
        self.metrics.tasks_predicted += len(tasks)
        self.metrics.last_predict_seconds = time.perf_counter() - started
        log.info(
            "predict: %s, %d task(s), %d region(s), %.3f s",
            "batch" if context is None else "interactive", len(tasks),
            sum(len(r["result"]) for r in results if isinstance(r, dict)), self.metrics.last_predict_seconds,
        )
        return {"results": results, "model_version": self.engine.model_version}

    def _label_config(self, payload: dict) -> str:
        xml = payload.get("label_config")
        if isinstance(xml, str) and xml.strip():
            return xml
        project = str(payload.get("project") or "").split(".")[0]
        if project in self._projects:
            return self._projects[project]
        raise BadRequest("no 'label_config' in the request and no /setup seen for this project")

    def _load(self, task: dict, config: ImageProjectConfig) -> ImageInput:
        return self.fetcher.fetch_image(image_url(task, config), task.get("id"))

    def _empty(self) -> dict:
        return prediction([], [], self.engine.model_version)

    def _prelabel(self, tasks: list[dict], config: ImageProjectConfig, project: Any = None) -> list[dict]:
        """All tasks, one result each, in order; every label of the config is a concept."""
        self.prelabeler.engine = self.engine  # the app swaps the engine in once loading finishes
        if self.bulk_handoff is not None:
            return self.bulk_handoff.prelabel(self, tasks, config, project)
        return [self.answer(o) for chunk in self.prelabeler.run(tasks, config) for o in chunk]

    def answer(self, outcome: TaskOutcome) -> dict:
        """A task's /predict result: its prediction, or an empty one (counted as a task error)."""
        if outcome.ok:
            return outcome.prediction
        self.metrics.task_errors += 1
        return self._empty()

    def _encode(self, instances, labels, config, image: ImageInput) -> dict:
        return encode_prediction(instances, labels, config, image, polygon_tolerance=self.settings.polygon_tolerance,
                                 model_version=self.engine.model_version)

    def _interactive(self, tasks: list[dict], context: Any, config: ImageProjectConfig) -> dict:
        if not isinstance(context, dict):
            raise BadRequest("'params.context' must be an object with a 'result' list")
        query = parse_context(context, config)
        if query is None or query.is_empty():
            return self._empty()
        image = self._load(tasks[0], config)
        prompts = to_engine_prompts(query, image.width, image.height)
        fallback = query.label or self._label_for_text(query.text, config)
        if prompts.concept is not None:
            instances = self.engine.segment_concepts(
                [image], [prompts.concept], threshold=self.settings.score_threshold,
                max_instances=self.settings.max_instances, batch_size=1,
            )[0]
            labels = [fallback] * len(instances)
        else:
            instances = self.engine.segment_objects(image, prompts.objects)
            per_object = list(prompts.object_labels) or [None] * len(prompts.objects)
            labels = [per_object[inst.prompt_index] or fallback for inst in instances]
        return self._encode(instances, labels, _suggestion_outputs(config), image)

    @staticmethod
    def _label_for_text(text: str | None, config: ImageProjectConfig) -> str:
        """A typed concept gets the config label it names (case-insensitive), else the first label."""
        if text:
            for label in config.labels:
                if label.lower() == text.strip().lower():
                    return label
        if not config.labels:
            raise BadRequest("the label config has no labels to attach to the prediction")
        return config.labels[0]

    # ------------------------------------------------------------------ /webhook
    def webhook(self, payload: Any) -> dict:
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            raise BadRequest("a webhook body must be a JSON object with an 'action'")
        action = payload["action"]
        self.metrics.webhooks[action] = self.metrics.webhooks.get(action, 0) + 1
        log.info("webhook %s acknowledged", action)
        return {"status": "ok", "action": action}


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
