"""Shared helpers for the benchmarks: models, synthetic media, statistics, environment.

Models
------
* ``load_tiny(device, dtype)``: the project's tiny random checkpoint (``write_tiny_checkpoint``)
  through the production loader ``load_sam3``, as the tests use it.
* ``build_fullsize(device, dtype)``: a FULL-SIZE SAM 3 (default ``Sam3VideoConfig()``: 840M-parameter
  ``Sam3Model`` + ``Sam3TrackerModel`` sharing its ViT backbone, exactly as ``load_sam3`` wires
  them) with random weights, built in memory (the real weights are gated). Timing is what a
  benchmark needs from it; its masks are meaningless. The tokenizer is the tiny checkpoint's
  (token ids only matter for the text tower's embedding lookup, not for its cost).
* ``build_video(device, dtype, size="tiny"|"full")``: ``Sam3VideoModel`` + ``Sam3VideoProcessor``
  (the tiny one is the project's ``engine.tiny.tiny_video_config``, whose tracker can track).
* ``force_video_objects(model, k)``: random weights detect nothing (or everything), so the video
  model is made to track exactly ``k`` objects: each frame's detections are its ``k``
  highest-scoring queries, the hot-start heuristics that would drop unmatched tracks are off.
  The per-frame work (detector, tracker propagation with memory, association, memory encoding)
  is the real code path; only the decisions are pinned.

Everything here runs without network access (set ``HF_HUB_OFFLINE=1``; nothing is fetched).
"""

from __future__ import annotations

import atexit
import copy
import io
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FULLSIZE_VERSION = "sam3-fullsize-random"

# --------------------------------------------------------------------------- statistics


def summary(seconds) -> dict:
    """p50/p95/mean/min in milliseconds of a list of durations in seconds (NaN when empty)."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan"), "mean_ms": float("nan"), "min_ms": float("nan")}
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
    }


def fmt_ms(ms: float) -> str:
    if ms != ms:  # NaN
        return "–"
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 100:
        return f"{ms:.2f}"
    return f"{ms:,.0f}"


def fmt_num(x: float, digits: int = 2) -> str:
    if x != x:
        return "–"
    return f"{x:,.{digits}f}"


class Timer:
    """``with Timer() as t: ...`` then ``t.s``; synchronises CUDA when asked."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.s = 0.0

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.s = time.perf_counter() - self.t0


# --------------------------------------------------------------------------- environment


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict:
    """When and where: date, CPU, cores, GPU, torch/transformers versions."""
    import torch
    import transformers

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        info["cuda"] = torch.version.cuda
    return info


