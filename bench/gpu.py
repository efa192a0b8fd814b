"""SAM 3 on one GPU: interactive, text prompt, prelabel and video figures in one unattended run.

    bash bench/run_gpu.sh --out DIR [--record] [--compile] [--attention sdpa,eager] [--budget 540]
    python bench/gpu.py --smoke --out DIR        # same code paths, tiny model on CPU, < 60 s

Full-size SAM 3 with random weights (the real ones are gated; timing does not depend on them),
built in GPU memory from the default configs (``bench/_models.py``), no network needed.

Sections (each guarded by the time budget; one that would not fit is skipped with a note):

* ``interactive``: ``Sam3ImageEngine.segment_objects`` with one click on a 1080p image. Cold =
  new image (preprocess + ViT + tracker neck + prompt decoder); warm = cached features. p50/p95
  per dtype (bf16, fp32 for comparison), plus the brush-RLE encode of the mask on the CPU.
* ``text_prompt``: ``segment_concepts`` with one new phrase on an image whose features are cached
  (text encoder + DETR head + masks), and on a new image (+ ViT).
* ``prelabel``: images/s with 3 concepts per image, batch size swept 1..32 (new images each,
  text features warm), best batch size reported.
* ``bulk``: the bulk prelabel job (``jobs.prelabel``, in-process, main dtype) at the best prelabel
  batch size over a project served by a loopback imitation of Label Studio's API
  (``tests/fake_ls_api.py``): images/s of the whole job (media download, model, RLE, imports with
  the re-check before each write) against the engine alone, time in Label Studio's API apart.
* ``video``: ``Sam3VideoModel`` full size, text prompt, 1080p clip, pinned to 1 and 5 tracked
  objects (``force_video_objects``): frames/s of ``propagate_in_video_iterator`` and with the
  processor's 1080p post-processing.
* ``video_engine``: the backend's own video path (``engine.video.Sam3VideoEngine`` on the image
  model's shared weights): an H.264 clip decoded by PyAV straight to the model input, text-prompted
  (threshold 0, hot-start off, ``--video-objects`` objects at most) and box-prompted (that many
  boxes) tracking; frames/s including decode, per-frame p50, peak memory.
* ``train``: one fine-tuning step of the concept detector (``engine.training.loop``), encoders frozen
  and their features computed once: seconds per step and peak memory at 1, 4 and 8 image × concept
  pairs per step (``--train-batches``), main dtype (bf16: float32 master weights under autocast).
* ``memory``: ``torch.cuda.max_memory_allocated`` per section (peak RSS on CPU).
* ``compile`` (``--compile``): ``torch.compile`` of the ViT backbone: compile time, cold click and
  prelabel at the best batch size against eager.
* ``attention`` (``--attention sdpa,eager``): the model built with each attention implementation.

Random weights decide nothing, so the amount of output is pinned: threshold 0 and
``max_instances`` = ``--instances`` per concept per image (every mask is upsampled to 1080p).

Writes ``DIR/gpu-bench.json`` and ``DIR/gpu-bench.md``; ``--record`` also writes the ``gpu``
section (``gpu-smoke`` in smoke mode) of bench/RESULTS.md. Exit status 1 if a section failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402  (sets sys.path and the offline environment)
from _models import env_info, env_line, fmt_ms, fmt_num, summary, synthetic_clip, synthetic_image  # noqa: E402

REQUIRED_SECTIONS = ("interactive", "text_prompt", "prelabel", "video", "memory")
CONCEPTS = ["cat", "dog", "car", "person", "tree", "bicycle", "bird", "boat", "chair", "bottle"]


# --------------------------------------------------------------------------- plumbing


class Budget:
    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


class Bench:
    """Runs sections under a budget, records results, skips and errors."""

    def __init__(self, args, device, budget: Budget):
        import torch

        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.budget = budget
        self.sections: dict[str, dict] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.builds: dict[str, float] = {}  # seconds to build each model
        self.torch = torch

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            _models.reset_peak_rss()

    def peak_gib(self) -> float:
        if self.cuda:
            self.sync()
            return self.torch.cuda.max_memory_allocated() / 2**30
        return _models.peak_rss_mb() / 1024

    def allocated_gib(self) -> float:
        if self.cuda:
            return self.torch.cuda.memory_allocated() / 2**30
        return _models.rss_mb() / 1024

    def run(self, section: str, key: str, estimate_s: float, fn):
        """``sections[section][key] = fn()`` unless over budget; errors are recorded, not raised."""
        if not self.budget.allows(estimate_s):
            note = (f"{section}/{key}: skipped, over budget ({self.budget.left():.0f} s left of"
                    f" {self.budget.seconds:.0f} s, needs about {estimate_s:.0f} s)")
            self.notes.append(note)
            self.sections.setdefault(section, {})[key] = {"skipped": note}
            print(note, file=sys.stderr)
            return None
        print(f"[{self.budget.elapsed():6.1f} s] {section}/{key} ...", file=sys.stderr, flush=True)
        self.reset_peak()
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # unattended: keep going, report
            err = f"{section}/{key}: {type(exc).__name__}: {exc}"
            self.errors.append(err)
            traceback.print_exc()
            self.sections.setdefault(section, {})[key] = {"error": err}
            if self.cuda:
                self.torch.cuda.empty_cache()
            return None
        value["section_seconds"] = time.perf_counter() - t0
        value["peak_memory_gib"] = self.peak_gib()
        self.sections.setdefault(section, {})[key] = value
        head, _, rest = key.partition("/")
        mem = self.sections.setdefault("memory", {}).setdefault(head, {})
        mem[f"{section}{'_' + rest if rest else ''}_peak_gib"] = value["peak_memory_gib"]
        return value


# --------------------------------------------------------------------------- measurements


def _timed(bench: Bench, fn):
    bench.sync()
    t0 = time.perf_counter()
    out = fn()
    bench.sync()
    return out, time.perf_counter() - t0


def interactive(bench: Bench, engine, pixels, tag: str) -> dict:
    """Cold (new image) and warm (cached) single-click latency, stages, RLE of the mask."""
    import numpy as np

    from sam3_backend.ls.rle import encode_rle
    from sam3_backend.types import GeometryPrompt, ImageInput, Point

    a = bench.args
    h, w = pixels.shape[:2]
    rng = np.random.default_rng(0)

    def click(key):
        p = Point(float(rng.uniform(0.05, 0.95) * w), float(rng.uniform(0.05, 0.95) * h))
        out, s = _timed(bench, lambda: engine.segment_objects(ImageInput(pixels, key), [GeometryPrompt(points=(p,))]))
        return out, s, dict(engine.last_timing.stages)

    for i in range(a.warmup):  # CUDA context, cuBLAS/cuDNN autotuning, allocator
        click(f"{tag}-warmup-{i}")
        click(f"{tag}-warmup-{i}")
    cold, cold_stages = [], []
    for i in range(a.cold):
        _, s, st = click(f"{tag}-cold-{i}")
        cold.append(s)
        cold_stages.append(st)
    warm, warm_stages, rle_s = [], [], []
    last = f"{tag}-cold-{a.cold - 1}"
    for _ in range(a.warm):
        out, s, st = click(last)
        warm.append(s)
        warm_stages.append(st)
        t0 = time.perf_counter()
        encode_rle(out[0].mask)
        rle_s.append(time.perf_counter() - t0)

    def stages(rows):
        keys = sorted({k for r in rows for k in r})
        return {k: summary(r.get(k, 0.0) for r in rows)["p50_ms"] for k in keys}

    c, wm = summary(cold), summary(warm)
    return {
        "image": [w, h],
        "cold": c,
        "warm": wm,
        "cold_over_warm_p50": c["p50_ms"] / wm["p50_ms"],
        "cold_stages_p50_ms": stages(cold_stages),
        "warm_stages_p50_ms": stages(warm_stages),
        "rle_encode": summary(rle_s),
    }


def text_prompt(bench: Bench, engine, pixels, tag: str) -> dict:
    """One new phrase per call: on a cached image (text encoder + head), and on a new image."""
    from sam3_backend.types import ConceptPrompt, ImageInput

    a = bench.args
    counter = [0]

    def ask(key):
        counter[0] += 1
        concept = ConceptPrompt(f"{CONCEPTS[counter[0] % len(CONCEPTS)]} {tag} {counter[0]}")
        _, s = _timed(bench, lambda: engine.segment_concepts(
            [ImageInput(pixels, key)], [concept], threshold=0.0, max_instances=a.instances, batch_size=1))
        return s, dict(engine.last_timing.stages)

    for i in range(a.warmup):
        ask(f"{tag}-text-warmup-{i}")
    warm_key = f"{tag}-text-cached"
    ask(warm_key)
    warm = [ask(warm_key) for _ in range(a.warm)]
    cold = [ask(f"{tag}-text-cold-{i}") for i in range(a.cold)]

    def stages(rows):
        keys = sorted({k for _, r in rows for k in r})
        return {k: summary(r.get(k, 0.0) for _, r in rows)["p50_ms"] for k in keys}

    return {
        "cached_image": summary(s for s, _ in warm),
        "new_image": summary(s for s, _ in cold),
        "cached_image_stages_p50_ms": stages(warm),
        "new_image_stages_p50_ms": stages(cold),
        "instances_per_concept": a.instances,
    }


def prelabel_point(bench: Bench, engine, pool, batch: int, n_images: int, tag: str, n_concepts: int) -> dict:
    from sam3_backend.types import ConceptPrompt, ImageInput

    a = bench.args
    concepts = [ConceptPrompt(t) for t in CONCEPTS[:n_concepts]]
    engine.features.clear()
    warm = [ImageInput(pool[i % len(pool)], f"{tag}-pw-{batch}-{i}") for i in range(batch)]
    engine.segment_concepts(warm, concepts, threshold=0.0, max_instances=a.instances, batch_size=batch)
    images = [ImageInput(pool[i % len(pool)], f"{tag}-p-{batch}-{i}") for i in range(n_images)]
    chunk_s, stages = [], {}
    bench.sync()
    t_all = time.perf_counter()
    for start in range(0, n_images, batch):
        chunk = images[start : start + batch]
        _, s = _timed(bench, lambda: engine.segment_concepts(
            chunk, concepts, threshold=0.0, max_instances=a.instances, batch_size=batch))
        chunk_s.append(s)
        for k, v in engine.last_timing.stages.items():
            stages[k] = stages.get(k, 0.0) + v
    total = time.perf_counter() - t_all
    engine.features.clear()
    return {
        "batch": batch,
        "images": n_images,
        "images_per_s": n_images / total,
        "batch_latency": summary(chunk_s),
        "per_image_ms": {k: 1e3 * v / n_images for k, v in stages.items()},
    }


def prelabel(bench: Bench, engine, pool, tag: str, batches: list[int], min_images: int) -> dict:
    sweep = []
    for batch in batches:
        n = max(min_images, 2 * batch)
        per_image = 1.0 / sweep[-1]["images_per_s"] if sweep else 1.0
        if sweep and not bench.budget.allows(per_image * (n + batch) * 1.5 + 5):
            bench.notes.append(f"prelabel/{tag}: batch sizes from {batch} on skipped, over budget")
            break
        try:
            sweep.append(prelabel_point(bench, engine, pool, batch, n, tag, bench.args.concepts))
        except bench.torch.cuda.OutOfMemoryError as exc:  # type: ignore[attr-defined]
            bench.notes.append(f"prelabel/{tag}: batch {batch} ran out of GPU memory ({str(exc)[:120]})")
            engine.features.clear()
            bench.torch.cuda.empty_cache()
            break
        print(f"    batch {batch}: {sweep[-1]['images_per_s']:.2f} images/s", file=sys.stderr, flush=True)
    best = max(sweep, key=lambda p: p["images_per_s"])
    return {"concepts_per_image": bench.args.concepts, "instances_per_concept": bench.args.instances,
            "sweep": sweep, "best_batch": best["batch"], "best_images_per_s": best["images_per_s"]}


def video(bench: Bench, model, processor, frames, objects: int, dtype) -> dict:
    _models.force_video_objects(model, objects)
    dev = bench.device
    (session, init_s) = _timed(bench, lambda: processor.init_video_session(
        video=frames, inference_device=dev, processing_device=dev, video_storage_device=dev, dtype=dtype))
    processor.add_text_prompt(session, "object")
    model_s, post_s, tracked, kept = [], [], [], []
    iterator = model.propagate_in_video_iterator(session)
    while True:
        bench.sync()
        t0 = time.perf_counter()
        try:
            out = next(iterator)
        except StopIteration:
            break
        bench.sync()
        t1 = time.perf_counter()
        _models.pin_video_masks(out)
        res = processor.postprocess_outputs(session, out)
        bench.sync()
        t2 = time.perf_counter()
        model_s.append(t1 - t0)
        post_s.append(t2 - t1)
        tracked.append(len(out.object_ids))
        kept.append(int(res["masks"].shape[0]))
    n = len(model_s)
    return {
        "objects": objects,
        "frames": n,
        "frame_size": [int(frames[0].shape[1]), int(frames[0].shape[0])],
        "init_seconds": init_s,
        "model_fps": n / sum(model_s),
        "fps_with_postprocess": n / (sum(model_s) + sum(post_s)),
        "frame_model": summary(model_s),
        "frame_postprocess": summary(post_s),
        "tracked_objects_min": min(tracked),
        "tracked_objects_max": max(tracked),
        "masks_per_frame_min": min(kept),
        "mask_shape": list(res["masks"].shape),
    }


def train_features(bench: Bench, loaded, engine, n_images: int):
    """Synthetic training images at the model's input size, their frozen features computed once."""
    from sam3_backend.engine.training.features import FrozenFeatures
    from sam3_backend.engine.training.synthetic import synthetic_shapes

    data = synthetic_shapes(n_images, size=loaded.image_size, seed=7)
    features = FrozenFeatures(loaded, engine.scheduler, batch_size=4)
    (_, encode_s) = _timed(bench, lambda: features.add_images([ex.image for ex in data.examples]))
    return data, features, encode_s / n_images


