"""Where the SAM 3 weights are, and getting them there: a local folder or a hub repo id.

Torch-free on purpose: ``sam3-backend serve`` resolves (and on first start downloads) the weights in
gunicorn's master before any worker forks, and ``sam3-backend doctor`` inspects them, and neither
may import torch there (a CUDA context created before the fork is unusable in the workers).

Hub ids go through the Hugging Face hub cache (``HF_HOME`` / ``HF_HUB_CACHE``): a cached snapshot
is used without touching the network; otherwise, unless ``HF_HUB_OFFLINE=1``, it is downloaded once
with ``HF_TOKEN``. Every failure raises ``ModelLoadError`` with the fix in the message.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from .tiny import TEST_MODEL_MARKER  # torch-free module

log = logging.getLogger(__name__)

GB = 1024**3

_NO_WEIGHTS_HELP = (
    "For a randomly initialised test model (no download, meaningless masks) run "
    "`sam3-backend tiny-model DIR` and set SAM3_MODEL=DIR."
)


def _gated_help(repo_id: str) -> str:
    return (
        f"{repo_id} is gated: accept its licence on https://huggingface.co/{repo_id} with your account, then set "
        "HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens); or download the checkpoint "
        "once elsewhere and point SAM3_MODEL at the folder. " + _NO_WEIGHTS_HELP
    )


@dataclass(frozen=True)
class WeightsLocation:
    """What ``find_weights`` found, without touching the network."""

    name_or_path: str
    folder: Path | None  # the checkpoint folder; None when a hub id is not in the cache yet
    kind: str  # "folder" (SAM3_MODEL is a local folder) or "hub" (a repo id through the hub cache)
    cache_dir: Path | None = None  # the hub cache searched, for hub ids

    @property
    def found(self) -> bool:
        return self.folder is not None


def hub_cache_dir() -> Path:
    """The hub cache in use (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def find_weights(name_or_path: str, revision: str | None = None) -> WeightsLocation:
    """The local checkpoint folder for ``SAM3_MODEL``, from disk or the hub cache only.

    Raises ModelLoadError when the value can never work (a missing folder, a folder without
    config.json, a malformed repo id); returns ``found == False`` for a hub id not cached yet.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"SAM3_MODEL={local} is a folder without config.json; it is not a SAM 3 checkpoint. " + _NO_WEIGHTS_HELP
            )
        return WeightsLocation(name_or_path, local, "folder")
    if local.exists() or _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"SAM3_MODEL={name_or_path} is not a folder (in a container: is the volume mounted there?). Set it to a "
            "folder holding a SAM 3 checkpoint or to a hub repo id like facebook/sam3. " + _NO_WEIGHTS_HELP
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        folder = Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except HFValidationError as exc:
        raise ModelLoadError(
            f"SAM3_MODEL={name_or_path!r} is neither a folder nor a valid hub repo id ({exc}). " + _NO_WEIGHTS_HELP
        ) from exc
    except LocalEntryNotFoundError:
        return WeightsLocation(name_or_path, None, "hub", cache)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"the hub cache {cache} holds an incomplete snapshot of {name_or_path} (no config.json in {folder}); "
            "delete that folder and start again to download it anew"
        )
    return WeightsLocation(name_or_path, folder, "hub", cache)


def download_plan(repo_id: str, token: str | None = None, revision: str | None = None) -> tuple[int, int]:
    """(files to download, bytes to download) for a hub repo, asking the hub but downloading nothing.

    Raises ModelLoadError with the fix for a gated repo without access, an unknown repo, no network.
    """
    infos = _hub_call(repo_id, token, revision, dry_run=True)
    pending = [i for i in infos if i.will_download]
    return len(pending), sum(i.file_size or 0 for i in pending)


def _hub_call(repo_id: str, token: str | None, revision: str | None, *, dry_run: bool):
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, token=token or None, dry_run=dry_run)
    except Exception as exc:  # huggingface_hub wraps the reason (DryRunError, LocalEntryNotFoundError)
        raise _explain(repo_id, token, exc) from exc


def _explain(repo_id: str, token: str | None, exc: BaseException) -> ModelLoadError:
    """A ModelLoadError that names the reason behind ``exc`` (walking its causes) and the fix."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, GatedRepoError):
            why = "HF_TOKEN is not set" if not token else "the account of HF_TOKEN has no access yet"
            return ModelLoadError(f"Cannot download {repo_id}: {why}. " + _gated_help(repo_id))
        if isinstance(err, RepositoryNotFoundError):
            return ModelLoadError(
                f"Cannot download {repo_id}: the hub says it does not exist or HF_TOKEN may not see it (a gated or "
                "private repo answers like that without a valid token). Check SAM3_MODEL and HF_TOKEN. "
                + _gated_help(repo_id)
            )
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, HfHubHTTPError) and status in (401, 403):
            refused = f"Cannot download {repo_id}: the hub refused HF_TOKEN ({status}). "
            return ModelLoadError(refused + _gated_help(repo_id))
    reason = chain[-1]
    return ModelLoadError(
        f"Cannot download {repo_id} from the hub ({type(reason).__name__}: {str(reason)[:300]}). Is the hub "
        f"reachable from here? Without network, mount a hub cache that holds {repo_id} (HF_HOME) or set SAM3_MODEL "
        "to a local checkpoint folder, and set HF_HUB_OFFLINE=1. " + _NO_WEIGHTS_HELP
    )


