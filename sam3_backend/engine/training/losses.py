"""SAM 3's training losses for the concept detector, per batch of image × concept pairs.

As in SAM 3 (and DETR before it), after Hungarian matching:

* classification: sigmoid focal loss on every query's logit (1 for matched queries, 0 for the
  rest), on pairs whose concept is present — SAM 3's presence head decouples *whether* the concept
  is in the image from *where*, so the queries of an absent concept are not pushed down twice;
* presence: binary cross-entropy on the presence logit (is the concept in the image at all);
* boxes: L1 + generalised IoU on matched queries (normalised XYXY);
* masks: binary cross-entropy + dice on matched queries, at the model's mask resolution.

Box and mask terms are normalised by the number of ground-truth instances in the batch, the
classification term too (DETR's convention), presence by the number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .matcher import MatchCosts, hungarian_match


@dataclass(frozen=True)
class LossWeights:
    cls: float = 2.0
    presence: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    mask_bce: float = 5.0
    dice: float = 5.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    match: MatchCosts = field(default_factory=MatchCosts)


@dataclass
class PairTarget:
    """Ground truth for one image × concept pair: boxes (N, 4) normalised XYXY, masks (N, h, w)
    float in {0, 1} at the model's mask resolution. N == 0: the concept is absent."""

    boxes: torch.Tensor
    masks: torch.Tensor

    @property
    def present(self) -> bool:
        return self.boxes.shape[0] > 0


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over masks of 1 - dice; logits and targets (N, h, w)."""
    prob = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    numerator = 2 * (prob * t).sum(1)
    denominator = prob.sum(1) + t.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum()


def detection_loss(outputs, targets: list[PairTarget], weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """Weighted loss terms and their sum (``"total"``) for a batch; ``outputs`` is the
    ``Sam3ImageSegmentationOutput`` of the batch's B pairs (row b ↔ ``targets[b]``)."""
    logits = outputs.pred_logits.float()  # (B, Q)
    boxes = outputs.pred_boxes.float()  # (B, Q, 4) normalised XYXY
    masks = outputs.pred_masks.float()  # (B, Q, h, w)
    presence = outputs.presence_logits.float().reshape(-1)  # (B,)
    device = logits.device
    n_boxes = max(1, sum(t.boxes.shape[0] for t in targets))

    cls_terms, l1_terms, giou_terms, bce_terms, dice_terms = [], [], [], [], []
    for b, target in enumerate(targets):
        if not target.present:
            continue
        q, t = hungarian_match(logits[b], boxes[b], target.boxes, weights.match)
        q, t = torch.from_numpy(q).to(device), torch.from_numpy(t).to(device)
        labels = torch.zeros_like(logits[b])
        labels[q] = 1.0
        cls_terms.append(sigmoid_focal_loss(logits[b], labels, weights.focal_alpha, weights.focal_gamma, "sum"))
        matched_boxes, gt_boxes = boxes[b, q], target.boxes[t].to(device)
        l1_terms.append(F.l1_loss(matched_boxes, gt_boxes, reduction="sum"))
        giou_terms.append(generalized_box_iou_loss(matched_boxes, gt_boxes, reduction="sum"))
        matched_masks, gt_masks = masks[b, q], target.masks[t].to(device)
        if gt_masks.shape[-2:] != matched_masks.shape[-2:]:
            raise ValueError(f"target masks {tuple(gt_masks.shape[-2:])} != predicted {tuple(matched_masks.shape[-2:])}")
        bce_terms.append(F.binary_cross_entropy_with_logits(matched_masks, gt_masks, reduction="none").mean((1, 2)).sum())
        dice_terms.append(dice_loss(matched_masks, gt_masks))

    def total(terms) -> torch.Tensor:
        return torch.stack(terms).sum() / n_boxes if terms else logits.sum() * 0.0

    present = torch.tensor([float(t.present) for t in targets], device=device)
    out = {
        "cls": weights.cls * total(cls_terms),
        "presence": weights.presence * F.binary_cross_entropy_with_logits(presence, present),
        "l1": weights.l1 * total(l1_terms),
        "giou": weights.giou * total(giou_terms),
        "mask_bce": weights.mask_bce * total(bce_terms),
        "dice": weights.dice * total(dice_terms),
    }
    out["total"] = sum(out.values())
    return out
