"""Checks of the machine the backend runs on: container networking, the SAM 3 weights, the
device, and the disk they need."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import ModelLoadError
from .label_studio import COMPOSE_LS_URL
from .net import _tcp_open, is_local_host
from .report import FAIL, OK, SKIP, WARN, Check

GB = 1024**3
MB = 1024**2


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


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / MB:.1f} MB"


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class HostChecks:
    """``check_container``, ``check_weights``, ``check_device``, ``check_disk`` of ``Doctor``.

    ``check_weights`` notes how much the first start must download (``_download_bytes``);
    ``check_disk`` then asks for room for it in the hub cache.
    """

    settings: Settings
    container: bool
    timeout: float
    _download_bytes: int

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


__all__ = ["GB", "MB", "HostChecks", "in_container"]
