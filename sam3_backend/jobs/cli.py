"""``sam3-backend prelabel`` and ``sam3-backend jobs``: bulk jobs from the command line.

``prelabel`` runs the job in this process (or drives Ray actors with ``--ray`` / RAY_ADDRESS),
records it in MODEL_DIR/jobs.sqlite3 like the server does, and follows it with a progress bar;
Ctrl-C cancels it after the batch in flight is written (a second Ctrl-C leaves it interrupted,
resumable). ``jobs`` lists, shows and cancels jobs in the same store (a server's jobs too, when
MODEL_DIR is the same).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import Settings
from ..errors import BadRequest
from .store import JobState, JobStore


def add_job_commands(sub) -> None:
    p = sub.add_parser("prelabel", help="prelabel a whole Label Studio project as a resumable job",
                       description="Predict every task of a Label Studio project (LABEL_STUDIO_URL, "
                       "LABEL_STUDIO_API_KEY) and write the predictions back; tasks that already carry a prediction "
                       "of this model version are skipped, so it resumes and never duplicates.")
    p.add_argument("--project", type=int, help="Label Studio project id")
    p.add_argument("--labels", help="comma-separated subset of the config's labels (default: all)")
    p.add_argument("--filter", choices=["unlabeled", "all"], default="unlabeled",
                   help="tasks without annotations (default) or all tasks")
    p.add_argument("--batch-size", type=int, help="images per model pass (default SAM3_PRELABEL_BATCH_SIZE)")
    p.add_argument("--ray", action="store_true",
                   help="predict on Ray model actors (RAY_ADDRESS picks the cluster; without it a local Ray starts)")
    p.add_argument("--actors", type=int, help="Ray model actors (default SAM3_RAY_ACTORS: one per GPU)")
    p.add_argument("--resume", metavar="JOB", help="run an ended job again with its parameters (skips finished tasks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and the summary only)")
    p.set_defaults(func=_prelabel)

    j = sub.add_parser("jobs", help="list, show or cancel jobs (MODEL_DIR/jobs.sqlite3)")
    j.add_argument("action", nargs="?", default="list", choices=["list", "show", "cancel"])
    j.add_argument("job_id", nargs="?", help="for show and cancel")
    j.add_argument("--project")
    j.add_argument("--kind")
    j.add_argument("--state", choices=[s.value for s in JobState])
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true", help="JSON instead of a table")
    j.set_defaults(func=_jobs)


def _engine_loader(settings: Settings):
    cache: list = []

    def load():
        if not cache:
            from ..engine.image import Sam3ImageEngine
            from ..engine.loading import ModelSource, load_sam3

            print(f"loading SAM 3 from {settings.sam3_model} ...", file=sys.stderr, flush=True)
            loaded = load_sam3(ModelSource(settings.sam3_model, token=settings.hf_token), settings.device,
                               settings.dtype)
            cache.append(Sam3ImageEngine(loaded, feature_cache_bytes=64 << 20))
        return cache[0]

    return load


def _model_version(settings: Settings):
    def version() -> str:
        from ..engine.loading import ModelSource, model_version

        return model_version(ModelSource(settings.sam3_model, token=settings.hf_token))

    return version


def _prelabel(args: argparse.Namespace) -> int:
    from .prelabel import PrelabelParams
    from .runtime import JobsRuntime, connection_from_settings

    settings = Settings.from_env()
    connection = connection_from_settings(settings)
    if connection is None:
        raise BadRequest("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a legacy token or a personal access token) "
                         "so the job can read tasks and write predictions")
    if args.resume is None and args.project is None:
        raise BadRequest("give --project ID (or --resume JOB)")
    use_ray = args.ray or bool(settings.ray_address)
    if use_ray:
        from .ray_support import ensure_ray

        ensure_ray(settings.ray_address)  # in the main thread: Ray installs its signal handlers here
    runtime = JobsRuntime(settings, engine=_engine_loader(settings), model_version=_model_version(settings))
    if args.resume:
        job = runtime.resume(args.resume, connection)
    else:
        params = PrelabelParams.from_dict({
            "project": args.project, "labels": args.labels or [], "filter": args.filter,
            "batch_size": args.batch_size, "ray": use_ray, "actors": args.actors, "source": "cli"})
        job = runtime.prelabel(params, connection)
    print(f"job {job.id}: prelabel project {job.project} ({'Ray' if use_ray else 'in-process'}); "
          f"`sam3-backend jobs show {job.id}` shows it, Ctrl-C cancels it", file=sys.stderr, flush=True)
    final = _follow(runtime, job.id, progress=not args.no_progress)
    print(json.dumps({"job": final.id, "state": final.state.value, "reason": final.reason, **final.result}, indent=1))
    if final.state != JobState.DONE:
        print(f"sam3-backend prelabel: job {final.id} {final.state.value}: {final.reason}; "
              f"resume it with --resume {final.id}", file=sys.stderr)
    return 0 if final.state == JobState.DONE else 1


def _follow(runtime, job_id: str, *, progress: bool):
    """Wait for the job, drawing a bar over the tasks it predicts (skipped ones are not counted)."""
    from tqdm import tqdm

    bar = None
    interrupted = False
    try:
        while True:
            try:
                job = runtime.store.get(job_id)
                if progress:
                    skipped = int(job.progress.get("skipped", 0))
                    if bar is None and job.total is not None and job.progress.get("stage") == "predicting":
                        bar = tqdm(total=job.total - skipped, unit="img", desc="prelabel", file=sys.stderr)
                    if bar is not None:
                        bar.n = max(0, job.done - skipped)
                        bar.set_postfix(failed=job.failed, written=job.progress.get("written", 0), refresh=False)
                        bar.refresh()
                if not job.state.active:
                    runtime.executor.wait_idle(30)
                    return runtime.store.get(job_id)
                time.sleep(0.5)
            except KeyboardInterrupt:
                if interrupted:
                    print("\nstopping now: the job ends as interrupted (resume it with --resume "
                          f"{job_id})", file=sys.stderr)
                    runtime.shutdown(timeout=30)
                    return runtime.store.get(job_id)
                interrupted = True
                print(f"\ncancelling job {job_id} after the batch in flight (Ctrl-C again to stop at once)",
                      file=sys.stderr)
                runtime.store.cancel(job_id)
    finally:
        if bar is not None:
            bar.close()


def _jobs(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    store = JobStore(settings.jobs_db)
    store.recover()
    if args.action in ("show", "cancel"):
        if not args.job_id:
            raise BadRequest(f"`sam3-backend jobs {args.action}` needs a job id (see `sam3-backend jobs list`)")
        job = store.get(args.job_id)
        if job is None:
            raise BadRequest(f"no job {args.job_id} in {settings.jobs_db} (is MODEL_DIR the server's?)")
        if args.action == "cancel":
            job = store.cancel(job.id)
            print(f"job {job.id}: {'cancel requested' if job.state == JobState.RUNNING else job.state.value}")
            return 0
        print(json.dumps(job.to_dict(), indent=1))
        return 0
    jobs = store.list(kind=args.kind, project=args.project, states=[args.state] if args.state else None,
                      limit=args.limit)
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs], indent=1))
        return 0
    print(f"{'id':<13} {'kind':<9} {'project':<8} {'state':<10} {'done/total':<12} {'failed':<7} {'created':<20} reason")
    for j in jobs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at))
        total = "?" if j.total is None else j.total
        print(f"{j.id:<13} {j.kind:<9} {j.project or '-':<8} {j.state.value:<10} {f'{j.done}/{total}':<12} "
              f"{j.failed:<7} {created:<20} {j.reason or ''}")
    return 0


__all__ = ["add_job_commands"]
