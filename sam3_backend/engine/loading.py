"""Strict SAM 3 loading: explicit source, device and dtype; eval mode; refuses missing keys.

One checkpoint (``facebook/sam3`` or a local folder in its layout) serves both the concept
model (``Sam3Model``) and the interactive tracker (``Sam3TrackerModel``). They share one ViT
backbone in memory: the checkpoint stores it once (``detector_model.vision_encoder.backbone``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .tiny import TEST_MODEL_MARKER
from .weights import resolve_weights

log = logging.getLogger(__name__)

# facebook/sam3 stores the tracker under ``tracker_model.``, its neck as ``tracker_neck.`` and
# shares the detector's backbone; Sam3TrackerModel wants them at its top level.
TRACKER_KEY_MAPPING = {
    r"^tracker_model\.(.+)$": r"\1",
    r"^detector_model\.vision_encoder\.backbone\.": "vision_encoder.backbone.",
    r"^tracker_neck\.": "vision_encoder.neck.",
}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a hub repo id (offline cache honoured) or a local folder."""

    name_or_path: str = "facebook/sam3"
    token: str | None = None
    revision: str | None = None


@dataclass
class LoadedSam3:
    """Both SAM 3 heads, ready for inference, plus what callers need to report on them."""

    detector: "torch.nn.Module"  # Sam3Model
    tracker: "torch.nn.Module"  # Sam3TrackerModel
    processor: object  # Sam3Processor-compatible: .image_processor and .tokenizer
    device: torch.device
    dtype: torch.dtype
    version: str
    is_test_model: bool
    image_size: int
    folder: Path | None = None  # the checkpoint folder (the video models read their extra weights there)
    # The loaded checkpoint's version when ``detector`` is a fine-tuned variant of it (the backbone
    # and tracker are the checkpoint's, so their cached features stay valid); "" otherwise.
    base_version: str = ""

    @property
    def backbone_version(self) -> str:
        """Version of the vision backbone and tracker: what their cached features depend on."""
        return self.base_version or self.version


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"SAM3_DEVICE={name} but no CUDA device is visible; use SAM3_DEVICE=cpu or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ModelLoadError(f"SAM3_DTYPE={name!r} is not one of auto, float32, bfloat16, float16") from None


def _check_report(cls_name: str, info: dict) -> None:
    problems = []
    for kind in ("missing_keys", "mismatched_keys", "error_msgs"):
        values = sorted(map(str, info.get(kind) or []))
        if values:
            problems.append(f"{len(values)} {kind.replace('_', ' ')} (e.g. {', '.join(values[:3])})")
    if problems:
        raise ModelLoadError(
            f"{cls_name}: the checkpoint does not match the SAM 3 architecture: {'; '.join(problems)}. "
            "Refusing to serve a partly random model; check SAM3_MODEL points at a facebook/sam3 checkpoint."
        )


def _fingerprint(folder: Path) -> str:
    """A short, stable id of the weights: config + safetensors headers (cheap; no full-file hash)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if name.endswith(".json") and name == "config.json":
            digest.update(path.read_bytes())
        elif name.endswith(".safetensors"):
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                digest.update(f.read(header_len))
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:10]


def _resolve_folder(source: ModelSource) -> Path:
    """Local folder as is; a hub id through the hub cache (downloaded once when online); see ``weights``."""
    return resolve_weights(source.name_or_path, source.token, source.revision)


def _identity(folder: Path) -> tuple[str, bool]:
    config = json.loads((folder / "config.json").read_text())
    is_test = bool(config.get(TEST_MODEL_MARKER))
    fingerprint = _fingerprint(folder)
    return (f"sam3-test-{fingerprint}" if is_test else f"sam3-{fingerprint}"), is_test


def model_version(source: ModelSource) -> str:
    """The ``model_version`` ``load_sam3`` would report for ``source``, without loading weights
    (a bulk job's driver needs it to skip finished tasks while its workers load the model)."""
    return _identity(_resolve_folder(source))[0]


def load_sam3(source: ModelSource, device: str = "auto", dtype: str = "auto") -> LoadedSam3:
    """Load detector + tracker from one checkpoint, strictly; share the ViT backbone."""
    from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel
    from transformers.utils import logging as hf_logging

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder = _resolve_folder(source)
    try:
        detector, info = Sam3Model.from_pretrained(folder, output_loading_info=True, dtype=dt)
        _check_report("Sam3Model", info)
        # transformers warns that a sam3_video config builds a sam3_tracker: that is the point.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tracker, info = Sam3TrackerModel.from_pretrained(
                folder, output_loading_info=True, dtype=dt, key_mapping=TRACKER_KEY_MAPPING
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        _check_report("Sam3TrackerModel", info)
        processor = Sam3Processor.from_pretrained(folder)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"Loading SAM 3 from {folder} failed: {type(exc).__name__}: {exc}") from exc

    # One backbone in memory: the tracker's copy was loaded from the very same tensors.
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone
    detector.to(dev).eval()
    tracker.to(dev).eval()

    version, is_test = _identity(folder)
    image_size = int(processor.image_processor.size["height"])
    if is_test:
        log.warning("Loaded a RANDOMLY INITIALISED SAM 3 TEST MODEL from %s: its masks are meaningless", folder)
    log.info("SAM 3 %s loaded from %s on %s (%s)", version, folder, dev, str(dt).replace("torch.", ""))
    return LoadedSam3(detector, tracker, processor, dev, dt, version, is_test, image_size, folder)
