"""Fine-tuning pieces on the tiny model: split, matcher, losses, trainable copy, deltas, versions,
serving switches, scheduling. (That training actually learns: test_training_learns.py.)"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch

from helpers import torch_threads
from sam3_backend.engine.image import Sam3ImageEngine
from sam3_backend.engine.scheduler import ModelScheduler, Priority
from sam3_backend.engine.training.data import TrainingExample, fit_example, split_examples
from sam3_backend.engine.training.evaluate import coco_mask_metrics
from sam3_backend.engine.training.features import FrozenFeatures
from sam3_backend.engine.training.loop import TrainConfig, train_detector
from sam3_backend.engine.training.losses import PairTarget, detection_loss
from sam3_backend.engine.training.matcher import hungarian_match
from sam3_backend.engine.training.run import FineTuneSettings, TrainingDataError, decide, fine_tune
from sam3_backend.engine.training.synthetic import synthetic_shapes
from sam3_backend.engine.training.weights import delta_tensors, patched_detector, trainable_copy
from sam3_backend.engine.versions import ServedModels, VersionError, VersionStore
from sam3_backend.types import GeometryPrompt, Point



@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def shapes():
    return synthetic_shapes(12, size=112, seed=3)


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- data


def test_split_is_deterministic_stable_and_never_empty(shapes):
    train, held = split_examples(shapes.examples, 0.25, seed=0)
    assert train and held and len(train) + len(held) == len(shapes.examples)
    assert [e.key for e in split_examples(shapes.examples[::-1], 0.25, seed=0)[1]] == sorted(
        (e.key for e in held), key=[e.key for e in shapes.examples[::-1]].index)
    more = synthetic_shapes(30, size=112, seed=3).examples  # a superset: nothing held out moves
    held_more = {e.key for e in split_examples(more, 0.25, seed=0)[1]}
    assert {e.key for e in held} <= held_more
    two = shapes.examples[:2]
    assert [len(s) for s in split_examples(two, 0.01)] == [1, 1] == [len(s) for s in split_examples(two, 0.99)]


def test_fit_example_scales_masks_and_renames_the_image():
    ex = synthetic_shapes(1, size=224, seed=1).examples[0]
    small = fit_example(ex, 112)
    assert small.image.pixels.shape == (112, 112, 3) and small.masks.shape[1:] == (112, 112)
    assert small.image.key != ex.image.key and small.key == ex.key
    for big, little in zip(ex.masks, small.masks):
        assert abs(little.sum() * 4 - big.sum()) <= 0.1 * big.sum()
    assert fit_example(ex, 500) is ex


# ---------------------------------------------------------------------------------------- matcher, losses


def test_hungarian_match_finds_the_obvious_assignment():
    gt = torch.tensor([[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]])
    boxes = torch.tensor([[0.0, 0.0, 0.05, 0.05], [0.1, 0.1, 0.3, 0.31], [0.5, 0.5, 0.6, 0.6], [0.6, 0.6, 0.9, 0.88]])
    q, t = hungarian_match(torch.zeros(4), boxes, gt)
    assert dict(zip(t.tolist(), q.tolist())) == {0: 3, 1: 1}
    assert hungarian_match(torch.zeros(4), boxes, torch.zeros(0, 4))[0].size == 0


class _Out:
    def __init__(self, logits, boxes, masks, presence):
        self.pred_logits, self.pred_boxes, self.pred_masks, self.presence_logits = logits, boxes, masks, presence


def test_losses_reward_the_right_answer():
    gt_box = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    gt_mask = torch.zeros(1, 8, 8)
    gt_mask[0, 2:6, 2:6] = 1
    target = PairTarget(gt_box, gt_mask)
    good = _Out(torch.tensor([[8.0, -8.0]]), torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.1, 0.1]]]),
                (gt_mask * 16 - 8).expand(2, 8, 8)[None].clone(), torch.tensor([[8.0]]))
    bad = _Out(torch.tensor([[-8.0, -8.0]]), torch.tensor([[[0.0, 0.0, 0.1, 0.1], [0.8, 0.8, 0.9, 0.9]]]),
               (8 - gt_mask * 16).expand(2, 8, 8)[None].clone(), torch.tensor([[-8.0]]))
    lg, lb = detection_loss(good, [target]), detection_loss(bad, [target])
    for k in ("cls", "presence", "l1", "giou", "mask_bce", "dice", "total"):
        assert lg[k] < lb[k], k
    absent = detection_loss(good, [PairTarget(torch.zeros(0, 4), torch.zeros(0, 8, 8))])
    assert absent["presence"] > 1.0 and all(absent[k] == 0 for k in ("cls", "l1", "giou", "mask_bce", "dice"))


# ---------------------------------------------------------------------------------------- weights


def test_training_never_touches_the_served_detector_and_deltas_round_trip(loaded_model, shapes):
    engine = Sam3ImageEngine(loaded_model)
    before = state(loaded_model.detector)
    features = FrozenFeatures(loaded_model, engine.scheduler)
    features.add_images([e.image for e in shapes.examples])
    result = train_detector(loaded_model, engine.scheduler, features, shapes.examples, shapes.concepts,
                            TrainConfig(steps=3, lr=1e-3))
    assert same_state(before, state(loaded_model.detector))  # the served model, bit for bit
    assert loaded_model.detector.training is False and not loaded_model.detector.vision_encoder.training
    delta = delta_tensors(loaded_model.detector, result.trained.merged_modules())
    assert delta and all(k.split(".")[0] in ("detr_encoder", "detr_decoder", "mask_decoder", "dot_product_scoring")
                         for k in delta)  # geometry encoder unused by text prompts: unchanged, not stored
    patched = patched_detector(loaded_model.detector, delta)
    patched_state = patched.state_dict()
    for k, v in delta.items():
        assert torch.equal(patched_state[k], v.to(patched_state[k].dtype))
    assert patched.vision_encoder is loaded_model.detector.vision_encoder  # frozen parts shared
    assert same_state(before, state(loaded_model.detector))
    with pytest.raises(ValueError, match="does not have"):
        patched_detector(loaded_model.detector, {"nope.weight": torch.zeros(1)})
    key = next(iter(delta))
    with pytest.raises(ValueError, match="shape"):
        patched_detector(loaded_model.detector, {key: torch.zeros(3, 3, 3)})


def test_lora_trains_few_parameters_and_merges_to_a_plain_delta(loaded_model, shapes):
    full, lora = trainable_copy(loaded_model.detector, "full"), trainable_copy(loaded_model.detector, "lora", lora_rank=4)
    n_full = sum(p.numel() for p in full.parameters())
    n_lora = sum(p.numel() for p in lora.parameters())
    assert 0 < n_lora < n_full / 3
    engine = Sam3ImageEngine(loaded_model)
    features = FrozenFeatures(loaded_model, engine.scheduler)
    features.add_images([e.image for e in shapes.examples])
    result = train_detector(loaded_model, engine.scheduler, features, shapes.examples, shapes.concepts,
                            TrainConfig(mode="lora", steps=3, lr=1e-2, lora_rank=4))
    delta = delta_tensors(loaded_model.detector, result.trained.merged_modules())
    assert delta and all("lora" not in k for k in delta)
    patched_detector(loaded_model.detector, delta)


# ---------------------------------------------------------------------------------------- scheduling


class RecordingScheduler(ModelScheduler):
    def __init__(self):
        super().__init__()
        self.grants: list[Priority] = []

    def acquire(self, priority=Priority.BATCH, timeout=None):
        super().acquire(priority, timeout)
        self.grants.append(priority)


def test_each_training_step_is_one_background_slot_and_clicks_go_between(loaded_model, shapes):
    scheduler = RecordingScheduler()
    engine = Sam3ImageEngine(loaded_model, scheduler=scheduler)
    features = FrozenFeatures(loaded_model, scheduler)
    features.add_images([e.image for e in shapes.examples])
    scheduler.grants.clear()
    steps, clicked_at = 20, []

    def on_step(info):
        if info.step == 5:
            clicker.start()  # a click arrives while training runs

    def click():
        engine.segment_objects(shapes.examples[0].image, [GeometryPrompt((Point(20, 20),))])
        clicked_at.append(scheduler.grants.count(Priority.BACKGROUND))

    clicker = threading.Thread(target=click)
    train_detector(loaded_model, scheduler, features, shapes.examples, shapes.concepts,
                   TrainConfig(steps=steps, lr=1e-4), on_step)
    clicker.join()
    background = scheduler.grants.count(Priority.BACKGROUND)
    assert background == steps + 1  # one per step, plus the text features once
    assert Priority.INTERACTIVE in scheduler.grants
    assert clicked_at[0] < background  # the click did not wait for the end of training


# ---------------------------------------------------------------------------------------- evaluation


def test_coco_metrics_perfect_and_empty(shapes):
    ex = shapes.examples[:3]
    perfect = [[(int(c), 0.9, m) for m, c in zip(e.masks, e.concepts)] for e in ex]
    m = coco_mask_metrics(ex, shapes.concepts, perfect)
    assert m.ap == pytest.approx(1.0) and m.ap50 == pytest.approx(1.0)
    assert coco_mask_metrics(ex, shapes.concepts, [[] for _ in ex]).ap50 == 0.0
    wrong = [[(1 - int(c), 0.9, m) for m, c in zip(e.masks, e.concepts)] for e in ex]  # right place, wrong concept
    assert coco_mask_metrics(ex, shapes.concepts, wrong).ap50 == 0.0


def test_promotion_rule():
    from sam3_backend.engine.training.evaluate import Metrics

    new, old = Metrics(0.30, 0.50), Metrics(0.28, 0.40)
    assert decide(new, old, "AP", 0.01, "base")[0] is True
    promoted, reason = decide(new, old, "AP", 0.05, "base")
    assert not promoted and "does not beat" in reason
    assert decide(new, old, "AP50", 0.05, "base")[0] is True
    assert decide(Metrics(None, None), old, "AP", 0.0, "base")[0] is False


# ---------------------------------------------------------------------------------------- versions


def _save(store, scope="project-1", base="sam3-test-x", value=1.0):
    return store.save(scope, {"detr_decoder.w": torch.full((2,), value)}, {"base_version": base, "metrics": {}})


def test_versions_save_list_serve_rollback(tmp_path):
    store = VersionStore(tmp_path / "versions")
    v1, v2 = _save(store), _save(store, value=2.0)
    assert (v1.id, v2.id) == ("project-1-v1", "project-1-v2")
    assert [v.id for v in store.list()] == ["project-1-v1", "project-1-v2"]
    assert store.served("project-1") is None
    store.set_served("project-1", v2.id, reason="test", base_version="sam3-test-x")
    assert store.served("project-1") == v2.id
    assert torch.equal(store.load_delta(v2.id, "sam3-test-x")["detr_decoder.w"], torch.full((2,), 2.0))
    store.set_served("project-1", v1.id, reason="rollback")
    store.set_served("project-1", None, reason="rollback")
    assert store.served("project-1") is None
    history = [json.loads(line)["version"] for line in (tmp_path / "versions/project-1/history.jsonl").read_text().splitlines()]
    assert history == [v2.id, v1.id, None]
    with pytest.raises(VersionError):
        store.load_delta(v1.id, "another-base")
    with pytest.raises(VersionError):
        store.set_served("project-1", v1.id, reason="x", base_version="another-base")
    with pytest.raises(VersionError):
        store.set_served("project-2", v1.id, reason="x")
    with pytest.raises(VersionError):
        store.get("project-1-v9")
    with pytest.raises(VersionError):
        store.scope_of("../../etc")


def test_a_crash_while_saving_leaves_no_version(tmp_path, monkeypatch):
    store = VersionStore(tmp_path / "versions")
    _save(store)
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("power cut")))
    with pytest.raises(KeyboardInterrupt):
        _save(store)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "versions/project-1").iterdir()] == ["project-1-v1"]


def test_a_crash_while_switching_keeps_the_old_pointer(tmp_path, monkeypatch):
    store = VersionStore(tmp_path / "versions")
    v1, v2 = _save(store), _save(store)
    store.set_served("project-1", v1.id, reason="x")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("power cut")))
    with pytest.raises(KeyboardInterrupt):
        store.set_served("project-1", v2.id, reason="x")
    monkeypatch.undo()
    assert store.served("project-1") == v1.id


def test_only_safetensors_are_loaded(tmp_path):
    store = VersionStore(tmp_path / "versions")
    v = _save(store)
    torch.save({"detr_decoder.w": torch.zeros(2)}, v.path / "weights.safetensors")  # a pickle in disguise
    with pytest.raises(Exception) as info:
        store.load_delta(v.id)
    assert not isinstance(info.value, AssertionError)


def test_served_models_follow_the_pointer_across_processes(loaded_model, tmp_path, shapes):
    base = Sam3ImageEngine(loaded_model)
    root = tmp_path / "versions"
    writer, reader = VersionStore(root), ServedModels(VersionStore(root))  # reader: another worker
    assert reader.engine_for("project-1", base) is base
    decoder = loaded_model.detector.detr_decoder
    key = next(k for k, v in decoder.state_dict().items() if v.is_floating_point())
    delta = {f"detr_decoder.{key}": decoder.state_dict()[key].float() + 1.0}
    v = writer.save("project-1", delta, {"base_version": loaded_model.version})
    writer.set_served("project-1", v.id, reason="test", base_version=loaded_model.version)
    served = reader.engine_for("project-1", base)
    assert served is not base and served.model_version == f"{loaded_model.version}+{v.id}"
    assert served.scheduler is base.scheduler and served.features is base.features
    assert reader.engine_for("project-1", base) is served  # unchanged pointer: same engine, no reload
    assert reader.engine_for("project-2", base) is base
    # the tracker and backbone caches are shared between base and fine-tuned versions
    base.segment_objects(shapes.examples[0].image, [GeometryPrompt((Point(10, 10),))])
    calls = base.stats.vision_encoder_calls
    served.segment_objects(shapes.examples[0].image, [GeometryPrompt((Point(10, 10),))])
    assert base.stats.vision_encoder_calls == calls
    writer.set_served("project-1", None, reason="rollback")
    assert reader.engine_for("project-1", base) is base
    # a broken version never takes serving down: the base model answers, the error is kept
    (v.path / "weights.safetensors").write_bytes(b"garbage")
    writer.set_served("project-1", v.id, reason="test")
    assert reader.engine_for("project-1", base) is base and reader.status("project-1")["error"]


# ---------------------------------------------------------------------------------------- one run


def test_fine_tune_not_promoted_keeps_the_version_unserved(loaded_model, tmp_path, shapes):
    engine = Sam3ImageEngine(loaded_model)
    store = VersionStore(tmp_path / "versions")
    stages = []
    settings = FineTuneSettings(train=TrainConfig(steps=4, lr=1e-3), min_images=4, margin=1.01)
    out = fine_tune(engine, engine, None, shapes, scope="project-7", store=store, settings=settings,
                    progress=lambda stage, done, total, extra: stages.append(stage))
    assert not out.promoted and "does not beat" in out.reason
    assert store.served("project-7") is None
    report = json.loads((out.version.path / "report.json").read_text())
    assert report["promotion"]["promoted"] is False and len(report["loss_curve"]) == 4
    assert report["metrics"]["base"]["AP"] is not None and report["data"]["held_out_images"] >= 1
    assert (out.version.path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert stages[0] == "encoding" and "training" in stages and stages[-1] == "evaluating new version"
    with pytest.raises(TrainingDataError, match="at least 20"):
        fine_tune(engine, engine, None, shapes, scope="project-7", store=store,
                  settings=FineTuneSettings(min_images=20))


def test_examples_must_match_their_image():
    ex = synthetic_shapes(1).examples[0]
    with pytest.raises(ValueError):
        TrainingExample(ex.image, ex.masks[:, :10], ex.concepts, "k")
    with pytest.raises(ValueError):
        TrainingExample(ex.image, ex.masks, np.zeros(ex.n_instances + 1, np.int64), "k")


def test_frozen_features_spill_to_the_cpu_beyond_the_device_budget(loaded_model, shapes):
    from types import SimpleNamespace

    gpu_model = SimpleNamespace(device=torch.device("cuda"))  # only the placement rule is exercised
    features = FrozenFeatures(gpu_model, ModelScheduler(), device_budget_bytes=100)
    assert [features._where(60).type, features._where(60).type, features._where(40).type] == ["cuda", "cpu", "cuda"]
    assert FrozenFeatures(gpu_model, ModelScheduler(), store_device="cpu")._where(1).type == "cpu"
    engine = Sam3ImageEngine(loaded_model)
    features = FrozenFeatures(loaded_model, engine.scheduler)
    features.add_images([e.image for e in shapes.examples[:2]])
    vision = features.vision([e.image.key for e in shapes.examples[:2]] * 2)  # repeats allowed
    assert vision.fpn_hidden_states[0].shape[0] == 4
