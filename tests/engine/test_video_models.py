"""Video models on the image model's weights; boxes from low-res masks; mask NMS."""

from __future__ import annotations

import shutil

import pytest
import torch

from sam3_backend.engine.video.boxes import boxes_from_logits, mask_nms
from sam3_backend.engine.video.models import build_video_models
from sam3_backend.errors import ModelLoadError


def test_video_models_share_the_image_models_weights(loaded_model):
    vm = build_video_models(loaded_model)
    assert vm.video.detector_model is loaded_model.detector
    assert vm.video.tracker_neck is loaded_model.tracker.vision_encoder.neck
    assert vm.tracker is vm.video.tracker_model
    image = dict(loaded_model.tracker.named_parameters())
    for name, param in vm.tracker.named_parameters():
        if name.startswith(("prompt_encoder.", "mask_decoder.", "no_memory_embedding")):
            assert param.data_ptr() == image[name].data_ptr(), name
    shared = {p.data_ptr() for p in [*loaded_model.detector.parameters(), *loaded_model.tracker.parameters()]}
    extra = [p for p in vm.video.parameters() if p.data_ptr() not in shared]
    assert sum(p.numel() for p in extra) == vm.extra_parameters > 0
    memory_parts = sum(p.numel() for n, p in vm.tracker.named_parameters() if n.startswith(("memory_", "mask_downsample")))
    assert vm.extra_parameters < 1.25 * memory_parts + 50_000  # only the memory path is new
    assert not [n for n, t in [*vm.video.named_parameters(), *vm.video.named_buffers()] if t.is_meta]
    assert vm.video.det_nms_thresh == 0.0 and vm.video.nms_iou == pytest.approx(0.1)


def test_memory_weights_come_from_the_checkpoint(loaded_model, tiny_checkpoint):
    from safetensors import safe_open

    vm = build_video_models(loaded_model)
    with safe_open(str(tiny_checkpoint / "model.safetensors"), "pt") as f:
        for name in ("memory_attention.layers.0.self_attn.q_proj.weight", "memory_encoder.projection.weight",
                     "occlusion_spatial_embedding_parameter"):
            torch.testing.assert_close(dict(vm.tracker.named_parameters())[name].detach(), f.get_tensor(f"tracker_model.{name}"))


def test_missing_memory_weights_refuse_to_load(loaded_model, tiny_checkpoint, tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["tracker_model.memory_encoder.projection.weight"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing keys"):
        build_video_models(replace(loaded_model, folder=broken))
    with pytest.raises(ModelLoadError, match="checkpoint folder"):
        build_video_models(replace(loaded_model, folder=None))


def _disc(h, w, cx, cy, r, inside=5.0, outside=-5.0):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.where((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r, inside, outside)


def test_boxes_from_low_res_logits():
    h = w = 32
    rect = torch.full((h, w), -5.0)
    rect[8:16, 4:20] = 5.0  # cells 4..19 wide, 8..15 high
    boxes, present = boxes_from_logits(torch.stack([rect, torch.full((h, w), -3.0), torch.full((h, w), 2.0)]))
    assert present.tolist() == [True, False, True]
    # +5 / -5 on neighbouring cells crosses zero half-way between their centres: on the cell edge
    torch.testing.assert_close(boxes[0], torch.tensor([4 / w, 8 / h, 20 / w, 16 / h]))
    assert boxes[1].tolist() == [0, 0, 0, 0] and boxes[2].tolist() == [0, 0, 1, 1]
    # an edge moves out smoothly (sub-cell) as the logit outside it rises towards zero
    edges = []
    for v in (-4.0, -1.0, -0.2):
        m = rect.clone()
        m[8:16, 3] = v
        edges.append(float(boxes_from_logits(m[None])[0][0, 0]) * w)
    assert 4 > edges[0] > edges[1] > edges[2] > 3.5
    with pytest.raises(ValueError):
        boxes_from_logits(rect)
    assert boxes_from_logits(torch.zeros(0, 4, 4))[0].shape == (0, 4)


def test_mask_nms_drops_duplicates_keeps_neighbours():
    a = _disc(32, 32, 10, 10, 5)
    a_dup = _disc(32, 32, 10.5, 10, 5)
    b = _disc(32, 32, 24, 24, 5)
    empty = torch.full((32, 32), -1.0)
    keep = mask_nms(torch.stack([a, a_dup, b, empty]), torch.tensor([0.8, 0.9, 0.5, 0.99]), 0.1)
    assert keep.tolist() == [False, True, True, False]  # the better duplicate wins; empty masks never
    assert mask_nms(torch.zeros(0, 4, 4), torch.zeros(0), 0.1).tolist() == []
