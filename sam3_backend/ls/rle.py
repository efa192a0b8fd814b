"""Label Studio brush RLE. PLACEHOLDER: wraps label-studio-sdk; to be replaced by a vectorised encoder."""

from __future__ import annotations

import numpy as np
from label_studio_sdk.converter.brush import decode_rle as _sdk_decode
from label_studio_sdk.converter.brush import mask2rle as _sdk_mask2rle


def encode_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool/uint8 mask -> Label Studio brush RLE (foreground painted as 255 in RGBA)."""
    return _sdk_mask2rle(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))


def decode_rle(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> (H, W) bool mask (alpha channel > 0)."""
    flat = _sdk_decode(rle)
    return flat.reshape(height, width, 4)[:, :, 3] > 0
