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

Nothing here imports torch at module level: ``sam3-backend healthcheck`` (Docker's HEALTHCHECK)
uses this module too and must stay light.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from ..config import Settings
from ..errors import BackendError, ModelLoadError

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
GB = 1024**3
MB = 1024**2
COMPOSE_LS_URL = "http://label-studio:8080"
COMPOSE_RAY_ADDRESS = "ray://ray-head:10001"
_MEDIA_TAGS = ("Image", "Video", "Audio", "HyperText", "Text", "TimeSeries", "Paragraphs")
_MEDIA_URL = re.compile(r"^(/data/|/upload/|upload/|https?://|s3://|gs://|azure-blob://|azure-spi://|data:|file://)")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is OK, WARN, FAIL or SKIP; ``fix`` says what to change."""

    name: str
    status: str
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------------------------
# Environment facts


def in_container(root: Path = Path("/")) -> bool:
    """Whether this process runs in a container (Docker, Podman, containerd, Kubernetes)."""
    if (root / ".dockerenv").exists() or (root / "run/.containerenv").exists():
        return True
    for name in ("proc/1/cgroup", "proc/self/mountinfo"):
        try:
            text = (root / name).read_text(errors="replace")
        except OSError:
            continue
        if re.search(r"docker|kubepods|containerd|libpod|/lxc/", text):
            return True
    return False


def is_local_host(host: str | None) -> bool:
    """localhost, a loopback address or the unspecified address: inside a container, that container."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", "0.0.0.0") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / MB:.1f} MB"


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --------------------------------------------------------------------------------------------
# The checks


