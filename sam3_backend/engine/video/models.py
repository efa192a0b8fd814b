"""SAM 3's video models on the weights the image engine already holds.

transformers has two video classes: ``Sam3VideoModel`` (text prompts: detector + tracker with
memory, one vision pass per frame for all prompts) and ``Sam3TrackerVideoModel`` (boxes and
points, SAM 2 style; inside ``Sam3VideoModel`` it is ``tracker_model``, without its own vision
encoder). ``from_pretrained`` would load a second 840M-parameter detector and ViT next to
``load_sam3``'s. Instead ``build_video_models`` assembles them around the loaded modules:

* ``detector_model``: the image engine's ``Sam3Model`` itself (shared module);
* ``tracker_neck``: the image tracker's neck (shared module, loaded from ``tracker_neck.*``);
* ``tracker_model``: a ``Sam3TrackerVideoModel`` without vision encoder whose prompt encoder,
  mask decoder and no-memory embedding are *tied* to the image tracker's parameters (same
  tensors, checked equal to the checkpoint first); only what images never use, the memory
  attention, memory encoder, object-pointer projection and their embeddings, is read from the
  checkpoint (``tracker_model.*``), strictly: a missing or mismatched key is a ``ModelLoadError``.

Extra memory: the memory modules only (about 10M parameters at full size, ~1% of the model).

``DedupedSam3VideoModel`` replaces transformers' detection NMS, which needs the optional
``kernels`` download and is silently skipped without it (duplicate tracks then appear), by
``boxes.mask_nms`` on the same low-resolution masks and the same IoU threshold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ..loading import LoadedSam3
from .boxes import mask_nms

log = logging.getLogger(__name__)


class _OncePerMessage(logging.Filter):
    """transformers repeats "hitting self.max_num_objects=..." on every frame at the cap: once is enough."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "hitting self.max_num_objects" not in message:
            return True
        key = message.split(" with ")[0]
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_cap_filter = _OncePerMessage()

# Tracker parts the image tracker (Sam3TrackerModel) already has, by parameter/buffer name prefix.
SHARED_TRACKER_PREFIXES = ("prompt_encoder.", "mask_decoder.", "no_memory_embedding", "shared_image_embedding.")


def _video_model_class():
    from transformers import Sam3VideoModel

    class DedupedSam3VideoModel(Sam3VideoModel):
        """``Sam3VideoModel`` with detection NMS that needs no optional download."""

        nms_iou: float | None = 0.1  # None: no NMS (comparisons with transformers' own pipeline)

        def run_detection(self, inference_session, vision_embeds):
            detections = super().run_detection(inference_session=inference_session, vision_embeds=vision_embeds)
            if self.nms_iou is None:
                return detections
            for prompt_id, det in detections.items():
                if det["scores"].numel() > 1:
                    keep = mask_nms(det["mask"], det["scores"], self.nms_iou)
                    detections[prompt_id] = {k: v[keep] for k, v in det.items()}
            return detections

    return DedupedSam3VideoModel


@dataclass
class VideoModels:
    """The two video models, sharing the image engine's weights.

    video: text-prompted tracking (``Sam3VideoModel``). tracker: box-prompted tracking
    (``video.tracker_model``). processor: ``Sam3VideoProcessor`` (tokenizer, frame normalisation).
    mask_size: side of the low-resolution masks both produce (288 at 1008 px input).
    extra_parameters: parameters held in addition to the image engine's.
    """

    video: torch.nn.Module
    tracker: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype
    image_size: int
    mask_size: int
    version: str
    extra_parameters: int


def _checkpoint_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under ``prefix`` in the folder's safetensors (single file or sharded)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = f.get_tensor(key)
    return out


