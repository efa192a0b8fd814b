"""A loopback imitation of the parts of Label Studio 1.23.2's REST API a bulk job uses.

Real Label Studio takes a minute to start and ~200 ms per task-list call on two cores, which is
fine for the e2e tests (tests/e2e) but not for unit tests of retries, failures and Ray. This
server answers like Label Studio does (shapes and status codes copied from the real server:
``GET /api/projects/<id>/``, ``GET /api/tasks/`` with the Data Manager ``query`` filters a job
sends, ``POST /api/projects/<id>/import/predictions``, ``GET /api/predictions/?task=``, and the
media under ``/data/upload/``), and lets a test inject faults: answers with a status for the
next N matching requests, a delay per media download, tasks deleted on a hook, a revoked key.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-ls-token-0123456789"
_JWT_SECRET = "fake-label-studio-jwt-signing-key-0123456789"  # the SDK never verifies it


@dataclass
class Fault:
    method: str
    path_re: str
    status: int
    times: int
    store_anyway: bool = False  # an import that is stored although the answer is an error
    retry_after: float | None = None


@dataclass
class FakeState:
    projects: dict[int, dict] = field(default_factory=dict)
    tasks: dict[int, dict] = field(default_factory=dict)  # id -> {"project", "data", "annotations"}
    predictions: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


class FakeLabelStudioAPI:
    def __init__(self, token: str = TOKEN):
        self.token = token
        self.state = FakeState()
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []
        self.media_delay = 0.0
        self.media_gate: threading.Event | None = None  # with media_gate_after: hold later downloads
        self.media_gate_after = 0  # until the gate opens (tests that must act mid-job, not by timing)
        self.media_served = 0
        self.revoked = False
        self.on_import: Callable[[FakeLabelStudioAPI, list[dict]], None] | None = None
        self.redirect_to: str | None = None  # answer every API request with a redirect there
        self.refresh_tokens: set[str] = set()
        self.access_tokens: set[str] = set()
        self.auth_headers: list[str] = []
        self._next_task = 1
        self._next_prediction = 1
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body, headers: dict | None = None):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                outer.requests.append((self.command, self.path, status))  # before the client can see the answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "image/png")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.auth_headers.append(self.headers.get("Authorization") or "")
                status, body, headers = outer.dispatch(self.command, self.path, self.headers, raw)
                self._send(status, body, headers)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- setup helpers ---------------------------------------------------------------------------

    def add_project(self, label_config: str, title: str = "fake project") -> int:
        with self.lock:
            pid = len(self.state.projects) + 1
            self.state.projects[pid] = {"id": pid, "title": title, "label_config": label_config,
                                        "evaluate_predictions_automatically": False}
            return pid

    def add_task(self, project: int, data: dict, annotations: int | list[dict] = 0) -> int:
        """``annotations``: how many, or the annotations themselves (Label Studio's JSON)."""
        with self.lock:
            tid = self._next_task
            self._next_task += 1
            listed = [] if isinstance(annotations, int) else [dict(a, task=tid) for a in annotations]
            count = annotations if isinstance(annotations, int) else len(listed)
            self.state.tasks[tid] = {"project": project, "data": data, "annotations": count, "annotation_list": listed}
            return tid

    def delete_task(self, task_id: int) -> None:
        with self.lock:
            self.state.tasks.pop(task_id, None)
            self.state.predictions = [p for p in self.state.predictions if p["task"] != task_id]

    def fail_next(self, method: str, path_re: str, status: int, times: int = 1, *, store_anyway: bool = False,
                  retry_after: float | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(method, path_re, status, times, store_anyway, retry_after))

    def predictions_of(self, task_id: int) -> list[dict]:
        with self.lock:
            return [p for p in self.state.predictions if p["task"] == task_id]

    def count(self, method: str, path_re: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and re.search(path_re, p))

    # -- the API -------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, detail: str, validation=None) -> tuple[int, dict, dict]:
        body = {"id": str(uuid.uuid4()), "status_code": status, "version": "1.23.2", "detail": detail,
                "exc_info": None}
        if validation:
            body["validation_errors"] = validation
        return status, body, {}

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and re.search(fault.path_re, path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def dispatch(self, method: str, target: str, headers, raw: bytes):
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if path == "/api/token/refresh/" and method == "POST":
            return self._refresh(json.loads(raw or b"{}").get("refresh"))
        auth = headers.get("Authorization") or ""
        if self.redirect_to is not None:
            return 302, {}, {"Location": self.redirect_to + target}
        if self.revoked or not (auth == f"Token {self.token}" or auth.removeprefix("Bearer ") in self.access_tokens):
            return self._error(401, "Invalid token.")
        fault = self._fault(method, path)
        if fault is not None and not fault.store_anyway:
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            status, body, _ = self._error(fault.status, "injected fault")
            return status, body, extra
        if path.startswith("/data/upload/"):
            time.sleep(self.media_delay)
            with self.lock:
                self.media_served += 1
                held = self.media_gate is not None and self.media_served > self.media_gate_after
            if held:
                self.media_gate.wait(30)
            data = self.state.files.get(path)
            return (200, data, {}) if data is not None else self._error(404, "Not found.")
        m = re.fullmatch(r"/api/projects/(\d+)/", path)
        if m and method == "GET":
            project = self.state.projects.get(int(m.group(1)))
            return (200, project, {}) if project else self._error(404, "No Project matches the given query.")
        if path == "/api/tasks/" and method == "GET":
            return self._tasks(query)
        m = re.fullmatch(r"/api/projects/(\d+)/import/predictions", path)
        if m and method == "POST":
            answer = self._import(int(m.group(1)), json.loads(raw or b"[]"))
            if fault is not None:  # stored, but the client sees an error (a timeout after the commit)
                status, body, _ = self._error(fault.status, "injected fault after storing")
                return status, body, {}
            return answer
        if path == "/api/predictions/" and method == "GET":
            task = int(query.get("task", ["0"])[0])
            return 200, self.predictions_of(task), {}
        return self._error(404, f"no route {method} {path} in the fake")

    # -- personal access tokens: JWT refresh tokens exchanged for access tokens -------------------

    def personal_access_token(self, lifetime: float = 3600) -> str:
        import jwt

        now = int(time.time())
        token = jwt.encode({"token_type": "refresh", "exp": now + int(lifetime), "iat": now, "jti": uuid.uuid4().hex,
                            "user_id": "1"}, _JWT_SECRET, algorithm="HS256")
        self.refresh_tokens.add(token)
        return token

    def _refresh(self, refresh: str | None):
        import jwt

        if self.revoked or refresh not in self.refresh_tokens:
            return 401, {"detail": "Token is invalid or expired", "code": "token_not_valid"}, {}
        now = int(time.time())
        access = jwt.encode({"token_type": "access", "exp": now + 300, "iat": now, "jti": uuid.uuid4().hex,
                             "user_id": "1"}, _JWT_SECRET, algorithm="HS256")
        self.access_tokens.add(access)
        return 200, {"access": access}, {}

    def _tasks(self, query: dict):
        project = int(query.get("project", ["0"])[0])
        page = int(query.get("page", ["1"])[0])
        size = int(query.get("page_size", ["100"])[0])
        include = query.get("include", [""])[0].split(",") if query.get("include") else None
        q = json.loads(query.get("query", ["{}"])[0])
        with self.lock:
            rows = [(tid, t) for tid, t in sorted(self.state.tasks.items()) if t["project"] == project]
            versions = {}
            for p in self.state.predictions:
                versions.setdefault(p["task"], set()).add(p["model_version"])
        selected = q.get("selectedItems")
        if selected and not selected.get("all"):
            keep = set(selected.get("included", []))
            rows = [(tid, t) for tid, t in rows if tid in keep]
        for item in (q.get("filters") or {}).get("items", []):
            name, op, value = item["filter"].split(":")[-1], item["operator"], item["value"]
            if name == "id" and op == "greater":
                rows = [(tid, t) for tid, t in rows if tid > value]
            elif name == "total_annotations" and op == "equal":
                rows = [(tid, t) for tid, t in rows if t["annotations"] == value]
            elif name == "total_annotations" and op == "greater":
                rows = [(tid, t) for tid, t in rows if t["annotations"] > value]
            elif name == "predictions_model_versions" and op == "contains":
                rows = [(tid, t) for tid, t in rows if any(v in mv for v in value for mv in versions.get(tid, ()))]
            else:
                return self._error(400, f"the fake does not know filter {item}")
        total = len(rows)
        start = (page - 1) * size
        if start and start >= total:
            return self._error(404, "Invalid page.")
        out = []
        for tid, t in rows[start : start + size]:
            full = {"id": tid, "data": t["data"], "total_annotations": t["annotations"],
                    "annotations": t.get("annotation_list", []),
                    "predictions_model_versions": ",".join(sorted(versions.get(tid, ())))[:500]}
            row = {k: v for k, v in full.items() if include is None or k in include}
            if include is not None and "annotations" in row:  # as Label Studio 1.23 does: ids only
                row["annotations"] = [{"id": a["id"]} for a in row["annotations"]]
            out.append(row)
        return 200, {"total_annotations": 0, "total_predictions": 0, "total": total, "tasks": out}, {}

    def _import(self, project: int, items: list[dict]):
        with self.lock:
            if project not in self.state.projects:
                return self._error(404, "No Project matches the given query.")
            for item in items:
                task = self.state.tasks.get(item.get("task"))
                if task is None or task["project"] != project:
                    msg = (f"{item} contains invalid \"task\" field: corresponding task ID couldn't be retrieved "
                           f"from project {project} tasks")
                    return self._error(400, "Validation error", {"non_field_errors": [msg]})
                if not isinstance(item.get("result"), list):
                    return self._error(400, "Validation error", {"result": ["must be a list"]})
            for item in items:
                self.state.predictions.append({"id": self._next_prediction, "task": item["task"], "project": project,
                                               "result": item["result"], "score": item.get("score"),
                                               "model_version": item.get("model_version", "undefined")})
                self._next_prediction += 1
        if self.on_import is not None:
            self.on_import(self, items)
        return 201, {"created": len(items)}, {}


SIZES = [(48, 64), (60, 40), (32, 32), (50, 70)]


def add_image_tasks(api: FakeLabelStudioAPI, project: int, n: int) -> list[int]:
    """``n`` tasks with small PNGs of a few sizes (H, W), served under /data/upload/<project>/."""
    import io

    import numpy as np
    from PIL import Image

    ids = []
    start = len(api.state.files)
    for i in range(start, start + n):
        h, w = SIZES[i % len(SIZES)]
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
        path = f"/data/upload/{project}/img{i}.png"
        api.state.files[path] = buf.getvalue()
        ids.append(api.add_task(project, {"image": path}))
    return ids
