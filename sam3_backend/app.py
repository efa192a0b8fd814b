"""``create_app``: the Flask app speaking Label Studio's ML-backend protocol.

Nothing heavy happens at import. The model loads in a background thread (or is injected by
tests); ``/health`` says 503 until it is ready, so Label Studio never talks to a half-loaded
backend. Domain errors become HTTP responses in exactly one place (``_handle_error``).

Load: a worker admits a bounded number of ``/predict`` requests (``admission``); model calls
wait at most ``QUEUE_TIMEOUT`` for the model (``engine.scheduler``); both answer 503 with
``Retry-After`` instead of letting requests pile up. Bodies over ``MAX_REQUEST_MB`` get 413.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import traceback
from collections.abc import Callable

import orjson
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import JSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import __version__
from .admission import Admission
from .config import Settings
from .engine.scheduler import SchedulerTimeout
from .errors import BackendError, BadRequest, Overloaded
from .ls.media import MediaFetcher
from .metrics import Metrics
from .service import NotReadyEngine, PredictionService
from .training_routes import init_training

log = logging.getLogger(__name__)

MB = 1024 * 1024


class OrjsonProvider(JSONProvider):
    """Responses carry brush RLE arrays of thousands of ints per region: orjson encodes them
    ~13x faster than the standard library (4.4 ms → 0.3 ms for 47k ints, bench/RESULTS.md)."""

    _options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=self._options).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, option=self._options), mimetype="application/json")


def _default_engine_factory(settings: Settings):
    from .engine.image import Sam3ImageEngine
    from .engine.loading import ModelSource, load_sam3

    loaded = load_sam3(ModelSource(settings.sam3_model, token=settings.hf_token), settings.device, settings.dtype)
    return Sam3ImageEngine(loaded, feature_cache_bytes=settings.feature_cache_mb * 1024 * 1024)


class EngineHolder:
    """Owns the engine's lifecycle: loading → ready | failed."""

    def __init__(self, settings: Settings, engine=None, factory: Callable | None = None,
                 prepare: Callable | None = None):
        self.state = "ready" if engine is not None else "loading"
        self.error: str | None = None
        self._prepare = prepare or (lambda e: e)
        self.engine = self._prepare(engine) if engine is not None else NotReadyEngine()
        self._factory = factory or _default_engine_factory
        self._settings = settings

    def start(self, background: bool = True) -> None:
        if self.state == "ready":
            return
        if background:
            threading.Thread(target=self._load, name="sam3-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.engine = self._prepare(self._factory(self._settings))
            self.state = "ready"
            log.info("model ready in %.1f s: %s", time.perf_counter() - started, self.engine.model_version)
        except Exception as exc:  # reported on /health and every request, never swallowed
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            self.engine = NotReadyEngine(f"the SAM 3 model failed to load: {self.error}")
            log.error("model failed to load: %s", self.error)


def _stats_source(holder: EngineHolder, fetcher: MediaFetcher, admission: Admission, service: PredictionService,
                  app_jobs: Callable):
    """Numbers other objects own, read at scrape time (``metrics.StatsCollector``)."""

    def rows():
        engine = holder.engine
        stats = engine.stats
        yield "counter", "sam3_vision_encoder_calls", "Vision encoder passes", stats.vision_encoder_calls, {}
        for name, cache in (("feature", getattr(engine, "features", None)), ("decoded_image", fetcher._decoded)):
            if cache is None:
                continue
            c = cache.stats()
            labels = {"cache": name}
            yield "counter", "sam3_cache_hits", "Cache hits", c.hits, labels
            yield "counter", "sam3_cache_misses", "Cache misses", c.misses, labels
            yield "counter", "sam3_cache_evictions", "Cache evictions", c.evictions, labels
            yield "gauge", "sam3_cache_bytes", "Bytes held by the cache", c.bytes, labels
            yield "gauge", "sam3_cache_entries", "Entries held by the cache", c.entries, labels
        m = fetcher.stats
        labels = {"cache": "media_disk"}
        yield "counter", "sam3_cache_hits", "Cache hits", m.hits, labels
        yield "counter", "sam3_cache_misses", "Cache misses", m.misses, labels
        yield "counter", "sam3_cache_evictions", "Cache evictions", m.evictions, labels
        yield "counter", "sam3_media_downloaded_bytes", "Bytes downloaded from task URLs", m.downloaded_bytes, {}
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is not None:
            for priority, count in scheduler.waiting().items():
                yield "gauge", "sam3_model_waiting", "Model calls waiting for the model", count, {"priority": priority}
        for kind, count in admission.in_flight().items():
            yield "gauge", "sam3_predict_admitted", "/predict requests admitted and not finished", count, {"kind": kind}
        for event, count in dict(service.video.stats).items():
            yield "counter", "sam3_video_events", "Video tasks, requests, cached regions, hand-offs, errors, writes", \
                count, {"event": event}
        jobs = app_jobs()
        if jobs is not None:
            for (kind, state), count in jobs.store.counts().items():
                yield "gauge", "sam3_jobs", "Jobs in the store by kind and state", count, {"kind": kind, "state": state}

    return rows


def create_app(settings: Settings | None = None, engine=None, *, engine_factory: Callable | None = None,
               load_in_background: bool = True) -> Flask:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("torch", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    app = Flask("sam3_backend")
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * MB
    metrics = Metrics()
    admission = Admission(settings.max_pending_requests)

    def prepare(loaded_engine):
        """Wire an engine (built here or injected) to this app's metrics and wait bound."""
        if hasattr(loaded_engine, "observer"):
            loaded_engine.observer = metrics.observe_engine_stage
        if hasattr(loaded_engine, "wait_timeout"):
            loaded_engine.wait_timeout = settings.queue_timeout
        return loaded_engine

    holder = EngineHolder(settings, engine, engine_factory, prepare)
    fetcher = MediaFetcher(settings)
    fetcher.observe = metrics.observe_stage
    service = PredictionService(settings, holder.engine, fetcher, metrics)
    metrics.add_source(_stats_source(holder, fetcher, admission, service, lambda: app.extensions["sam3"].get("jobs")))
    app.extensions["sam3"] = {
        "holder": holder, "service": service, "settings": settings, "metrics": metrics, "admission": admission,
    }
    training = init_training(app, settings, holder, fetcher)  # /train, /versions, annotation store
    started_at = time.time()

    def current_service() -> PredictionService:
        service.engine = holder.engine  # swapped in once loading finishes
        return service

    @app.before_request
    def _auth():
        g.started = time.perf_counter()
        g.endpoint = request.url_rule.rule if request.url_rule is not None else "other"
        metrics.in_flight.labels(g.endpoint).inc()
        g.counted = True
        if settings.basic_auth_user is None:
            return None
        auth = request.authorization
        ok = (
            auth is not None
            and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
            and hmac.compare_digest(auth.password or "", settings.basic_auth_pass or "")
        )
        if not ok:
            return Response(
                '{"error": "basic auth required: set the backend\'s user and password in Label Studio"}',
                401, {"WWW-Authenticate": 'Basic realm="sam3-backend"', "Content-Type": "application/json"},
            )
        return None

    @app.teardown_request
    def _count(_exc=None):
        if not g.get("counted"):
            return
        g.counted = False
        metrics.in_flight.labels(g.endpoint).dec()
        metrics.latency.labels(g.endpoint).observe(time.perf_counter() - g.started)

    @app.after_request
    def _status(response: Response):
        if g.get("counted"):
            metrics.requests.labels(g.endpoint, str(response.status_code)).inc()
        return response

    def _json_body():
        body = request.get_json(silent=True)
        if body is None:
            raise BadRequest("the request body must be valid JSON (Content-Type: application/json)")
        return body

    @app.get("/")
    @app.get("/health")
    def health():
        engine = holder.engine
        body = {
            "status": {"ready": "UP", "loading": "LOADING", "failed": "ERROR"}[holder.state],
            "model_class": "SAM3",
            "backend_version": __version__,
        }
        if holder.state == "ready":
            body["model_version"] = engine.model_version
            body["test_model"] = bool(engine.is_test_model)
        if holder.error:
            body["error"] = holder.error
        return jsonify(body), (200 if holder.state == "ready" else 503)

    @app.post("/setup")
    def setup():
        body = _json_body()
        return jsonify(training.service_for(current_service(), body).setup(body))

    @app.post("/predict")
    def predict():
        body = _json_body()
        params = body.get("params") if isinstance(body, dict) else None
        kind = "interactive" if isinstance(params, dict) and params.get("context") is not None else "batch"
        with admission.admit(kind):  # the project's served version (base or fine-tuned) answers
            return jsonify(training.service_for(current_service(), body).predict(body))

    @app.post("/webhook")
    def webhook():
        body = _json_body()
        reply = current_service().webhook(body)
        return jsonify(reply | training.on_webhook(body)), 201

    @app.get("/metrics")
    def metrics_view():
        if request.args.get("format") == "json":
            engine = current_service().engine
            body = {
                "uptime_seconds": round(time.time() - started_at, 1),
                "model_state": holder.state,
                "service": metrics.service_summary(),
                "metrics": metrics.json_view(),
                "engine": vars(engine.stats),
                "media": vars(fetcher.stats),
                "decoded_image_cache": vars(fetcher.decoded_cache_stats()),
            }
            if hasattr(engine, "features"):
                body["feature_cache"] = vars(engine.features.stats())
            return jsonify(body)
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(Exception)
    def _handle_error(exc: Exception):
        if isinstance(exc, SchedulerTimeout):
            exc = Overloaded(
                f"the model stayed busy for more than QUEUE_TIMEOUT ({settings.queue_timeout:g} s); retry shortly",
                admission.retry_after,
                reason="queue_timeout",
            )
        if isinstance(exc, Overloaded):
            metrics.rejected.labels(exc.reason).inc()
            response = jsonify({"error": str(exc), "type": type(exc).__name__})
            return response, 503, {"Retry-After": str(exc.retry_after)}
        if isinstance(exc, BackendError):
            if exc.status >= 500:
                log.error("%s: %s", type(exc).__name__, exc)
            return jsonify({"error": str(exc), "type": type(exc).__name__}), exc.status
        if isinstance(exc, RequestEntityTooLarge):
            message = (
                f"the request body is larger than MAX_REQUEST_MB ({settings.max_request_mb} MB): select fewer "
                "tasks per request, or raise MAX_REQUEST_MB on the backend"
            )
            return jsonify({"error": message, "type": "RequestEntityTooLarge"}), 413
        if isinstance(exc, HTTPException):
            return jsonify({"error": exc.description, "type": type(exc).__name__}), exc.code
        log.error("unhandled error on %s %s\n%s", request.method, request.path, traceback.format_exc())
        return jsonify({"error": "internal error; see the backend log", "type": "InternalError"}), 500

    from .jobs.http import install_jobs

    # /jobs API and the /predict deadline hand-off; jobs reach Label Studio as media do (per project)
    install_jobs(app, settings, holder, service, connection_for=fetcher.connections.api_access,
                 engine_for=training.engine_for)  # bulk jobs predict with the project's served version
    holder.start(background=load_in_background)
    return app
