"""Test helpers shared by several test folders (importable as ``helpers``: pytest pythonpath)."""

from __future__ import annotations

import contextlib
import copy
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

FULL_CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/>'
    '<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat" smart="true"/>'
    '<Label value="dog" smart="true"/></KeyPointLabels>'
    '<RectangleLabels name="rect" toName="image" smart="true"><Label value="cat"/><Label value="dog"/></RectangleLabels>'
    "</View>"
)


def make_image(h: int = 48, w: int = 64, seed: int = 0, key: str | None = None):
    from sam3_backend.types import ImageInput

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return ImageInput(pixels, key or f"img-{h}x{w}-{seed}")


TOKEN = "test-token-0123456789"


def png(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class FakeLabelStudio:
    """Serves /data/upload/... and /data/local-files/?d=... only with the right token."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = outer.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def recorded(payloads: dict, key: str, config: str) -> dict:
    """A recorded /predict body with the full label config (the recording shortened it)."""
    body = copy.deepcopy(payloads[key]["json"])
    body["label_config"] = config
    return body


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch CPU threads. Training tests use 1: on a busy 2-core machine, OpenMP's
    spinning worker threads make 2-thread training steps up to 10x slower than 1 thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers started by tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_perturbed_version(store, scope: str, loaded, *, scale: float = 0.3, seed: int = 0) -> str:
    """Save and serve a "fine-tuned" version of ``scope`` whose delta perturbs every DETR decoder
    tensor of ``loaded`` (a ``LoadedSam3``): its scores and boxes differ from the base model's.
    Returns the version id."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    decoder = loaded.detector.detr_decoder.state_dict()
    delta = {f"detr_decoder.{k}": v.float() + scale * torch.randn(v.shape, generator=gen)
             for k, v in decoder.items() if v.is_floating_point()}
    info = store.save(scope, delta, {"base_version": loaded.version})
    store.set_served(scope, info.id, reason="test", base_version=loaded.version)
    return info.id
