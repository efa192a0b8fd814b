"""Frozen features for training: the vision backbone once per image, text once per concept.

With the encoders frozen, SAM 3's expensive parts (the ViT: ~5.6 TFLOP per 1008-px image; the
text encoder) give the same answer at every step, so they run once, each batch of images in its
own BACKGROUND slot of the model scheduler. Training steps then start from the cached backbone
output: only the (frozen) FPN neck runs per step, because its outputs are five times larger than
its input (≈ 56 MB vs 10.6 MB per image in bf16 at 1008 px).

Shapes: backbone output (1, HW, C) per image (the ViT's last hidden state, patch grid flattened);
text features (L, D) per concept with an (L,) attention mask, L = 32 tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ...types import ImageInput
from ..loading import LoadedSam3
from ..scheduler import ModelScheduler, Priority

TEXT_TOKENS = 32


DEVICE_BUDGET_BYTES = 8 << 30  # cached backbone outputs kept on the model's device; the rest on the CPU


class FrozenFeatures:
    """Backbone outputs keyed by image key, text features keyed by phrase.

    ``store_device``: where cached backbone outputs live. None: the model's device for the first
    ``DEVICE_BUDGET_BYTES`` (≈ 800 images at 1008 px in bf16), the CPU for the rest; "cpu" spares
    GPU memory entirely (each step then copies its batch over).
    """

    def __init__(self, model: LoadedSam3, scheduler: ModelScheduler, *, batch_size: int = 4,
                 store_device: torch.device | str | None = None, priority: Priority = Priority.BACKGROUND,
                 device_budget_bytes: int = DEVICE_BUDGET_BYTES):
        self.model = model
        self.scheduler = scheduler
        self.batch_size = max(1, batch_size)
        self.store_device = torch.device(store_device) if store_device is not None else None
        self.device_budget = device_budget_bytes
        self.device_bytes = 0
        self.priority = priority
        self._images: dict[str, torch.Tensor] = {}
        self._texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _where(self, nbytes: int) -> torch.device:
        if self.store_device is not None:
            return self.store_device
        if self.model.device.type == "cpu" or self.device_bytes + nbytes <= self.device_budget:
            self.device_bytes += nbytes
            return self.model.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ images
    def add_images(self, images: Sequence[ImageInput], progress: Callable[[int, int], None] | None = None) -> None:
        """Encode the images not seen yet, ``batch_size`` per scheduler slot."""
        todo = list({im.key: im for im in images if im.key not in self._images}.values())
        processor = self.model.processor.image_processor
        backbone = self.model.detector.vision_encoder.backbone
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            pixels = [im.pixels if im.pixels.flags.writeable else im.pixels.copy() for im in chunk]
            with self.scheduler.slot(self.priority), torch.inference_mode():
                batch = processor(images=pixels, return_tensors="pt", input_data_format="channels_last")
                values = batch["pixel_values"].to(self.model.device, self.model.dtype)
                hidden = backbone(values).last_hidden_state
            for j, im in enumerate(chunk):
                row = hidden[j : j + 1]
                self._images[im.key] = row.to(self._where(row.element_size() * row.nelement())).clone()
            if progress is not None:
                progress(min(start + len(chunk), len(todo)), len(todo))

    def has_image(self, key: str) -> bool:
        return key in self._images

    def vision(self, keys: Sequence[str]):
        """FPN features for ``keys`` (one row per key, repeats allowed) through the frozen neck.

        Returns a ``Sam3VisionEncoderOutput`` with the model's dtype on the model's device, as
        ``Sam3Model.forward(vision_embeds=...)`` takes it. Runs without autograd (frozen).
        """
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        detector = self.model.detector
        side = self.model.image_size // detector.config.vision_config.backbone_config.patch_size
        unique = list(dict.fromkeys(keys))
        hidden = torch.cat([self._images[k] for k in unique], dim=0).to(self.model.device)
        with torch.no_grad():
            spatial = hidden.view(hidden.shape[0], side, side, -1).permute(0, 3, 1, 2)
            fpn, pos = detector.vision_encoder.neck(spatial)
        index = torch.tensor([unique.index(k) for k in keys], device=hidden.device)
        return Sam3VisionEncoderOutput(
            last_hidden_state=None,
            fpn_hidden_states=tuple(f.index_select(0, index) for f in fpn),
            fpn_position_encoding=tuple(p.index_select(0, index) for p in pos),
        )

    # ------------------------------------------------------------------ text
    def add_texts(self, texts: Sequence[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if not todo:
            return
        tokenizer = self.model.processor.tokenizer
        tokens = tokenizer(todo, return_tensors="pt", padding="max_length", max_length=TEXT_TOKENS, truncation=True)
        ids = tokens["input_ids"].to(self.model.device)
        mask = tokens["attention_mask"].to(self.model.device)
        with self.scheduler.slot(self.priority), torch.inference_mode():
            feats = self.model.detector.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        for j, text in enumerate(todo):
            self._texts[text] = (feats[j].clone(), mask[j].clone())

    def text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, L, D), attention mask (B, L)) for ``texts`` (each added before)."""
        feats = torch.stack([self._texts[t][0] for t in texts])
        mask = torch.stack([self._texts[t][1] for t in texts])
        return feats, mask
