"""The training loop: SAM 3's concept detector on a project's examples, encoders frozen.

One step = one batch of image × concept pairs through the trainable detector copy, the losses,
backward and an optimiser step, all inside ONE ``BACKGROUND`` slot of the shared model scheduler:
a click or a prelabel waiting for the model goes before the next step, so training only ever
delays them by one step. The served detector is never modified (see ``weights``).

Pairs: every (image, concept) pair where the concept is present, plus as many absent pairs
(``negatives_per_positive``) drawn afresh each epoch, so the presence head learns "not here" too.
Seeded: the same data and config give the same steps (bit-identical on CPU).
On CUDA the trainable copy keeps float32 master weights and runs under bf16 autocast.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from ..image import detector_forward
from ..loading import LoadedSam3
from ..scheduler import ModelScheduler, Priority
from .data import TrainingExample
from .features import FrozenFeatures
from .losses import LossWeights, PairTarget, detection_loss
from .weights import TrainableDetector, trainable_copy

log = logging.getLogger(__name__)

DEFAULT_LR = {"full": 1e-4, "lora": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``lr`` None: ``DEFAULT_LR[mode]``. ``batch_size`` counts image × concept pairs."""

    mode: str = "full"
    steps: int = 500
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_steps: int = 20
    seed: int = 0
    lora_rank: int = 8
    negatives_per_positive: float = 1.0
    loss: LossWeights = field(default_factory=LossWeights)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["lr"] = self.learning_rate
        return out


@dataclass
class StepInfo:
    step: int  # 1-based
    total: int
    loss: float
    terms: dict[str, float]
    seconds: float  # wall time of this step inside its slot


@dataclass
class TrainResult:
    trained: TrainableDetector
    losses: list[float]  # total loss per step
    terms: dict[str, list[float]]  # each weighted term per step
    seconds: float
    pairs: int  # distinct positive pairs in the training split


class PairTargets:
    """Ground truth per (example, concept), built once at the model's mask resolution."""

    def __init__(self, examples: Sequence[TrainingExample], n_concepts: int, mask_size: int, device):
        self.by_pair: dict[tuple[int, int], PairTarget] = {}
        empty = PairTarget(torch.zeros(0, 4, device=device), torch.zeros(0, mask_size, mask_size, device=device))
        for i, ex in enumerate(examples):
            boxes = ex.boxes_xyxy() / np.array([ex.image.width, ex.image.height] * 2, np.float32)
            for c in range(n_concepts):
                idx = np.flatnonzero(ex.concepts == c)
                idx = [j for j in idx if ex.masks[j].any()]
                if not idx:
                    self.by_pair[(i, c)] = empty
                    continue
                small = np.stack([cv2.resize(ex.masks[j].astype(np.float32), (mask_size, mask_size),
                                             interpolation=cv2.INTER_AREA) for j in idx])
                self.by_pair[(i, c)] = PairTarget(torch.from_numpy(boxes[idx]).to(device),
                                                  torch.from_numpy(small).to(device))

    def positives(self) -> list[tuple[int, int]]:
        return [p for p, t in self.by_pair.items() if t.present]

    def negatives(self) -> list[tuple[int, int]]:
        return [p for p, t in self.by_pair.items() if not t.present]


def _batches(targets: PairTargets, config: TrainConfig, rng: np.random.Generator):
    """Endless batches of pairs: each epoch all positives plus freshly drawn negatives, shuffled."""
    positives, negatives = targets.positives(), targets.negatives()
    n_neg = min(len(negatives), math.ceil(config.negatives_per_positive * len(positives)))
    while True:
        chosen = list(positives)
        if n_neg:
            chosen += [negatives[k] for k in rng.choice(len(negatives), n_neg, replace=False)]
        order = rng.permutation(len(chosen))
        for start in range(0, len(order) - config.batch_size + 1 if len(order) >= config.batch_size else 1,
                           config.batch_size):
            yield [chosen[k] for k in order[start : start + config.batch_size]]


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def mask_resolution(model: LoadedSam3) -> int:
    """Side of SAM 3's predicted masks: the first FPN level (288 at 1008 px input)."""
    vision = model.detector.config.vision_config
    side = model.image_size // vision.backbone_config.patch_size
    return int(round(side * vision.scale_factors[0]))


def train_detector(model: LoadedSam3, scheduler: ModelScheduler, features: FrozenFeatures,
                   examples: Sequence[TrainingExample], concepts: Sequence[str], config: TrainConfig,
                   on_step: Callable[[StepInfo], None] | None = None) -> TrainResult:
    """Train a copy of ``model.detector`` on ``examples``; returns it with the loss curve.

    ``features`` must hold every example's image and every concept (``add_images``/``add_texts``).
    ``on_step`` is called after each step, outside the model slot (it may raise to stop training,
    e.g. on cancellation; the exception propagates).
    """
    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = model.device
    targets = PairTargets(examples, len(concepts), mask_resolution(model), device)
    if not targets.positives():
        raise ValueError("the training examples have no instances")
    trained = trainable_copy(model.detector, config.mode, lora_rank=config.lora_rank)
    params = trained.parameters()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    autocast = device.type == "cuda"
    features.add_texts(concepts)

    losses: list[float] = []
    terms: dict[str, list[float]] = {}
    started = time.perf_counter()
    batches = _batches(targets, config, rng)
    trained.set_training(True)
    for step in range(1, config.steps + 1):
        pairs = next(batches)
        with scheduler.slot(Priority.BACKGROUND):
            t0 = time.perf_counter()
            vision = features.vision([examples[i].image.key for i, _ in pairs])
            text, text_mask = features.text([concepts[c] for _, c in pairs])
            if not autocast and vision.fpn_hidden_states[0].dtype != torch.float32:
                vision = type(vision)(last_hidden_state=None,
                                      fpn_hidden_states=tuple(f.float() for f in vision.fpn_hidden_states),
                                      fpn_position_encoding=tuple(p.float() for p in vision.fpn_position_encoding))
                text = text.float()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                outputs = detector_forward(trained.detector, vision, text, text_mask, {})
            parts = detection_loss(outputs, [targets.by_pair[p] for p in pairs], config.loss)
            optimizer.zero_grad(set_to_none=True)
            parts["total"].backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            values = {k: float(v.detach()) for k, v in parts.items()}
            seconds = time.perf_counter() - t0
        if not math.isfinite(values["total"]):
            raise FloatingPointError(f"the training loss became {values['total']} at step {step}; lower the learning rate")
        losses.append(values["total"])
        for k, v in values.items():
            if k != "total":
                terms.setdefault(k, []).append(v)
        if on_step is not None:
            on_step(StepInfo(step, config.steps, values["total"], values, seconds))
    trained.set_training(False)
    return TrainResult(trained, losses, terms, time.perf_counter() - started, len(targets.positives()))
