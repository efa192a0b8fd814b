"""Hungarian matching of SAM 3's queries to ground-truth instances (one image × concept pair).

Cost, as in DETR / SAM 3's matcher: classification (the focal-loss cost on the query's logit),
box L1 and negative generalised IoU, weighted. Boxes are normalised XYXY in [0, 1].
Solved with ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou


@dataclass(frozen=True)
class MatchCosts:
    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor,
                    costs: MatchCosts = MatchCosts()) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, target indices) of the optimal one-to-one assignment.

    logits: (Q,) query logits; boxes: (Q, 4) predicted boxes; gt_boxes: (N, 4). Returns two int64
    arrays of length min(Q, N); empty when N == 0.
    """
    if gt_boxes.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    prob = logits.float().sigmoid()[:, None]
    a, g = costs.focal_alpha, costs.focal_gamma
    neg = (1 - a) * prob.pow(g) * -(1 - prob + 1e-8).log()
    pos = a * (1 - prob).pow(g) * -(prob + 1e-8).log()
    cost_cls = (pos - neg).expand(-1, gt_boxes.shape[0])
    pred, gt = boxes.float(), gt_boxes.float()
    cost_l1 = torch.cdist(pred, gt, p=1)
    cost_giou = -generalized_box_iou(pred, gt)
    total = costs.cls * cost_cls + costs.l1 * cost_l1 + costs.giou * cost_giou
    rows, cols = linear_sum_assignment(total.cpu().numpy())
    return rows.astype(np.int64), cols.astype(np.int64)
