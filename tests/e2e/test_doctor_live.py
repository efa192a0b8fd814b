"""`sam3-backend doctor` against the real Label Studio 1.23.2 and backend of the e2e session: a good
setup passes; a wrong URL, a bad token, no weights and localhost-in-a-container each fail with
the right fix. Reuses the session's Label Studio, backend and project (a few seconds in all).

Also checks the compose stack's Label Studio settings with Label Studio's own code: the private
Docker network is let through, loopback and cloud metadata stay blocked."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import ls_harness as h
import pytest
import yaml
from ls_harness import phase

from sam3_backend.config import Settings
from sam3_backend.doctor import FAIL, OK, SKIP, WARN, Check, Doctor, render

pytestmark = pytest.mark.e2e


def _settings(label_studio, backend, tmp_path, **changes) -> Settings:
    values = dict(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                  sam3_model=str(backend.model_path), device="cpu", model_dir=tmp_path / "model",
                  host=h.LOOPBACK, port=backend.port)
    values.update(changes)
    return Settings(**values)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((h.LOOPBACK, port)) == 0


def _checks(settings: Settings, **kw) -> dict:
    return {c.name: c for c in Doctor(settings, env={}, container=kw.pop("container", False), **kw).run()}


def test_good_setup_passes_from_the_command_line(label_studio, backend, project, tmp_path):
    env = h.clean_env(tmp_path, {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "SAM3_MODEL": str(backend.model_path), "SAM3_DEVICE": "cpu", "MODEL_DIR": str(tmp_path / "model"),
        "HOST": h.LOOPBACK, "PORT": str(backend.port), "HF_HUB_OFFLINE": "1",
    })
    with phase("doctor: good setup (CLI)"):
        r = subprocess.run([str(backend.cli), "doctor", "--json", "--project", str(project.id)], env=env,
                           capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    print("\n" + render([Check(**c) for c in checks.values()]))  # what a user sees (pytest -s)
    assert not [c for c in checks.values() if c["status"] == FAIL], checks
    assert checks["label-studio"]["status"] == OK and h.LS_VERSION in checks["label-studio"]["detail"]
    assert checks["token"]["status"] == OK and "legacy token" in checks["token"]["detail"]
    assert checks["weights"]["status"] == WARN  # the tiny test model, said so
    assert checks["backend"]["status"] == OK and backend.health["model_version"] in checks["backend"]["detail"]
    media = checks["media"]
    assert media["status"] == OK, media
    w, h_ = (int(v) for v in re.search(r"a (\d+)x(\d+) image", media["detail"]).groups())
    assert (w, h_) in project.good_tasks.values(), media


def test_wrong_url_fails_with_the_fix(label_studio, backend, tmp_path):
    url = f"http://{h.LOOPBACK}:{h.free_port()}"
    checks = _checks(_settings(label_studio, backend, tmp_path, label_studio_url=url))
    assert checks["label-studio"].status == FAIL and url in checks["label-studio"].detail
    assert "port" in checks["label-studio"].fix
    assert checks["token"].status == SKIP and checks["media"].status == SKIP


def test_bad_token_fails_with_the_fix(label_studio, backend, tmp_path):
    checks = _checks(_settings(label_studio, backend, tmp_path, label_studio_api_key="not-the-token-0123"))
    assert checks["label-studio"].status == OK
    token = checks["token"]
    assert token.status == FAIL and "401" in token.detail, token
    assert "LABEL_STUDIO_API_KEY" in token.fix and "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN" in token.fix
    assert checks["media"].status == SKIP


def test_no_weights_fails_with_the_fix(label_studio, backend, tmp_path):
    checks = _checks(_settings(label_studio, backend, tmp_path, sam3_model="someone/sam3-not-downloaded"))
    weights = checks["weights"]
    assert weights.status == FAIL and "HF_HUB_OFFLINE" in weights.detail
    assert "HF_TOKEN" in weights.fix and "HF_HOME" in weights.fix
    assert checks["token"].status == OK  # the rest is still checked


def test_localhost_inside_a_container_fails_with_the_fix(label_studio, backend, tmp_path):
    url = f"http://localhost:{h.free_port()}"
    checks = _checks(_settings(label_studio, backend, tmp_path, label_studio_url=url), container=True)
    assert checks["container"].status == FAIL and "http://label-studio:8080" in checks["container"].fix
    assert checks["label-studio"].status == FAIL and "container itself" in checks["label-studio"].fix
    # The same URL that answers (Label Studio on this host's loopback): host networking, only a warning.
    good = label_studio.url.replace(h.LOOPBACK, "localhost")
    checks = _checks(_settings(label_studio, backend, tmp_path, label_studio_url=good), container=True)
    assert checks["container"].status == WARN and checks["label-studio"].status == OK


def test_broken_task_media_fails_with_the_fix(label_studio, backend, project, tmp_path):
    for task_id in project.broken_tasks:
        media = _checks(_settings(label_studio, backend, tmp_path), task_id=task_id)["media"]
        assert media.status == FAIL and media.fix, media
        assert str(task_id) in media.detail


def test_compose_label_studio_settings_pass_the_private_network_and_block_the_rest(label_studio_exe):
    """Label Studio 1.23.2's own validate_ip, under the compose file's settings."""
    compose = yaml.safe_load((h.REPO_ROOT / "docker" / "docker-compose.yml").read_text())
    env = compose["services"]["label-studio"]["environment"]
    settings_env = {k: str(v) for k, v in env.items()
                    if k in ("USE_DEFAULT_BANNED_SUBNETS", "USER_ADDITIONAL_BANNED_SUBNETS", "ML_BLOCK_LOCAL_IP",
                             "SSRF_PROTECTION_ENABLED")}
    code = (
        "import json, os, sys, re, inspect\n"
        "import label_studio\n"
        "sys.path.insert(0, os.path.dirname(label_studio.__file__))\n"
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from core.utils import io\n"
        "out = {'ml_block': settings.ML_BLOCK_LOCAL_IP, 'ssrf': settings.SSRF_PROTECTION_ENABLED, 'ips': {}}\n"
        "for ip in sys.argv[1:]:\n"
        "    try:\n        io.validate_ip(ip); out['ips'][ip] = 'allowed'\n"
        "    except Exception:\n        out['ips'][ip] = 'blocked'\n"
        "src = inspect.getsource(io.validate_ip)\n"
        "out['defaults'] = re.findall(r\"'([0-9a-f:.]+/\\d+)',\", src)\n"
        "print('RESULT=' + json.dumps(out))\n"
    )
    venv_python = Path(label_studio_exe).parent / "python"
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))
    ips = ["172.18.0.3", "10.4.0.7", "192.168.50.2", "127.0.0.1", "169.254.169.254", "::1", "0.0.0.0"]
    run_env = h.clean_env(workdir, {"DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
                                    "LABEL_STUDIO_BASE_DATA_DIR": str(workdir / "ls-settings-check"),
                                    "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", **settings_env})
    with phase("doctor: compose LS settings through LS's validate_ip"):
        r = subprocess.run([str(venv_python), "-c", code, *ips], env=run_env, capture_output=True, text=True,
                           timeout=180)
    found = re.search(r"^RESULT=(.*)$", r.stdout, re.M)
    assert found, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(found.group(1))
    assert out["ml_block"] is True and out["ssrf"] is True, "both protections stay on"
    assert out["ips"] == {"172.18.0.3": "allowed", "10.4.0.7": "allowed", "192.168.50.2": "allowed",
                          "127.0.0.1": "blocked", "169.254.169.254": "blocked", "::1": "blocked",
                          "0.0.0.0": "blocked"}
    ours = settings_env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
    assert out["defaults"] and sorted(ours) == sorted(
        s for s in out["defaults"] if s not in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    ), "USER_ADDITIONAL_BANNED_SUBNETS must be Label Studio's defaults minus the private ranges"


def test_ray_check_through_the_ray_client_with_token_auth_as_the_compose_profile_wires_it(tmp_path):
    """A real Ray head on 127.0.0.1, started as the compose ray-head is (client server, token auth);
    the doctor connects as the backend container does (ray://, same RAY_AUTH_TOKEN)."""
    ray = Path(h.BACKEND_CLI).parent / "ray"
    if not ray.exists():
        pytest.skip(f"{ray} is missing: the [test] extra installs Ray")
    token = "e2e-" + os.urandom(8).hex()
    gcs, client = h.free_port(), h.free_port()
    env = h.clean_env(tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    short_tmp = tempfile.mkdtemp(prefix="sam3-ray-", dir="/tmp")
    head = h.ManagedProcess("ray-head", [
        ray, "start", "--head", "--block", f"--node-ip-address={h.LOOPBACK}", f"--port={gcs}",
        f"--ray-client-server-port={client}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={short_tmp}",  # Ray's socket paths must stay < 108 bytes
    ], env, tmp_path / "ray-head.log", tmp_path)
    settings = Settings(sam3_model="unused", model_dir=tmp_path / "model")
    try:
        with phase("doctor: ray head start"):
            head.start()
            deadline = time.monotonic() + 90
            while not _port_open(client):
                if not head.running or time.monotonic() > deadline:
                    raise head.fail("the Ray client server never opened its port")
                time.sleep(0.5)
        doctor = Doctor(settings, env={**env, "RAY_ADDRESS": f"ray://{h.LOOPBACK}:{client}"}, container=False)
        with phase("doctor: ray check"):
            for _attempt in range(3):
                check = doctor.check_ray()
                # The head starts one server process per client on a port of its own (23000-24000); a port
                # that another process on this shared machine holds makes that start fail: the next try
                # gets another port.
                if "Starting Ray client server failed" not in check.detail:
                    break
        if check.status != WARN:
            logs = sorted(Path(short_tmp).glob("session_*/logs/ray_client_server*.err"))
            print("\n".join(f"--- {p}\n{h.tail(p, 30)}" for p in logs))
    finally:
        head.stop(grace=5)
        try:  # Ray's daemons share the head's process group: none of them outlives the test
            os.killpg(head.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert check.status == WARN and "1 node(s)" in check.detail and "0 GPUs" in check.detail, check
    assert "GPU workers" in check.fix
