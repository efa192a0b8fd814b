"""`sam3-backend doctor` and the weights resolution it shares with `serve`, on real files, real
servers on 127.0.0.1 and the tiny model. The checks against a real Label Studio are in
tests/e2e/test_doctor_live.py."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sam3_backend.config import Settings
from sam3_backend.doctor import FAIL, OK, SKIP, WARN, Check, Doctor, in_container, is_local_host, main, render


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def settings(tiny_checkpoint, tmp_path) -> Settings:
    return Settings(sam3_model=str(tiny_checkpoint), device="cpu", model_dir=tmp_path / "model",
                    port=closed_port())


class _Server:
    """A throwaway HTTP server on 127.0.0.1 answering every GET with ``status`` and ``body``."""

    def __init__(self, status: int, body: bytes, headers: dict | None = None):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(status)
                for k, v in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.paths.append(self.path)

        self.paths: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------
# Environment facts


def test_container_detection(tmp_path):
    assert not in_container(tmp_path)
    for marker, content in ((".dockerenv", ""), ("run/.containerenv", ""),
                            ("proc/1/cgroup", "0::/system.slice/docker-3f2a.scope\n"),
                            ("proc/self/mountinfo", "1 2 0:3 /var/lib/kubelet/pods/x /etc/hosts rw - kubepods\n")):
        root = tmp_path / marker.replace("/", "_")
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text(content)
        assert in_container(root), marker
    plain = tmp_path / "plain"
    (plain / "proc/1").mkdir(parents=True)
    (plain / "proc/1/cgroup").write_text("0::/init.scope\n")
    assert not in_container(plain)


def test_local_hosts():
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "0.0.0.0", "app.localhost"):
        assert is_local_host(host), host
    for host in ("label-studio", "10.0.0.4", "172.18.0.2", "example.com", None, ""):
        assert not is_local_host(host), host


# --------------------------------------------------------------------------------------------
# Weights


def test_tiny_model_folder_is_a_loadable_sam3_test_model(settings):
    check = Doctor(settings, container=False).check_weights()
    assert check.status == WARN and "sam3_video" in check.detail and "TEST model" in check.detail
    assert "facebook/sam3" in check.fix


def test_hub_id_from_the_offline_cache(settings, tiny_checkpoint):
    check = Doctor(settings.with_overrides(sam3_model="facebook/sam3"), container=False).check_weights()
    assert check.status == WARN and "from the hub cache" in check.detail, check


def test_missing_weights_each_fail_with_the_way_out(settings, tmp_path):
    cases = {
        "someone/not-cached": "HF_HUB_OFFLINE",  # conftest runs the tests offline, as a cut-off container
        str(tmp_path / "nowhere"): "not a folder",
        "not a repo id!": "neither a folder nor a valid hub repo id",
    }
    (tmp_path / "empty").mkdir()
    cases[str(tmp_path / "empty")] = "without config.json"
    for model, needle in cases.items():
        check = Doctor(settings.with_overrides(sam3_model=model), container=False).check_weights()
        assert check.status == FAIL and needle in check.detail, (model, check)
        assert "SAM3_MODEL" in check.fix or "HF_TOKEN" in check.fix, check


def test_a_checkpoint_that_is_not_sam3_fails(settings, tiny_checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "sam2_video"}))
    check = Doctor(settings.with_overrides(sam3_model=str(other)), container=False).check_weights()
    assert check.status == FAIL and "sam2_video" in check.detail

    import numpy as np
    from safetensors.numpy import save_file

    detector_only = tmp_path / "detector-only"
    shutil.copytree(tiny_checkpoint, detector_only)
    for f in detector_only.glob("*.safetensors"):
        f.unlink()
    save_file({"detector_model.x": np.zeros(2, np.float32)}, str(detector_only / "model.safetensors"))
    check = Doctor(settings.with_overrides(sam3_model=str(detector_only)), container=False).check_weights()
    assert check.status == FAIL and "tracker_model" in check.detail


def test_gated_repo_without_access_says_what_to_do(tmp_path):
    """Against a fake hub answering as huggingface.co does for a gated repo without access."""
    from fake_hub import FakeHub

    hub = FakeHub(gated=True)
    code = (
        "from sam3_backend.engine.weights import resolve_weights\n"
        "try:\n    resolve_weights('facebook/sam3', None)\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, **hub.env(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout
    finally:
        hub.close()
    assert out.startswith("ModelLoadError") and "HF_TOKEN is not set" in out, out
    assert "huggingface.co/facebook/sam3" in out and "tiny-model" in out
    assert hub.requests, "the hub was never asked"


# --------------------------------------------------------------------------------------------
# Device, disk


def test_device_cpu_is_ok_when_asked_for(settings):
    check = Doctor(settings, container=False).check_device()
    assert check.status == OK and "float32" in check.detail


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible here")
def test_no_gpu_is_a_warning_on_auto_and_a_failure_when_cuda_is_asked_for(settings):
    auto = Doctor(settings.with_overrides(device="auto"), container=False).check_device()
    assert auto.status == WARN and "SAM3_DEVICE=cpu" in auto.fix and "Container Toolkit" in auto.fix
    cuda = Doctor(settings.with_overrides(device="cuda"), container=False).check_device()
    assert cuda.status == FAIL and "nvidia-smi" in cuda.fix
    bad = Doctor(settings.with_overrides(dtype="int8"), container=False).check_device()
    assert bad.status == FAIL and "SAM3_DTYPE" in bad.detail


def test_disk_space_and_writability(settings, tmp_path):
    checks = by_name(Doctor(settings, container=False).check_disk())
    assert checks["disk: MODEL_DIR"].status == OK and checks["disk: hub cache"].status == SKIP
    huge = settings.with_overrides(media_cache_mb=10**12)
    check = by_name(Doctor(huge, container=False).check_disk())["disk: MODEL_DIR"]
    assert check.status == FAIL and "needs about" in check.detail
    doctor = Doctor(settings.with_overrides(sam3_model="facebook/sam3"), container=False)
    doctor._download_bytes = 10**18  # what check_weights found the first start must download
    assert by_name(doctor.check_disk())["disk: hub cache"].status == FAIL


# --------------------------------------------------------------------------------------------
# Label Studio, without one


def test_unreachable_label_studio_fails_and_skips_what_depends_on_it(settings):
    s = settings.with_overrides(label_studio_url=f"http://127.0.0.1:{closed_port()}", label_studio_api_key="k" * 10)
    checks = by_name(Doctor(s, container=False).run())
    assert checks["label-studio"].status == FAIL and "running" in checks["label-studio"].fix
    assert checks["token"].status == SKIP and checks["media"].status == SKIP
    assert checks["container"].status == OK


def test_localhost_inside_a_container(settings):
    url = f"http://localhost:{closed_port()}"
    checks = by_name(Doctor(settings.with_overrides(label_studio_url=url), container=True).run())
    assert checks["container"].status == FAIL and "http://label-studio:8080" in checks["container"].fix
    assert checks["label-studio"].status == FAIL and "container itself" in checks["label-studio"].fix
    checks = by_name(Doctor(settings, container=True).run())  # no LABEL_STUDIO_URL at all
    assert checks["container"].status == WARN and "LABEL_STUDIO_URL" in checks["container"].fix


def test_unresolvable_host_and_something_that_is_not_label_studio(settings):
    s = settings.with_overrides(label_studio_url="http://label-studio.invalid:8080")
    check = Doctor(s, container=False).check_label_studio()
    assert check.status == FAIL and "does not resolve" in check.detail and "compose" in check.fix
    other = _Server(404, b"<html>nginx</html>", {"Content-Type": "text/html"})
    try:
        check = Doctor(settings.with_overrides(label_studio_url=other.url), container=False).check_label_studio()
    finally:
        other.close()
    assert check.status == FAIL and "404" in check.detail and "base URL" in check.fix


# --------------------------------------------------------------------------------------------
# The backend running here, Ray


def test_backend_check_reads_a_running_backends_health(engine, settings, tmp_path):
    from werkzeug.serving import make_server

    from sam3_backend.app import create_app

    def broken(_settings):
        raise RuntimeError("no weights here")

    for app, status, needle in (
        (create_app(settings, engine=engine), OK, engine.model_version),
        (create_app(settings, engine_factory=broken, load_in_background=False), FAIL, "no weights here"),
    ):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            check = Doctor(settings.with_overrides(port=server.server_port), container=False).check_backend()
        finally:
            server.shutdown()
        assert check.status == status and needle in check.detail, check
    assert Doctor(settings, container=False).check_backend().status == SKIP


def test_ray_is_checked_only_when_configured(settings):
    assert Doctor(settings, env={}, container=False).check_ray() is None
    check = Doctor(settings, env={"RAY_ADDRESS": f"ray://127.0.0.1:{closed_port()}"}, container=False).check_ray()
    assert check.status == FAIL and "nothing answers" in check.detail and "--profile ray" in check.fix
    check = Doctor(settings, env={"RAY_ADDRESS": "ray-head"}, container=False).check_ray()
    assert check.status == FAIL and "ray://ray-head:10001" in check.fix


# --------------------------------------------------------------------------------------------
# Report and exit code


def test_report_and_exit_code(monkeypatch, capsys, tiny_checkpoint, tmp_path):
    text = render([Check("a", OK, "fine"), Check("bb", FAIL, "broken", "do this")])
    assert "[ OK ] a" in text and "[FAIL] bb" in text and "fix: do this" in text and "1 check(s) failed: bb" in text
    assert "fix:" not in render([Check("a", OK, "fine", "never shown")])

    monkeypatch.setenv("SAM3_SCORE_THRESHOLD", "7")
    assert main(json_output=True) == 1
    out = json.loads(capsys.readouterr().out)
    assert out == [{"name": "settings", "status": FAIL, "detail": out[0]["detail"], "fix": out[0]["fix"]}]
    assert "SAM3_SCORE_THRESHOLD" in out[0]["detail"]


def test_cli_exit_code_and_json(tiny_checkpoint, tmp_path):
    env = dict(os.environ, SAM3_MODEL=str(tiny_checkpoint), SAM3_DEVICE="cpu", MODEL_DIR=str(tmp_path),
               LABEL_STUDIO_URL=f"http://127.0.0.1:{closed_port()}", LABEL_STUDIO_API_KEY="0123456789",
               PORT=str(closed_port()))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "sam3_backend.cli", "doctor", "--json", "--timeout", "2"], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stderr
    checks = {c["name"]: c["status"] for c in json.loads(r.stdout)}
    assert checks["label-studio"] == FAIL and checks["weights"] == WARN and checks["device"] == OK
    assert list(checks)[:3] == ["settings", "container", "weights"]
    assert Path(tmp_path).exists()
