"""Bulk prelabel throughput (images/s) vs batch size and Ray actor count, tiny model on CPU.

    .venv/bin/python bench/bench_bulk.py [--images 48] [--batches 1,2,4,8] [--actors 1,2] [--real-ls] [--no-write]

Runs the real bulk job (``jobs.prelabel.run_prelabel`` through ``JobsRuntime``: scan, skip check,
media download, model, RLE/polygons, prediction import with the re-check before each write) on
a fresh project per point, in-process for each batch size and on a local Ray (``num_cpus`` =
cores) with 1..N model actors. Time spent in Label Studio's REST API (task pages, model-version
checks, imports; as the job's client measures it) is reported apart from the rest (media
downloads, model, encoding).

Label Studio: by default a loopback imitation of its API (``tests/fake_ls_api.py``, ~1 ms per
call: the API column is then our client's own cost); ``--real-ls`` starts real Label Studio
1.23.2 from ``.venv-ls`` (``tests/e2e/ls_harness.py``) and uploads the images to it, so the API
column is what a real (SQLite, single-process) Label Studio costs.

Random weights decide nothing, so the output is pinned: threshold 0 and 2 instances per label
(2 labels) per image, 640×480 JPEGs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models  # noqa: E402
from _models import env_info, env_line, fmt_num, image_bytes, synthetic_image  # noqa: E402
from _results import markdown_table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>'
          '<PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>'
          '<RectangleLabels name="rect" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels>'
          '</View>')


class FakeLS:
    """The loopback imitation of Label Studio's API (tests/fake_ls_api.py)."""

    name = "loopback imitation of Label Studio's API"

    def __init__(self):
        sys.path.insert(0, str(ROOT / "tests"))
        from fake_ls_api import TOKEN, FakeLabelStudioAPI

        self.api = FakeLabelStudioAPI()
        self.url, self.token = self.api.url, TOKEN

    def project(self, images: list[bytes], tag: str) -> int:
        pid = self.api.add_project(CONFIG, title=tag)
        for i, data in enumerate(images):
            path = f"/data/upload/{pid}/{tag}-{i}.jpg"
            self.api.state.files[path] = data
            self.api.add_task(pid, {"image": path})
        return pid

    def close(self):
        self.api.close()


