import json
import shutil

import pytest
import torch

from sam3_backend.engine.loading import ModelSource, load_sam3
from sam3_backend.errors import ModelLoadError


def test_hub_id_loads_from_offline_cache_and_says_it_is_a_test_model(loaded_model):
    assert loaded_model.is_test_model
    assert loaded_model.version.startswith("sam3-test-")
    assert not loaded_model.detector.training and not loaded_model.tracker.training
    # one backbone in memory, shared by both heads
    assert loaded_model.tracker.vision_encoder.backbone is loaded_model.detector.vision_encoder.backbone


def test_tracker_weights_come_from_the_checkpoint_not_random_init(tiny_checkpoint, loaded_model):
    from safetensors.torch import load_file

    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    w = state["tracker_model.mask_decoder.iou_prediction_head.proj_out.weight"]
    assert torch.equal(loaded_model.tracker.mask_decoder.iou_prediction_head.proj_out.weight, w)
    neck = state["tracker_neck.fpn_layers.0.proj1.weight"]
    assert torch.equal(loaded_model.tracker.vision_encoder.neck.fpn_layers[0].proj1.weight, neck)


def test_local_folder_loads_and_version_is_stable(tiny_checkpoint, loaded_model):
    again = load_sam3(ModelSource(str(tiny_checkpoint)), device="cpu")
    assert again.version == loaded_model.version


def test_missing_weights_fail_loudly(tmp_path):
    with pytest.raises(ModelLoadError, match="tiny-model"):
        load_sam3(ModelSource("facebook/not-a-cached-repo"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_sam3(ModelSource(str(tmp_path / "empty")), device="cpu")


def test_checkpoint_with_missing_keys_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    state = load_file(str(broken / "model.safetensors"))
    dropped = [k for k in state if k.startswith("tracker_model.mask_decoder.")]
    assert dropped
    for k in dropped:
        del state[k]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing keys"):
        load_sam3(ModelSource(str(broken)), device="cpu")


def test_bad_device_and_dtype_are_explained(tiny_checkpoint):
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            load_sam3(ModelSource(str(tiny_checkpoint)), device="cuda")
    with pytest.raises(ModelLoadError, match="SAM3_DTYPE"):
        load_sam3(ModelSource(str(tiny_checkpoint)), device="cpu", dtype="int3")


def test_config_marks_test_model(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "sam3_video"
    assert config["sam3_backend_test_model"] is True


def test_tiny_checkpoint_uses_the_published_key_layout(tiny_checkpoint):
    """facebook/sam3 stores detector_model.*, tracker_model.* and tracker_neck.* — one prefix each."""
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"detector_model", "tracker_model", "tracker_neck"}
    assert not [k for k in keys if k.startswith("tracker_model.tracker_model.")]
    assert "detector_model.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight" in keys
    assert any(k.startswith("tracker_model.mask_decoder.conv_s0.") for k in keys)


def test_tiny_checkpoint_runs_the_video_models(tiny_checkpoint):
    """The test model must serve the future video path too: the text-prompted video model
    propagates through a clip from the same folder (a 32-wide tracker used to crash here)."""
    import numpy as np
    from transformers import Sam3VideoModel, Sam3VideoProcessor

    model = Sam3VideoModel.from_pretrained(str(tiny_checkpoint)).eval()
    # random weights score low: accept every detection so objects are actually tracked
    model.config.score_threshold_detection = model.config.new_det_thresh = 0.0
    model.score_threshold_detection = model.new_det_thresh = 0.0
    processor = Sam3VideoProcessor.from_pretrained(str(tiny_checkpoint))
    frames = [np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8) for i in range(3)]
    session = processor.init_video_session(video=frames, inference_device="cpu")
    session = processor.add_text_prompt(inference_session=session, text="cat")
    seen, tracked = [], []
    with torch.inference_mode():
        for out in model.propagate_in_video_iterator(inference_session=session, max_frame_num_to_track=3):
            post = processor.postprocess_outputs(session, out)
            seen.append(out.frame_idx)
            tracked.append(len(post["object_ids"]))
    assert seen == [0, 1, 2]
    assert max(tracked) > 0, "no object was tracked: the memory path was not exercised"