def train_row(bench: Bench, loaded, engine, prepared, batch: int) -> dict:
    """Seconds per training step at ``batch`` pairs (after warm-up steps), features precomputed."""
    from sam3_backend.engine.training.loop import TrainConfig, train_detector

    a = bench.args
    data, features, encode_per_image = prepared
    times: list[float] = []
    config = TrainConfig(steps=a.train_warmup + a.train_steps, batch_size=batch, lr=1e-5, warmup_steps=1)
    result = train_detector(loaded, engine.scheduler, features, data.examples, data.concepts, config,
                            on_step=lambda info: times.append(info.seconds))
    steady = times[a.train_warmup:]
    step = summary(steady)
    return {"batch": batch, "steps": len(steady), "step": step, "seconds_per_step": step["p50_ms"] / 1e3,
            "pairs_per_s": batch / (step["p50_ms"] / 1e3), "encode_seconds_per_image": encode_per_image,
            "trainable_params": int(sum(p.numel() for p in result.trained.parameters())),
            "final_loss": result.losses[-1]}


BULK_CONFIG = ('<View><Image name="image" value="$image"/>'
               '<BrushLabels name="tag" toName="image">{labels}</BrushLabels>'
               '<RectangleLabels name="rect" toName="image">{labels}</RectangleLabels></View>')


