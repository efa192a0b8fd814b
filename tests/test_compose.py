"""The compose stack, checked without a Docker daemon: every file against the Compose specification
(the schema check-jsonschema vendors), `docker-compose config` merging the CPU override and the Ray
profile, and what the stack must wire up for Label Studio and the backend to work together."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from importlib import resources
from pathlib import Path

import pytest
import yaml
from test_docker import ROOT, instructions, tool

DOCKER = ROOT / "docker"
BASE = DOCKER / "docker-compose.yml"
CPU = DOCKER / "docker-compose.cpu.yml"
REQUIRED = {"LABEL_STUDIO_API_KEY": "0123456789abcdef", "LABEL_STUDIO_PASSWORD": "pw-for-tests"}
RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset` and `!override` tags (Compose >= 2.24) keep their value."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, lambda loader, node: (
        loader.construct_mapping(node) if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
        else loader.construct_scalar(node)))


@cache
def compose_schema() -> dict:
    """The Compose specification's JSON schema as vendored by check-jsonschema (Apache-2.0, compose-spec)."""
    try:
        files = resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema is not installed: `make test` installs it with the [test] extra")
    return json.loads((files / "compose-spec.json").read_text())


def validate(document: dict) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(compose_schema()).iter_errors(document), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def compose_config(*files: Path, profiles: tuple[str, ...] = (), env: dict | None = None,
                   check: bool = True) -> subprocess.CompletedProcess:
    """`docker-compose config` (Docker Compose v2+, which needs no daemon for this) on ``files``."""
    argv = [tool("docker-compose")]
    for f in files:
        argv += ["-f", str(f)]
    for p in profiles:
        argv += ["--profile", p]
    argv += ["--env-file", os.devnull, "config", "--format", "json"]  # never a developer's docker/.env
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}  # no developer's COMPOSE_* or .env leaking in
    r = subprocess.run(argv, env={**clean, **(REQUIRED if env is None else env)}, capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def resolved(*files: Path, profiles: tuple[str, ...] = (), env: dict | None = None) -> dict:
    return json.loads(compose_config(*files, profiles=profiles, env=env).stdout)


# --------------------------------------------------------------------------------------------
# Specification


@pytest.mark.parametrize("path", [BASE, CPU], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path):
    validate(yaml.load(path.read_text(), Loader=ComposeLoader))


def test_validation_catches_a_misspelt_key():
    doc = yaml.load(BASE.read_text(), Loader=ComposeLoader)
    doc["services"]["sam3-backend"]["enviroment"] = {"X": "1"}
    with pytest.raises(AssertionError, match="enviroment"):
        validate(doc)


@pytest.mark.parametrize("files,profiles", [
    ((BASE,), ()), ((BASE, CPU), ()), ((BASE,), ("ray",)), ((BASE, CPU), ("ray",)),
], ids=["gpu", "cpu", "gpu+ray", "cpu+ray"])
def test_every_variant_resolves_and_validates_with_check_jsonschema(files, profiles, tmp_path):
    out = tmp_path / "resolved.json"
    out.write_text(compose_config(*files, profiles=profiles).stdout)
    r = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_secrets_are_required_with_a_message_that_says_what_to_set():
    r = compose_config(BASE, env={}, check=False)
    assert r.returncode != 0 and "LABEL_STUDIO_API_KEY" in r.stderr and "openssl rand" in r.stderr, r.stderr
    r = compose_config(BASE, env={"LABEL_STUDIO_API_KEY": "0123456789"}, check=False)
    assert r.returncode != 0 and "LABEL_STUDIO_PASSWORD" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# What the stack wires up


def test_label_studio_and_backend_share_one_token_and_reach_each_other_by_service_name():
    services = resolved(BASE)["services"]
    ls, backend = services["label-studio"], services["sam3-backend"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    ls_env, env = ls["environment"], backend["environment"]
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert [p["target"] for p in ls["ports"]] == [8080]
    assert ls_env["LABEL_STUDIO_USER_TOKEN"] == env["LABEL_STUDIO_API_KEY"] == REQUIRED["LABEL_STUDIO_API_KEY"]
    assert 6 <= len(REQUIRED["LABEL_STUDIO_API_KEY"]) <= 40
    assert ls_env["LABEL_STUDIO_USERNAME"] and ls_env["LABEL_STUDIO_PASSWORD"] == REQUIRED["LABEL_STUDIO_PASSWORD"]
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert ls_env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert [v["target"] for v in ls["volumes"]] == ["/label-studio/data"]
    assert all(v["type"] == "volume" for v in ls["volumes"])


def test_label_studio_keeps_ssrf_protection_but_lets_the_private_network_through():
    env = resolved(BASE)["services"]["label-studio"]["environment"]
    assert env.get("ML_BLOCK_LOCAL_IP", "true") == "true" and env.get("SSRF_PROTECTION_ENABLED", "true") == "true"
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    banned = env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
    assert "127.0.0.0/8" in banned and "169.254.0.0/16" in banned and "::1/128" in banned
    assert not set(RFC1918) & set(banned)


def test_backend_gets_a_gpu_volumes_where_the_image_looks_and_a_graceful_stop():
    from sam3_backend.config import Settings
    from sam3_backend.gunicorn_conf import options

    backend = resolved(BASE)["services"]["sam3-backend"]
    devices = backend["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert backend["environment"]["SAM3_DEVICE"] == "cuda"  # no silent CPU fallback on a GPU host
    env = " ".join(a for w, a in instructions() if w == "ENV")
    for var, target in (("HF_HOME", "/data/hf"), ("MODEL_DIR", "/data/model")):
        assert f"{var}={target}" in env
        assert target in [v["target"] for v in backend["volumes"]]
    build = backend["build"]
    assert Path(build["context"]).resolve() == ROOT and (ROOT / build["dockerfile"]).is_file()
    assert build["args"]["EXTRAS"] == ""
    grace = int(re.fullmatch(r"(\d+)s", backend["stop_grace_period"]).group(1))
    assert grace > options(Settings.from_env({}))["graceful_timeout"]
    assert set(resolved(BASE)["services"]) == {"label-studio", "sam3-backend"}, "Ray only with --profile ray"


def test_host_paths_can_replace_the_named_volumes(tmp_path):
    env = {**REQUIRED, "SAM3_HF_CACHE": str(tmp_path / "hf"), "SAM3_MODEL_DIR": str(tmp_path / "m")}
    volumes = {v["target"]: v for v in resolved(BASE, env=env)["services"]["sam3-backend"]["volumes"]}
    assert volumes["/data/hf"]["type"] == "bind" and volumes["/data/hf"]["source"] == str(tmp_path / "hf")
    assert volumes["/data/model"]["source"] == str(tmp_path / "m")


def test_cpu_override_drops_every_gpu_reservation():
    services = resolved(BASE, CPU, profiles=("ray",))["services"]
    for name in ("sam3-backend", "ray-worker"):
        assert "deploy" not in services[name], name
        assert services[name]["environment"]["SAM3_DEVICE"] == "cpu"
    assert services["sam3-backend"]["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"


def test_ray_profile_adds_a_head_and_a_gpu_worker_on_the_backends_image():
    from sam3_backend.doctor import COMPOSE_RAY_ADDRESS

    env = {**REQUIRED, "SAM3_EXTRAS": "ray", "RAY_ADDRESS": COMPOSE_RAY_ADDRESS}
    services = resolved(BASE, profiles=("ray",), env=env)["services"]
    head, worker, backend = services["ray-head"], services["ray-worker"], services["sam3-backend"]
    assert head["image"] == worker["image"] == backend["image"], "Ray needs the same versions everywhere"
    assert backend["build"]["args"]["EXTRAS"] == "ray"
    assert backend["environment"]["RAY_ADDRESS"] == COMPOSE_RAY_ADDRESS
    host, port = COMPOSE_RAY_ADDRESS.removeprefix("ray://").split(":")
    assert host == "ray-head" and f"--ray-client-server-port={port}" in " ".join(head["command"])
    assert "--address=ray-head:6379" in " ".join(worker["command"]) and "--port=6379" in " ".join(head["command"])
    assert "deploy" not in head
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert worker["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert {v["target"] for v in worker["volumes"]} == {"/data/hf", "/data/model"}


def test_every_compose_variable_is_documented_in_the_readme():
    used = set()
    for path in (BASE, CPU):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", path.read_text()))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Docker"):]
    section = section[: section.index("\n## ", 5)] if "\n## " in section[5:] else section
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", section, re.M))
    documented |= {v for row in re.findall(r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)+)", section, re.M)
                   for v in re.findall(r"`([A-Z0-9_]+)`", row)}
    assert used <= documented, f"not in README's Docker variables table: {sorted(used - documented)}"
    assert documented <= used, f"README documents variables the compose files do not use: {sorted(documented - used)}"


def test_ray_services_say_what_is_missing_and_start_ray_as_configured(tmp_path):
    """The ray services' shell command, run as the container runs it, with a stand-in `ray` on PATH."""
    services = resolved(BASE, profiles=("ray",), env={**REQUIRED, "RAY_AUTH_TOKEN": "t0ken"})["services"]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ray").write_text('#!/bin/sh\necho "ray $*"\n')
    (fake / "ray").chmod(0o755)
    for name in ("ray-head", "ray-worker"):
        svc = services[name]
        assert svc["entrypoint"] == ["/bin/sh", "-c"]
        script = svc["command"][0].replace("$$", "$")  # compose's escape; the container sees one $

        def run(path: str, script: str = script, **env):
            return subprocess.run(["/bin/sh", "-c", script], env={"PATH": path, **env}, capture_output=True,
                                  text=True, timeout=30)

        r = run("/usr/bin:/bin", RAY_AUTH_TOKEN="t0ken")
        assert r.returncode == 1 and "SAM3_EXTRAS=ray" in r.stderr, (name, r.stderr)
        r = run(f"{fake}:/usr/bin:/bin")
        assert r.returncode == 1 and "set RAY_AUTH_TOKEN" in r.stderr, (name, r.stderr)
        r = run(f"{fake}:/usr/bin:/bin", RAY_AUTH_TOKEN=svc["environment"]["RAY_AUTH_TOKEN"])
        assert r.returncode == 0 and r.stdout.startswith("ray start ") and "--block" in r.stdout, (name, r)
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
    assert services["sam3-backend"]["environment"]["RAY_AUTH_TOKEN"] == "t0ken"