class Doctor:
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

    # -- container ---------------------------------------------------------------------------

    def check_container(self) -> Check:
        url = self.settings.label_studio_url
        if not self.container:
            return Check("container", OK, "not running in a container")
        if url is None:
            return Check(
                "container", WARN,
                "in a container without LABEL_STUDIO_URL: media are fetched from the hostname Label Studio sends on "
                "connect, usually http://localhost:8080, which is this container, not Label Studio",
                f"set LABEL_STUDIO_URL to where this container reaches Label Studio ({COMPOSE_LS_URL} in "
                "docker/docker-compose.yml) and LABEL_STUDIO_API_KEY",
            )
        host = urlsplit(url).hostname
        if not is_local_host(host):
            return Check("container", OK, f"in a container; LABEL_STUDIO_URL={url} is not a localhost address")
        port = urlsplit(url).port or (443 if url.startswith("https") else 80)
        fix = (
            f"inside a container localhost is the container itself: set LABEL_STUDIO_URL to Label Studio's service "
            f"name on the Docker network ({COMPOSE_LS_URL} in docker/docker-compose.yml) or to the host's address "
            "(http://host.docker.internal:8080 with extra_hosts: [\"host.docker.internal:host-gateway\"])"
        )
        if _tcp_open(host or "localhost", port, self.timeout):
            return Check("container", WARN,
                         f"in a container with LABEL_STUDIO_URL={url}; something answers there (host networking?)", fix)
        return Check("container", FAIL, f"in a container with LABEL_STUDIO_URL={url}, and nothing answers there", fix)

    # -- weights -----------------------------------------------------------------------------

    def check_weights(self) -> Check:
        from ..engine.weights import download_plan, find_weights, hub_offline, summarize_checkpoint

        name = self.settings.sam3_model
        try:
            where = find_weights(name)
        except ModelLoadError as exc:
            return Check("weights", FAIL, str(exc),
                         "set SAM3_MODEL to a SAM 3 checkpoint folder or a hub repo id (facebook/sam3)")
        if not where.found:
            provide = (
                f"mount a hub cache that holds {name} (HF_HOME), set SAM3_MODEL to a local checkpoint folder, or "
                "unset HF_HUB_OFFLINE and set HF_TOKEN so the first start downloads it; "
                "`sam3-backend tiny-model DIR` writes a test model"
            )
            if hub_offline():
                return Check("weights", FAIL, f"{name} is not in the hub cache {where.cache_dir} and HF_HUB_OFFLINE=1",
                             provide)
            try:
                files, size = download_plan(name, self.settings.hf_token)
            except ModelLoadError as exc:
                return Check("weights", FAIL, f"{name} is not in the hub cache {where.cache_dir} and cannot be "
                             f"downloaded: {exc}", provide)
            self._download_bytes = size
            return Check("weights", OK, f"{name} is not downloaded yet: the first start downloads {files} files "
                         f"({_gb(size)}) into {where.cache_dir}; HF_TOKEN has access")
        folder = where.folder
        try:
            summary = summarize_checkpoint(folder)
        except ModelLoadError as exc:
            return Check("weights", FAIL, str(exc), f"replace the checkpoint in {folder}")
        problems = []
        if summary.model_type not in ("sam3_video", "sam3"):
            problems.append(f"config.json says model_type={summary.model_type!r}, not a SAM 3 checkpoint")
        if summary.weight_files == 0:
            problems.append("no *.safetensors weights next to config.json")
        elif not (summary.has_detector and summary.has_tracker):
            problems.append("the weights lack detector_model.* or tracker_model.* tensors (facebook/sam3 has both)")
        if not problems:
            try:
                from transformers import AutoConfig

                AutoConfig.from_pretrained(folder)
            except Exception as exc:
                problems.append(f"transformers cannot read its config.json ({type(exc).__name__}: {exc})")
        where_from = f"{name} from the hub cache ({folder})" if where.kind == "hub" else f"folder {folder}"
        if problems:
            return Check("weights", FAIL, f"{where_from}: " + "; ".join(problems),
                         "point SAM3_MODEL at a facebook/sam3 checkpoint (the folder with config.json and "
                         "model.safetensors) or at the hub id facebook/sam3")
        what = (f"{where_from}: {summary.model_type}, {summary.weight_files} weight file(s), "
                f"{_gb(summary.weight_bytes)}, {summary.tensors} tensors")
        if summary.is_test_model:
            return Check("weights", WARN, f"{what}; a RANDOMLY INITIALISED TEST model: its masks are meaningless",
                         "for real masks set SAM3_MODEL=facebook/sam3 (with HF_TOKEN) or a folder with those weights")
        return Check("weights", OK, what)

    # -- device ------------------------------------------------------------------------------

    def check_device(self) -> Check:
        import torch

        from ..engine.loading import resolve_device, resolve_dtype

        gpu_fix = (
            "make the GPU visible: the NVIDIA driver on the host, and in Docker the NVIDIA Container Toolkit plus a "
            "GPU reservation (`docker run --gpus all`, or deploy.resources.reservations.devices in compose); "
            "`nvidia-smi` must work inside the container"
        )
        try:
            device = resolve_device(self.settings.device)
            dtype = resolve_dtype(self.settings.dtype, device)
        except ModelLoadError as exc:
            fix = gpu_fix + ", or set SAM3_DEVICE=cpu" if "CUDA" in str(exc) else "fix SAM3_DEVICE / SAM3_DTYPE"
            return Check("device", FAIL, str(exc), fix)
        dt = str(dtype).replace("torch.", "")
        if device.type == "cpu":
            if self.settings.device == "auto":
                return Check("device", WARN, f"no CUDA device visible (torch {torch.__version__}): SAM 3 runs on the "
                             f"CPU in {dt}, seconds per click and minutes per prelabel batch",
                             gpu_fix + "; or set SAM3_DEVICE=cpu to say CPU is intended")
            return Check("device", OK, f"CPU in {dt}, as SAM3_DEVICE=cpu asks (slow: seconds per click)")
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                return Check("device", FAIL, f"{props.name} does not support bfloat16",
                             "set SAM3_DTYPE=float16 (or float32)")
            value = (torch.ones(64, device=device, dtype=dtype) * 2).sum().item()  # a kernel really runs
            if value != 128:
                raise RuntimeError(f"a test kernel computed {value}, not 128")
            free, total = torch.cuda.mem_get_info(index)
        except Exception as exc:
            return Check("device", FAIL, f"{device} is visible but unusable: {type(exc).__name__}: {exc}",
                         f"check the NVIDIA driver is new enough for torch {torch.__version__} (CUDA "
                         f"{torch.version.cuda}); `nvidia-smi` shows the driver's CUDA version")
        return Check("device", OK, f"{device} {props.name} ({_gb(total)}, {_gb(free)} free), {dt}, torch "
                     f"{torch.__version__} with CUDA {torch.version.cuda}")

    # -- disk --------------------------------------------------------------------------------

    def _disk(self, name: str, path: Path, need: int, why: str, *, must_write: bool) -> Check:
        base = _existing_parent(path)
        try:
            free = shutil.disk_usage(base).free
        except OSError as exc:
            return Check(name, FAIL, f"{path}: {exc}", "mount a volume there")
        writable = os.access(base, os.W_OK)
        if must_write and not writable:
            return Check(name, FAIL, f"{path} is not writable by this user (uid {os.getuid()})",
                         f"make it writable (`chown -R {os.getuid()} {path}` on the host for a bind mount) or use a "
                         "named volume")
        if free < need:
            return Check(name, FAIL, f"{_gb(free)} free at {path}; {why} needs about {_gb(need)}",
                         "free some space or mount a larger volume there")
        return Check(name, OK, f"{path}: {_gb(free)} free{'' if writable else ' (read-only)'}")

    def check_disk(self) -> list[Check]:
        from ..engine.weights import hub_cache_dir

        s = self.settings
        out = [self._disk("disk: MODEL_DIR", s.model_dir, s.media_cache_mb * MB + 256 * MB,
                          f"the media cache (MEDIA_CACHE_MB={s.media_cache_mb}) and job files", must_write=True)]
        if Path(s.sam3_model).expanduser().is_dir():
            out.append(Check("disk: hub cache", SKIP, f"weights come from the folder {s.sam3_model}"))
        elif self._download_bytes:
            out.append(self._disk("disk: hub cache", hub_cache_dir(), self._download_bytes + 1 * GB,
                                  "the weights download", must_write=True))
        else:
            out.append(self._disk("disk: hub cache", hub_cache_dir(), 0, "", must_write=False))
        return out

    # -- Label Studio --------------------------------------------------------------------------

    def check_label_studio(self) -> Check:
        url = self.settings.label_studio_url
        if url is None:
            return Check("label-studio", WARN,
                         "LABEL_STUDIO_URL is not set: the backend uses the hostname and token Label Studio sends on "
                         "connect, which this check cannot see",
                         "set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to how this machine reaches Label Studio")
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            return Check("label-studio", FAIL, f"LABEL_STUDIO_URL={url} is not an http(s) URL",
                         "set it like http://label-studio:8080")
        if not _resolves(host):
            return Check("label-studio", FAIL, f"the hostname {host} of LABEL_STUDIO_URL={url} does not resolve here",
                         "check the spelling; a compose service name (label-studio) resolves only inside that compose "
                         "network, from the host use localhost and the published port")
        try:
            r = requests.get(f"{url}/health", timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            if self.container and is_local_host(host):
                fix = (f"inside a container localhost is the container itself: use {COMPOSE_LS_URL} in the compose "
                       "stack, or the host's address")
            else:
                fix = ("is Label Studio running and listening there? check the host and port (`docker compose ps`; "
                       "`label-studio start --port`), and that no firewall is in between")
            return Check("label-studio", FAIL, f"no answer from {url}: {type(exc).__name__}", fix)
        body = _json(r)
        if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "UP":
            return Check("label-studio", FAIL, f"{url}/health answered HTTP {r.status_code} {r.text[:120]!r}, not "
                         "Label Studio's {\"status\": \"UP\"}",
                         "point LABEL_STUDIO_URL at Label Studio's base URL (with its subpath, if served under one)")
        self._ls_reachable = True
        version = _json(_quiet_get(f"{url}/api/version", self.timeout))
        release = version.get("release") if isinstance(version, dict) else None
        return Check("label-studio", OK, f"Label Studio {release or '(version unknown)'} answers at {url}")

    def _auth(self):
        """The Authorization the backend sends to LABEL_STUDIO_URL (legacy token or personal access token)."""
        from ..ls.ls_auth import LabelStudioAuth

        def post(target: str, **kwargs) -> requests.Response:
            return requests.post(target, **kwargs)

        return LabelStudioAuth(self.settings.label_studio_url or "", self.settings.label_studio_api_key,
                               "LABEL_STUDIO_API_KEY", post, self.settings.media_timeout)

    def check_token(self) -> Check:
        url = self.settings.label_studio_url
        if not self._ls_reachable:
            return Check("token", SKIP, "Label Studio is not reachable (see above)")
        if not self.settings.label_studio_api_key:
            return Check("token", WARN, "LABEL_STUDIO_API_KEY is not set: media requests carry the token Label "
                         "Studio sends on connect",
                         "set LABEL_STUDIO_API_KEY to a token from Label Studio's Account & Settings so media "
                         "fetching does not depend on the connect call")
        auth = self._auth()
        kind = "personal access token" if auth.exchanges else "legacy token"
        try:
            headers = auth.headers()
        except BackendError as exc:
            return Check("token", FAIL, str(exc), auth.denied_hint())
        try:
            r = requests.get(f"{url}/api/current-user/whoami", headers=headers, timeout=self.timeout,
                             allow_redirects=False)
        except requests.RequestException as exc:
            return Check("token", FAIL, f"GET {url}/api/current-user/whoami failed: {type(exc).__name__}",
                         "Label Studio answered /health but not its API; check LABEL_STUDIO_URL")
        body = _json(r)
        if r.status_code == 200 and isinstance(body, dict):
            self._token_ok = True
            user = body.get("email") or body.get("username")
            return Check("token", OK, f"LABEL_STUDIO_API_KEY ({kind}) accepted for {user}")
        said = body.get("detail") if isinstance(body, dict) else r.text[:200]
        fix = auth.denied_hint()
        if said and "legacy token authentication has been disabled" in str(said):
            fix = ("legacy tokens are off for this organization: switch on Legacy Tokens under Organization → "
                   "API Tokens Settings (LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true only applies when Label Studio "
                   "creates the organization on its first start), or use a personal access token")
        return Check("token", FAIL, f"Label Studio answered {r.status_code} to the {kind}: {said}", fix)

    # -- media ---------------------------------------------------------------------------------

    def _ls_get(self, path: str, **params):
        r = requests.get(f"{self.settings.label_studio_url}{path}", headers=self._auth().headers(), params=params,
                         timeout=max(self.timeout, 10), allow_redirects=False)
        r.raise_for_status()
        return r.json()

    def _pick_task(self) -> tuple[dict, str | None] | None:
        """(task, its project's label config) of the task to fetch, or None when there is none."""
        if self.task_id is not None:
            task = self._ls_get(f"/api/tasks/{int(self.task_id)}")
            project = self._ls_get(f"/api/projects/{task['project']}") if task.get("project") else {}
            return task, project.get("label_config")
        if self.project_id is not None:
            projects = [self._ls_get(f"/api/projects/{int(self.project_id)}")]
        else:
            body = self._ls_get("/api/projects", page_size=20, ordering="-created_at")
            projects = body.get("results", []) if isinstance(body, dict) else body
        for project in projects:
            body = self._ls_get("/api/tasks", project=project["id"], page_size=1)
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            if tasks:
                return tasks[0], project.get("label_config")
        return None

    def check_media(self) -> Check:
        from ..ls.images import load_image
        from ..ls.media import MediaFetcher

        if not self._token_ok:
            return Check("media", SKIP, "needs a reachable Label Studio and an accepted LABEL_STUDIO_API_KEY")
        try:
            picked = self._pick_task()
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            return Check("media", FAIL, f"could not read a task from Label Studio's API: {type(exc).__name__}: {exc}",
                         "check --task / --project and that the token's user can see the project")
        if picked is None:
            return Check("media", SKIP, "no project with tasks to fetch media from",
                         "import a task (or pass --task ID) and run doctor again")
        task, label_config = picked
        field, url = _media_url(task, label_config)
        if url is None:
            return Check("media", SKIP, f"task {task.get('id')} has no media URL in its data")
        where = f"task {task.get('id')} ({field}={url[:120]})"
        fetcher = MediaFetcher(self.settings)
        try:
            data = fetcher.fetch_bytes(url, task.get("id"))
        except BackendError as exc:
            return Check("media", FAIL, f"{where}: {exc}", _media_fix(str(exc), self))
        kind = _media_kind(label_config, field)
        if kind == "Image":
            try:
                image = load_image(data)
            except BackendError as exc:
                return Check("media", FAIL, f"{where}: fetched {len(data)} bytes but they are not an image: {exc}",
                             "the task's image file is broken or not an image; re-import it")
            return Check("media", OK, f"{where}: fetched {len(data)} bytes, a {image.width}x{image.height} image")
        return Check("media", OK, f"{where}: fetched {len(data)} bytes")

    # -- backend, Ray --------------------------------------------------------------------------

    def check_backend(self) -> Check:
        s = self.settings
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
        if not _tcp_open(host, s.port, 1.0):
            return Check("backend", SKIP, f"no backend listening on {host}:{s.port} here")
        try:
            r = health_request(s, host, timeout=self.timeout)
        except requests.RequestException as exc:
            return Check("backend", FAIL, f"{host}:{s.port} accepts connections but /health failed: "
                         f"{type(exc).__name__}", "is something else listening on PORT?")
        body = _json(r)
        status = body.get("status") if isinstance(body, dict) else None
        if r.status_code == 200 and status == "UP":
            test = " (TEST model)" if body.get("test_model") else ""
            return Check("backend", OK, f"serving {body.get('model_version')}{test} on {host}:{s.port}")
        if status == "LOADING":
            return Check("backend", WARN, f"the backend on {host}:{s.port} is still loading the model",
                         "wait and run doctor again; the log says what it is doing")
        if r.status_code == 401:
            return Check("backend", FAIL, "the backend asks for basic auth and BASIC_AUTH_USER/PASS here differ",
                         "run doctor with the same BASIC_AUTH_USER and BASIC_AUTH_PASS as the server")
        error = body.get("error") if isinstance(body, dict) else r.text[:200]
        return Check("backend", FAIL, f"the backend on {host}:{s.port} answers {r.status_code}: {error}",
                     "fix what the error names (the weights and device checks above usually say the same) and "
                     "restart the backend")

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


# --------------------------------------------------------------------------------------------
# Helpers


def _json(r: requests.Response | None):
    if r is None:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _quiet_get(url: str, timeout: float) -> requests.Response | None:
    try:
        return requests.get(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return None


def _media_fields(label_config: str | None) -> list[tuple[str, str]]:
    """(tag, data field) of each object tag in a label config, in document order."""
    if not label_config:
        return []
    pattern = rf"<({'|'.join(_MEDIA_TAGS)})\b[^>]*?\bvalue\s*=\s*\"\$([\w.-]+)\""
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, label_config)]