def bulk(bench: Bench, engine, pool, batch: int, n_images: int, engine_images_per_s: float) -> dict:
    """The bulk prelabel job end to end on this engine, against the loopback Label Studio API."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_ls_api import TOKEN, FakeLabelStudioAPI

    from sam3_backend.config import Settings
    from sam3_backend.jobs.prelabel import PrelabelParams
    from sam3_backend.jobs.runtime import JobsRuntime
    from sam3_backend.ls.client import ApiAccess

    a = bench.args
    labels = "".join(f'<Label value="{c}"/>' for c in CONCEPTS[: a.concepts])
    api = FakeLabelStudioAPI()
    work = Path(tempfile.mkdtemp(prefix="sam3-gpu-bulk-"))
    runtime = None
    try:
        project = api.add_project(BULK_CONFIG.format(labels=labels))
        for i in range(n_images):
            path = f"/data/upload/{project}/bulk-{i}.jpg"
            pixels = pool[i % len(pool)].copy()
            pixels[0, 0] = (i % 256, i // 256 % 256, 7)  # distinct bytes: no cache hit between tasks
            api.state.files[path] = _models.image_bytes(pixels)
            api.add_task(project, {"image": path})
        settings = Settings.from_env({}, model_dir=work, score_threshold=0.0, max_instances=a.instances,
                                     bulk_write_batch=50, label_studio_url=api.url, label_studio_api_key=TOKEN)
        runtime = JobsRuntime(settings, engine=lambda: engine)
        import label_studio_sdk  # noqa: F401  (a one-time import of ~1 s, not part of the job's rate)

        engine.features.clear()
        bench.sync()
        t0 = time.perf_counter()
        job = runtime.prelabel(PrelabelParams(project=project, batch_size=batch), ApiAccess(api.url, TOKEN))
        if not runtime.executor.wait_idle(max(60.0, bench.budget.left())):
            raise RuntimeError("the bulk job did not finish within the budget")
        wall = time.perf_counter() - t0
        done = runtime.store.get(job.id)
        if done.state.value != "done":
            raise RuntimeError(f"bulk job {done.state.value}: {done.reason}")
        r = done.result
        ips = r["predicted"] / wall
        return {
            "images": r["predicted"],
            "batch": batch,
            "job_seconds": wall,
            "images_per_s": ips,
            "engine_images_per_s": engine_images_per_s,
            "job_vs_engine": ips / engine_images_per_s,
            "label_studio_api_seconds": r["label_studio_api"]["seconds"],
            "label_studio_api_calls": r["label_studio_api"]["calls"],
            "written": r["written"],
        }
    finally:
        if runtime is not None:
            runtime.shutdown()
        api.close()
        engine.features.clear()
def video_engine(bench: Bench, loaded, clip, kind: str, objects: int) -> dict:
    """Frames/s of ``Sam3VideoEngine`` (decode + model + boxes) on ``clip`` with ``objects`` objects."""
    from sam3_backend.engine.video.decode import probe_video
    from sam3_backend.engine.video.models import build_video_models
    from sam3_backend.engine.video.tracker import Sam3VideoEngine, plan_frames
    from sam3_backend.types import Box, VideoObjectPrompt

    config = None
    if loaded.folder is None:  # the full-size model built in memory
        from transformers import Sam3VideoConfig

        config = Sam3VideoConfig()
    models = build_video_models(loaded, config)
    engine = Sam3VideoEngine(models, new_object_threshold=0.0, detection_threshold=0.0, max_objects=objects,
                             hotstart_frames=0)
    info = probe_video(clip)
    frames = plan_frames(info)
    if kind == "text":
        session = engine.text_session(clip, info, ["object"], frames=frames)
        results = engine.propagate_text(session)
    else:
        w, h = info.width, info.height
        prompts = [VideoObjectPrompt(k, ((0, Box(w * (0.1 + 0.15 * k), h * 0.2, w * (0.2 + 0.15 * k), h * 0.5)),))
                   for k in range(objects)]
        session = engine.box_session(clip, info, prompts, frames=frames)
        results = engine.propagate_boxes(session)
    step_s, tracked = [], []
    bench.sync()
    t_all = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            result = next(results)
        except StopIteration:
            break
        bench.sync()
        step_s.append(time.perf_counter() - t0)
        tracked.append(len(result.tracked))
    total = time.perf_counter() - t_all
    return {
        "kind": kind,
        "objects": objects,
        "frames": len(step_s),
        "frame_size": [info.width, info.height],
        "fps": len(step_s) / total,
        "frame": summary(step_s),
        "tracked_objects_max": max(tracked) if tracked else 0,
        "extra_parameters": models.extra_parameters,
    }


def _encode_clip(path: Path, frames, fps: int = 24) -> Path:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb[: stream.height, : stream.width], format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_video_engine(bench: Bench, loaded, dt: str) -> None:
    args = bench.args
    clip = _encode_clip(args.out / "video-engine-clip.mp4", synthetic_clip(args.video_frames, args.width, args.height, seed=5))
    objects = max(int(k) for k in args.video_objects.split(","))
    for kind in ("text", "boxes"):
        est = 3 if args.smoke else 0.3 * args.video_frames * max(1, objects) / 5 + 15
        bench.run("video_engine", f"{dt}/{kind}", est, lambda: video_engine(bench, loaded, clip, kind, objects))


# --------------------------------------------------------------------------- model builders


def build_image_model(bench: Bench, dtype_name: str, attn: str | None = None):
    if bench.args.smoke:
        from sam3_backend.engine.loading import ModelSource, load_sam3

        loaded = load_sam3(ModelSource(str(_models.tiny_checkpoint())), "cpu", dtype_name)
        if attn:
            loaded.detector.set_attn_implementation(attn)
            loaded.tracker.set_attn_implementation(attn)
        return loaded
    return _models.build_fullsize(str(bench.device), dtype_name, attn_implementation=attn)


def free(bench: Bench):
    """Return memory once the caller has dropped its references."""
    gc.collect()
    if bench.cuda:
        bench.torch.cuda.empty_cache()


# --------------------------------------------------------------------------- report


def _g(d, *path, default=float("nan")):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def markdown(result: dict) -> str:
    meta, s = result["meta"], result["sections"]
    dtypes = meta["dtypes"]
    mode = "SMOKE (tiny model, CPU, tiny sizes: these figures check the code path, not speed)" if meta["smoke"] else "full-size SAM 3, random weights"
    lines = [
        f"## GPU benchmark: {mode}",
        "",
        f"{env_line(meta['env'])}. Budget {meta['budget_s']:.0f} s, ran {meta['elapsed_s']:.0f} s."
        f" Command: `bash bench/run_gpu.sh {' '.join(meta['argv'])}`.",
        f"Image {meta['width']}×{meta['height']}; threshold 0 with `max_instances={meta['instances']}` per concept"
        " (random weights: the output amount is pinned); fp32 matmuls with TF32"
        f" {'on' if meta.get('tf32_matmul') else 'off (torch default)'}.",
        "",
        "### Interactive click (`segment_objects`, one point)",
        "",
        "| dtype | cold p50 ms | cold p95 ms | warm p50 ms | warm p95 ms | cold/warm | ViT ms (cold) | prompt decoder ms (warm) | post-process ms (warm) | RLE ms (CPU) | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dt in dtypes:
        r = _g(s, "interactive", dt, default={})
        if "cold" not in r:
            lines.append(f"| {dt} | {r.get('skipped') or r.get('error') or 'not run'} |||||||||| |")
            continue
        lines.append(
            f"| {dt} | {fmt_ms(r['cold']['p50_ms'])} | {fmt_ms(r['cold']['p95_ms'])} | {fmt_ms(r['warm']['p50_ms'])}"
            f" | {fmt_ms(r['warm']['p95_ms'])} | {r['cold_over_warm_p50']:.0f}× | {fmt_ms(_g(r, 'cold_stages_p50_ms', 'vision_encoder'))}"
            f" | {fmt_ms(_g(r, 'warm_stages_p50_ms', 'prompt_decoder'))} | {fmt_ms(_g(r, 'warm_stages_p50_ms', 'postprocess'))}"
            f" | {fmt_ms(r['rle_encode']['p50_ms'])} | {r['peak_memory_gib']:.2f} |"
        )
    lines += [
        "",
        "### Text prompt (`segment_concepts`, one new phrase)",
        "",
        "| dtype | cached image p50 ms | p95 ms | new image p50 ms | p95 ms | text encoder ms | detector ms | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dt in dtypes:
        r = _g(s, "text_prompt", dt, default={})
        if "cached_image" not in r:
            lines.append(f"| {dt} | {r.get('skipped') or r.get('error') or 'not run'} |||||| |")
            continue
        lines.append(
            f"| {dt} | {fmt_ms(r['cached_image']['p50_ms'])} | {fmt_ms(r['cached_image']['p95_ms'])}"
            f" | {fmt_ms(r['new_image']['p50_ms'])} | {fmt_ms(r['new_image']['p95_ms'])}"
            f" | {fmt_ms(_g(r, 'cached_image_stages_p50_ms', 'text_encoder'))} | {fmt_ms(_g(r, 'cached_image_stages_p50_ms', 'detector'))}"
            f" | {r['peak_memory_gib']:.2f} |"
        )
    lines += ["", f"### Prelabel: images/s with {meta['concepts']} concepts per image vs batch size", ""]
    for dt in dtypes:
        r = _g(s, "prelabel", dt, default={})
        if "sweep" not in r:
            lines.append(f"- {dt}: {r.get('skipped') or r.get('error') or 'not run'}")
            continue
        head = "| dtype | " + " | ".join(f"batch {p['batch']}" for p in r["sweep"]) + " | best | peak GiB |"
        lines += [head, "|" + "---|" * (len(r["sweep"]) + 3)]
        cells = [f"**{fmt_num(p['images_per_s'])}**" if p["batch"] == r["best_batch"] else fmt_num(p["images_per_s"]) for p in r["sweep"]]
        lines.append(f"| {dt} | " + " | ".join(cells) + f" | {fmt_num(r['best_images_per_s'])} @ {r['best_batch']} | {r['peak_memory_gib']:.2f} |")
        best = next(p for p in r["sweep"] if p["batch"] == r["best_batch"])
        st = best["per_image_ms"]
        lines += ["", f"{dt} at batch {r['best_batch']}, per image: " + ", ".join(f"{k.replace('_', ' ')} {fmt_ms(v)} ms" for k, v in sorted(st.items())), ""]
    lines += ["### Bulk prelabel job (in-process, loopback Label Studio API)", ""]
    for dt, r in _g(s, "bulk", default={}).items():
        if "images_per_s" not in r:
            lines.append(f"- {dt}: {r.get('skipped') or r.get('error') or 'not run'}")
            continue
        lines.append(
            f"- {dt}: {r['images']} images at batch {r['batch']}: **{fmt_num(r['images_per_s'])} images/s** for the whole"
            f" job ({r['job_seconds']:.1f} s) vs {fmt_num(r['engine_images_per_s'])} for the engine alone"
            f" ({100 * r['job_vs_engine']:.0f}%); Label Studio API {r['label_studio_api_seconds']:.2f} s"
            f" ({r['label_studio_api_calls']} calls)")
    lines += [
        "",
        "### Video (`Sam3VideoModel`, text prompt, pinned object count)",
        "",
        "| dtype | objects | frames | model frames/s | frames/s incl. post-process to frame size | frame p50 ms | frame p95 ms | post-process p50 ms | session init s | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(_g(s, "video", default={}).items()):
        if "frames" not in r:
            lines.append(f"| {key} | {r.get('skipped') or r.get('error') or 'not run'} |||||||| |")
            continue
        dt = key.split("/")[0]
        lines.append(
            f"| {dt} | {r['objects']} | {r['frames']} | {fmt_num(r['model_fps'])} | {fmt_num(r['fps_with_postprocess'])}"
            f" | {fmt_ms(r['frame_model']['p50_ms'])} | {fmt_ms(r['frame_model']['p95_ms'])} | {fmt_ms(r['frame_postprocess']['p50_ms'])}"
            f" | {r['init_seconds']:.3f} | {r['peak_memory_gib']:.2f} |"
        )
    lines += [
        "",
        "### Video engine (the backend's path: PyAV decode + `Sam3VideoEngine`, shared weights)",
        "",
        "| dtype/kind | objects | frames | frames/s incl. decode | frame p50 ms | frame p95 ms | extra parameters | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(_g(s, "video_engine", default={}).items()):
        if "fps" not in r:
            lines.append(f"| {key} | {r.get('skipped') or r.get('error') or 'not run'} |||||| |")
            continue
        lines.append(
            f"| {key} | {r['objects']} | {r['frames']} | {fmt_num(r['fps'])} | {fmt_ms(r['frame']['p50_ms'])}"
            f" | {fmt_ms(r['frame']['p95_ms'])} | {r['extra_parameters'] / 1e6:.1f}M | {r['peak_memory_gib']:.2f} |"
        )
    if "train" in s:
        lines += ["", "### Fine-tuning step (concept detector trained, vision + text encoders frozen, features cached)", "",
                  "| dtype | pairs / step | s / step p50 | p95 | pairs / s | peak GiB | trainable params |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in s["train"].items():
            dt = key.split("/")[0]
            if "step" not in r:
                lines.append(f"| {dt} | {key.split('_')[-1]} | {r.get('skipped') or r.get('error')} |||||")
                continue
            lines.append(f"| {dt} | {r['batch']} | {r['seconds_per_step']:.3f} | {r['step']['p95_ms'] / 1e3:.3f}"
                         f" | {fmt_num(r['pairs_per_s'])} | {r['peak_memory_gib']:.2f} | {r['trainable_params']:,} |")
    mem = s.get("memory", {})
    lines += ["", "### Peak memory (GiB; `torch.cuda.max_memory_allocated`, peak RSS on CPU; model = allocated after the build)", ""]
    for k, v in sorted(mem.items()):
        if isinstance(v, dict):
            lines.append(f"- {k}: " + ", ".join(f"{n.replace('_peak_gib', '').replace('_gib', '')} {x:.2f}" for n, x in sorted(v.items())))
    if "compile" in s:
        lines += ["", "### torch.compile of the ViT backbone", ""]
        for k, r in s["compile"].items():
            if "cold_click" in r:
                lines.append(
                    f"- {k}: compile (first call) {r['compile_seconds']:.1f} s; cold click p50 {fmt_ms(r['cold_click']['p50_ms'])} ms"
                    f" vs eager {fmt_ms(r['eager_cold_click_p50_ms'])} ms; prelabel {fmt_num(r['prelabel_images_per_s'])} images/s"
                    f" at batch {r['batch']} vs eager {fmt_num(r['eager_prelabel_images_per_s'])}"
                )
            else:
                lines.append(f"- {k}: {r.get('skipped') or r.get('error')}")
    if "attention" in s:
        lines += ["", "### Attention implementation", "", "| variant | cold click p50 ms | warm click p50 ms | prelabel images/s | batch |", "|---|---|---|---|---|"]
        for k, r in s["attention"].items():
            if "cold_click_p50_ms" in r:
                lines.append(f"| {k} | {fmt_ms(r['cold_click_p50_ms'])} | {fmt_ms(r['warm_click_p50_ms'])} | {fmt_num(r['prelabel_images_per_s'])} | {r['batch']} |")
            else:
                lines.append(f"| {k} | {r.get('skipped') or r.get('error')} | | | |")
    if result["notes"] or result["errors"]:
        lines += ["", "Notes: " + "; ".join(result["notes"] + [f"ERROR {e}" for e in result["errors"]])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/gpu-bench"))
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, tiny sizes (< 60 s): checks the code paths")
    ap.add_argument("--record", action="store_true", help="write the gpu (or gpu-smoke) section of bench/RESULTS.md")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 500; smoke 50)")
    ap.add_argument("--dtypes", default=None, help="default bf16,fp32")
    ap.add_argument("--batches", default=None, help="prelabel batch sizes (default 1,2,4,8,16,32; smoke 1,2)")
    ap.add_argument("--fp32-batches", default=None, help="prelabel batch sizes for fp32 (default 1,4,16)")
    ap.add_argument("--concepts", type=int, default=3, help="concepts per image for prelabel")
    ap.add_argument("--instances", type=int, default=3, help="instances kept per concept per image")
    ap.add_argument("--cold", type=int, default=None, help="cold clicks (default 10; smoke 2)")
    ap.add_argument("--warm", type=int, default=None, help="warm clicks (default 50; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls per measurement (default 2; smoke 1)")
    ap.add_argument("--video-frames", type=int, default=None, help="clip length (default 32; smoke 3)")
    ap.add_argument("--video-objects", default=None, help="default 1,5 (smoke 1,2)")
    ap.add_argument("--width", type=int, default=None, help="default 1920 (smoke 320)")
    ap.add_argument("--height", type=int, default=None, help="default 1080 (smoke 240)")
    ap.add_argument("--train-batches", default="1,4,8", help="image x concept pairs per training step")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps per batch size (default 10; smoke 1)")
    ap.add_argument("--train-warmup", type=int, default=None, help="untimed first steps (default 2; smoke 0)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the ViT backbone (bf16)")
    ap.add_argument("--compile-backend", default=None, help="default inductor (smoke: eager, to trace without codegen)")
    ap.add_argument("--attention", default=None, help="compare attention implementations, e.g. sdpa,eager")
    args = ap.parse_args(argv)
    smoke = args.smoke
    defaults = dict(budget=50.0 if smoke else 500.0, dtypes="bf16,fp32", batches="1,2" if smoke else "1,2,4,8,16,32",
                    fp32_batches="1,2" if smoke else "1,4,16", cold=2 if smoke else 10, warm=3 if smoke else 50,
                    warmup=1 if smoke else 2, video_frames=3 if smoke else 32, video_objects="1,2" if smoke else "1,5",
                    width=320 if smoke else 1920, height=240 if smoke else 1080,
                    compile_backend="eager" if smoke else "inductor", train_steps=1 if smoke else 10,
                    train_warmup=0 if smoke else 2)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    import torch

    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device visible: run with --smoke for the CPU check", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    info = env_info()
    print(env_line(info), file=sys.stderr)
    bench = Bench(args, device, budget)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    fp32_batches = [int(b) for b in args.fp32_batches.split(",")]
    pixels = synthetic_image(args.width, args.height, seed=1)
    pool = [synthetic_image(args.width, args.height, seed=s) for s in range(4)]
    min_images = 4 if args.smoke else 32
    build_est = 5 if args.smoke else 40

    from sam3_backend.engine.image import Sam3ImageEngine

    eager_ref: dict = {}
    for i, dt in enumerate(dtypes):
        if not budget.allows(build_est + 20):
            for sec in ("interactive", "text_prompt", "prelabel"):
                bench.run(sec, dt, float("inf"), None)
            continue
        t0 = time.perf_counter()
        try:
            loaded = build_image_model(bench, dt)
        except Exception as exc:
            bench.errors.append(f"build {dt}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            continue
        engine = Sam3ImageEngine(loaded, feature_cache_bytes=8 << 30)
        bench.sync()
        bench.sections.setdefault("memory", {}).setdefault(dt, {})["model_gib"] = bench.allocated_gib()
        bench.builds[dt] = time.perf_counter() - t0
        per = 1.0 if args.smoke else (5.0 if dt != "fp32" else 10.0)
        bench.run("interactive", dt, 3 * per, lambda: interactive(bench, engine, pixels, dt))
        bench.run("text_prompt", dt, 3 * per, lambda: text_prompt(bench, engine, pixels, dt))
        bench.run("prelabel", dt, 4 * per, lambda: prelabel(bench, engine, pool, dt, batches if i == 0 else fp32_batches, min_images))
        if i == 0:
            best_batch = int(_g(bench.sections, "prelabel", dt, "best_batch", default=1))
            engine_ips = float(_g(bench.sections, "prelabel", dt, "best_images_per_s", default=float("nan")))
            bench.run("bulk", dt, 4 * per + 10, lambda: bulk(bench, engine, pool, best_batch, min_images * 2, engine_ips))
            train_batches = [int(x) for x in args.train_batches.split(",")]
            prepared = train_features(bench, loaded, engine, max(8, *train_batches))
            for b in train_batches:
                est = 3 if args.smoke else 15 + 2 * b
                bench.run("train", f"{dt}/batch_{b}", est, lambda b=b: train_row(bench, loaded, engine, prepared, b))
                free(bench)
            prepared = None
        if i == 0:
            eager_ref = {
                "cold": _g(bench.sections, "interactive", dt, "cold", "p50_ms"),
                "warm": _g(bench.sections, "interactive", dt, "warm", "p50_ms"),
                "batch": _g(bench.sections, "prelabel", dt, "best_batch", default=1),
                "images_per_s": _g(bench.sections, "prelabel", dt, "best_images_per_s"),
                "dtype": dt,
            }
        if i == 0:  # the backend's video engine on the same loaded weights
            run_video_engine(bench, loaded, dt)
        engine = loaded = None
        free(bench)
        if i == 0:  # video right after the main dtype: it matters more than the fp32 comparison
            run_video(bench, dt)

    if args.attention:
        for attn in [a.strip() for a in args.attention.split(",") if a.strip()]:
            bench.run("attention", attn, 10 if args.smoke else 90, lambda: attention_variant(bench, attn, pixels, pool, eager_ref, min_images))
    if args.compile:  # last: the slowest and least certain (inductor compiles the ViT per batch shape)
        dt = eager_ref.get("dtype", dtypes[0])
        bench.run("compile", dt, 30 if args.smoke else 200, lambda: compile_variant(bench, pixels, pool, eager_ref, min_images))

    result = {
        "meta": {
            "env": info, "smoke": args.smoke, "device": str(device), "budget_s": args.budget, "elapsed_s": budget.elapsed(),
            "argv": sys.argv[1:] if argv is None else list(argv), "dtypes": dtypes, "build_seconds": bench.builds, "width": args.width, "height": args.height,
            "concepts": args.concepts, "instances": args.instances,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        },
        "sections": bench.sections,
        "notes": bench.notes,
        "errors": bench.errors,
    }
    md = markdown(result)
    (args.out / "gpu-bench.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (args.out / "gpu-bench.md").write_text(md + "\n")
    print(md)
    if args.record:
        from _results import write_section

        print(f"wrote {write_section('gpu-smoke' if args.smoke else 'gpu', md)}", file=sys.stderr)
    return 1 if bench.errors else 0


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def run_video(bench: Bench, dt: str) -> None:
    args = bench.args
    objects = [int(k) for k in args.video_objects.split(",")]
    if not bench.budget.allows(30 if not args.smoke else 5):
        for k in objects:
            bench.run("video", f"{dt}/objects_{k}", float("inf"), None)
        return
    try:
        model, processor = _models.build_video(str(bench.device), dt, size="tiny" if args.smoke else "full")
    except Exception as exc:
        bench.errors.append(f"video build {dt}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return
    dtype = _models._torch_dtype(dt)
    frames = synthetic_clip(args.video_frames, args.width, args.height, seed=3)
    try:  # warm-up: a 2-frame clip
        video(bench, model, processor, frames[:2], 1, dtype)
    except Exception:
        traceback.print_exc()
    for k in objects:
        est = (2 if args.smoke else 0.2 * args.video_frames * max(1, k) / 5 + 10)
        bench.run("video", f"{dt}/objects_{k}", est, lambda: video(bench, model, processor, frames, k, dtype))
    model = processor = None
    free(bench)


def compile_variant(bench: Bench, pixels, pool, eager_ref: dict, min_images: int) -> dict:
    """torch.compile the shared ViT backbone; cold click and prelabel at the best batch size."""
    from sam3_backend.engine.image import Sam3ImageEngine

    torch = bench.torch
    args = bench.args
    loaded = build_image_model(bench, eager_ref.get("dtype", "bf16"))
    engine = Sam3ImageEngine(loaded, feature_cache_bytes=8 << 30)
    backbone = loaded.detector.vision_encoder.backbone
    compiled = torch.compile(backbone, backend=args.compile_backend, dynamic=False)
    loaded.detector.vision_encoder.backbone = compiled
    loaded.tracker.vision_encoder.backbone = compiled
    try:
        from sam3_backend.types import GeometryPrompt, ImageInput, Point

        h, w = pixels.shape[:2]
        p = Point(w / 2, h / 2)
        _, compile_s = _timed(bench, lambda: engine.segment_objects(ImageInput(pixels, "compile-0"), [GeometryPrompt(points=(p,))]))
        cold = []
        for i in range(args.cold):
            _, s = _timed(bench, lambda: engine.segment_objects(ImageInput(pixels, f"compile-{i + 1}"), [GeometryPrompt(points=(p,))]))
            cold.append(s)
        batch = int(eager_ref.get("batch") or 1)
        point = prelabel_point(bench, engine, pool, batch, max(min_images, 2 * batch), "compiled", args.concepts)
    finally:
        engine = loaded = compiled = backbone = None
        free(bench)
        torch._dynamo.reset()
    return {
        "backend": args.compile_backend,
        "compile_seconds": compile_s,
        "cold_click": summary(cold),
        "eager_cold_click_p50_ms": eager_ref.get("cold", float("nan")),
        "batch": batch,
        "prelabel_images_per_s": point["images_per_s"],
        "eager_prelabel_images_per_s": eager_ref.get("images_per_s", float("nan")),
    }


def attention_variant(bench: Bench, attn: str, pixels, pool, eager_ref: dict, min_images: int) -> dict:
    """The main dtype's model built with ``attn_implementation=attn``: clicks and prelabel."""
    from sam3_backend.engine.image import Sam3ImageEngine

    args = bench.args
    dt = eager_ref.get("dtype", "bf16")
    loaded = build_image_model(bench, dt, attn=attn)
    engine = Sam3ImageEngine(loaded, feature_cache_bytes=8 << 30)
    saved = (args.cold, args.warm)
    args.cold, args.warm = max(2, args.cold // 2), max(3, args.warm // 5)
    try:
        clicks = interactive(bench, engine, pixels, f"attn-{attn}")
        batch = int(eager_ref.get("batch") or 1)
        point = prelabel_point(bench, engine, pool, batch, max(min_images, 2 * batch), f"attn-{attn}", args.concepts)
    finally:
        args.cold, args.warm = saved
        engine = loaded = None
        free(bench)
    return {
        "dtype": dt,
        "attn_implementation": attn,
        "cold_click_p50_ms": clicks["cold"]["p50_ms"],
        "warm_click_p50_ms": clicks["warm"]["p50_ms"],
        "batch": batch,
        "prelabel_images_per_s": point["images_per_s"],
    }


if __name__ == "__main__":
    sys.exit(main())
