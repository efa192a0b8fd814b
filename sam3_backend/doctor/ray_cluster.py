"""The doctor's ``ray`` check: when ``RAY_ADDRESS`` is set, the cluster answers a Ray client
(in a subprocess, as the backend connects) and has GPUs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping

from .net import _tcp_open
from .report import FAIL, OK, WARN, Check

COMPOSE_RAY_ADDRESS = "ray://ray-head:10001"


class RayCheck:
    """``check_ray`` of ``Doctor`` (None, no line in the report, without ``RAY_ADDRESS``)."""

    env: Mapping[str, str]
    timeout: float
    ray_timeout: float

    def check_ray(self) -> Check | None:
        address = (self.env.get("RAY_ADDRESS") or "").strip()
        if not address:
            return None
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            return Check("ray", FAIL, f"RAY_ADDRESS={address} but Ray is not installed",
                         "install the extra: pip install 'sam3-backend[ray]' (Docker: build with --build-arg "
                         "EXTRAS=ray, as the compose file's ray profile does)")
        target = address.removeprefix("ray://")
        if address not in ("auto", "local"):
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                return Check("ray", FAIL, f"RAY_ADDRESS={address} is not host:port or ray://host:port",
                             f"set RAY_ADDRESS like {COMPOSE_RAY_ADDRESS}")
            if not _tcp_open(host, int(port), self.timeout):
                return Check("ray", FAIL, f"nothing answers at {host}:{port} (RAY_ADDRESS={address})",
                             "start the Ray head (`docker compose --profile ray up -d` with docker/docker-compose.yml) "
                             f"or fix RAY_ADDRESS ({COMPOSE_RAY_ADDRESS} in the compose stack)")
        code = (
            "import json, ray\n"
            f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
            "print('RESOURCES=' + json.dumps({'resources': ray.cluster_resources(), 'nodes': len(ray.nodes())}))\n"
            "ray.shutdown()\n"
        )
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=self.ray_timeout, env=dict(self.env))
        except subprocess.TimeoutExpired:
            return Check("ray", FAIL, f"connecting to {address} took longer than {self.ray_timeout:.0f} s",
                         "check the Ray head's log; Ray versions must match on every node (use the same image)")
        found = re.search(r"^RESOURCES=(.*)$", proc.stdout, re.M)
        if proc.returncode != 0 or not found:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            fix = "check the Ray head's log; Ray and Python versions must match on every node (use the same image)"
            if "grpc" in proc.stderr.lower() and "No module named" in proc.stderr:
                fix = "ray:// addresses need the Ray Client: pip install 'ray[client]' (part of sam3-backend[ray])"
            elif "timeout" in err.lower() or "auth" in err.lower():
                fix = ("the head may be refusing this client: Ray >= 2.59 authenticates with a shared token, so set "
                       "the same RAY_AUTH_MODE=token and RAY_AUTH_TOKEN on the head, the workers and here; " + fix)
            return Check("ray", FAIL, f"ray.init({address!r}) failed: {err}", fix)
        info = json.loads(found.group(1))
        res = info["resources"]
        gpus, cpus = res.get("GPU", 0), res.get("CPU", 0)
        what = f"{address}: {info['nodes']} node(s), {cpus:g} CPUs, {gpus:g} GPUs"
        if not gpus:
            return Check("ray", WARN, f"{what}; project-scale jobs will run on CPUs",
                         "start GPU workers (`docker compose --profile ray up -d` starts one on a GPU host)")
        return Check("ray", OK, what)


__all__ = ["COMPOSE_RAY_ADDRESS", "RayCheck"]
