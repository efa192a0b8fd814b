"""Click latency while a 200-image prelabel runs, through the real Flask app (tiny model, CPU).

    .venv/bin/python bench/bench_click_during_prelabel.py [--images 200] [--clicks 60] [--image-size 224] [--no-write]

A loopback server plays Label Studio (640x480 JPEGs under /data/upload/). First, clicks on an
idle server (warm: the image is open, its features cached). Then one "Retrieve predictions"
request with all images runs in a thread while the same clicks arrive one after another, as an
annotator keeps working. The model is shared: the engine's scheduler hands it to a click before
the prelabel's next batch (engine/scheduler.py), so a click waits at most for the batch in
progress. Goal (issue #6): click p95 during the prelabel <= one prelabel batch (p95) + one idle
click (p95).

The tiny model is run at a larger input size than the tests use (``--image-size``) so that a
prelabel batch costs what a small real model's would on this CPU (tens to hundreds of ms).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402  (sets sys.path and offline env)
from _models import env_info, env_line, fmt_ms, image_bytes, summary, synthetic_image  # noqa: E402
from _results import markdown_table, write_section  # noqa: E402
from bench_interactive import LABEL_CONFIG, TOKEN, _click_payload, _Media  # noqa: E402


def run(n_images: int, clicks: int, image_size: int, batch_size: int, seed: int = 0) -> dict:
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine
    from sam3_backend.engine.loading import ModelSource, load_sam3
    from sam3_backend.engine.tiny import write_tiny_checkpoint

    width, height = 640, 480
    rng = np.random.default_rng(seed)
    files = {f"/data/upload/1/p-{i}.jpg": image_bytes(synthetic_image(width, height, seed=seed + i))
             for i in range(n_images)}
    click_paths = [f"/data/upload/1/c-{i}.jpg" for i in range(4)]
    files.update({p: image_bytes(synthetic_image(width, height, seed=1000 + i)) for i, p in enumerate(click_paths)})
    media = _Media(files)
    tmp = tempfile.TemporaryDirectory(prefix="sam3-bench-busy-")
    try:
        ckpt = write_tiny_checkpoint(Path(tmp.name) / "ckpt", image_size=image_size)
        engine = Sam3ImageEngine(load_sam3(ModelSource(str(ckpt)), "cpu", "float32"))
        settings = Settings(label_studio_url=media.url, label_studio_api_key=TOKEN, model_dir=Path(tmp.name),
                            log_level="WARNING", prelabel_batch_size=batch_size, score_threshold=0.5,
                            max_pending_requests=64)
        app = create_app(settings, engine=engine)
        client = app.test_client()

        # Time every model hold of the prelabel (one batch of images through encoder + detector).
        batches: list[float] = []
        real_chunk = engine._concepts_chunk

        def timed_chunk(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real_chunk(*args, **kwargs)
            finally:
                batches.append(time.perf_counter() - t0)

        engine._concepts_chunk = timed_chunk

        def click(i: int) -> float:
            path = click_paths[i % len(click_paths)]
            payload = _click_payload(100 + i % len(click_paths), path, float(rng.uniform(5, 95)),
                                     float(rng.uniform(5, 95)), width, height)
            t0 = time.perf_counter()
            r = client.post("/predict", json=payload)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"click answered {r.status_code}: {r.get_data(as_text=True)[:300]}")
            return elapsed

        for i in range(len(click_paths) * 2):  # open every click image: warm features, decoded images
            click(i)
        idle = [click(i) for i in range(clicks)]

        tasks = [{"id": i, "data": {"image": p}} for i, p in enumerate(list(files)[:n_images])]
        done = threading.Event()
        prelabel_seconds = []

        def prelabel():
            t0 = time.perf_counter()
            r = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG, "project": "1.1"})
            prelabel_seconds.append(time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.get_json()["results"]) == n_images
            done.set()

        batches.clear()
        worker = threading.Thread(target=prelabel)
        worker.start()
        while len(batches) < 2 and not done.is_set():  # the prelabel is under way
            time.sleep(0.005)
        busy = []
        while not done.is_set() and len(busy) < clicks * 10:
            busy.append(click(len(busy)))
            time.sleep(float(rng.uniform(0.0, 0.05)))  # an annotator's pace, irregular
        batches_during = list(batches)
        worker.join()
    finally:
        media.close()
        tmp.cleanup()
    return {"idle": idle, "busy": busy, "batches": batches_during, "prelabel_seconds": prelabel_seconds[0],
            "n_images": n_images, "image_size": image_size, "batch_size": batch_size}


def report(data: dict) -> tuple[str, dict]:
    def stats(seconds):
        out = summary(seconds)
        out["max_ms"] = max(seconds) * 1e3 if seconds else float("nan")
        return out

    idle, busy, batch = stats(data["idle"]), stats(data["busy"]), stats(data["batches"])
    bound = batch["p95_ms"] + idle["p95_ms"]
    rows = [
        ["idle server", len(data["idle"]), fmt_ms(idle["p50_ms"]), fmt_ms(idle["p95_ms"]), fmt_ms(idle["max_ms"])],
        ["during a prelabel", len(data["busy"]), fmt_ms(busy["p50_ms"]), fmt_ms(busy["p95_ms"]), fmt_ms(busy["max_ms"])],
        ["(one prelabel batch)", len(data["batches"]), fmt_ms(batch["p50_ms"]), fmt_ms(batch["p95_ms"]),
         fmt_ms(batch["max_ms"])],
    ]
    table = markdown_table(["click latency", "n", "p50", "p95", "max"], rows)
    ok = busy["p95_ms"] <= bound
    verdict = (
        f"Goal: click p95 during the prelabel ≤ one batch p95 + one idle click p95 = {fmt_ms(bound)}: "
        f"**{'met' if ok else 'NOT met'}** ({fmt_ms(busy['p95_ms'])})."
    )
    rate = data["n_images"] / data["prelabel_seconds"]
    text = (
        f"{table}\n\n{verdict}\n\nThe prelabel: {data['n_images']} images (640x480 JPEG, 2 labels) in "
        f"{data['prelabel_seconds']:.1f} s ({rate:.1f} images/s) while the clicks ran; batch size "
        f"{data['batch_size']}, tiny model at {data['image_size']} px."
    )
    return text, {"idle": idle, "busy": busy, "batch": batch, "bound_ms": bound, "met": ok}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clicks", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    data = run(args.images, args.clicks, args.image_size, args.batch_size)
    text, figures = report(data)
    info = env_info()
    command = (f"`.venv/bin/python bench/bench_click_during_prelabel.py --images {args.images} --clicks {args.clicks}"
               f" --image-size {args.image_size} --batch-size {args.batch_size}`")
    section = f"## Clicks during a prelabel (scheduler priority)\n\n{env_line(info)}; {command}\n\n{text}\n"
    print(section)
    if not args.no_write:
        write_section("click-during-prelabel", section)
    return figures


if __name__ == "__main__":
    main()
