"""The engine's feature cache: a byte-bounded LRU of tensors.

Keyed by (model version, media content key, kind) so a new model never reuses old features;
values are the compact per-image tensors the heads decode from (see ``engine.image``).
"""

from __future__ import annotations

from typing import Any

from ..lru import CacheStats, SizedLRU

__all__ = ["CacheStats", "FeatureCache", "tensor_nbytes"]


def tensor_nbytes(value: Any) -> int:
    """Bytes held by a tensor, or a (nested) list/tuple/dict of tensors."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, dict):
        return sum(tensor_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_nbytes(v) for v in value)
    return 0


class FeatureCache(SizedLRU):
    def __init__(self, capacity_bytes: int, sizeof=tensor_nbytes):
        super().__init__(capacity_bytes, sizeof)
