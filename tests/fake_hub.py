"""A stand-in for the Hugging Face hub on 127.0.0.1, for huggingface_hub's real download code.

It serves one local checkpoint folder as ``facebook/sam3`` (repo info, file tree, ``resolve``
downloads), or answers every request as huggingface.co answers a gated repo without access.
Point ``HF_ENDPOINT`` at ``FakeHub.url`` (in a subprocess: huggingface_hub reads it at import).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = "facebook/sam3"
COMMIT = "5" * 40


class FakeHub:
    def __init__(self, folder: Path | None = None, *, gated: bool = False):
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()} if folder else {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, value, status: int = 200, **headers):
                self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})

            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                if gated:
                    return self._json({"error": f"Access to model {REPO} is restricted."}, 401,
                                      **{"X-Error-Code": "GatedRepo"})
                if path.startswith(f"/api/models/{REPO}/revision/"):
                    return self._json({"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]})
                if path.startswith(f"/api/models/{REPO}/tree/"):
                    return self._json([{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                       for n, b in files.items()])
                prefix = f"/{REPO}/resolve/"
                if path.startswith(prefix) and path[len(prefix):].split("/", 1)[-1] in files:
                    body = files[path[len(prefix):].split("/", 1)[1]]
                    return self._send(200, body, {"X-Repo-Commit": COMMIT, "Content-Type": "application/octet-stream",
                                                  "ETag": f'"{hashlib.sha1(body).hexdigest()}"'})
                return self._json({"error": "not found"}, 404, **{"X-Error-Code": "RepoNotFound"})

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def env(self, hf_home: Path) -> dict[str, str]:
        """Environment for a subprocess that downloads from this hub into ``hf_home``."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
