"""One frozen settings object, built from defaults and the environment in ``Settings.from_env``.

Variable names follow the label-studio-ml 2.x framework where it has one (LABEL_STUDIO_URL,
LABEL_STUDIO_API_KEY, BASIC_AUTH_USER/PASS, MODEL_DIR, WORKERS, THREADS, LOG_LEVEL); the rest
are prefixed SAM3_ or MEDIA_.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping

from .errors import BadRequest


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    # Label Studio connection (the /setup call can also supply hostname and token).
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    # Artifacts and model.
    model_dir: Path = Path("model")
    sam3_model: str = "facebook/sam3"
    hf_token: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    # Prediction.
    score_threshold: float = 0.5
    max_instances: int = 100  # per label per image
    prelabel_batch_size: int = 4  # images per concept-model forward
    polygon_tolerance: float = 1.0  # pixels, Douglas-Peucker simplification
    # Caches.
    feature_cache_mb: int = 1024
    media_cache_mb: int = 2048
    media_image_cache_mb: int = 256  # decoded images, so repeated clicks skip reading + decoding
    # Media fetching: not an open proxy.
    media_allowed_hosts: tuple[str, ...] = ()
    media_allow_any_host: bool = False
    media_max_bytes: int = 100 * 1024 * 1024
    media_timeout: float = 30.0
    media_local_dirs: tuple[Path, ...] = ()  # local paths in tasks are read only under these
    media_max_pixels: int = 100_000_000  # decoded image size cap (decompression bombs)
    # Serving.
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 16  # above 2 x MAX_PENDING_REQUESTS, so excess requests reach the app and get a 503
    log_level: str = "INFO"
    max_request_mb: int = 100  # request bodies above this get 413
    max_pending_requests: int = 6  # /predict requests in flight per worker before 503 + Retry-After
    queue_timeout: float = 60.0  # seconds a request may wait for the model before 503
    # Jobs (project-scale prelabeling; jobs.sqlite3 lives in model_dir).
    predict_deadline: float = 75.0  # s; a /predict batch answers what it finished by then (0: no deadline)
    jobs_workers: int = 1  # jobs running at once in one backend process
    bulk_write_batch: int = 100  # predictions per Label Studio import request
    label_studio_timeout: float = 60.0  # s per Label Studio API request
    label_studio_retries: int = 5  # retries of a failed Label Studio read (429/5xx/unreachable)
    ray_address: str | None = None  # RAY_ADDRESS: run bulk jobs on this Ray cluster ("auto": this node's)
    ray_actors: int = 0  # model actors; 0: one per GPU of the cluster (1 without GPUs)
    ray_gpus_per_actor: float = 1.0
    ray_cpus_per_actor: float = 1.0
    # Video (videorectangle tracks).
    video_deadline: float = 90.0  # seconds an answer may take; the rest continues as a background job
    video_max_frames: int = 20_000  # frames tracked per video (after the stride)
    video_stride: int = 1  # track every Nth frame (Label Studio interpolates between keyframes)
    video_keyframe_tolerance: float = 0.5  # percent of the frame interpolation may miss a box by
    video_max_pixels: int = 8192 * 4320  # per frame; larger videos are refused
    video_max_objects: int = 64  # tracks per text-prompted video
    video_score_threshold: float = 0.7  # detection score a text-prompted object needs to start a track
    video_cache_entries: int = 512  # interactive regions remembered (answers returned without re-tracking)
    video_hotstart_frames: int | None = None  # SAM 3's hot-start delay (default: the model's, 15 frames)
    # Fine-tuning (issue 8): see README "Fine-tuning".
    train_mode: str = "full"  # full | lora (measured on the synthetic set: bench/RESULTS.md)
    train_steps: int = 500
    train_batch_size: int = 4  # image × concept pairs per step
    train_lr: float | None = None  # None: 1e-4 (full), 1e-3 (lora)
    train_seed: int = 0
    train_min_images: int = 10
    train_max_images: int = 5000
    train_held_out_fraction: float = 0.2
    train_promotion_metric: str = "AP"  # AP | AP50
    train_promotion_margin: float = 0.01
    train_auto_after: int = 0  # start training after this many changed annotations; 0 = never
    train_reconcile: bool = True  # read the project's annotations from Label Studio's API first
    train_feature_device: str | None = None  # cached training features: None = model's device up to 8 GiB, then CPU
    webhook_max_bytes: int = 64 * 1024 * 1024
    served_versions_max: int = 8  # fine-tuned detectors kept in memory per process
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then the environment, then explicit overrides (tests, CLI flags)."""
        env = os.environ if env is None else env
        parsers = {
            "label_studio_url": ("LABEL_STUDIO_URL", lambda v: v.rstrip("/") or None),
            "label_studio_api_key": ("LABEL_STUDIO_API_KEY", str),
            "basic_auth_user": ("BASIC_AUTH_USER", str),
            "basic_auth_pass": ("BASIC_AUTH_PASS", str),
            "model_dir": ("MODEL_DIR", Path),
            "sam3_model": ("SAM3_MODEL", str),
            "hf_token": ("HF_TOKEN", str),
            "device": ("SAM3_DEVICE", str),
            "dtype": ("SAM3_DTYPE", str),
            "score_threshold": ("SAM3_SCORE_THRESHOLD", float),
            "max_instances": ("SAM3_MAX_INSTANCES", int),
            "prelabel_batch_size": ("SAM3_PRELABEL_BATCH_SIZE", int),
            "polygon_tolerance": ("SAM3_POLYGON_TOLERANCE", float),
            "feature_cache_mb": ("SAM3_FEATURE_CACHE_MB", int),
            "media_cache_mb": ("MEDIA_CACHE_MB", int),
            "media_image_cache_mb": ("MEDIA_IMAGE_CACHE_MB", int),
            "media_allowed_hosts": ("MEDIA_ALLOWED_HOSTS", _csv),
            "media_allow_any_host": ("MEDIA_ALLOW_ANY_HOST", _bool),
            "media_max_bytes": ("MEDIA_MAX_BYTES", int),
            "media_timeout": ("MEDIA_TIMEOUT", float),
            "media_local_dirs": ("MEDIA_LOCAL_DIRS", lambda v: tuple(Path(p) for p in _csv(v))),
            "media_max_pixels": ("MEDIA_MAX_PIXELS", int),
            "host": ("HOST", str),
            "port": ("PORT", int),
            "workers": ("WORKERS", int),
            "threads": ("THREADS", int),
            "log_level": ("LOG_LEVEL", lambda v: v.upper()),
            "max_request_mb": ("MAX_REQUEST_MB", int),
            "max_pending_requests": ("MAX_PENDING_REQUESTS", int),
            "queue_timeout": ("QUEUE_TIMEOUT", float),
            "predict_deadline": ("SAM3_PREDICT_DEADLINE", float),
            "jobs_workers": ("JOBS_WORKERS", int),
            "bulk_write_batch": ("SAM3_BULK_WRITE_BATCH", int),
            "label_studio_timeout": ("LABEL_STUDIO_TIMEOUT", float),
            "label_studio_retries": ("LABEL_STUDIO_RETRIES", int),
            "ray_address": ("RAY_ADDRESS", str),
            "ray_actors": ("SAM3_RAY_ACTORS", int),
            "ray_gpus_per_actor": ("SAM3_RAY_GPUS_PER_ACTOR", float),
            "ray_cpus_per_actor": ("SAM3_RAY_CPUS_PER_ACTOR", float),
            "video_deadline": ("SAM3_VIDEO_DEADLINE", float),
            "video_max_frames": ("SAM3_VIDEO_MAX_FRAMES", int),
            "video_stride": ("SAM3_VIDEO_STRIDE", int),
            "video_keyframe_tolerance": ("SAM3_VIDEO_KEYFRAME_TOLERANCE", float),
            "video_max_pixels": ("SAM3_VIDEO_MAX_PIXELS", int),
            "video_max_objects": ("SAM3_VIDEO_MAX_OBJECTS", int),
            "video_score_threshold": ("SAM3_VIDEO_SCORE_THRESHOLD", float),
            "video_cache_entries": ("SAM3_VIDEO_CACHE_ENTRIES", int),
            "video_hotstart_frames": ("SAM3_VIDEO_HOTSTART_FRAMES", int),
            "train_mode": ("TRAIN_MODE", lambda v: v.strip().lower()),
            "train_steps": ("TRAIN_STEPS", int),
            "train_batch_size": ("TRAIN_BATCH_SIZE", int),
            "train_lr": ("TRAIN_LR", float),
            "train_seed": ("TRAIN_SEED", int),
            "train_min_images": ("TRAIN_MIN_IMAGES", int),
            "train_max_images": ("TRAIN_MAX_IMAGES", int),
            "train_held_out_fraction": ("TRAIN_HELD_OUT_FRACTION", float),
            "train_promotion_metric": ("TRAIN_PROMOTION_METRIC", lambda v: v.strip().upper()),
            "train_promotion_margin": ("TRAIN_PROMOTION_MARGIN", float),
            "train_auto_after": ("TRAIN_AUTO_AFTER", int),
            "train_reconcile": ("TRAIN_RECONCILE", _bool),
            "train_feature_device": ("TRAIN_FEATURE_DEVICE", str),
            "webhook_max_bytes": ("WEBHOOK_MAX_BYTES", int),
            "served_versions_max": ("SAM3_SERVED_VERSIONS_MAX", int),
        }
        values = {}
        for attr, (name, parse) in parsers.items():
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"environment variable {name}={raw!r} is invalid: {exc}") from exc
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        self.validate()

    def validate(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError("SAM3_SCORE_THRESHOLD must be between 0 and 1")
        if self.prelabel_batch_size < 1:
            raise ValueError("SAM3_PRELABEL_BATCH_SIZE must be at least 1")
        self._validate_video()
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.label_studio_api_key and not self.label_studio_url:
            raise ValueError(
                "LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL: set LABEL_STUDIO_URL to your Label Studio "
                "(e.g. http://label-studio:8080) so the key is only ever sent there"
            )
        if self.label_studio_url and (
            not self.label_studio_url.startswith(("http://", "https://")) or "@" in self.label_studio_url
        ):
            raise ValueError(f"LABEL_STUDIO_URL={self.label_studio_url!r} must be an http(s) URL without a user name")
        for name in ("max_request_mb", "max_pending_requests", "media_max_pixels", "threads", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1")
        if self.queue_timeout <= 0:
            raise ValueError("QUEUE_TIMEOUT must be positive")
        if self.predict_deadline < 0:
            raise ValueError("SAM3_PREDICT_DEADLINE must be >= 0 seconds (0 turns the deadline off)")
        if not 1 <= self.bulk_write_batch <= 500:
            raise ValueError("SAM3_BULK_WRITE_BATCH must be between 1 and 500 (Label Studio's import slice)")
        if self.jobs_workers < 1:
            raise ValueError("JOBS_WORKERS must be at least 1")
        self._validate_training()

    def _validate_training(self) -> None:
        if self.train_mode not in ("full", "lora"):
            raise ValueError("TRAIN_MODE must be full or lora")
        if self.train_steps < 1 or self.train_batch_size < 1:
            raise ValueError("TRAIN_STEPS and TRAIN_BATCH_SIZE must be at least 1")
        if self.train_lr is not None and not 0 < self.train_lr < 1:
            raise ValueError("TRAIN_LR must lie between 0 and 1")
        if not 0 < self.train_held_out_fraction < 1:
            raise ValueError("TRAIN_HELD_OUT_FRACTION must lie strictly between 0 and 1")
        if self.train_promotion_metric not in ("AP", "AP50"):
            raise ValueError("TRAIN_PROMOTION_METRIC must be AP or AP50")
        if self.train_min_images < 2 or self.train_max_images < self.train_min_images:
            raise ValueError("TRAIN_MIN_IMAGES must be at least 2 and at most TRAIN_MAX_IMAGES")
        if self.train_auto_after < 0:
            raise ValueError("TRAIN_AUTO_AFTER must be 0 (off) or a number of annotations")

    def _validate_video(self) -> None:
        if not self.video_deadline > 0:
            raise ValueError("SAM3_VIDEO_DEADLINE must be a positive number of seconds")
        if self.video_max_frames < 1 or self.video_stride < 1 or self.video_max_objects < 1:
            raise ValueError("SAM3_VIDEO_MAX_FRAMES, SAM3_VIDEO_STRIDE and SAM3_VIDEO_MAX_OBJECTS must be at least 1")
        if not 0.0 <= self.video_keyframe_tolerance <= 50.0:
            raise ValueError("SAM3_VIDEO_KEYFRAME_TOLERANCE must be between 0 and 50 (percent of the frame)")
        if not 0.0 <= self.video_score_threshold <= 1.0:
            raise ValueError("SAM3_VIDEO_SCORE_THRESHOLD must be between 0 and 1")
        if self.video_hotstart_frames is not None and self.video_hotstart_frames < 0:
            raise ValueError("SAM3_VIDEO_HOTSTART_FRAMES must be 0 (off) or more")
        if self.video_max_pixels < 1 or self.video_cache_entries < 0:
            raise ValueError("SAM3_VIDEO_MAX_PIXELS must be positive and SAM3_VIDEO_CACHE_ENTRIES not negative")

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def media_cache_dir(self) -> Path:
        return self.model_dir / "media-cache"

    @property
    def versions_dir(self) -> Path:
        return self.model_dir / "versions"

    @property
    def annotations_db(self) -> Path:
        return self.model_dir / "annotations.sqlite3"

    @property
    def jobs_db(self) -> Path:
        return self.model_dir / "jobs.sqlite3"


__all__ = ["Settings", "BadRequest"]
