"""COCO mask AP and AP50 of a detector on held-out examples (pycocotools ``COCOeval``).

Predictions come from the serving path itself (``Sam3ImageEngine.segment_concepts`` on an engine
whose detector is the one evaluated), so the figures describe exactly what would be served: every
query above ``score_floor``, masks at the example's size, score = query × presence probability.
Each concept is a COCO category; every (image, concept) pair counts, so detections of a concept
on an image without it are false positives.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ...types import ConceptPrompt
from ..scheduler import Priority
from .data import TrainingExample


@dataclass(frozen=True)
class Metrics:
    """AP: COCO mask AP@[.5:.95]; AP50: at IoU 0.5; None when there was nothing to score."""

    ap: float | None
    ap50: float | None
    per_concept_ap50: dict[str, float | None] = field(default_factory=dict)
    images: int = 0
    instances: int = 0

    def as_dict(self) -> dict:
        return {"AP": self.ap, "AP50": self.ap50, "per_concept_AP50": self.per_concept_ap50,
                "images": self.images, "instances": self.instances}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_mask_metrics(examples: Sequence[TrainingExample], concepts: Sequence[str],
                      detections: Sequence[Sequence[tuple[int, float, np.ndarray]]]) -> Metrics:
    """Metrics from per-example detections: (concept index, score, (H, W) bool mask) each."""
    images, annotations = [], []
    for i, ex in enumerate(examples):
        images.append({"id": i + 1, "width": ex.image.width, "height": ex.image.height})
        for mask, concept in zip(ex.masks, ex.concepts.tolist()):
            rle = _rle(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": concept + 1,
                                "segmentation": rle, "area": float(mask.sum()), "iscrowd": 0,
                                "bbox": list(mask_utils.toBbox(rle))})
    if not annotations:
        return Metrics(None, None, {c: None for c in concepts}, len(examples), 0)
    results = [
        {"image_id": i + 1, "category_id": concept + 1, "segmentation": _rle(mask), "score": float(score)}
        for i, found in enumerate(detections) for concept, score, mask in found
    ]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": name} for c, name in enumerate(concepts)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return Metrics(0.0, 0.0, {c: (0.0 if _has(annotations, k) else None) for k, c in enumerate(concepts)},
                           len(examples), len(annotations))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (IoU thresholds, recall, categories, areas, max dets)
    per_concept = {}
    for k, name in enumerate(concepts):
        p = precision[0, :, k, 0, -1]
        per_concept[name] = float(p[p > -1].mean()) if (p > -1).any() else None
    ap, ap50 = float(ev.stats[0]), float(ev.stats[1])
    return Metrics(ap if ap >= 0 else None, ap50 if ap50 >= 0 else None, per_concept, len(examples), len(annotations))


def _has(annotations: list[dict], concept: int) -> bool:
    return any(a["category_id"] == concept + 1 for a in annotations)


def evaluate_engine(engine, examples: Sequence[TrainingExample], concepts: Sequence[str], *,
                    batch_size: int = 4, max_instances: int = 100, score_floor: float = 0.0,
                    priority: Priority = Priority.BACKGROUND) -> Metrics:
    """``coco_mask_metrics`` of ``engine``'s concept predictions on ``examples``."""
    prompts = [ConceptPrompt(c) for c in concepts]
    found = engine.segment_concepts([ex.image for ex in examples], prompts, threshold=score_floor,
                                    max_instances=max_instances, batch_size=batch_size, priority=priority)
    detections = [[(inst.prompt_index, inst.score, inst.mask) for inst in per_image] for per_image in found]
    return coco_mask_metrics(examples, concepts, detections)
