"""``kill -9`` of a real server while webhooks pour in: nothing acknowledged is lost.

A real ``sam3-backend serve`` (gunicorn) process receives ANNOTATION_CREATED webhooks from four
client threads; the whole process group is SIGKILLed mid-stream. Every annotation whose webhook
got a 2xx must be in the store afterwards, the database must pass SQLite's integrity check, and a
restarted server must keep ingesting into it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from helpers import free_port

CLI = Path(sys.executable).with_name("sam3-backend")


def _serve(model_dir: Path, checkpoint: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir), "SAM3_MODEL": str(checkpoint), "SAM3_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING", "THREADS": "8"}
    proc = subprocess.Popen([str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/health", timeout=5)  # 503 while the model loads is fine: webhooks work
            return proc, url
        except requests.RequestException:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    raise AssertionError("server did not start:\n" + log.read_text()[-3000:])


def _created(aid: int) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1},
            "annotation": {"id": aid, "task": aid, "project": 1, "updated_at": "2026-01-01T00:00:00Z",
                           "result": [{"type": "brushlabels", "value": {"rle": list(range(256)) * 8}}]},
            "task": {"id": aid, "data": {"image": f"/data/upload/1/{aid}.png"}}}


def test_kill_9_during_ingestion_loses_nothing_acknowledged(tiny_checkpoint, tmp_path):
    model_dir, log = tmp_path / "model", tmp_path / "server.log"
    proc, url = _serve(model_dir, tiny_checkpoint, log)
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(start: int) -> None:
        session = requests.Session()
        aid = start
        while not stop.is_set():
            try:
                r = session.post(f"{url}/webhook", json=_created(aid), timeout=5)
            except requests.RequestException:
                return  # the server is gone
            if r.status_code == 201:
                with lock:
                    acked.append(aid)
            aid += 4

    threads = [threading.Thread(target=client, args=(k + 1,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 150, f"only {len(acked)} webhooks acknowledged:\n{log.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # master and workers, mid-stream
        proc.wait(timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    db = sqlite3.connect(model_dir / "annotations.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in db.execute("SELECT id FROM annotations WHERE project=1")}
    missing = sorted(set(acked) - stored)
    assert not missing, f"{len(missing)} acknowledged annotations lost, e.g. {missing[:10]}"
    db.close()

    proc, url = _serve(model_dir, tiny_checkpoint, log)  # the store opens again and keeps working
    try:
        assert requests.post(f"{url}/webhook", json=_created(10**6), timeout=10).status_code == 201
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    db = sqlite3.connect(model_dir / "annotations.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM annotations WHERE id=?", (10**6,)).fetchone()[0] == 1
