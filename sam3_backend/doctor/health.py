"""The backend's own ``/health``: ``sam3-backend healthcheck`` (Docker's HEALTHCHECK, every 30 s:
it must stay light) and the doctor's ``backend`` check."""

from __future__ import annotations

import requests

from ..config import Settings
from .net import _json, _tcp_open
from .report import FAIL, OK, SKIP, WARN, Check


def health_request(settings: Settings, host: str = "127.0.0.1", timeout: float = 5.0) -> requests.Response:
    """``GET /health`` of the backend on ``host:PORT``, with basic auth when the server requires it."""
    auth = (settings.basic_auth_user, settings.basic_auth_pass or "") if settings.basic_auth_user else None
    return requests.get(f"http://{host}:{settings.port}/health", auth=auth, timeout=timeout)


def healthcheck(settings: Settings) -> int:
    """Docker's HEALTHCHECK: 0 when this container's backend says UP, else 1 (and why, on stdout)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        r = health_request(settings, host, timeout=4.0)
    except requests.RequestException as exc:
        print(f"no answer on {host}:{settings.port}: {type(exc).__name__}")
        return 1
    body = _json(r)
    if r.status_code == 200 and isinstance(body, dict) and body.get("status") == "UP":
        print(f"UP {body.get('model_version')}")
        return 0
    print(f"HTTP {r.status_code}: {r.text[:300]}")
    return 1


class BackendCheck:
    """``check_backend`` of ``Doctor``: a backend running here on ``PORT``, if any."""

    settings: Settings
    timeout: float

    def check_backend(self) -> Check:
        s = self.settings
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        if not _tcp_open(host, s.port, 1.0):
            return Check("backend", SKIP, f"no backend listening on {host}:{s.port} here")
        try:
            r = health_request(s, host, timeout=self.timeout)
        except requests.RequestException as exc:
            return Check("backend", FAIL, f"{host}:{s.port} accepts connections but /health failed: "
                         f"{type(exc).__name__}", "is something else listening on PORT?")
        body = _json(r)
        status = body.get("status") if isinstance(body, dict) else None
        if r.status_code == 200 and status == "UP":
            test = " (TEST model)" if body.get("test_model") else ""
            return Check("backend", OK, f"serving {body.get('model_version')}{test} on {host}:{s.port}")
        if status == "LOADING":
            return Check("backend", WARN, f"the backend on {host}:{s.port} is still loading the model",
                         "wait and run doctor again; the log says what it is doing")
        if r.status_code == 401:
            return Check("backend", FAIL, "the backend asks for basic auth and BASIC_AUTH_USER/PASS here differ",
                         "run doctor with the same BASIC_AUTH_USER and BASIC_AUTH_PASS as the server")
        error = body.get("error") if isinstance(body, dict) else r.text[:200]
        return Check("backend", FAIL, f"the backend on {host}:{s.port} answers {r.status_code}: {error}",
                     "fix what the error names (the weights and device checks above usually say the same) and "
                     "restart the backend")


__all__ = ["BackendCheck", "health_request", "healthcheck"]
