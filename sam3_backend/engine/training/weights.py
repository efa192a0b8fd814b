"""The trainable copy of SAM 3's detector, and the weight deltas versions are made of.

The served ``Sam3Model`` is never touched: training works on a *shallow copy* of it whose trainable
submodules (``TRAINABLE_MODULES``: geometry encoder, DETR encoder and decoder, mask decoder, scoring
head) are deep copies in float32, while the frozen parts (vision encoder with its neck, text
encoder and projection) are shared with the served model. A version stores only the tensors that
training changed (the *delta*); ``patched_detector`` applies one to the base detector the same way,
so a served fine-tuned model costs one copy of the trainable part, not of the whole model.

Modes: ``full`` trains every tensor of the trainable modules; ``lora`` injects LoRA adapters (peft)
into their linear layers (``LORA_TARGETS``) and merges them back at the end, so both produce the
same kind of delta.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

TRAINABLE_MODULES = ("geometry_encoder", "detr_encoder", "detr_decoder", "mask_decoder", "dot_product_scoring")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "layer1", "layer2", "layer3")
MODES = ("full", "lora")


def detector_with(base: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``base`` whose top-level submodules ``replacements`` are swapped in.

    Everything else (parameters, buffers, config) is shared with ``base``; ``base`` is unchanged.
    """
    unknown = set(replacements) - set(base._modules)
    if unknown:
        raise KeyError(f"the detector has no submodule(s) {sorted(unknown)}")
    clone = copy.copy(base)
    clone._modules = dict(base._modules)
    clone._parameters = dict(base._parameters)
    clone._buffers = dict(base._buffers)
    clone._modules.update(replacements)
    return clone


@dataclass
class TrainableDetector:
    """``detector`` runs like a ``Sam3Model``; only ``modules`` (float32 copies) learn."""

    detector: nn.Module
    modules: nn.ModuleDict
    mode: str
    lora: object | None = None  # peft LoraModel over ``modules`` in LoRA mode

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.modules.parameters() if p.requires_grad]

    def set_training(self, training: bool) -> None:
        """Train/eval mode on the copies only: the shared frozen modules stay as they are."""
        self.modules.train(training)

    def merged_modules(self) -> nn.ModuleDict:
        """The trained modules with LoRA merged in (a copy in LoRA mode, so training can go on)."""
        if self.lora is None:
            return self.modules
        return copy.deepcopy(self.lora).merge_and_unload()

    def merged_detector(self) -> nn.Module:
        """A detector with the current weights, for evaluation (LoRA merged)."""
        modules = self.merged_modules()
        return detector_with(self.detector, dict(modules.items()))


def trainable_copy(base: nn.Module, mode: str = "full", *, lora_rank: int = 8,
                   modules: Iterable[str] = TRAINABLE_MODULES) -> TrainableDetector:
    """Float32 copies of ``modules`` of ``base`` (on its device) ready to train in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"training mode must be one of {MODES}, got {mode!r}")
    copies = nn.ModuleDict({name: copy.deepcopy(base._modules[name]).float() for name in modules})
    for p in copies.parameters():
        p.requires_grad_(True)
    lora = None
    if mode == "lora":
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                            target_modules=list(LORA_TARGETS), bias="none")
        lora = LoraModel(copies, config, "default")  # injects adapters into ``copies`` in place
    return TrainableDetector(detector_with(base, dict(copies.items())), copies, mode, lora)


def delta_tensors(base: nn.Module, trained: nn.ModuleDict) -> dict[str, torch.Tensor]:
    """Tensors of ``trained`` that differ from ``base``'s, as contiguous float32 CPU tensors,
    under the detector's own key names (``detr_decoder.layers.0....``)."""
    base_state = base.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, module in trained.items():
        for key, value in module.state_dict().items():
            full = f"{name}.{key}"
            if full not in base_state:
                raise KeyError(f"trained tensor {full} is not in the base detector (unmerged adapter?)")
            reference = base_state[full]
            value = value.detach()
            if value.shape != reference.shape:
                raise ValueError(f"{full}: trained shape {tuple(value.shape)} != base {tuple(reference.shape)}")
            if not torch.equal(value.to(reference.dtype), reference):
                out[full] = value.float().cpu().contiguous()
    return out


def patched_detector(base: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """``base`` with ``tensors`` (a delta) applied, as a new detector in eval mode.

    The touched top-level modules are deep-copied (in ``base``'s dtype and device) and loaded;
    untouched ones are shared. Raises ``ValueError`` for a tensor the base does not have or whose
    shape differs: such a delta belongs to another model and is never served half-applied.
    """
    base_state = base.state_dict()
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key not in base_state:
            raise ValueError(f"the delta has tensor {key!r}, which this SAM 3 detector does not have")
        if tuple(value.shape) != tuple(base_state[key].shape):
            raise ValueError(f"{key}: delta shape {tuple(value.shape)} != model {tuple(base_state[key].shape)}")
        head, _, rest = key.partition(".")
        grouped.setdefault(head, {})[rest] = value
    replacements = {}
    for head, state in grouped.items():
        module = copy.deepcopy(base._modules[head])
        like = {k: base_state[f"{head}.{k}"] for k in state}
        module.load_state_dict({k: v.to(like[k].device, like[k].dtype) for k, v in state.items()}, strict=False)
        replacements[head] = module.eval()
    return detector_with(base, replacements)