def env_line(info: dict | None = None) -> str:
    info = info or env_info()
    where = f"GPU {info['gpu']}" if info.get("gpu") else "no GPU"
    return (
        f"{info['date']}; CPU {info['cpu']} ({info['nproc']} cores, torch threads {info['cpu_threads']}); {where}; "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, numpy {info['numpy']}"
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process since start (or since ``reset_peak_rss``), MiB."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Peak RSS over a block by polling (fallback when the kernel counter cannot be reset)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self.kernel = reset_peak_rss()
        self.peak = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        if self.kernel:
            self.peak = max(self.peak, peak_rss_mb())


# --------------------------------------------------------------------------- synthetic media


def synthetic_image(width: int = 1920, height: int = 1080, seed: int = 0, shapes: int = 6) -> np.ndarray:
    """RGB uint8 (H, W, 3): a colour gradient, a few filled ellipses/rectangles/triangles and mild
    noise, so encoders see edges and JPEG has real work (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            60 + 120 * xx / width,
            60 + 120 * yy / height,
            np.full_like(xx, 90 + 60 * rng.random()),
        ],
        axis=-1,
    )
    img = base
    for _ in range(shapes):
        color = rng.integers(0, 256, 3).astype(np.float32)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.04, 0.18) * width, rng.uniform(0.04, 0.18) * height
        kind = rng.integers(0, 3)
        if kind == 0:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        elif kind == 1:
            inside = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        else:  # triangle pointing up
            inside = (yy <= cy + ry) & (yy >= cy - ry) & (np.abs(xx - cx) <= (yy - (cy - ry)) * rx / (2 * ry))
        img = np.where(inside[..., None], color, img)
    img = img + rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_clip(n_frames: int, width: int = 1920, height: int = 1080, seed: int = 0) -> list[np.ndarray]:
    """``n_frames`` frames of a scene whose shapes drift (a cheap stand-in for motion)."""
    base = synthetic_image(width, height, seed)
    frames = []
    for i in range(n_frames):
        frames.append(np.roll(base, shift=(3 * i, 5 * i), axis=(0, 1)))
    return frames


def image_bytes(pixels: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt.upper() == "JPEG" else {}
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# --------------------------------------------------------------------------- tiny model

_TINY_DIR: Path | None = None


def tiny_checkpoint() -> Path:
    """The project's tiny random checkpoint, written once per process into a temp dir."""
    global _TINY_DIR
    if _TINY_DIR is None:
        from sam3_backend.engine.tiny import write_tiny_checkpoint

        folder = Path(tempfile.mkdtemp(prefix="sam3-bench-tiny-"))
        atexit.register(shutil.rmtree, folder, True)
        _TINY_DIR = write_tiny_checkpoint(folder / "ckpt")
    return _TINY_DIR


def load_tiny(device: str = "cpu", dtype: str = "float32"):
    """``load_sam3`` on the tiny checkpoint: the production loading path, a 2M-parameter model."""
    from sam3_backend.engine.loading import ModelSource, load_sam3

    return load_sam3(ModelSource(str(tiny_checkpoint())), device, dtype)


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tiny_checkpoint()))


# --------------------------------------------------------------------------- full size


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[dtype]


def _tracker_on_backbone(tracker_config, backbone):
    """``Sam3TrackerModel(tracker_config)`` wired to ``backbone`` without building (and randomly
    initialising) a second 450M-parameter ViT first: the tracker is built with a one-layer
    backbone, which is then replaced; the config object is restored so the model reports the
    real architecture. Everything but the backbone is built exactly as the real config says."""
    from transformers import Sam3TrackerModel

    cfg = copy.deepcopy(tracker_config)
    vit = cfg.vision_config.backbone_config
    real_layers, real_global = vit.num_hidden_layers, list(vit.global_attn_indexes)
    vit.num_hidden_layers, vit.global_attn_indexes = 1, [0]
    tracker = Sam3TrackerModel(cfg)
    vit.num_hidden_layers, vit.global_attn_indexes = real_layers, real_global
    tracker.vision_encoder.backbone = backbone
    return tracker


def fullsize_processor(image_size: int = 1008):
    from transformers import Sam3ImageProcessor, Sam3Processor

    size = {"height": image_size, "width": image_size}
    return Sam3Processor(image_processor=Sam3ImageProcessor(size=size), tokenizer=_tokenizer())


def build_fullsize(device: str = "cpu", dtype="float32", *, seed: int = 0, attn_implementation: str | None = None):
    """A full-size random-init SAM 3 as a ``LoadedSam3`` (version ``sam3-fullsize-random``).

    Built directly on ``device`` (fast random init on a GPU), then cast to ``dtype``; the tracker
    shares the detector's backbone exactly as ``load_sam3`` does.
    """
    import torch
    from transformers import Sam3Model, Sam3VideoConfig

    from sam3_backend.engine.loading import LoadedSam3

    dev = torch.device(device)
    dt = _torch_dtype(dtype)
    torch.manual_seed(seed)
    cfg = Sam3VideoConfig()
    with dev:
        detector = Sam3Model(cfg.detector_config)
        tracker = _tracker_on_backbone(cfg.tracker_config, detector.vision_encoder.backbone)
    if attn_implementation:
        detector.set_attn_implementation(attn_implementation)
        tracker.set_attn_implementation(attn_implementation)
    detector.to(dev, dt).eval()
    tracker.to(dev, dt).eval()
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone  # still shared after the casts
    processor = fullsize_processor(int(cfg.detector_config.vision_config.backbone_config.image_size))
    image_size = int(processor.image_processor.size["height"])
    return LoadedSam3(detector, tracker, processor, dev, dt, FULLSIZE_VERSION, True, image_size)