def _media_url(task: dict, label_config: str | None) -> tuple[str | None, str | None]:
    data = task.get("data") or {}
    for _tag, field in _media_fields(label_config):
        value = data.get(field)
        if isinstance(value, str) and value.strip():
            return field, value
    for field, value in data.items():
        if isinstance(value, str) and _MEDIA_URL.match(value.strip()):
            return field, value
    return None, None


def _media_kind(label_config: str | None, field: str | None) -> str | None:
    for tag, name in _media_fields(label_config):
        if name == field:
            return tag
    return None


def _media_fix(message: str, doctor: Doctor) -> str:
    if " 401 " in message or " 403 " in message or "answered 401" in message or "answered 403" in message:
        return doctor._auth().denied_hint()
    if "could not connect" in message:
        return "the task's URL points at a host this machine cannot reach; set LABEL_STUDIO_URL to Label Studio's " \
               "address as seen from here"
    if "not allowed" in message:
        return "add the host to MEDIA_ALLOWED_HOSTS (or set MEDIA_ALLOW_ANY_HOST=true)"
    if "404" in message:
        return "the file behind the task is missing in Label Studio or the task points at a wrong path; re-import it"
    if "MEDIA_LOCAL_DIRS" in message:
        return "add the file's directory to MEDIA_LOCAL_DIRS (and mount it into the container)"
    return "see the message: it names the setting to change"


