"""Cold vs warm click with the FULL-SIZE SAM 3 architecture (random weights) on CPU.

    .venv/bin/python bench/bench_warm_cold.py [--repeats 3] [--warm 20] [--no-write]

Cold click: a new image (``ImageInput`` with a new key): preprocess, the 450M-parameter ViT
(5.6 TFLOP at 1008 px), the tracker neck, then the prompt decoder. Warm click: the same image
again with a new point: the engine's feature cache serves the embeddings, only the prompt
decoder and post-processing run. Both through ``Sam3ImageEngine.segment_objects`` on a 1080p
image, measured in the same run. Goal: cold/warm ≥ 50×.

Slow by nature (one cold click ≈ 40 s on 2 cores): keep ``--repeats`` small.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _models import env_info, env_line, fmt_ms, summary, synthetic_image  # noqa: E402
from _results import markdown_table, write_section  # noqa: E402

STAGES = ("preprocess", "vision_encoder", "tracker_neck", "prompt_decoder", "postprocess")


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="cold clicks (each ≈ 40 s on 2 CPU cores)")
    ap.add_argument("--warm", type=int, default=20, help="warm clicks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--goal", type=float, default=50.0, help="required cold/warm ratio")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from sam3_backend.engine.image import Sam3ImageEngine
    from sam3_backend.types import GeometryPrompt, ImageInput, Point

    if args.threads:
        torch.set_num_threads(args.threads)
    info = env_info()
    load = os.getloadavg()
    started = time.perf_counter()
    t0 = time.perf_counter()
    loaded = _models.build_fullsize("cpu", "float32")
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in loaded.detector.parameters()) + sum(
        p.numel() for n, p in loaded.tracker.named_parameters() if not n.startswith("vision_encoder.backbone.")
    )
    engine = Sam3ImageEngine(loaded, feature_cache_bytes=4 << 30)
    pixels = synthetic_image(1920, 1080, seed=1)
    rng = np.random.default_rng(0)

    def click(key: str) -> dict:
        point = Point(float(rng.uniform(100, 1820)), float(rng.uniform(100, 980)))
        t0 = time.perf_counter()
        out = engine.segment_objects(ImageInput(pixels, key), [GeometryPrompt(points=(point,))])
        total = time.perf_counter() - t0
        assert len(out) == 1 and out[0].mask.shape == (1080, 1920)
        return {"total": total, **engine.last_timing.stages}

    cold = []
    for i in range(args.repeats):
        cold.append(click(f"cold-{i}"))
        print(f"cold click {i + 1}/{args.repeats}: {cold[-1]['total']:.1f} s", file=sys.stderr)
    warm = [click(f"cold-{args.repeats - 1}") for _ in range(args.warm)]
    calls = engine.stats.vision_encoder_calls
    assert calls == args.repeats, f"expected {args.repeats} encoder calls, saw {calls}"

    cs, ws = summary(r["total"] for r in cold), summary(r["total"] for r in warm)
    ratio = cs["p50_ms"] / ws["p50_ms"]
    ratio_p95 = cs["p50_ms"] / ws["p95_ms"]
    met = ratio >= args.goal
    rows = []
    for stage in STAGES:
        c = summary(r.get(stage, 0.0) for r in cold)
        w = summary(r.get(stage, 0.0) for r in warm)
        rows.append([stage.replace("_", " "), fmt_ms(c["p50_ms"]), fmt_ms(c["p95_ms"]), fmt_ms(w["p50_ms"]), fmt_ms(w["p95_ms"])])
    rows.append(["**total**", f"**{fmt_ms(cs['p50_ms'])}**", f"**{fmt_ms(cs['p95_ms'])}**", f"**{fmt_ms(ws['p50_ms'])}**", f"**{fmt_ms(ws['p95_ms'])}**"])
    table = markdown_table(["stage", "cold p50 ms", "cold p95 ms", "warm p50 ms", "warm p95 ms"], rows)
    elapsed = time.perf_counter() - started
    md = "\n".join(
        [
            "## Cold vs warm click, full-size SAM 3 (random weights), CPU fp32",
            "",
            f"{env_line(info)}; load average at start {load[0]:.2f}.",
            f"`Sam3Model` + `Sam3TrackerModel` from the default `Sam3VideoConfig()` sharing one ViT backbone"
            f" ({n_params / 1e6:,.0f}M parameters, 1008 px input), built in {build_s:.0f} s; 1920×1080 image;"
            f" `Sam3ImageEngine.segment_objects` with one positive click. Cold = new image key ({cs['n']} clicks),"
            f" warm = same image, new point ({ws['n']} clicks); {calls} vision-encoder calls in all."
            f" Script ran {elapsed:.0f} s. Command: `.venv/bin/python bench/bench_warm_cold.py --repeats {args.repeats}`.",
            "",
            table,
            "",
            f"**Cold/warm = {ratio:,.0f}× at p50** (cold p50 / warm p95: {ratio_p95:,.0f}×)."
            f" Goal ≥ {args.goal:g}×: **{'met' if met else 'NOT met'}**."
            f" A warm click costs {fmt_ms(ws['p50_ms'])} ms here, of which the prompt decoder is"
            f" {fmt_ms(summary(r.get('prompt_decoder', 0.0) for r in warm)['p50_ms'])} ms and post-processing"
            f" (upsampling the mask to 1080p, its box) {fmt_ms(summary(r.get('postprocess', 0.0) for r in warm)['p50_ms'])} ms.",
        ]
    )
    print(md)
    result = {"env": info, "loadavg": load, "build_s": build_s, "params": n_params, "cold": cs, "warm": ws,
              "ratio_p50": ratio, "goal": args.goal, "goal_met": met,
              "stages_cold": cold, "stages_warm": warm}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        print(f"\nwrote {write_section('warm-cold', md)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
