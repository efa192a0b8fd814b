"""Connecting to Ray: one place that decides where the cluster is and how quiet Ray should be.

Ray is an optional extra (``pip install 'sam3-backend[ray]'``); nothing imports it until a job
asks for it, and then a missing install is a clear error rather than an ImportError.
"""

from __future__ import annotations

import logging
import os
import threading

from ..errors import BackendError

log = logging.getLogger(__name__)
_lock = threading.Lock()


class RayUnavailable(BackendError):
    status = 503


def ray_requested(flag: bool = False, env: dict | None = None) -> bool:
    """``--ray`` (or a request's ``"ray": true``), or RAY_ADDRESS in the environment."""
    env = os.environ if env is None else env
    return bool(flag or env.get("RAY_ADDRESS"))


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None):
    """``ray.init`` once per process: RAY_ADDRESS / ``address`` joins a cluster (``auto`` = the
    local node's), otherwise a local Ray starts on this machine. Returns the ``ray`` module."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            "Ray is not installed: pip install 'sam3-backend[ray]' (or run without --ray / RAY_ADDRESS)"
        ) from exc
    with _lock:
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kwargs = {"address": address, "ignore_reinit_error": True, "logging_level": logging.WARNING,
                      "log_to_driver": True}
            if address is None:
                kwargs["include_dashboard"] = False
                if num_cpus is not None:
                    kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except Exception as exc:  # ConnectionError, a bad address, a version mismatch
                where = address or "a local Ray instance"
                raise RayUnavailable(f"could not start or join Ray at {where}: {type(exc).__name__}: {exc}") from exc
            log.info("Ray ready: %s", ray.cluster_resources())
    return ray


__all__ = ["RayUnavailable", "ensure_ray", "ray_requested"]
