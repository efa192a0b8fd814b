"""``sam3-backend doctor``: the checks run in order (``Doctor``) and the report printed (``main``).

Each concern's checks live in their own module (``host``, ``label_studio``, ``health``,
``ray_cluster``) as a mixin of ``Doctor``; ``Doctor.run`` decides the order and turns a check
that crashes into a FAIL line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict

from ..config import Settings
from .health import BackendCheck
from .host import HostChecks, in_container
from .label_studio import LabelStudioChecks
from .ray_cluster import RayCheck
from .report import FAIL, OK, Check, render


class Doctor(HostChecks, LabelStudioChecks, BackendCheck, RayCheck):
    """Runs the checks for one ``Settings``; ``run()`` returns them in order.

    ``container`` overrides container detection (tests); ``project_id`` / ``task_id`` pick the task
    whose media is fetched (default: the first task of the most recent project that has one).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        container: bool | None = None,
        project_id: int | None = None,
        task_id: int | None = None,
        timeout: float = 5.0,
        ray_timeout: float = 60.0,
    ):
        self.settings = settings
        self.env = os.environ if env is None else env
        self.container = in_container() if container is None else container
        self.project_id = project_id
        self.task_id = task_id
        self.timeout = timeout
        self.ray_timeout = ray_timeout
        self._ls_reachable = False
        self._token_ok = False
        self._download_bytes = 0  # what the first start still has to download into the hub cache

    def run(self) -> list[Check]:
        steps: list[tuple[str, Callable[[], Check | Iterable[Check] | None]]] = [
            ("container", self.check_container),
            ("weights", self.check_weights),
            ("device", self.check_device),
            ("disk", self.check_disk),
            ("label-studio", self.check_label_studio),
            ("token", self.check_token),
            ("media", self.check_media),
            ("backend", self.check_backend),
            ("ray", self.check_ray),
        ]
        results: list[Check] = []
        for name, step in steps:
            try:
                out = step()
            except Exception as exc:  # a crashing check is a finding, not a reason to stop
                out = Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}",
                            "this is unexpected; run with LOG_LEVEL=DEBUG and report it")
            if out is None:
                continue
            results.extend([out] if isinstance(out, Check) else out)
        return results


def main(*, json_output: bool = False, project_id: int | None = None, task_id: int | None = None,
         timeout: float = 5.0) -> int:
    """Run every check on the environment's settings; print the report; 1 if anything FAILed."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        checks = [Check("settings", FAIL, str(exc), "fix that environment variable")]
    else:
        checks = [Check("settings", OK, "environment variables parse")]
        checks += Doctor(settings, project_id=project_id, task_id=task_id, timeout=timeout).run()
    if json_output:
        print(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        print(render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


__all__ = ["Doctor", "main"]
