"""The one gunicorn configuration, used by ``sam3-backend serve`` and by plain ``gunicorn _wsgi:app``
(through the top-level ``gunicorn.conf.py``, which gunicorn reads from the working directory).

gthread workers: Label Studio's clicks are short requests that should not queue behind a long
prelabel, so each worker serves ``THREADS`` requests at once over one model. The app is never
preloaded: each worker loads its own model after the fork, so CUDA is never initialised in the
master (a forked CUDA context is unusable).
"""

from __future__ import annotations

from .config import Settings


def options(settings: Settings) -> dict:
    """gunicorn settings for ``settings`` (names as in gunicorn's config file)."""
    return {
        "bind": [f"{settings.host}:{settings.port}"],
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "gthread",
        "timeout": 600,  # a large prelabel request on CPU can take minutes
        "graceful_timeout": 30,  # SIGTERM: finish requests in flight, then exit
        "keepalive": 5,
        "preload_app": False,  # load the model in each worker, after the fork
        "loglevel": settings.log_level.lower(),
        "accesslog": "-",
        "errorlog": "-",
    }
