"""A generated data set of labelled shapes: the proof that training learns, without real data.

Each image has a noisy background and one to three shapes. Two concepts, each with its own shape
and colour family (jittered): "disc" (reddish filled ellipse) and "square" (bluish axis-aligned
rectangle). Instances do not overlap, so every mask is exactly the shape drawn. Deterministic per
seed. Nothing here depends on torch.
"""

from __future__ import annotations

import cv2
import numpy as np

from ...types import ImageInput
from .data import TrainingData, TrainingExample

CONCEPTS = ("disc", "square")
_BASE_COLOURS = {0: (200, 50, 50), 1: (50, 80, 210)}


def _shape_mask(kind: int, size: int, rng: np.random.Generator, taken: np.ndarray) -> np.ndarray | None:
    for _ in range(20):
        r = int(rng.integers(size // 8, size // 4))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        mask = np.zeros((size, size), np.uint8)
        if kind == 0:
            ry = max(3, int(r * rng.uniform(0.7, 1.0)))
            cv2.ellipse(mask, (cx, cy), (r, ry), 0.0, 0.0, 360.0, 1, -1)
        else:
            h = max(3, int(r * rng.uniform(0.7, 1.0)))
            cv2.rectangle(mask, (cx - r, cy - h), (cx + r - 1, cy + h - 1), 1, -1)
        mask = mask.astype(bool)
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if not (grown & taken).any():
            return mask
    return None


def synthetic_example(index: int, size: int = 112, seed: int = 0) -> TrainingExample:
    """Image ``index`` of the set: (size, size) RGB, 1-3 non-overlapping labelled shapes."""
    rng = np.random.default_rng([seed, index])
    base = rng.integers(40, 110, 3)
    pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255)
    taken = np.zeros((size, size), bool)
    masks, concepts = [], []
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, len(CONCEPTS)))
        mask = _shape_mask(kind, size, rng, taken)
        if mask is None:
            continue
        colour = np.clip(np.array(_BASE_COLOURS[kind]) + rng.integers(-30, 31, 3), 0, 255)
        pixels[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
        taken |= mask
        masks.append(mask)
        concepts.append(kind)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    key = f"synthetic-{seed}-{index}"
    return TrainingExample(
        image=ImageInput(pixels, key),
        masks=np.stack(masks) if masks else np.zeros((0, size, size), bool),
        concepts=np.asarray(concepts, dtype=np.int64),
        key=key,
    )


def synthetic_shapes(n: int, size: int = 112, seed: int = 0) -> TrainingData:
    """``n`` labelled images (see the module docstring)."""
    return TrainingData(CONCEPTS, tuple(synthetic_example(i, size, seed) for i in range(n)))
