"""The image, checked without a Docker daemon: hadolint, the build context, the one pinned install,
non-root, the HEALTHCHECK, exec-form start, no weights inside, and the serve path that runs in it
(weights resolved torch-free before the fork, offline fails fast)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A tool from the test virtualenv ([test] extra), else PATH; skip, saying so, if it is absent."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.skip(f"{name} is not installed: `make test` installs it with the [test] extra")
    return found


# --------------------------------------------------------------------------------------------
# Reading a Dockerfile and a .dockerignore the way Docker does


def instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        current += (" " if current else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def _dockerignore_regex(pattern: str) -> re.Pattern:
    # moby/patternmatcher: path-style patterns; `**` spans directories, `*` and `?` do not.
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def dockerignore_excludes(rel: str, ignore: Path = ROOT / ".dockerignore") -> bool:
    """Whether Docker leaves ``rel`` (a path relative to the context) out of the build context.

    Patterns apply in order and the last match wins; a pattern matches a path or any of its parents.
    """
    rules = []
    for raw in ignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((negate, _dockerignore_regex(pattern)))
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


# --------------------------------------------------------------------------------------------
# Lint and build context


def test_hadolint_finds_nothing_at_its_strictest():
    r = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", "--format", "json",
                        "--disable-ignore-pragma", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout or "[]") == [], r.stdout + r.stderr


def test_dockerignore_reader_follows_docker_rules(tmp_path):
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("*\n!keep/\n!one.txt\n**/__pycache__\nkeep/secret*\n")
    assert dockerignore_excludes("other.txt", ignore)
    assert not dockerignore_excludes("one.txt", ignore)
    assert not dockerignore_excludes("keep/a/b.py", ignore)
    assert dockerignore_excludes("keep/a/__pycache__/b.pyc", ignore)
    assert dockerignore_excludes("keep/secret.key", ignore)
    assert dockerignore_excludes(".venv/bin/python", ignore)


def test_every_copy_source_exists_and_is_in_the_build_context():
    tracked = tracked_files()
    sources = []
    for word, args in instructions():
        if word not in ("COPY", "ADD"):
            continue
        assert word == "COPY", "use COPY, not ADD"
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        assert not any(a.startswith("--from") for a in shlex.split(args)), "single-stage image expected"
        sources += parts[:-1]
    assert sources, "the Dockerfile copies nothing?"
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: no such file in the repository"
        files = [f for f in tracked if f == src or f.startswith(src.rstrip("/") + "/")]
        assert files, f"COPY {src}: nothing of it is tracked by git, so a fresh clone cannot build"
        for f in files:
            if "__pycache__" not in f:
                assert not dockerignore_excludes(f), f"COPY {src}: .dockerignore leaves {f} out of the context"


def test_build_context_holds_no_virtualenv_weights_or_tests():
    for rel in (".venv/bin/python", ".git/HEAD", "model/sam3/model.safetensors", "tests/conftest.py",
                "docker/.env", "bench/RESULTS.md", ".venv-ls/bin/label-studio"):
        assert dockerignore_excludes(rel), f"{rel} would be sent to the Docker daemon"


# --------------------------------------------------------------------------------------------
# The one pinned install


def _pip_installs(commands: str) -> list[list[str]]:
    """Every `pip install ...` / `python -m pip install ...` in shell ``commands``: its arguments."""
    lex = shlex.shlex(commands, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    segments, current = [], []
    for token in lex:
        if token in (";", "&&", "||", "|", "&"):
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    out = []
    for words in segments:
        for i in range(len(words) - 1):
            if words[i] in ("pip", "pip3") and words[i + 1] == "install":
                out.append(words[i + 2 :])
                break
            if words[i : i + 3] == ["-m", "pip", "install"]:
                out.append(words[i + 3 :])
                break
    return out


def _constraints_arg(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("-c", "--constraint") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--constraint="):
            return a.split("=", 1)[1]
    return None


def test_image_installs_from_the_same_constraints_as_bootstrap_and_tests():
    steps = instructions()
    runs = [args for word, args in steps if word == "RUN"]
    installs = [args for run in runs for args in _pip_installs(run)]
    assert len(installs) == 2, installs
    workdir = [args for word, args in steps if word == "WORKDIR"][0]
    copies = [shlex.split(args) for word, args in steps if word == "COPY"]
    targets = set()
    for *srcs, dest in copies:
        if "constraints.txt" in srcs:
            into_dir = dest.endswith("/") or dest == "."
            targets.add(Path(workdir, dest, "constraints.txt") if into_dir else Path(workdir, dest))
    assert targets, "the Dockerfile does not copy constraints.txt"
    for args in installs:
        c = _constraints_arg(args)
        assert c is not None, f"pip install without -c: {args}"
        assert Path(workdir, c) in targets, f"pip's -c {c} is not the repository's constraints.txt"
        assert not any(a.startswith(("--upgrade", "-U", "--index-url", "--extra-index-url", "--pre")) for a in args)
    pair, package = (sorted(a for a in args if not a.startswith("-") and a != "constraints.txt") for args in installs)
    assert pair == ["torch", "torchvision"], "the torch/torchvision pair comes first, as in bootstrap.sh"
    assert package == [".${EXTRAS:+[$EXTRAS]}"], package

    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert '-c "$ROOT/constraints.txt"' in bootstrap and '"${PIP[@]}" torch torchvision' in bootstrap
    check = re.search(r'python" -c "([^"]+)"', bootstrap).group(1)
    assert any(f'python -c "{check}"' in run for run in runs), "the image runs bootstrap.sh's import check"

    pins = (ROOT / "constraints.txt").read_text()
    for name in ("torch", "torchvision", "transformers", "label-studio-sdk", "gunicorn", "ray"):
        assert re.search(rf"^{name}==\S+( ; platform_machine == \"x86_64\")?$", pins, re.M | re.I), \
            f"constraints.txt pins no {name} for the image's platform (linux/x86_64)"


def test_base_image_is_slim_python_of_the_locked_version():
    froms = [args for word, args in instructions() if word == "FROM"]
    assert froms == [f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"], (
        f"{froms}: constraints.txt was locked under Python {sys.version_info.major}.{sys.version_info.minor}; "
        "the image must run the same version"
    )


# --------------------------------------------------------------------------------------------
# Runtime: user, health, start, signals, weights


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_runs_as_non_root_with_exec_form_serve_and_a_healthcheck():
    steps = instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users
    assert _exec_form(dict(steps)["ENTRYPOINT"]) == ["sam3-backend"]
    assert _exec_form(dict(steps)["CMD"]) == ["serve"]
    assert dict(steps).get("STOPSIGNAL", "SIGTERM") == "SIGTERM"
    health = dict(steps)["HEALTHCHECK"]
    cmd = _exec_form(health.split(" CMD ", 1)[1])
    assert cmd == ["sam3-backend", "healthcheck"]
    assert re.search(r"--start-period=\d+m", health), "a first start downloads the weights: give it minutes"
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "HF_HOME=/data/hf" in env and "MODEL_DIR=/data/model" in env
    assert "/data/hf" in dict(steps)["VOLUME"] and "/data/model" in dict(steps)["VOLUME"]


def test_no_weights_or_tokens_are_baked_in():
    text = (ROOT / "Dockerfile").read_text()
    body = "\n".join(f"{w} {a}" for w, a in instructions())
    assert "HF_TOKEN" not in body and "snapshot_download" not in body and "huggingface-cli" not in body
    assert "safetensors" not in body and not re.search(r"COPY\s+model\b", body)
    assert "--preload" not in text


def test_gunicorn_never_preloads_so_cuda_starts_in_the_workers():
    from sam3_backend.config import Settings
    from sam3_backend.gunicorn_conf import options

    assert options(Settings.from_env({}))["preload_app"] is False


def test_serve_keeps_torch_out_of_gunicorns_master(tiny_checkpoint, tmp_path):
    """Everything `sam3-backend serve` does before gunicorn forks, weights included, is torch-free."""
    code = (
        "import sys\n"
        "from gunicorn.app.base import BaseApplication\n"
        "def run(self):\n"
        "    print('master-imports-torch', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
        "BaseApplication.run = run\n"
        "from sam3_backend.cli import main\n"
        "main(['serve', '--port', '0'])\n"
    )
    env = dict(os.environ, SAM3_MODEL=str(tiny_checkpoint), MODEL_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "master-imports-torch False False" in r.stdout, r.stdout + r.stderr


def test_serve_fails_fast_offline_without_weights_and_says_how_to_fix(tmp_path):
    env = dict(os.environ, SAM3_MODEL="facebook/sam3", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               MODEL_DIR=str(tmp_path / "m"))
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "sam3_backend.cli", "serve"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "HF_HUB_OFFLINE=1" in r.stderr and str(tmp_path / "hf") in r.stderr, r.stderr
    assert "HF_HOME" in r.stderr and "HF_TOKEN" in r.stderr and "Traceback" not in r.stderr


def test_healthcheck_command_reads_the_real_health_endpoint(engine, tmp_path):
    from werkzeug.serving import make_server

    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.doctor import healthcheck

    def serve(app):
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    auth = dict(basic_auth_user="u", basic_auth_pass="p", model_dir=tmp_path)
    up = serve(create_app(Settings(**auth), engine=engine))

    def broken(_settings):
        raise RuntimeError("no weights here")

    failed = serve(create_app(Settings(model_dir=tmp_path), engine_factory=broken, load_in_background=False))
    try:
        assert healthcheck(Settings(port=up.server_port, **auth)) == 0
        assert healthcheck(Settings(port=up.server_port, basic_auth_user="u", basic_auth_pass="wrong")) == 1
        assert healthcheck(Settings(port=failed.server_port)) == 1
    finally:
        up.shutdown()
        failed.shutdown()
    assert healthcheck(Settings(port=up.server_port)) == 1  # nothing listens any more


def test_first_start_downloads_the_weights_then_serves_and_stops_gracefully(tiny_checkpoint, tmp_path):
    """The image's CMD end to end, minus Docker: `sam3-backend serve` with HF_TOKEN and an empty hub
    cache downloads the weights once in the master (saying so), the gunicorn worker loads them from
    the cache, HEALTHCHECK's command sees UP, and SIGTERM to the master (PID 1 in the container)
    ends it cleanly."""
    import signal
    import time

    from fake_hub import FakeHub
    from test_doctor import closed_port

    hub = FakeHub(tiny_checkpoint)
    port = closed_port()
    env = {**os.environ, **hub.env(tmp_path / "hf"), "SAM3_MODEL": "facebook/sam3", "HF_TOKEN": "hf_test",
           "MODEL_DIR": str(tmp_path / "model"), "SAM3_DEVICE": "cpu", "HOST": "127.0.0.1", "PORT": str(port),
           "WORKERS": "1", "THREADS": "2"}
    env.pop("HF_HUB_CACHE", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sam3_backend.cli", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    health = [sys.executable, "-m", "sam3_backend.cli", "healthcheck"]
    try:
        deadline = time.monotonic() + 240
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never healthy:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        downloads = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        hub.close()
    text = log.read_text()
    assert "is not in the hub cache" in text and "downloading 5 files" in text, text[-3000:]
    assert "SAM 3 weights: downloaded facebook/sam3" in text
    assert "RANDOMLY INITIALISED SAM 3 TEST MODEL" in text  # the worker loaded what was downloaded
    assert sorted(downloads) == sorted(set(downloads)) and len(downloads) == 5, "each file fetched once"
    assert "Handling signal: term" in text and "Shutting down: Master" in text


def test_healthcheck_and_weights_resolution_import_no_torch():
    """HEALTHCHECK runs every 30 s and serve resolves weights in gunicorn's master: both stay light."""
    code = ("import sys\nimport sam3_backend.doctor, sam3_backend.engine.weights, sam3_backend.cli\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False False"