def health_request(settings: Settings, host: str = "127.0.0.1", timeout: float = 5.0) -> requests.Response:
    """``GET /health`` of the backend on ``host:PORT``, with basic auth when the server requires it."""
    auth = (settings.basic_auth_user, settings.basic_auth_pass or "") if settings.basic_auth_user else None
    return requests.get(f"http://{host}:{settings.port}/health", auth=auth, timeout=timeout)


def healthcheck(settings: Settings) -> int:
    """Docker's HEALTHCHECK: 0 when this container's backend says UP, else 1 (and why, on stdout)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        r = health_request(settings, host, timeout=4.0)
    except requests.RequestException as exc:
        print(f"no answer on {host}:{settings.port}: {type(exc).__name__}")
        return 1
    body = _json(r)
    if r.status_code == 200 and isinstance(body, dict) and body.get("status") == "UP":
        print(f"UP {body.get('model_version')}")
        return 0
    print(f"HTTP {r.status_code}: {r.text[:300]}")
    return 1


def render(checks: list[Check]) -> str:
    """The human report: one line per check, the fix indented below anything not OK."""
    width = max([len(c.name) for c in checks] + [8])
    lines = []
    for c in checks:
        lines.append(f"[{c.status:^4}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':6} {'':<{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        lines.append(f"\n{len(failed)} check(s) failed: {', '.join(failed)}. "
                     "Fix them and run `sam3-backend doctor` again.")
    else:
        warned = [c.name for c in checks if c.status == WARN]
        lines.append("\nall checks passed" + (f" (warnings: {', '.join(warned)})" if warned else ""))
    return "\n".join(lines)


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
