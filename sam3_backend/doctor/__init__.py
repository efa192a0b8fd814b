"""``sam3-backend doctor``: check a deployment end to end and say what to fix.

Each check prints OK, WARN, FAIL or SKIP with one line of detail and, unless it is OK, the fix;
the exit code is 1 when any check FAILs. The checks, in order:

- container: ``LABEL_STUDIO_URL`` pointing at localhost from inside a container (there localhost
  is the container itself, the most common reason media requests fail);
- weights: ``SAM3_MODEL`` resolves (folder or hub cache; not yet downloaded: can it be, how big),
  its config and safetensors headers are a SAM 3 checkpoint, and whether it is a test model;
- device: the device and dtype the server would use, and that a CUDA kernel actually runs;
- disk: free and writable space in ``MODEL_DIR`` and the hub cache (room for the download);
- label-studio / token: ``GET /health`` and an authenticated ``GET /api/current-user/whoami``
  with the same Authorization the backend sends (legacy token or personal access token);
- media: one task's media fetched through ``MediaFetcher``, exactly as a prediction fetches it;
- backend: the ``/health`` of a backend running here on ``PORT``, if any;
- ray: when ``RAY_ADDRESS`` is set, that the cluster answers and how many GPUs it has.

The modules: ``runner`` (``Doctor.run``, ``main``), ``report`` (``Check``, ``render``), one per
concern with that concern's checks (``host``: container, weights, device, disk; ``label_studio``:
label-studio, token, media; ``health``: backend, and ``healthcheck``; ``ray_cluster``: ray), and
``net`` (network helpers they share).

Nothing here imports torch at module level: ``sam3-backend healthcheck`` (Docker's HEALTHCHECK)
uses this package too and must stay light.
"""

from .health import health_request, healthcheck
from .host import GB, MB, in_container
from .label_studio import COMPOSE_LS_URL
from .net import is_local_host
from .ray_cluster import COMPOSE_RAY_ADDRESS
from .report import FAIL, OK, SKIP, WARN, Check, render
from .runner import Doctor, main

__all__ = [
    "COMPOSE_LS_URL",
    "COMPOSE_RAY_ADDRESS",
    "FAIL",
    "GB",
    "MB",
    "OK",
    "SKIP",
    "WARN",
    "Check",
    "Doctor",
    "health_request",
    "healthcheck",
    "in_container",
    "is_local_host",
    "main",
    "render",
]
