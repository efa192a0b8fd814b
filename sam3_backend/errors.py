"""Domain errors. Each carries the HTTP status it maps to; ``app`` converts them in one place."""

from __future__ import annotations


class BackendError(Exception):
    """Base class: ``status`` is the HTTP status, the message says what to do next."""

    status = 500


class BadRequest(BackendError):
    """The request or its prompts are malformed (HTTP 400)."""

    status = 400


class UnsupportedConfig(BadRequest):
    """The project's label config has nothing this backend can predict (HTTP 400)."""


class MediaUnavailable(BackendError):
    """A task's media could not be fetched or decoded (HTTP 422)."""

    status = 422


class EngineNotReady(BackendError):
    """The model is not loaded yet or failed to load (HTTP 503)."""

    status = 503


class Overloaded(BackendError):
    """More requests wait for the model than this worker takes on (HTTP 503 with Retry-After)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5, reason: str = "overload"):
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason  # "overload" (admission) or "queue_timeout" (model wait), for /metrics


class ModelLoadError(RuntimeError):
    """Weights are missing or do not match the architecture: never serve such a model."""
