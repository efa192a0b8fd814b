"""Prometheus metrics for one app: request counts and latencies, per-stage time, caches, queues.

Each app owns its registry (tests build many apps in one process). Counters that many request
threads update are prometheus-client counters (thread-safe); counts kept elsewhere (cache hits,
encoder calls, media downloads) are read at scrape time by ``StatsCollector``, so there is one
source of truth for each number. ``/metrics`` serves the Prometheus text format and
``/metrics?format=json`` a JSON view of the same registry.

With ``WORKERS`` > 1 every gunicorn worker has its own registry and a scrape (one port for all)
reaches one of them. One worker per GPU is the default, and each worker holds its own model, so
the cache and engine numbers are per process anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Request latencies: from a warm click (~10 ms) to a long prelabel request (minutes).
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Engine stage names (engine.image) -> the stages users reason about.
ENGINE_STAGES = {
    "preprocess": "encode",
    "vision_encoder": "encode",
    "tracker_neck": "encode",
    "text_encoder": "prompt",
    "detector": "prompt",
    "prompt_decoder": "prompt",
    "postprocess": "postprocess",
}

# (kind "counter" | "gauge", name, help, value, labels): what a stats source yields at scrape time.
StatsRow = tuple[str, str, str, float, dict[str, str]]


class StatsCollector(Collector):
    """Reads counters and gauges owned by other objects at scrape time.

    ``source()`` yields ``StatsRow``s.
    """

    def __init__(self, source: Callable[[], Iterable[StatsRow]]):
        self._source = source

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for kind, name, help_text, value, labels in self._source():
            family = families.get(name)
            if family is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = families[name] = cls(name, help_text, labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], float(value))
        return list(families.values())


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sam3_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "sam3_request_seconds", "HTTP request latency by endpoint", ["endpoint"], buckets=_REQUEST_BUCKETS, registry=r
        )
        self.in_flight = Gauge("sam3_requests_in_flight", "HTTP requests being handled", ["endpoint"], registry=r)
        self.stage = Histogram(
            "sam3_stage_seconds",
            "Time per pipeline stage: fetch, decode, encode (vision), prompt (heads), postprocess, rle",
            ["stage"], buckets=_STAGE_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "sam3_requests_rejected", "Requests answered 503 (overload or model wait timeout)", ["reason"], registry=r
        )
        self.predictions = Counter("sam3_predict_requests", "/predict requests by mode", ["mode"], registry=r)
        self.tasks = Counter("sam3_tasks_predicted", "Tasks answered by /predict, by mode", ["mode"], registry=r)
        self.task_errors = Counter(
            "sam3_task_errors", "Tasks answered without a prediction because of an error", ["kind"], registry=r
        )
        self.webhooks = Counter("sam3_webhooks", "Webhooks by action (unknown actions as 'other')", ["action"], registry=r)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def observe_engine_stage(self, name: str, seconds: float) -> None:
        """An engine stage (``engine.image`` names), filed under the user-facing stage."""
        self.stage.labels(ENGINE_STAGES.get(name, name)).observe(seconds)

    def add_source(self, source: Callable[[], Iterable[StatsRow]]) -> None:
        self.registry.register(StatsCollector(source))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when it was never set), e.g. ``value("sam3_tasks_predicted_total")``."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def service_summary(self) -> dict:
        """The request counters as plain numbers (the JSON view's ``service`` section)."""

        def by_label(counter: Counter) -> dict[str, float]:
            return {
                next(iter(sample.labels.values())): sample.value
                for family in counter.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
            }

        modes = by_label(self.predictions)
        return {
            "predict_requests": int(sum(modes.values())),
            "interactive_requests": int(modes.get("interactive", 0)),
            "tasks_predicted": int(sum(by_label(self.tasks).values())),
            "task_errors": int(sum(by_label(self.task_errors).values())),
            "webhooks": {action: int(n) for action, n in by_label(self.webhooks).items()},
            "rejected": {reason: int(n) for reason, n in by_label(self.rejected).items()},
        }

    def json_view(self) -> dict:
        """Every sample of the registry as ``{metric: {labels: value}}`` (histograms as sum/count)."""
        out: dict[str, dict[str, float]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_bucket", "_created")):
                    continue
                key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) or "value"
                out.setdefault(sample.name, {})[key] = sample.value
        return out


__all__ = ["ENGINE_STAGES", "Metrics", "StatsCollector"]