def resolve_weights(name_or_path: str, token: str | None = None, revision: str | None = None) -> Path:
    """The checkpoint folder for ``SAM3_MODEL``: a local folder, the cached snapshot, or a fresh download.

    The download (first start only) logs where it goes, how much and how long it took; with
    ``HF_HUB_OFFLINE=1`` a missing snapshot fails at once with the ways to provide it.
    """
    where = find_weights(name_or_path, revision)
    if where.found:
        if where.kind == "hub":
            log.info("SAM 3 weights: %s from the hub cache (%s)", name_or_path, where.folder)
        return where.folder
    if hub_offline():
        raise ModelLoadError(
            f"HF_HUB_OFFLINE=1 and {name_or_path} is not in the hub cache {where.cache_dir}. Either mount a hub cache "
            f"that holds it (HF_HOME, or HF_HUB_CACHE for the hub/ folder itself), set SAM3_MODEL to a local "
            f"checkpoint folder, or unset HF_HUB_OFFLINE and set HF_TOKEN so the first start downloads it. "
            + _NO_WEIGHTS_HELP
        )
    files, size = download_plan(name_or_path, token, revision)
    log.info(
        "SAM 3 weights: %s is not in the hub cache %s: downloading %d files (%.2f GB) now; this happens once, "
        "later starts use the cache", name_or_path, where.cache_dir, files, size / GB,
    )
    started = time.monotonic()
    folder = Path(_hub_call(name_or_path, token, revision, dry_run=False))
    log.info("SAM 3 weights: downloaded %s to %s in %.0f s", name_or_path, folder, time.monotonic() - started)
    return folder


@dataclass(frozen=True)
class CheckpointSummary:
    """What a checkpoint folder holds, read from its config and safetensors headers (no tensors loaded)."""

    model_type: str | None
    is_test_model: bool
    weight_files: int
    weight_bytes: int
    tensors: int
    has_detector: bool  # detector_model.* keys (Sam3Model)
    has_tracker: bool  # tracker_model.* keys (Sam3TrackerModel)


def summarize_checkpoint(folder: Path) -> CheckpointSummary:
    """Read ``config.json`` and the safetensors headers; raises ModelLoadError if they are unreadable."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} cannot be read as JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder / 'config.json'} is not a JSON object")
    files = sorted(folder.glob("*.safetensors"))
    keys: set[str] = set()
    size = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if not 0 < header_len < 100 * 1024 * 1024:
                    raise ValueError(f"implausible header length {header_len}")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a readable safetensors file ({exc}); download it again") from exc
        keys.update(k for k in header if k != "__metadata__")
        size += path.stat().st_size
    return CheckpointSummary(
        model_type=config.get("model_type"),
        is_test_model=bool(config.get(TEST_MODEL_MARKER)),
        weight_files=len(files),
        weight_bytes=size,
        tensors=len(keys),
        has_detector=any(k.startswith("detector_model.") for k in keys),
        has_tracker=any(k.startswith("tracker_model.") for k in keys),
    )
