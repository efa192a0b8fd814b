"""A version switch reaches every gunicorn worker: two worker processes, one pointer file.

The version is promoted (and later rolled back) by another process, as ``sam3-backend rollback``
or a training job in a different worker would; every /setup afterwards, whichever worker answers
it, reports the switched version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from helpers import free_port

CLI = Path(sys.executable).with_name("sam3-backend")
CONFIG = '<View><Image name="image" value="$image"/><BrushLabels name="t" toName="image"><Label value="a"/></BrushLabels></View>'


def _setup_versions(n: int, url: str) -> set[str]:
    seen = set()
    for _ in range(n):  # a new connection each time, so the kernel hands them to either worker
        r = requests.post(f"{url}/setup", json={"project": "4.1700000000", "schema": CONFIG}, timeout=30)
        assert r.status_code == 200, r.text
        seen.add(r.json()["model_version"])
    return seen


def test_every_worker_serves_the_switched_version(loaded_model, tiny_checkpoint, tmp_path):
    from sam3_backend.engine.versions import VersionStore

    model_dir = tmp_path / "model"
    store = VersionStore(model_dir / "versions")
    decoder = loaded_model.detector.detr_decoder.state_dict()
    key = next(k for k, v in decoder.items() if v.is_floating_point())
    version = store.save("project-4", {f"detr_decoder.{key}": decoder[key].float() + 0.5},
                         {"base_version": loaded_model.version})

    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "SAM3_MODEL": str(tiny_checkpoint), "SAM3_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"}
    log = tmp_path / "server.log"
    proc = subprocess.Popen([str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                             "--threads", "2"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        ready = 0
        while ready < 10 and time.monotonic() < deadline:  # both workers loaded: 10 UPs in a row
            try:
                ready = ready + 1 if requests.get(f"{url}/health", timeout=5).status_code == 200 else 0
            except requests.RequestException:
                ready = 0
            time.sleep(0.1)
        assert ready == 10, log.read_text()[-3000:]
        base = loaded_model.version
        assert _setup_versions(20, url) == {base}
        store.set_served("project-4", version.id, reason="test", base_version=base)
        assert _setup_versions(30, url) == {f"{base}+{version.id}"}
        store.set_served("project-4", None, reason="rollback")
        assert _setup_versions(30, url) == {base}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