def _tie(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``module.<name>`` (a parameter or buffer) the very tensor ``value``."""
    owner_path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = value if isinstance(value, torch.nn.Parameter) else torch.nn.Parameter(value, False)
    else:
        owner._buffers[leaf] = value


def build_video_models(loaded: LoadedSam3, config=None) -> VideoModels:
    """``Sam3VideoModel`` + its tracker around ``loaded``'s modules (see the module docstring).

    config: a ``Sam3VideoConfig``; default the checkpoint's (``loaded.folder``). Without a folder
    (a model built in memory for benchmarks) the memory modules keep their random initialisation,
    which is only allowed for test models.
    """
    from transformers import Sam3VideoConfig, Sam3VideoProcessor
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoModel

    folder = loaded.folder
    if config is None:
        if folder is None:
            raise ModelLoadError("the video models need the checkpoint folder (or an explicit config)")
        config = Sam3VideoConfig.from_pretrained(folder)
    cls = _video_model_class()
    with torch.device("meta"):  # the detector and tracker built here are replaced below: no memory
        video = cls(config)
    video.detector_model = loaded.detector
    video.tracker_neck = loaded.tracker.vision_encoder.neck

    tracker = Sam3TrackerVideoModel(config.tracker_config, remove_vision_encoder=True)
    if folder is not None:
        state = _checkpoint_tensors(folder, "tracker_model.")
        expected = tracker.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith("vision_encoder."))
        mismatched = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
        if missing or unexpected or mismatched:
            raise ModelLoadError(
                f"Sam3TrackerVideoModel: the checkpoint in {folder} does not match: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected, {len(mismatched)} mismatched "
                f"(e.g. {mismatched[:3]}); refusing to track with a partly random model"
            )
        tracker.load_state_dict({k: state[k] for k in expected}, strict=True)
    elif not loaded.is_test_model:
        raise ModelLoadError("refusing random video memory weights for a real model: load it from its checkpoint")
    tracker.to(loaded.device, loaded.dtype).eval()

    # Tie the heads the image tracker already holds (same checkpoint tensors; checked equal).
    shared = dict(loaded.tracker.named_parameters())
    shared.update(dict(loaded.tracker.named_buffers()))
    own = dict(tracker.named_parameters())
    own.update(dict(tracker.named_buffers()))
    tied = 0
    for name, tensor in own.items():
        if not name.startswith(SHARED_TRACKER_PREFIXES):
            continue
        source = shared.get(name)
        if source is None or source.shape != tensor.shape:
            raise ModelLoadError(f"the image tracker has no {name} of shape {tuple(tensor.shape)} to share")
        if folder is not None and not torch.equal(source.detach(), tensor.detach().to(source.dtype)):
            raise ModelLoadError(f"{name} differs between the image tracker and tracker_model.{name}")
        _tie(tracker, name, source)
        tied += 1
    video.tracker_model = tracker
    video.nms_iou = float(config.det_nms_thresh)
    video.det_nms_thresh = 0.0  # transformers' own NMS (kernels only) off: run_detection dedupes
    on_meta = [n for n, t in list(video.named_parameters()) + list(video.named_buffers()) if t.is_meta]
    if on_meta:
        raise ModelLoadError(f"the video model kept unloaded tensors: {on_meta[:5]}")
    video.eval()

    shared_ids = {id(t) for t in list(loaded.detector.parameters()) + list(loaded.tracker.parameters())}
    extra = sum(p.numel() for p in video.parameters() if id(p) not in shared_ids)
    if folder is not None:
        processor = Sam3VideoProcessor.from_pretrained(folder)
    else:
        from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

        size = {"height": loaded.image_size, "width": loaded.image_size}
        processor = Sam3VideoProcessor(
            image_processor=loaded.processor.image_processor,
            video_processor=Sam2VideoVideoProcessor(size=size),
            tokenizer=loaded.processor.tokenizer,
        )
    logging.getLogger("transformers.models.sam3_video.modeling_sam3_video").addFilter(_cap_filter)
    log.info("video models ready: %d tracker tensors shared with the image model, %.1fM extra parameters; "
             "detections are deduplicated by the backend's mask NMS (transformers' needs the optional `kernels` "
             "package), SAM 3's mask hole filling is skipped without it", tied, extra / 1e6)
    return VideoModels(
        video=video, tracker=tracker, processor=processor, device=loaded.device, dtype=loaded.dtype,
        image_size=loaded.image_size, mask_size=int(config.low_res_mask_size), version=loaded.version,
        extra_parameters=extra,
    )


__all__ = ["SHARED_TRACKER_PREFIXES", "VideoModels", "build_video_models"]
