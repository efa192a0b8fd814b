"""The benchmarks still run: bench/gpu.py --smoke (the GPU benchmark's code paths, on CPU with the
tiny model) and the CPU benchmarks with tiny parameters, so they cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("interactive", "text_prompt", "prelabel", "bulk", "video", "video_engine", "memory", "attention",
            "compile", "train")


def _numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


def test_gpu_bench_smoke(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out),
         "--attention", "sdpa,eager", "--compile", "--budget", "70"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    data = json.loads((out / "gpu-bench.json").read_text())
    assert (out / "gpu-bench.md").read_text().startswith("## GPU benchmark")
    assert data["meta"]["smoke"] is True and data["errors"] == [] and data["notes"] == []
    sections = data["sections"]
    for name in REQUIRED:
        assert name in sections, f"section {name} missing"
        for key, entry in sections[name].items():
            assert "skipped" not in entry and "error" not in entry, f"{name}/{key}: {entry}"
            numbers = _numbers(entry)
            assert numbers and all(math.isfinite(x) for x in numbers), f"{name}/{key} has no (finite) numbers"
    for dt in data["meta"]["dtypes"]:
        clicks = sections["interactive"][dt]
        assert clicks["cold"]["n"] >= 1 and clicks["warm"]["p50_ms"] > 0 and clicks["warm"]["p95_ms"] >= clicks["warm"]["p50_ms"]
        assert sections["text_prompt"][dt]["cached_image"]["p50_ms"] > 0
        assert sections["prelabel"][dt]["best_images_per_s"] > 0
        assert sections["memory"][dt]["model_gib"] > 0
    bulk = sections["bulk"][data["meta"]["dtypes"][0]]
    assert bulk["written"] == bulk["images"] > 0 and bulk["images_per_s"] > 0
    videos = sections["video"]
    assert {v["objects"] for v in videos.values()} == {1, 2}
    for v in videos.values():
        assert v["frames"] == 3 and v["model_fps"] > 0 and v["tracked_objects_max"] == v["objects"]
        assert v["masks_per_frame_min"] == v["objects"]
    assert set(sections["attention"]) == {"sdpa", "eager"}
    engine_rows = sections["video_engine"]  # the backend's own video path on the shared weights
    assert {r["kind"] for r in engine_rows.values()} == {"text", "boxes"}
    for r in engine_rows.values():
        assert r["frames"] == 3 and r["fps"] > 0 and 1 <= r["tracked_objects_max"] <= r["objects"] == 2
        assert r["extra_parameters"] > 0
    assert engine_rows[f"{data['meta']['dtypes'][0]}/boxes"]["tracked_objects_max"] == 2
    train = sections["train"]
    assert {v["batch"] for v in train.values()} == {1, 4, 8}
    for v in train.values():
        assert v["steps"] == 1 and v["seconds_per_step"] > 0 and v["trainable_params"] > 0
        assert math.isfinite(v["final_loss"]) and v["peak_memory_gib"] > 0


@pytest.mark.parametrize("script, args", [
    ("bench_interactive.py", ["--clicks", "3", "--cold", "1", "--width", "128", "--height", "96"]),
    ("bench_prelabel.py", ["--images", "2", "--batches", "1", "--labels", "1"]),
    ("bench_click_during_prelabel.py", ["--images", "8", "--clicks", "3", "--image-size", "112"]),
    ("bench_bulk.py", ["--images", "4", "--batches", "1", "--actors="]),
])
def test_cpu_benchmarks_still_run(script, args):
    """The CPU benchmarks reach into the app's modules (probes, patched functions): a refactor
    that breaks them fails here, not months later when someone wants figures."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--no-write"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "|" in proc.stdout  # printed its table
