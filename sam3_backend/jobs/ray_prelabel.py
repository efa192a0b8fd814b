"""Bulk prelabeling on Ray: Ray Data ``map_batches`` over a pool of model actors.

Each actor loads SAM 3 once (``load_sam3`` from SAM3_MODEL, resolved on its node) and runs the
same ``ConceptPrelabeler`` as ``/predict``: it fetches its tasks' images from Label Studio
(the job's connection), predicts them in batches and returns one row per task (the prediction
as JSON, or the failure reason). The driver (the job, on the machine that started it) writes
the predictions back, so Label Studio sees one writer and the job's no-duplicate checks hold.

Fine-tuned versions: when the project serves one, the driver reads its delta (safetensors,
checked against the base checkpoint) and ships the bytes with the actor's spec, so actors on
machines without this ``MODEL_DIR`` predict with the same version, and the job's
``model_version`` names it.

Sizing: one actor per GPU (``num_gpus`` per actor, SAM3_RAY_GPUS_PER_ACTOR) when the cluster has
GPUs, else SAM3_RAY_ACTORS actors of SAM3_RAY_CPUS_PER_ACTOR CPUs each (default 1). Fault
tolerance: a dead actor is restarted (``max_restarts``) and the batches it held are retried
(``max_task_retries``); the job loses nothing and, since its rows only count once they reach the
driver, predicts nothing twice. Both limits are finite, so a node that keeps dying fails the job
instead of looping.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ..config import Settings
from ..engine.versions import VersionStore, model_version
from ..errors import BackendError
from ..ls.client import ApiAccess, TaskRef
from ..prelabeler import TaskOutcome

log = logging.getLogger(__name__)

# Settings an actor needs to predict exactly like this process would.
_ACTOR_SETTINGS = ("score_threshold", "max_instances", "prelabel_batch_size", "polygon_tolerance", "media_allowed_hosts",
                   "media_allow_any_host", "media_max_bytes", "media_timeout", "media_local_dirs", "media_cache_mb",
                   "model_dir")


@dataclass(frozen=True)
class ActorSpec:
    """Everything an actor needs, picklable: the model, prediction settings, Label Studio."""

    model: str
    hf_token: str | None = field(repr=False)
    device: str
    dtype: str
    settings: dict
    connection: ApiAccess
    cpus: float = 1.0
    version: str | None = None  # the fine-tuned version to serve (None: the base model) ...
    delta: bytes | None = field(default=None, repr=False)  # ... and its safetensors file


class PrelabelActor:
    """A Ray Data actor: one loaded model, called with batches of {"id", "data"} rows."""

    def __init__(self, spec: ActorSpec, config_xml: str, labels: tuple[str, ...], batch_size: int | None):
        import torch

        from ..engine.image import Sam3ImageEngine
        from ..engine.loading import ModelSource, load_sam3
        from ..ls.label_config import parse_label_config
        from .prelabel import job_prelabeler

        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, int(spec.cpus)))
        settings = Settings(**spec.settings)
        loaded = load_sam3(ModelSource(spec.model, token=spec.hf_token), spec.device, spec.dtype)
        engine = Sam3ImageEngine(loaded, feature_cache_bytes=64 << 20)  # each image is seen once
        if spec.version is not None:
            from ..engine.versions import serve_delta, tensors_from_bytes

            engine = serve_delta(engine, spec.version, tensors_from_bytes(spec.delta))
        self.prelabeler = job_prelabeler(settings, engine, spec.connection)
        self.config = parse_label_config(config_xml)
        self.labels = labels
        self.batch_size = batch_size
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import orjson

        from ..engine.scheduler import Priority

        tasks = [{"id": int(i), "data": json.loads(d)} for i, d in zip(batch["id"], batch["data"])]
        outcomes = [o for chunk in self.prelabeler.run(tasks, self.config, labels=self.labels,
                                                       priority=Priority.BACKGROUND, batch_size=self.batch_size)
                    for o in chunk]
        return {
            "task": np.array([int(o.task_id) for o in outcomes], dtype=np.int64),
            "prediction": np.array([orjson.dumps(o.prediction, option=orjson.OPT_SERIALIZE_NUMPY).decode() if o.ok
                                    else "" for o in outcomes], dtype=object),
            "reason": np.array([o.reason or "" for o in outcomes], dtype=object),
            "error": np.array([o.error or "" for o in outcomes], dtype=object),
            "worker": np.array([self.worker] * len(outcomes), dtype=object),
        }


class RayPredictor:
    """``Predictor`` on a Ray cluster (``jobs.prelabel``); ``address`` None: RAY_ADDRESS or a local Ray."""

    name = "ray"

    def __init__(self, spec: ActorSpec, *, address: str | None = None, actors: int | None = None,
                 gpus_per_actor: float = 1.0, max_restarts: int = 3, max_task_retries: int = 3):
        self.spec = spec
        self.address = address
        self.actors = actors
        self.gpus_per_actor = gpus_per_actor
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self._model_version: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, connection: ApiAccess, *, actors: int | None = None,
                      served: str | None = None, versions: VersionStore | None = None) -> RayPredictor:
        """``served``: the fine-tuned version the project serves, read from ``versions``."""
        spec = ActorSpec(model=settings.sam3_model, hf_token=settings.hf_token, device=settings.device,
                         dtype=settings.dtype, settings={k: getattr(settings, k) for k in _ACTOR_SETTINGS},
                         connection=connection, cpus=settings.ray_cpus_per_actor)
        predictor = cls(spec, address=settings.ray_address, actors=actors or settings.ray_actors or None,
                        gpus_per_actor=settings.ray_gpus_per_actor)
        if served is not None:
            if versions is None:
                raise ValueError("a served version needs the VersionStore it is in")
            delta = versions.delta_bytes(served, predictor.base_version)  # VersionError: another base
            predictor.spec = replace(spec, version=served, delta=delta)
        return predictor

    @property
    def base_version(self) -> str:
        """The checkpoint's version, from its files, without loading it (the actors load it)."""
        if self._model_version is None:
            from ..engine.loading import ModelSource, model_version

            self._model_version = model_version(ModelSource(self.spec.model, token=self.spec.hf_token))
        return self._model_version

    @property
    def model_version(self) -> str:
        """What the actors' predictions carry: the base's, or ``<base>+<fine-tuned version>``."""
        return model_version(self.base_version, self.spec.version)

    def close(self) -> None:
        """Nothing to release: the actors end with the dataset."""

    def pool(self, ray) -> tuple[int, float]:
        """(actors, GPUs per actor): one actor per GPU of the cluster, else ``actors`` (default 1)."""
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus > 0 and self.gpus_per_actor > 0:
            per = self.gpus_per_actor
            return (self.actors or max(1, int(gpus // per))), per
        return (self.actors or 1), 0.0

    def predict(self, tasks: Sequence[TaskRef], config_xml: str, *, labels: Sequence[str], batch_size: int | None,
                stop: Callable[[], bool]) -> Iterator[list[TaskOutcome]]:
        from .ray_support import ensure_ray

        ray = ensure_ray(self.address)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        n_actors, gpus = self.pool(ray)
        per_call = 2 * (batch_size or self.spec.settings["prelabel_batch_size"])
        log.info("prelabel on Ray: %d task(s), %d actor(s) × (%g GPU, %g CPU), %d images per call", len(tasks),
                 n_actors, gpus, self.spec.cpus, per_call)
        rows = [{"id": t.id, "data": json.dumps(t.data)} for t in tasks]
        data = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * n_actors)))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options through map_batches but offers no other
            # way to bound restarts and retries (its defaults are unbounded: a crash loop).
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            out = data.map_batches(
                PrelabelActor,
                fn_constructor_kwargs={"spec": self.spec, "config_xml": config_xml, "labels": tuple(labels),
                                       "batch_size": batch_size},
                batch_size=per_call, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors),
                num_gpus=gpus or None, num_cpus=self.spec.cpus,
                max_restarts=self.max_restarts, max_task_retries=self.max_task_retries,
            )
        batches = iter(out.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except ray.exceptions.RayError as exc:
                raise RayActorFailed(f"the Ray model actors failed: {root_cause(exc)}") from exc
            yield [
                TaskOutcome(int(task), json.loads(pred) if pred else None, reason or None, error or None, worker)
                for task, pred, reason, error, worker in zip(batch["task"], batch["prediction"], batch["reason"],
                                                              batch["error"], batch["worker"])
            ]
            if stop():
                return


class RayActorFailed(BackendError):
    """The actors could not start (weights, memory, a node) or kept dying beyond the retries."""

    status = 502


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")


def root_cause(exc: BaseException) -> str:
    """The innermost ``SomeError: message`` line of a Ray error (whose text carries the remote
    traceback), without colour codes; the whole first line when there is none."""
    text = _ANSI.sub("", str(exc))
    lines = [m.group(0) for line in text.splitlines() if (m := _EXCEPTION_LINE.match(line.strip()))]
    found = lines[-1] if lines else (text.strip().splitlines() or [type(exc).__name__])[0]
    return found if len(found) <= 600 else found[:600] + "..."


__all__ = ["ActorSpec", "PrelabelActor", "RayActorFailed", "RayPredictor", "root_cause"]
