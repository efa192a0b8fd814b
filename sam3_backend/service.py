"""The glue: Label Studio request → prompts → engine → Label Studio results.

The only module besides ``app`` that knows both sides. Each request is three steps: decode
(Label Studio JSON → typed prompts, validated before any download), predict (engine), encode
(instances → regions). Batch prelabeling isolates failures per task: one broken image gives
that task an empty result and a logged error, never a failed request.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from collections.abc import Sequence

from .config import Settings
from .errors import BackendError, BadRequest, EngineNotReady
from .ls.label_config import ImageProjectConfig
from .ls.video_config import VideoProjectConfig, parse_project_config
from .ls.media import MediaFetcher
from .ls.prompts import parse_context, to_engine_prompts
from .ls.results import encode_regions, prediction
from .video_service import VideoService
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
        self.video = VideoService(settings, lambda: self.engine, fetcher)

    # ------------------------------------------------------------------ /setup
    def setup(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise BadRequest("the /setup body must be a JSON object with 'schema' (the label config)")
        schema = payload.get("schema") or payload.get("label_config")
        if schema is not None:
            if not isinstance(schema, str):
                raise BadRequest("'schema' must be the project's label config XML string")
            parse_project_config(schema)  # validate now: Label Studio shows this message on Connect
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
        config = parse_project_config(self._label_config(payload))
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        context = params.get("context")
        if isinstance(config, VideoProjectConfig):
            return self.video.predict(tasks, context, config)  # video projects: video_service
        started = time.perf_counter()
        self.metrics.predict_requests += 1
        if context is None:
            results = self._prelabel(tasks, config)
        else:
            self.metrics.interactive_requests += 1
            results = [self._interactive(tasks, context, config)] if tasks else []
        self.metrics.tasks_predicted += len(tasks)
        self.metrics.last_predict_seconds = time.perf_counter() - started
        log.info(
            "predict: %s, %d task(s), %d region(s), %.3f s",
            "batch" if context is None else "interactive", len(tasks),
            sum(len(r["result"]) for r in results), self.metrics.last_predict_seconds,
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

    def _image_url(self, task: dict, config: ImageProjectConfig) -> str:
        data = task.get("data")
        url = data.get(config.image_value) if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise BadRequest(f"task {task.get('id')} has no image at data.{config.image_value}")
        return url

    def _load(self, task: dict, config: ImageProjectConfig) -> ImageInput:
        return self.fetcher.fetch_image(self._image_url(task, config), task.get("id"))

    def _empty(self) -> dict:
        return prediction([], [], self.engine.model_version)

    def _prelabel(self, tasks: list[dict], config: ImageProjectConfig) -> list[dict]:
        """All tasks, one result each, in order; every label of the config is a concept.

        Tasks go through in chunks, the next chunk's downloads running while the model works on
        this one, so a 1000-task request never holds 1000 decoded images at once.
        """
        concepts = [ConceptPrompt(config.concept_text(label)) for label in config.labels]
        results = [self._empty() for _ in tasks]
        chunk = max(1, self.settings.prelabel_batch_size) * 2
        starts = list(range(0, len(tasks), chunk))
        pending = [self._pool.submit(self._load, t, config) for t in tasks[:chunk]]
        for start in starts:
            futures = pending
            upcoming = tasks[start + chunk : start + 2 * chunk]
            pending = [self._pool.submit(self._load, t, config) for t in upcoming]
            loaded = [self._loaded(fut, tasks[start + j]) for j, fut in enumerate(futures)]
            good = [j for j, im in enumerate(loaded) if im is not None]
            found = self._segment_isolated(
                [loaded[j] for j in good], concepts, [tasks[start + j].get("id") for j in good]
            )
            for j, instances in zip(good, found):
                if instances is not None:
                    labels = [config.labels[inst.prompt_index] for inst in instances]
                    results[start + j] = self._encode(instances, labels, config, loaded[j])
        return results

    def _loaded(self, future, task: dict) -> ImageInput | None:
        """A task's image, or None with the reason logged: one task's failure is its own."""
        try:
            return future.result()
        except BackendError as exc:
            self.metrics.task_errors += 1
            log.error("task %s: %s", task.get("id"), exc)
        except Exception:
            self.metrics.task_errors += 1
            log.exception("task %s: unexpected error while loading its image", task.get("id"))
        return None

    def _segment_isolated(self, images: list[ImageInput], concepts, task_ids) -> list[list[Instance] | None]:
        """The batched engine call; if it fails (a GPU out of memory on a big batch, one odd
        image), each image again on its own, so only the image that fails loses its result."""
        if not images:
            return []
        kwargs = dict(threshold=self.settings.score_threshold, max_instances=self.settings.max_instances)
        try:
            return self.engine.segment_concepts(images, concepts, batch_size=self.settings.prelabel_batch_size, **kwargs)
        except EngineNotReady:
            raise
        except Exception:
            if len(images) == 1:
                self.metrics.task_errors += 1
                log.exception("task %s: the model failed on its image", task_ids[0])
                return [None]
            log.exception("batched prelabel of %d images failed; retrying them one by one", len(images))
        out: list[list[Instance] | None] = []
        for image, task_id in zip(images, task_ids):
            try:
                out.append(self.engine.segment_concepts([image], concepts, batch_size=1, **kwargs)[0])
            except EngineNotReady:
                raise
            except Exception:
                self.metrics.task_errors += 1
                log.exception("task %s: the model failed on its image", task_id)
                out.append(None)
        return out

    def _encode(self, instances, labels, config, image: ImageInput) -> dict:
        regions = encode_regions(
            instances, labels, config, image.width, image.height,
            polygon_tolerance=self.settings.polygon_tolerance,
        )
        return prediction(regions, [inst.score for inst in instances if not inst.is_empty], self.engine.model_version)

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