class RealLS:
    """Real Label Studio 1.23.2 on loopback, images uploaded as tasks."""

    name = "real Label Studio 1.23.2 (SQLite, loopback)"

    def __init__(self, workdir: Path):
        sys.path.insert(0, str(ROOT / "tests" / "e2e"))
        import ls_harness

        self.ls = ls_harness.LabelStudio(workdir / "ls")
        t0 = time.perf_counter()
        self.ls.start()
        print(f"Label Studio up in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        self.url, self.token = self.ls.url, self.ls.token
        self.workdir = workdir

    def project(self, images: list[bytes], tag: str) -> int:
        pid = self.ls.create_project(f"bench {tag}", CONFIG)["id"]
        folder = self.workdir / tag
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, data in enumerate(images):
            paths.append(folder / f"{i:04d}.jpg")
            paths[-1].write_bytes(data)
        for start in range(0, len(paths), 50):
            self.ls.upload_files(pid, paths[start : start + 50])
        return pid

    def close(self):
        self.ls.stop()


def run_point(runtime, connection, project: int, **params) -> dict:
    from sam3_backend.jobs.prelabel import PrelabelParams

    t0 = time.perf_counter()
    job = runtime.prelabel(PrelabelParams(project=project, **params), connection)
    first = None  # when the first predictions were counted (after model load / actor start)
    while True:
        current = runtime.store.get(job.id)
        if first is None and current.state.value == "running" and current.done > 0:
            first = (time.perf_counter() - t0, current.done)
        if not current.state.active:
            break
        if time.perf_counter() - t0 > 1800:
            raise RuntimeError(f"job {job.id} did not finish")
        time.sleep(0.05)
    runtime.executor.wait_idle(60)
    wall = time.perf_counter() - t0
    done = runtime.store.get(job.id)
    if done.state.value != "done":
        raise RuntimeError(f"job {job.id} {done.state.value}: {done.reason}")
    r = done.result
    api = r["label_studio_api"]
    first_s, first_n = first or (wall, 0)
    steady = (r["predicted"] - first_n) / (wall - first_s) if wall > first_s and r["predicted"] > first_n else float("nan")
    return {"params": params, "wall_s": wall, "images": r["predicted"], "written": r["written"],
            "failed": r["failed"], "images_per_s": r["predicted"] / wall, "api_s": api["seconds"],
            "api_calls": api["calls"], "other_s": wall - api["seconds"], "first_result_s": first_s,
            "steady_images_per_s": steady}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=48, help="tasks per point")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--batches", default="1,2,4,8", help="in-process batch sizes")
    ap.add_argument("--actors", default="1,2", help="Ray actor counts (empty: skip Ray)")
    ap.add_argument("--ray-batch", type=int, default=4)
    ap.add_argument("--write-batch", type=int, default=50, help="predictions per import request")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in-process (each Ray actor: 1 CPU)")
    ap.add_argument("--real-ls", action="store_true", help="start real Label Studio 1.23.2 (about 2 minutes more)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from sam3_backend.config import Settings
    from sam3_backend.engine.image import Sam3ImageEngine
    from sam3_backend.jobs.runtime import JobsRuntime
    from sam3_backend.ls.client import ApiAccess

    torch.set_num_threads(args.threads)
    info = env_info()
    load = os.getloadavg()
    started = time.perf_counter()
    w, h = (int(v) for v in args.size.split("x"))
    images = [image_bytes(synthetic_image(w, h, seed=s)) for s in range(args.images)]
    work = Path(tempfile.mkdtemp(prefix="sam3-bench-bulk-"))
    ls = RealLS(work) if args.real_ls else FakeLS()
    connection = ApiAccess(ls.url, ls.token)
    checkpoint = _models.tiny_checkpoint()
    settings = Settings.from_env({}, model_dir=work / "model", sam3_model=str(checkpoint), device="cpu",
                                 score_threshold=0.0, max_instances=2, bulk_write_batch=args.write_batch,
                                 ray_cpus_per_actor=1.0)
    engine = Sam3ImageEngine(_models.load_tiny("cpu", "float32"), feature_cache_bytes=64 << 20)
    runtime = JobsRuntime(settings, engine=lambda: engine)
    points, ray_points = [], []
    try:
        warm = ls.project(images[:4], "warmup")
        run_point(runtime, connection, warm, batch_size=2)
        for batch in [int(b) for b in args.batches.split(",") if b]:
            p = run_point(runtime, connection, ls.project(images, f"b{batch}"), batch_size=batch)
            points.append(p)
            print(f"in-process batch {batch}: {p['images_per_s']:.2f} images/s, API {p['api_s']:.2f} s",
                  file=sys.stderr)
        actor_counts = [int(a) for a in args.actors.split(",") if a]
        if actor_counts:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
            try:
                for actors in actor_counts:
                    p = run_point(runtime, connection, ls.project(images, f"ray{actors}"), batch_size=args.ray_batch,
                                  ray=True, actors=actors)
                    ray_points.append(p)
                    print(f"Ray {actors} actor(s): {p['images_per_s']:.2f} images/s (incl. actor start), API "
                          f"{p['api_s']:.2f} s", file=sys.stderr)
            finally:
                ray.shutdown()
    finally:
        runtime.shutdown()
        ls.close()

    def row(label, p):
        share = 100 * p["api_s"] / p["wall_s"]
        return [label, p["images"], f"{p['wall_s']:.1f}", f"**{fmt_num(p['images_per_s'])}**",
                f"{p['first_result_s']:.1f}", fmt_num(p["steady_images_per_s"]),
                f"{p['api_s']:.2f} ({p['api_calls']} calls)", f"{share:.0f}%", f"{p['other_s']:.1f}"]

    header = ["run", "images", "job wall s", "images/s (whole job)", "first result after s",
              "images/s after it", "Label Studio API s", "API share", "rest s (media, model, encode)"]
    rows = [row(f"in-process, batch {p['params']['batch_size']}", p) for p in points]
    rows += [row(f"Ray, {p['params']['actors']} actor(s), batch {args.ray_batch}", p) for p in ray_points]
    lines = [
        f"## Bulk prelabel job throughput (tiny model, CPU, {w}×{h} JPEG)",
        "",
        f"{env_line(info)}; load average at start {load[0]:.2f}.",
        f"The whole job (`sam3-backend prelabel` path: scan, skip check, media download, model, RLE + polygons +"
        f" boxes, imports of {args.write_batch} predictions with the re-check before each) on a fresh project of"
        f" {args.images} images per row, 2 labels, threshold 0 and 2 instances per label (pinned output)."
        f" Label Studio: {ls.name}. In-process rows use {args.threads} torch thread(s); Ray rows a local Ray"
        f" (`num_cpus`={os.cpu_count()}), each actor 1 CPU and its own model, actor start-up (loading the model)"
        f" included in the wall time. Command: `.venv/bin/python bench/bench_bulk.py"
        f"{' --real-ls' if args.real_ls else ''}`.",
        "",
        markdown_table(header, rows),
        "",
        "\"First result after\" is when the job first counted finished tasks (scan, skip check, model load or"
        " actor start, first batch and its write); the next column is the rate from then on."
        " \"Label Studio API s\" is time waiting for Label Studio's REST API (task pages, model-version checks,"
        " prediction imports), measured by the job's client; the rest is this side's work plus the media"
        " downloads. With the tiny model the model is nearly free, so these rows measure the pipeline around it;"
        " on 2 cores more actors only add processes competing for the same cores.",
        f"\nScript ran {time.perf_counter() - started:.0f} s.",
    ]
    md = "\n".join(lines)
    print(md)
    result = {"env": info, "loadavg": load, "label_studio": ls.name, "points": points, "ray_points": ray_points}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.no_write:
        print(f"\nwrote {write_section('bulk-real-ls' if args.real_ls else 'bulk', md)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
