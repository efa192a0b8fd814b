"""Prelabel throughput (images/s) vs batch size and number of labels, tiny model on CPU.

    .venv/bin/python bench/bench_prelabel.py [--images 16] [--full] [--no-write]

Runs ``Sam3ImageEngine.segment_concepts`` (the path ``/predict`` without a context takes: every
label of the project is a text concept) on 1080p images, for batch sizes 1, 2, 4, 8 and 1, 3, 10
labels, all in one run. Each image is new to the engine (a fresh key: no feature-cache hits);
text features are warm (a project's labels repeat on every task). Random weights decide nothing
useful, so the number of instances is pinned: threshold 0 and ``max_instances`` = ``--instances``
per label per image, i.e. every image yields labels × instances masks at 1080p.

``--full`` adds one point with the full-size architecture (random weights): 2 images, 3 labels,
batch 2 (≈ 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _models import env_info, env_line, fmt_ms, fmt_num, summary, synthetic_image  # noqa: E402
from _results import markdown_table, write_section  # noqa: E402

LABELS = ["cat", "dog", "car", "person", "tree", "bicycle", "traffic light", "bird", "boat", "chair"]
STAGES = ("preprocess", "vision_encoder", "text_encoder", "detector", "postprocess")


def measure(engine, pool, n_images: int, n_labels: int, batch: int, instances: int, tag: str) -> dict:
    from sam3_backend.types import ConceptPrompt, ImageInput

    concepts = [ConceptPrompt(t) for t in LABELS[:n_labels]]
    images = [ImageInput(pool[i % len(pool)], f"{tag}-{i}") for i in range(n_images)]
    # Warm-up: text features of these labels, allocator; on other keys.
    engine.segment_concepts([ImageInput(pool[0], f"{tag}-warm-{j}") for j in range(batch)], concepts,
                            threshold=0.0, max_instances=instances, batch_size=batch)
    chunk_s, stages, found = [], {}, 0
    for start in range(0, n_images, batch):
        chunk = images[start : start + batch]
        t0 = time.perf_counter()
        out = engine.segment_concepts(chunk, concepts, threshold=0.0, max_instances=instances, batch_size=batch)
        chunk_s.append(time.perf_counter() - t0)
        found += sum(len(r) for r in out)
        for k, v in engine.last_timing.stages.items():
            stages[k] = stages.get(k, 0.0) + v
    total = sum(chunk_s)
    return {
        "labels": n_labels,
        "batch": batch,
        "images": n_images,
        "seconds": total,
        "images_per_s": n_images / total,
        "chunk": summary(chunk_s),
        "per_image_ms": {k: 1e3 * v / n_images for k, v in stages.items()},
        "instances_per_image": found / n_images,
    }


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16, help="images per point")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--labels", default="1,3,10")
    ap.add_argument("--instances", type=int, default=2, help="instances kept per label per image")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see bench_interactive)")
    ap.add_argument("--full", action="store_true", help="add one full-size point (slow)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from sam3_backend.engine.image import Sam3ImageEngine

    torch.set_num_threads(args.threads)
    info = env_info()
    load = os.getloadavg()
    started = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    label_counts = [int(n) for n in args.labels.split(",")]
    pool = [synthetic_image(1920, 1080, seed=s) for s in range(4)]
    engine = Sam3ImageEngine(_models.load_tiny("cpu", "float32"), feature_cache_bytes=256 << 20)
    points = []
    for n_labels in label_counts:
        for batch in batches:
            points.append(measure(engine, pool, args.images, n_labels, batch, args.instances, f"l{n_labels}b{batch}"))
            p = points[-1]
            print(f"labels={n_labels} batch={batch}: {p['images_per_s']:.2f} images/s", file=sys.stderr)

    full = None
    if args.full:
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        big = Sam3ImageEngine(_models.build_fullsize("cpu", "float32"), feature_cache_bytes=1 << 30)
        build_s = time.perf_counter() - t0
        from sam3_backend.types import ConceptPrompt, ImageInput

        concepts = [ConceptPrompt(t) for t in LABELS[:3]]
        big.segment_concepts([ImageInput(pool[0], "full-warm")], concepts[:1], threshold=0.0, max_instances=1, batch_size=1)
        images = [ImageInput(pool[i], f"full-{i}") for i in range(2)]
        t0 = time.perf_counter()
        out = big.segment_concepts(images, concepts, threshold=0.0, max_instances=args.instances, batch_size=2)
        secs = time.perf_counter() - t0
        full = {"labels": 3, "batch": 2, "images": 2, "seconds": secs, "images_per_s": 2 / secs, "build_s": build_s,
                "per_image_ms": {k: 1e3 * v / 2 for k, v in big.last_timing.stages.items()},
                "instances_per_image": sum(len(r) for r in out) / 2, "threads": torch.get_num_threads()}
        del big

    # Table 1: images/s, labels × batch.
    by = {(p["labels"], p["batch"]): p for p in points}
    rows = []
    for n_labels in label_counts:
        row = [f"{n_labels}"]
        best = max(batches, key=lambda b: by[(n_labels, b)]["images_per_s"])
        for b in batches:
            v = fmt_num(by[(n_labels, b)]["images_per_s"])
            row.append(f"**{v}**" if b == best else v)
        base = by[(n_labels, batches[0])]["images_per_s"]
        row.append(f"{by[(n_labels, best)]['images_per_s'] / base:.2f}×")
        rows.append(row)
    t1 = markdown_table(["labels \\ batch"] + [str(b) for b in batches] + [f"best vs batch {batches[0]}"], rows)
    # Table 2: per-image time by stage, and per-batch latency.
    rows2 = []
    for p in points:
        st = p["per_image_ms"]
        rows2.append([str(p["labels"]), str(p["batch"])] + [fmt_ms(st.get(k, 0.0)) for k in STAGES]
                     + [fmt_ms(p["chunk"]["p50_ms"]), fmt_ms(p["chunk"]["p95_ms"]), f"{p['instances_per_image']:.0f}"])
    t2 = markdown_table(["labels", "batch"] + [f"{k.replace('_', ' ')} ms/img" for k in STAGES]
                        + ["batch p50 ms", "batch p95 ms", "masks/img"], rows2)
    post_share = sum(p["per_image_ms"].get("postprocess", 0) for p in points) / sum(1e3 * p["seconds"] / p["images"] for p in points)
    lines = [
        "## Prelabel throughput (tiny model, CPU, 1920×1080 images)",
        "",
        f"{env_line(info)}; load average at start {load[0]:.2f}.",
        f"`Sam3ImageEngine.segment_concepts`, {args.images} new images per point (no feature-cache hits; text"
        f" features warm), threshold 0 with `max_instances={args.instances}`: every image yields labels × {args.instances}"
        " masks at 1080p (random weights decide nothing, so the workload is pinned). torch threads"
        f" {args.threads}. Command: `.venv/bin/python bench/bench_prelabel.py`.",
        "",
        "Images/s (bold: best batch size per row):",
        "",
        t1,
        "",
        "Per-image time by engine stage and per-batch latency:",
        "",
        t2,
        "",
        f"With the tiny model the encoder is nearly free, so these figures measure the pipeline around it:"
        f" post-processing (upsampling each kept mask to 1080p, its box) is {100 * post_share:.0f}% of all time here"
        " and grows with labels × instances; batching only amortises per-call overhead.",
    ]
    if full:
        st = full["per_image_ms"]
        lines += [
            "",
            f"Full-size architecture (random weights, fp32, {full['threads']} threads): 2 images × 3 labels, batch 2:"
            f" **{full['images_per_s']:.3f} images/s** ({full['seconds']:.0f} s; per image: vision encoder"
            f" {fmt_ms(st.get('vision_encoder', 0))} ms, detector {fmt_ms(st.get('detector', 0))} ms,"
            f" post-process {fmt_ms(st.get('postprocess', 0))} ms).",
        ]
    lines.append(f"\nScript ran {time.perf_counter() - started:.0f} s.")
    md = "\n".join(lines)
    print(md)
    result = {"env": info, "loadavg": load, "points": points, "full": full}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        print(f"\nwrote {write_section('prelabel', md)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
