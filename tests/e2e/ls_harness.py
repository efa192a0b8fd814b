"""Run real Label Studio 1.23.2 and the sam3-backend as loopback subprocesses, and drive LS's API.

Nothing here imports Label Studio or the backend: both run as separate processes, exactly as a user
runs them, and this module talks HTTP to them with ``requests``.

Pieces:
- ``ensure_label_studio`` installs LS into ``.venv-ls/`` (``scripts/install-label-studio.sh``).
- ``ManagedProcess`` starts a command in its own process group with its output in a log file,
  waits for an HTTP readiness check and stops it with SIGTERM (SIGKILL after a grace period).
- ``LabelStudio`` is one LS server with a fresh data dir and a thin client for the REST calls the
  e2e test needs (projects, import, ML backends, Data Manager actions, predictions, annotations).
- ``Backend`` writes the tiny SAM 3 model and serves it with ``sam3-backend serve``.
- ``RecordingProxy`` sits between LS and the backend and records every exchange (what LS sent,
  what the backend answered), so tests can assert on the backend's replies, including webhooks,
  whose status LS itself never records, and print them when something fails.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
LS_VENV = REPO_ROOT / ".venv-ls"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-label-studio.sh"
BACKEND_CLI = REPO_ROOT / ".venv" / "bin" / "sam3-backend"
LOOPBACK = "127.0.0.1"


# The e2e scenario: one image project with every output the backend can fill.
LABELS = ("cat", "dog")
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true">'
    '<Label value="cat" smart="true"/><Label value="dog" smart="true"/></KeyPointLabels>'
    '<RectangleLabels name="rect" toName="image" smart="true"><Label value="cat"/><Label value="dog"/>'
    "</RectangleLabels>"
    '<PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>'
    "</View>"
)

# Seconds spent per named phase, printed at the end of the session.
TIMINGS: dict[str, float] = {}


@contextmanager
def phase(name: str):
    """Add the time spent in the block to ``TIMINGS[name]``."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = TIMINGS.get(name, 0.0) + time.monotonic() - t0


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy (for the in-process proxy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class HarnessError(RuntimeError):
    """Something in the e2e setup failed; the message says which process and shows its log."""


# --------------------------------------------------------------------------------------------
# Installation and ports


def ensure_label_studio(venv: Path = LS_VENV, timeout: float = 900.0) -> Path:
    """Install Label Studio into ``venv`` if needed (idempotent); return its ``label-studio``."""
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), str(venv)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise HarnessError(
            f"{INSTALL_SCRIPT.name} failed with exit code {proc.returncode}; "
            f"run it by hand to see why.\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        raise HarnessError(f"{exe} missing after {INSTALL_SCRIPT.name}; delete {venv} and rerun.")
    return exe


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Subprocesses


class ManagedProcess:
    """One long-running command in its own process group, its stdout+stderr in ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.cwd = Path(cwd)
        self.popen: subprocess.Popen | None = None
        self.started_at: float | None = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab", buffering=0)
        log.write(f"$ {' '.join(self.argv)}\n".encode())
        self.started_at = time.monotonic()
        # A new session makes the process a group leader, so stop() can signal its whole group
        # (a server's workers too) and nothing else.
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def fail(self, what: str) -> HarnessError:
        code = None if self.popen is None else self.popen.poll()
        state = "running" if code is None else f"exited with code {code}"
        return HarnessError(
            f"{self.name}: {what} ({state}; full log {self.log_path}).\n"
            f"--- last lines of {self.name} log ---\n{self.log_tail()}"
        )

    def wait_http(
        self,
        url_fn: Callable[[], str],
        timeout: float,
        ready: Callable[[requests.Response], bool] = lambda r: r.status_code == 200,
    ) -> requests.Response:
        """Poll ``url_fn()`` until ``ready(response)``; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running:
                raise self.fail(f"exited before {url_fn()} was ready")
            try:
                r = requests.get(url_fn(), timeout=2)
                if ready(r):
                    return r
                last = f"HTTP {r.status_code}: {r.text[:300]}"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
            time.sleep(0.5)
        raise self.fail(f"{url_fn()} not ready after {timeout:.0f} s (last: {last})")

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        return self.popen.returncode


def clean_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """A small environment for a child: PATH and locale from ours, a private HOME, then ``extra``.

    Not inheriting the whole environment keeps a developer's HOST, PORT, LABEL_STUDIO_* or
    SAM3_* settings out of the test.
    """
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"}}
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# Label Studio


class LabelStudioError(HarnessError):
    pass


class LabelStudio:
    """A real Label Studio server on 127.0.0.1 with a fresh data dir, and a REST client for it."""

    def __init__(self, workdir: Path, exe: Path | None = None, port: int | None = None):
        self.workdir = Path(workdir)
        self.exe = Path(exe) if exe else LS_VENV / "bin" / "label-studio"
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        self.files_root = self.workdir / "local-files"  # LOCAL_FILES_DOCUMENT_ROOT
        self.username = "e2e@localhost"
        self.password = secrets.token_hex(12)
        self.token = secrets.token_hex(20)  # 40 chars: LS accepts 6-40
        for d in (self.data_dir, self.files_root, self.workdir / "home"):
            d.mkdir(parents=True, exist_ok=True)
        env = clean_env(
            self.workdir / "home",
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.token,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
                # The hostname LS sends in /setup; without it LS says http://localhost:<port>.
                "HOST": f"http://{LOOPBACK}:{self.port}",
            },
        )
        argv = [
            self.exe,
            "start",
            "--no-browser",
            "--internal-host",
            LOOPBACK,
            "--port",
            str(self.port),
        ]
        self.process = ManagedProcess("label-studio", argv, env, self.workdir / "label-studio.log", self.workdir)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {self.token}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 240.0) -> "LabelStudio":
        self.process.start()
        self.process.wait_http(self._health_url, timeout, ready=_is_up)
        # /health only says the server is up; make sure the user's token is accepted too.
        self._wait_api(30)
        return self

    def _health_url(self) -> str:
        # LS moves to the next port if ours was taken meanwhile; follow it rather than time out.
        m = re.findall(r"Trying to start at (\d+)", self.process.log_tail(400))
        if m and int(m[-1]) != self.port:
            self.port = int(m[-1])
        return f"{self.url}/health"

    def _wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            r = self.session.get(f"{self.url}/api/projects", timeout=10)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
            time.sleep(0.5)
        raise self.process.fail(f"API token not accepted after {timeout:.0f} s (last: {last})")

    def stop(self) -> int | None:
        self.session.close()
        return self.process.stop()

    # -- REST ------------------------------------------------------------------------------------

    def api(self, method: str, path: str, expect: Iterable[int] = (200, 201), timeout: float = 150, **kw) -> Any:
        """Call ``/api/...``; return the decoded JSON (or None); raise with the body otherwise."""
        r = self.session.request(method, f"{self.url}{path}", timeout=timeout, **kw)
        if r.status_code not in tuple(expect):
            raise LabelStudioError(f"{method} {path} -> HTTP {r.status_code}: {r.text[:2000]}")
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            return r.text

    def create_project(self, title: str, label_config: str) -> dict:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config})

    def connect_ml_backend(self, project_id: int, url: str, title: str = "sam3", interactive: bool = True) -> dict:
        """``POST /api/ml``: LS calls the backend's /health and /setup before answering."""
        body = {"url": url, "project": project_id, "is_interactive": interactive, "title": title}
        return self.api("POST", "/api/ml", json=body)

    def ml_backend(self, ml_id: int) -> dict:
        return self.api("GET", f"/api/ml/{ml_id}")

    def upload_files(self, project_id: int, paths: list[Path]) -> dict:
        """Multipart import; each file under its own field name (one field name = one task)."""
        handles = [open(p, "rb") for p in paths]
        try:
            files = {f"file{i}": (Path(p).name, h) for i, (p, h) in enumerate(zip(paths, handles))}
            return self.api("POST", f"/api/projects/{project_id}/import", files=files)
        finally:
            for h in handles:
                h.close()

    def import_tasks(self, project_id: int, tasks: list[dict]) -> dict:
        return self.api("POST", f"/api/projects/{project_id}/import", json=tasks)

    def add_local_storage(self, project_id: int, path: Path) -> dict:
        """Local Files import storage over ``path`` (under the document root), synced once."""
        storage = self.api(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project_id,
                "path": str(path),
                "title": "e2e local files",
                "use_blob_urls": True,
                "regex_filter": r".*\.(png|jpe?g)$",
            },
        )
        self.api("POST", f"/api/storages/localfiles/{storage['id']}/sync")
        return storage

    def tasks(self, project_id: int) -> list[dict]:
        body = self.api("GET", "/api/tasks", params={"project": project_id, "page_size": 1000})
        tasks = body["tasks"] if isinstance(body, dict) else body
        return sorted(tasks, key=lambda t: t["id"])

    def retrieve_predictions(self, project_id: int, task_ids: list[int]) -> dict:
        """The Data Manager's "Retrieve Predictions" action on exactly ``task_ids``."""
        return self.api(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": False, "included": list(task_ids)}},
        )

    def predictions(self, task_id: int) -> list[dict]:
        return self.api("GET", "/api/predictions", params={"task": task_id})

    def interactive_annotating(self, ml_id: int, task_id: int, context: dict) -> dict:
        """What the labeling UI posts on a smart-tool click; LS answers ``{"data": results[0]}``
        or ``{"errors": [...]}`` (both with HTTP 200)."""
        return self.api("POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": task_id, "context": context})

    def create_annotation(self, task_id: int, result: list[dict]) -> dict:
        return self.api("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result, "lead_time": 1.0})

    def update_annotation(self, annotation_id: int, result: list[dict]) -> dict:
        return self.api("PATCH", f"/api/annotations/{annotation_id}/", json={"result": result})

    def delete_annotation(self, annotation_id: int) -> None:
        self.api("DELETE", f"/api/annotations/{annotation_id}/", expect=(200, 204))

    def webhooks(self, project_id: int) -> list[dict]:
        return self.api("GET", "/api/webhooks/", params={"project": project_id})


def _is_up(r: requests.Response) -> bool:
    if r.status_code != 200:
        return False
    try:
        return r.json().get("status") == "UP"
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# The backend


class Backend:
    """``sam3-backend tiny-model`` once, then ``sam3-backend serve`` on 127.0.0.1."""

    def __init__(
        self,
        workdir: Path,
        label_studio_url: str,
        api_key: str,
        cli: Path = BACKEND_CLI,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ):
        self.workdir = Path(workdir)
        self.cli = Path(cli)
        self.port = port or free_port()
        self.model_path = self.workdir / "tiny-model"
        self.model_dir = self.workdir / "model-dir"
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.env = clean_env(
            self.workdir / "home",
            {
                "SAM3_MODEL": str(self.model_path),
                "MODEL_DIR": str(self.model_dir),
                "LABEL_STUDIO_URL": label_studio_url,
                "LABEL_STUDIO_API_KEY": api_key,
                # Nothing beyond loopback: the tiny model is local.
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                **(extra_env or {}),
            },
        )
        argv = [self.cli, "serve", "--host", LOOPBACK, "--port", str(self.port)]
        self.process = ManagedProcess("sam3-backend", argv, self.env, self.workdir / "backend.log", REPO_ROOT)
        self.tiny_model_seconds: float | None = None
        self.health: dict | None = None  # body of the first GET /health that said UP

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def write_tiny_model(self, timeout: float = 300) -> None:
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(self.cli), "tiny-model", str(self.model_path)],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.tiny_model_seconds = time.monotonic() - t0
        if proc.returncode != 0:
            raise HarnessError(
                f"`sam3-backend tiny-model {self.model_path}` failed with exit code {proc.returncode}.\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )

    def start(self, timeout: float = 240) -> dict:
        """Start serving; return the body of the first ``GET /health`` that says UP."""
        self.process.start()
        r = self.process.wait_http(lambda: f"{self.url}/health", timeout, ready=_is_up)
        self.health = r.json()
        return self.health

    def stop(self) -> int | None:
        return self.process.stop()


# --------------------------------------------------------------------------------------------
# A recording reverse proxy between Label Studio and the backend


@dataclass
class Exchange:
    """One request LS sent to the backend and the backend's answer."""

    method: str
    path: str
    request_json: Any
    status: int
    response_json: Any
    response_text: str
    seconds: float
    started: float = field(default_factory=time.time)

    @property
    def action(self) -> str | None:
        """The webhook action, for ``POST /webhook``."""
        if isinstance(self.request_json, dict):
            return self.request_json.get("action")
        return None

    def summary(self, limit: int = 600) -> str:
        req = _shorten(json.dumps(self.request_json), limit) if self.request_json is not None else ""
        resp = _shorten(self.response_text, limit)
        return f"{self.method} {self.path} -> {self.status} in {self.seconds:.2f} s\n  sent: {req}\n  got:  {resp}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...<{len(text) - limit} more chars>"


class RecordingProxy:
    """A loopback HTTP proxy to one upstream that keeps every exchange in ``self.exchanges``.

    Label Studio is given the proxy's URL as the ML backend URL, so it also creates the webhook
    at ``<proxy>/webhook``. The proxy adds well under a millisecond per request on loopback.
    """

    def __init__(self, upstream: str, port: int | None = None):
        self.upstream = urlsplit(upstream)
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}}
                t0 = time.monotonic()
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, resp_headers = resp.status, resp.getheaders()
                except OSError as exc:
                    data = json.dumps({"proxy_error": f"{type(exc).__name__}: {exc}"}).encode()
                    status, resp_headers = 502, [("Content-Type", "application/json")]
                finally:
                    conn.close()
                proxy._record(self.command, self.path, body, status, data, time.monotonic() - t0)
                self.send_response(status)
                for k, v in resp_headers:
                    if k.lower() not in {"content-length", "connection", "transfer-encoding", "server", "date"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, port or 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def start(self) -> "RecordingProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _record(self, method, path, body, status, data, seconds) -> None:
        def decode(raw: bytes):
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return None

        ex = Exchange(method, path, decode(body), status, decode(data), data.decode("utf-8", "replace"), seconds)
        with self.lock:
            self.exchanges.append(ex)

    def find(self, method: str | None = None, path: str | None = None, since: int = 0) -> list[Exchange]:
        with self.lock:
            items = self.exchanges[since:]
        return [e for e in items if (method is None or e.method == method) and (path is None or e.path == path)]

    def mark(self) -> int:
        """An index to pass as ``since=`` to see only later exchanges."""
        with self.lock:
            return len(self.exchanges)

    def dump(self, path: Path) -> Path:
        """Write every exchange as JSON (request and response bodies in full) for post-mortems."""
        with self.lock:
            items = list(self.exchanges)
        rows = [
            {
                "method": e.method,
                "path": e.path,
                "status": e.status,
                "seconds": round(e.seconds, 4),
                "request": e.request_json,
                "response": e.response_json if e.response_json is not None else e.response_text,
            }
            for e in items
        ]
        Path(path).write_text(json.dumps(rows, indent=1))
        return Path(path)

    def report(self, last: int = 30, limit: int = 600) -> str:
        with self.lock:
            items = self.exchanges[-last:]
        return "\n".join(e.summary(limit) for e in items) or "<no requests reached the backend>"
