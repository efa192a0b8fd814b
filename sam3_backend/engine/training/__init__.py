"""Fine-tuning SAM 3's concept detector (``Sam3Model``) on a project's own labels.

Model side only: examples arrive as pixels + instance masks + concept indices
(``data.TrainingExample``); Label Studio JSON never reaches this package. The glue
(``jobs/train.py``) turns annotations into examples and versions into served models.

* ``data``      — examples, the deterministic train / held-out split
* ``synthetic`` — a generated data set of labelled shapes (tests, benchmarks)
* ``features``  — frozen vision + text features, computed once per image / concept
* ``weights``   — the trainable copy of the detector (full or LoRA), deltas, patching
* ``matcher``, ``losses`` — DETR-style Hungarian matching and SAM 3's losses
* ``loop``      — the training loop, one optimiser step per scheduler slot
* ``evaluate``  — COCO mask AP / AP50 with pycocotools
"""
