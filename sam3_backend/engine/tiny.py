"""Tiny randomly initialised SAM 3 checkpoints in the ``facebook/sam3`` layout.

The real weights are gated and no test machine can download them. These checkpoints have the
same file layout and key names (a ``Sam3VideoModel`` with ``detector_model.*``,
``tracker_model.*`` and ``tracker_neck.*``, plus processor and CLIP tokenizer files), so the
production loading path (``from_pretrained`` on a folder or an offline hub cache) runs unchanged.
Their predictions are meaningless; ``TEST_MODEL_MARKER`` in the config tells the engine to say so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TEST_MODEL_MARKER = "sam3_backend_test_model"

# GPT-2/CLIP byte-to-unicode table: printable stand-ins for all 256 bytes.
def _byte_symbols() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


# Ids of the special tokens in the vocabulary below: 2 * 256 bytes + 4 merges, then these two.
_BOS_ID, _EOS_ID = 516, 517


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A minimal CLIP BPE vocabulary: every byte, every byte + ``</w>``, a few merges."""
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = []
    for a, b in [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]:
        merges.append(f"{a} {b}")
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def tiny_video_config(image_size: int = 112):
    """Config of a ~3M-parameter SAM 3 (detector + tracker) with the real architecture's wiring.

    The ViT is 32 wide and 2 layers deep; every width the tracker sees is 128, because its
    memory path splits object pointers into 64-wide tokens (a 32-wide tracker segments images
    but crashes as soon as it tracks an object through a video).
    """
    from transformers import Sam3Config, Sam3VideoConfig
    from transformers.models.sam3.configuration_sam3 import (
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )
    from transformers.models.sam3_tracker_video.configuration_sam3_tracker_video import (
        Sam3TrackerVideoConfig,
        Sam3TrackerVideoMaskDecoderConfig,
        Sam3TrackerVideoPromptEncoderConfig,
    )

    patch, width = 14, 128
    if image_size % (patch * 4):
        raise ValueError(f"image_size must be a multiple of {patch * 4}")
    side = image_size // patch

    def vision():
        backbone = Sam3ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=image_size, patch_size=patch, window_size=4, global_attn_indexes=[1],
            pretrain_image_size=image_size,
        )
        return Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=width, scale_factors=[4.0, 2.0, 1.0, 0.5])

    def layer(cls, **extra):
        return cls(hidden_size=width, num_layers=1, num_attention_heads=4, intermediate_size=128, **extra)

    detector = Sam3Config(
        vision_config=vision(),
        text_config=dict(
            vocab_size=1000, hidden_size=32, intermediate_size=64, projection_dim=width, num_hidden_layers=1,
            num_attention_heads=4, max_position_embeddings=32, hidden_act="gelu",
            bos_token_id=_BOS_ID, eos_token_id=_EOS_ID, pad_token_id=_EOS_ID,
        ),
        geometry_encoder_config=layer(Sam3GeometryEncoderConfig),
        detr_encoder_config=layer(Sam3DETREncoderConfig),
        detr_decoder_config=layer(Sam3DETRDecoderConfig, num_queries=16),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=width, num_upsampling_stages=2, num_attention_heads=4),
    )
    tracker = Sam3TrackerVideoConfig(
        vision_config=vision(),
        prompt_encoder_config=Sam3TrackerVideoPromptEncoderConfig(hidden_size=width, image_size=image_size, patch_size=patch),
        mask_decoder_config=Sam3TrackerVideoMaskDecoderConfig(
            hidden_size=width, mlp_dim=128, num_hidden_layers=1, num_attention_heads=4, iou_head_hidden_dim=64
        ),
        memory_attention_hidden_size=width, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=128,
        memory_attention_rope_feat_sizes=[side, side],
        memory_encoder_hidden_size=width, memory_encoder_output_channels=64, mask_downsampler_embed_dim=width,
        memory_fuser_embed_dim=width, memory_fuser_intermediate_dim=128, memory_fuser_num_layers=1,
        image_size=image_size,
    )
    # The tracker's low-res masks are 4x the patch grid (288 at 1008 px, 32 at 112 px).
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * side)


def write_tiny_checkpoint(folder: str | Path, *, seed: int = 0, image_size: int = 112) -> Path:
    """Write a random-init SAM 3 checkpoint + processor + tokenizer into ``folder``; returns it."""
    import torch
    from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3VideoModel, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_video_config(image_size)
    setattr(config, TEST_MODEL_MARKER, True)
    model = Sam3VideoModel(config).eval()
    # Learned embeddings that transformers initialises to zero would hide mistakes in how they
    # are applied (a zero added anywhere is invisible): give them values, as trained weights have.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim and not param.any():
                param.normal_(std=0.02)
        # A random object-score head says "absent" or "present" by a coin flip (about 0 either
        # way) and video tracking blanks an absent object's mask: bias it to "present", so box
        # tracks in tests carry masks. Images never read this score.
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(2.0)
    model.save_pretrained(folder)
    # save_pretrained runs transformers' key conversion in reverse and writes the tracker as
    # ``tracker_model.tracker_model.*``; the published checkpoint has ``tracker_model.*``.
    # Rewrite the weights with the module's own key names, i.e. the facebook/sam3 layout.
    from safetensors.torch import save_file

    for stale in folder.glob("model*.safetensors*"):
        stale.unlink()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    scratch = folder / "_tokenizer_src"
    scratch.mkdir(exist_ok=True)
    vocab, merges = _write_tokenizer_files(scratch)
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=32)
    size = {"height": image_size, "width": image_size}
    # facebook/sam3 ships one processor config that serves the image, tracker and video processors.
    Sam3VideoProcessor(
        image_processor=Sam3ImageProcessor(size=size),
        video_processor=Sam2VideoVideoProcessor(size=size),
        tokenizer=tokenizer,
    ).save_pretrained(folder)
    shutil.rmtree(scratch)
    return folder


def install_in_hub_cache(checkpoint: str | Path, hub_cache: str | Path, repo_id: str = "facebook/sam3") -> Path:
    """Lay a checkpoint folder out as an offline Hugging Face hub cache entry for ``repo_id``.

    ``from_pretrained(repo_id)`` with ``HF_HUB_CACHE=hub_cache`` and ``HF_HUB_OFFLINE=1`` then
    resolves it exactly as it would the downloaded gated weights.
    """
    checkpoint, hub_cache = Path(checkpoint), Path(hub_cache)
    revision = "0" * 40
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.is_file():
            shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