# --------------------------------------------------------------------------- video


def video_processor(image_size: int):
    from transformers import Sam3ImageProcessor, Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    size = {"height": image_size, "width": image_size}
    return Sam3VideoProcessor(
        image_processor=Sam3ImageProcessor(size=size),
        video_processor=Sam2VideoVideoProcessor(size=size),
        tokenizer=_tokenizer(),
    )


def build_video(device: str = "cpu", dtype="float32", *, size: str = "tiny", seed: int = 0,
                attn_implementation: str | None = None):
    """(Sam3VideoModel, Sam3VideoProcessor) with random weights: ``size`` "tiny" (video-capable
    tiny config, 112 px) or "full" (default ``Sam3VideoConfig()``, 1008 px)."""
    import torch
    from transformers import Sam3VideoConfig, Sam3VideoModel

    from sam3_backend.engine.tiny import tiny_video_config

    dev = torch.device(device)
    torch.manual_seed(seed)
    cfg = tiny_video_config() if size == "tiny" else Sam3VideoConfig()
    with dev:
        model = Sam3VideoModel(cfg)
    if attn_implementation:
        model.set_attn_implementation(attn_implementation)
    model.to(dev, _torch_dtype(dtype)).eval()
    return model, video_processor(int(cfg.detector_config.vision_config.backbone_config.image_size))


def force_video_objects(model, k: int) -> None:
    """Make a random-weight ``Sam3VideoModel`` track exactly ``k`` objects per text prompt.

    Each frame the detector runs as usual; its ``k`` best queries become the detections (score
    0.9, above ``new_det_thresh``), so ``k`` tracks start on the first frame and
    ``max_num_objects`` keeps it at ``k``. Hot-start removal is off (``hotstart_delay=0``), so the
    tracks, which random masks never match, live to the end of the clip and outputs are not held
    back. Detection NMS is off (random masks would make it arbitrary).
    """
    import torch

    model.score_threshold_detection = -1.0
    model.det_nms_thresh = 0.0
    model.hotstart_delay = 0
    model.max_num_objects = k
    original = type(model).run_detection.__get__(model)

    def run_detection(inference_session, vision_embeds):
        out = original(inference_session=inference_session, vision_embeds=vision_embeds)
        for prompt_id, det in out.items():
            top = det["scores"].float().topk(min(k, det["scores"].numel())).indices
            out[prompt_id] = {
                "bbox": det["bbox"][top],
                "mask": det["mask"][top],
                "scores": torch.full((top.numel(),), 0.9, dtype=det["scores"].dtype, device=det["scores"].device),
            }
        return out

    model.run_detection = run_detection


def pin_video_masks(output) -> None:
    """Give every tracked object of one ``Sam3VideoModel`` output a disc-shaped low-res mask.

    Random weights give empty (all-negative) masks, which ``postprocess_outputs`` drops before
    its expensive part (upsampling every mask to the frame size and the non-overlap constraints
    between objects), so post-processing would be measured on nothing. Call this between the
    model and ``postprocess_outputs``: discs on a grid, neighbours overlapping a little. The
    model's own state is untouched (the dict holds views built for this output only).
    """
    import torch

    masks = output["obj_id_to_mask"]
    n = len(masks)
    for i, obj_id in enumerate(sorted(masks)):
        low = masks[obj_id]
        h, w = low.shape[-2:]
        cy = (0.3 + 0.4 * ((i // 3) % 2)) * h
        cx = (0.2 + 0.3 * (i % 3)) * w
        yy = torch.arange(h, device=low.device, dtype=torch.float32)[:, None]
        xx = torch.arange(w, device=low.device, dtype=torch.float32)[None, :]
        inside = ((yy - cy) / (0.22 * h)) ** 2 + ((xx - cx) / (0.18 * w)) ** 2 <= 1
        masks[obj_id] = torch.where(inside, 5.0, -5.0).to(low.dtype).reshape(low.shape)
    assert len(masks) == n
