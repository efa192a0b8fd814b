"""Training examples and the deterministic train / held-out split.

Coordinates: masks are (H, W) bool at the original image size, pixel (row, col); boxes derived
from them are XYXY pixels with x1 = last column + 1 (as ``types.Instance``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...types import ImageInput


@dataclass(frozen=True)
class TrainingExample:
    """One image and every labelled instance on it.

    masks: (N, H, W) bool, one per instance, at the image's size. concepts: (N,) int, index of each
    instance's concept in ``TrainingData.concepts``. key: a stable id (e.g. "task-17") that decides
    the split, so an image stays on the same side of it from one training run to the next.
    """

    image: ImageInput
    masks: np.ndarray
    concepts: np.ndarray
    key: str

    def __post_init__(self) -> None:
        h, w = self.image.height, self.image.width
        if self.masks.ndim != 3 or self.masks.shape[1:] != (h, w):
            raise ValueError(f"masks must be (N, {h}, {w}) for a {w}x{h} image, got {self.masks.shape}")
        if self.concepts.shape != (self.masks.shape[0],):
            raise ValueError(f"{self.masks.shape[0]} masks but {self.concepts.shape} concept indices")

    @property
    def n_instances(self) -> int:
        return int(self.masks.shape[0])

    def boxes_xyxy(self) -> np.ndarray:
        """(N, 4) float32 tight XYXY pixel boxes of the masks (zeros for an empty mask)."""
        out = np.zeros((self.n_instances, 4), np.float32)
        for i, mask in enumerate(self.masks):
            rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
            if rows.any():
                r = np.flatnonzero(rows)
                c = np.flatnonzero(cols)
                out[i] = (c[0], r[0], c[-1] + 1, r[-1] + 1)
        return out


@dataclass(frozen=True)
class TrainingData:
    """Examples plus the concept phrases their indices refer to (what SAM 3 is prompted with)."""

    concepts: tuple[str, ...]
    examples: tuple[TrainingExample, ...]

    def instance_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.concepts, 0)
        for ex in self.examples:
            for c in ex.concepts.tolist():
                counts[self.concepts[c]] += 1
        return counts


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(
    examples: Sequence[TrainingExample], held_out_fraction: float, seed: int = 0
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, held_out): each example goes by a hash of its key, not by its position.

    The same key always lands on the same side for a given seed, so adding annotations never moves
    an evaluated image into training (versions stay comparable). At least one example goes to each
    side when there are two or more: the one with the smallest hash is held out if none was, the
    one with the largest trains if none did.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError("held_out_fraction must lie strictly between 0 and 1")
    scored = sorted(((_unit_hash(ex.key, seed), i) for i, ex in enumerate(examples)))
    held = {i for h, i in scored if h < held_out_fraction}
    if len(examples) >= 2:
        if not held:
            held.add(scored[0][1])
        if len(held) == len(examples):
            held.discard(scored[-1][1])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    held_out = [ex for i, ex in enumerate(examples) if i in held]
    return train, held_out


def fit_example(example: TrainingExample, max_side: int) -> TrainingExample:
    """``example`` scaled down so its longer side is at most ``max_side`` pixels (as is, if it fits).

    SAM 3 sees every image at its input size (1008 px for the released model), so nothing is lost
    below that, while full-resolution masks of a whole project would not fit in memory. The image
    key changes with the size (features are cached per key). Masks are area-resampled and
    thresholded at one half, so thin parts are kept when they cover half a pixel or more.
    """
    import cv2

    h, w = example.image.height, example.image.width
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return example
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    pixels = cv2.resize(example.image.pixels, (nw, nh), interpolation=cv2.INTER_AREA)
    masks = np.zeros((example.n_instances, nh, nw), bool)
    for i, mask in enumerate(example.masks):
        masks[i] = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA) >= 0.5
    image = ImageInput(np.ascontiguousarray(pixels), f"{example.image.key}@{nw}x{nh}")
    return TrainingExample(image, masks, example.concepts, example.key)
