"""Boxes from low-resolution mask logits, and mask NMS: no full-resolution masks needed.

transformers' ``Sam3VideoProcessor.postprocess_outputs`` upsamples every object's mask to the
frame size before taking its box (~600 ms per 1080p frame with 5 objects on CPU, bench/RESULTS.md).
A box needs only each mask's extent: ``boxes_from_logits`` reads it from the low-resolution
logits (288 x 288 at full size), placing each edge where the bilinearly upsampled logit crosses
zero, so boxes move smoothly (sub-cell) rather than in steps of a low-resolution cell.

Coordinates: the low-resolution grid covers the whole frame (SAM 3 squashes frames to a square),
cell ``i`` centred at ``(i + 0.5) / n`` of the frame; boxes come out normalised to [0, 1], XYXY.
"""

from __future__ import annotations

import torch


def _edges(profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First and last zero crossings of (N, n) max-logit profiles, in cell units (edge = 0..n).

    Returns (start, end, present): start/end where linear interpolation between cell centres
    crosses 0 (clamped to the grid), present = any cell > 0.
    """
    n = profile.shape[-1]
    positive = profile > 0
    present = positive.any(dim=-1)
    idx = torch.arange(n, device=profile.device)
    big = torch.full_like(idx, n)
    first = torch.where(positive, idx, big).min(dim=-1).values.clamp(max=n - 1)
    last = torch.where(positive, idx, -torch.ones_like(idx)).max(dim=-1).values.clamp(min=0)

    def crossing(inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        a = profile.gather(-1, inside[:, None])[:, 0]
        b = profile.gather(-1, outside.clamp(0, n - 1)[:, None])[:, 0]
        frac = (a / (a - b).clamp(min=1e-6)).clamp(0, 1)  # a > 0 >= b: distance from inside centre
        return frac

    before = first - 1
    after = last + 1
    start = first.float() + 0.5 - crossing(first, before)
    start = torch.where(before < 0, torch.zeros_like(start), start)
    end = last.float() + 0.5 + crossing(last, after)
    end = torch.where(after > n - 1, torch.full_like(end, float(n)), end)
    return start, end, present


@torch.inference_mode()
def boxes_from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, h, w) mask logits -> ((N, 4) normalised XYXY boxes, (N,) bool non-empty), on the CPU.

    A box edge lies where the bilinearly interpolated logit along the mask's outermost row or
    column profile crosses zero; empty masks (no logit > 0) get a zero box and ``False``.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected (N, h, w) logits, got {tuple(logits.shape)}")
    logits = logits.float()
    h, w = logits.shape[-2:]
    if logits.shape[0] == 0:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool)
    cols = logits.amax(dim=-2)  # (N, w): the best logit of each column
    rows = logits.amax(dim=-1)  # (N, h)
    x0, x1, present = _edges(cols)
    y0, y1, _ = _edges(rows)
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=-1)
    boxes = torch.where(present[:, None], boxes, torch.zeros_like(boxes))
    return boxes.cpu(), present.cpu()


@torch.inference_mode()
def mask_nms(logits: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on mask IoU: (N, h, w) logits and (N,) scores -> (N,) bool keep, best first.

    A detection is dropped when its mask overlaps a better-scoring kept one by more than
    ``iou_threshold`` (SAM 3 uses 0.1 on its low-resolution masks). Empty masks are never kept.
    IoUs come from one matrix product of the binarised masks.
    """
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    binary = (logits.reshape(n, -1) > 0).float()
    area = binary.sum(dim=1)
    inter = binary @ binary.T
    union = area[:, None] + area[None, :] - inter
    iou = inter / union.clamp(min=1.0)
    order = torch.argsort(scores.float(), descending=True, stable=True)
    keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
    suppressed = area <= 0
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep[i] = True
        suppressed = suppressed | (iou[i] > iou_threshold)
    return keep


__all__ = ["boxes_from_logits", "mask_nms"]
