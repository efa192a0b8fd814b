"""The glue for video projects: Label Studio request → prompts → tracking → videorectangle regions.

``PredictionService`` hands every ``/predict`` of a project whose config has a ``<Video>`` to
``VideoService.predict``. Label Studio waits at most 100 s for an answer, a whole clip can take
longer, so every request runs its tracking as a job (``jobs.track.run_track``) and waits for it
up to ``SAM3_VIDEO_DEADLINE`` (90 s):

* Prelabel (``context: null``): each label is a concept; the tasks' videos are tracked one after
  another by a background worker (one video at a time: sessions are big). A task finished by the
  deadline is answered with its tracks; the others are answered ``[]``, which Label Studio stores
  nothing for, and their jobs write the predictions through the API when done (same model
  version, so a later "Retrieve predictions" skips them). A task whose video cannot be read gets
  an empty prediction and a logged error; the other tasks are answered.
* Interactive (a label clicked on a selected region): every region of the context is tracked
  from its keyframes, all in one pass, and returned under its own id, so the editor replaces it
  in place. Regions whose keyframes are those this backend last answered with are returned as
  they were (``ls.video_memory.RegionMemory``); after an answer, only keyframes the user added
  or moved count as new prompts, next to the ones the first request carried. At the deadline the
  request answers with the frames tracked so far (the track ends with ``enabled: false`` there);
  the job goes on at background priority, writes the full tracks as one prediction of model
  version ``<version>-tracks`` per task, and the next click on such a region gets the full track.
  Submit's ``{"result": []}`` is answered at once, empty.

A run that outlives its request becomes a ``track`` job in the job store (``GET /jobs``: progress,
done or failed with the reason; a restart marks it interrupted), and writes through Label
Studio's API with the project's own connection (``ls.connections``).

Nothing here touches torch directly: the video engine is built lazily from the image engine's
loaded model (``jobs.track_engine``) and shares its scheduler, so a click on an image waits for
at most one video frame. Label Studio's side of it lives in ``ls/`` (``video_config``,
``video_prompts``, ``video_memory``, ``video_results``), a run's bookkeeping in
``jobs.track_run``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .engine.scheduler import Priority
from .errors import BackendError
from .jobs.track import TrackAccumulator, TrackObject, run_track
from .jobs.track_engine import VideoEngineSource
from .jobs.track_run import TrackRun, TrackRunJob
from .ls.client import LabelStudioClient
from .ls.media import MediaFetcher
from .ls.media_cache import pinned
from .ls.results import prediction
from .ls.video_config import VideoProjectConfig, video_url
from .ls.video_memory import RegionMemory
from .ls.video_prompts import VideoRegionPrompt, object_prompts, parse_video_context
from .ls.video_results import stable_region_id, with_label
from .types import VideoInfo

log = logging.getLogger(__name__)

TRACKS_SUFFIX = "-tracks"  # model version suffix of predictions written by background interactive tracks
KIND = "track"  # job kind of a run that outlives its request


class VideoService:
    """Video ``/predict`` handling (see the module docstring); one per process, thread-safe.

    engine_provider: returns the current image engine (``Sam3ImageEngine``: ``.model`` and
    ``.scheduler`` are used) or a not-ready placeholder. client_for(project): the Label Studio API
    client background runs write with (default: the project's connection, ``ls.connections``).
    ``jobs``: the job store runs that outlive their request are recorded in (set by the jobs
    blueprint; without one they still run and write, unrecorded).
    """

    def __init__(self, settings: Settings, engine_provider: Callable[[], Any], fetcher: MediaFetcher,
                 client_for: Callable[[Any], LabelStudioClient | None] | None = None):
        self.settings = settings
        self._engine_provider = engine_provider
        self.fetcher = fetcher
        self._client_for = client_for or self._project_client
        self.jobs = None
        self.memory = RegionMemory(settings.video_cache_entries)
        self.engines = VideoEngineSource(settings, engine_provider)
        self._runs: dict[tuple, TrackRun] = {}
        self._runs_lock = threading.Lock()
        self._queue: list[tuple[TrackRun, Callable[[], None]]] = []
        self._queue_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self.stats = {"prelabel_tasks": 0, "interactive_requests": 0, "cached_regions": 0, "handed_off": 0,
                      "task_errors": 0, "background_writes": 0}  # for /metrics (sam3_video_events_total)
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ engine
    def engine(self):
        """The video engine over the current image engine's model (built on first use)."""
        return self.engines.engine()

    @property
    def model_version(self) -> str:
        return self._engine_provider().model_version

    def _count(self, event: str) -> None:
        with self._stats_lock:
            self.stats[event] += 1

    def _project_client(self, project: Any) -> LabelStudioClient | None:
        access = self.fetcher.connections.api_access(project)
        if access is None:
            return None
        return LabelStudioClient(access, timeout=self.settings.label_studio_timeout,
                                 retries=self.settings.label_studio_retries)

    def _write(self, project: Any, task_id: int, regions: list[dict], **kwargs) -> None:
        client = self._client_for(project)
        if client is None:
            raise BackendError(
                "cannot write the finished tracks to Label Studio: no URL and API key for this project; set "
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the backend from Label Studio"
            )
        score = sum(r["score"] for r in regions) / len(regions) if regions else 0.0
        client.upsert_prediction(task_id, regions, score=score, **kwargs)
        self._count("background_writes")

    def _hand_off(self, run: "TrackRun", project: Any, params: dict) -> None:
        """The run outlives its request: record it as a job (``GET /jobs``)."""
        if self.jobs is not None:
            from .jobs.handoff import project_id

            run.job.attach(self.jobs, KIND, project_id(project, []) or project, {"task": run.task_id, **params})

    def _check_rate(self, info: VideoInfo, config: VideoProjectConfig, task_id: Any) -> None:
        if abs(info.fps - config.framerate) > 0.01 * config.framerate and not info.variable_frame_rate:
            log.warning(
                "task %s: the video runs at %.3f fps but the label config says framerate=\"%g\"; Label Studio's player "
                "uses the config's rate, so keyframes are placed by time at %g fps: set framerate=\"%.3f\" in <Video> "
                "for frame-exact boxes", task_id, info.fps, config.framerate, config.framerate, info.fps)

    # ------------------------------------------------------------------ /predict
    def predict(self, tasks: list[dict], context: Any, config: VideoProjectConfig, project: Any = None) -> dict:
        """``project``: Label Studio's project field; it picks the Label Studio media come from and
        background results are written to."""
        started = time.perf_counter()
        deadline = started + self.settings.video_deadline
        if context is None:
            results = self._prelabel(tasks, config, deadline, project)
        else:
            self._count("interactive_requests")
            results = [self._interactive(tasks[0], context, config, deadline, project)] if tasks else []
        log.info("predict (video): %s, %d task(s), %d region(s), %.3f s",
                 "batch" if context is None else "interactive", len(tasks),
                 sum(len(r["result"]) for r in results if isinstance(r, dict)), time.perf_counter() - started)
        return {"results": results, "model_version": self.model_version}

    # ------------------------------------------------------------------ prelabel
    def _prelabel(self, tasks: list[dict], config: VideoProjectConfig, deadline: float, project: Any) -> list:
        version = self.model_version
        self.engine()  # not ready: 503 for the request, rather than empty predictions stored for every task
        if not config.labels:
            log.warning("prelabel (video): the label config has no <Label> on the video to look for; nothing to track")
            return [prediction([], [], version) for _ in tasks]
        runs = [self._prelabel_run(task, config, version, project) for task in tasks]
        answers = []
        for task, run in zip(tasks, runs):
            self._count("prelabel_tasks")
            run.done.wait(max(0.0, deadline - time.perf_counter()))
            if not run.claim():
                self._count("handed_off")
                self._hand_off(run, project, {"mode": "prelabel", "labels": list(config.labels)})
                answers.append([])  # Label Studio stores nothing now; the job writes the prediction
                continue
            if run.error is not None or run.accumulator is None:
                answers.append([])  # unreadable video: nothing stored, the next Retrieve asks again
                continue
            regions = run.accumulator.regions(config, self.settings.video_keyframe_tolerance)
            answers.append(prediction(regions, [r["score"] for r in regions], version))
        later = sum(1 for run in runs if run.handed_off)
        if later:
            log.info("prelabel (video): %d task(s) did not finish within SAM3_VIDEO_DEADLINE (%.0f s); their tracks "
                     "are written into the tasks as predictions when done", later, self.settings.video_deadline)
        return answers

    def _prelabel_run(self, task: dict, config: VideoProjectConfig, version: str, project: Any) -> TrackRun:
        task_id = task.get("id")
        concepts = tuple(config.concept_text(label) for label in config.labels)
        try:
            url = video_url(task, config)
        except BackendError as exc:
            return self._failed(("prelabel", task_id), task_id, exc)
        key = ("prelabel", task_id, url, concepts, version)
        with self._runs_lock:
            existing = self._runs.get(key)
            if existing is not None:
                return existing  # already being tracked (Label Studio asked again): wait for that job
            run = TrackRun(key, task_id, TrackRunJob(f"track task {task_id}"), priority=Priority.BATCH)
            self._runs[key] = run

        def work() -> None:
            try:
                engine = self.engine()
                with pinned(self.fetcher.fetch_path(url, task_id, project)) as path:
                    info = self.engines.probe(path)
                    self._check_rate(info, config, task_id)
                    frames = self.engines.plan(info)
                    session = engine.text_session(path, info, concepts, frames=frames)

                    def name(obj_id: int, concept: int) -> TrackObject:
                        label = config.labels[concept] if concept < len(config.labels) else None
                        return TrackObject(stable_region_id(task_id, version, obj_id), label)

                    run.accumulator = TrackAccumulator(info, frames, name)
                    generator = engine.propagate_text(session, priority=lambda: run.priority)
                    run_track(run.job, frames=generator, accumulator=run.accumulator,
                              finish=lambda acc, complete: self._finish_prelabel(run, config, version, acc, project))
            except BackendError as exc:
                run.error = str(exc)
                self._count("task_errors")
                log.error("task %s: %s", task_id, exc)
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                self._count("task_errors")
                log.exception("task %s: tracking failed", task_id)
            finally:
                self._close(run)

        self._enqueue(run, work)
        return run

    def _finish_prelabel(self, run: TrackRun, config: VideoProjectConfig, version: str, acc: TrackAccumulator,
                         project: Any) -> None:
        write = run.complete()
        regions = acc.regions(config, self.settings.video_keyframe_tolerance)
        for region in regions:
            self.memory.remember(run.task_id, None, region["id"], (), region)
        if write and isinstance(run.task_id, int):
            try:
                self._write(project, run.task_id, regions, model_version=version)
            except Exception as exc:  # the job records the reason
                run.error = f"the finished tracks could not be written to Label Studio: {exc}"
                log.error("task %s: %s", run.task_id, run.error)
        elif write:
            log.warning("task %s: finished after the answer but has no integer id to write a prediction for", run.task_id)

    # ------------------------------------------------------------------ interactive
    def _interactive(self, task: dict, context: Any, config: VideoProjectConfig, deadline: float, project: Any) -> dict:
        query = parse_video_context(context, config)
        version = self.model_version
        if query is None or query.is_empty():
            return prediction([], [], version)
        task_id = task.get("id")
        answered: dict[str, dict | None] = {}
        todo: list[VideoRegionPrompt] = []
        for region in query.regions:
            hit, answer = self.memory.answer(task_id, region)
            if hit:
                answered[region.region_id] = answer
                self._count("cached_regions")
            else:
                todo.append(region)
        if todo:
            answered.update(self._track_regions(task, config, todo, version, deadline, project))
        regions = []
        for region in query.regions:
            answer = answered.get(region.region_id)
            if answer is not None:
                regions.append(with_label(answer, region.label))
        return prediction(regions, [r["score"] for r in regions], version)

    def _track_regions(self, task: dict, config: VideoProjectConfig, regions: list[VideoRegionPrompt], version: str,
                       deadline: float, project: Any) -> dict[str, dict | None]:
        task_id = task.get("id")
        engine = self.engine()
        url = video_url(task, config)
        pin = pinned(self.fetcher.fetch_path(url, task_id, project))
        path = pin.__enter__()
        try:
            info = self.engines.probe(path)
            self._check_rate(info, config, task_id)
            objects, by_object, prompts = object_prompts(regions, info, config,
                                                        lambda region: self.memory.prompts(task_id, region))
            frames = self.engines.plan(info, extra=[k for o in objects for k, _ in o.keyframes])
            session = engine.box_session(path, info, objects, frames=frames)
        except BaseException:
            pin.__exit__(None, None, None)
            raise
        named = {i: TrackObject(r.region_id, r.label) for i, r in by_object.items()}
        run = TrackRun(("interactive", task_id, time.monotonic()), task_id,
                       TrackRunJob(f"track regions of task {task_id}"), priority=Priority.INTERACTIVE)
        run.accumulator = TrackAccumulator(info, frames, lambda obj_id, _: named[obj_id], named)
        partial: dict[str, dict | None] = {}

        def finish(acc: TrackAccumulator, complete: bool) -> None:
            if run.complete():
                run.answered.wait(timeout=60)  # the request records its partial answer first
                self._finish_interactive(run, config, version, acc, partial, project)

        def work() -> None:
            try:
                generator = engine.propagate_boxes(session, priority=lambda: run.priority)
                run_track(run.job, frames=generator, accumulator=run.accumulator, finish=finish,
                          total=len(session.forward) + len(session.backward))
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                log.exception("task %s: tracking regions failed", task_id)
            finally:
                pin.__exit__(None, None, None)
                self._close(run)

        threading.Thread(target=work, name=f"video-track-{task_id}", daemon=True).start()
        run.done.wait(max(0.0, deadline - time.perf_counter()))
        finished = run.claim()
        try:
            if finished and run.error is not None:
                raise BackendError(f"tracking failed: {run.error}")
            tracked = {r["id"]: r for r in run.accumulator.regions(config, self.settings.video_keyframe_tolerance)}
            out: dict[str, dict | None] = {}
            for region in regions:
                answer = tracked.get(region.region_id)
                out[region.region_id] = answer
                partial[region.region_id] = answer
                self.memory.remember(task_id, region, region.region_id, prompts[region.region_id], answer)
        finally:
            run.answered.set()
        if not finished:
            self._count("handed_off")
            self._hand_off(run, project, {"mode": "interactive", "regions": [r.region_id for r in regions]})
            log.info("task %s: %d region(s) answered with %d of %d frames tracked; the rest continues in the background "
                     "and is written as a prediction (model version %s%s)", task_id, len(regions),
                     run.accumulator.frames_done, len(frames), version, TRACKS_SUFFIX)
        return out

    def _finish_interactive(self, run: TrackRun, config: VideoProjectConfig, version: str, acc: TrackAccumulator,
                            partial: dict[str, dict | None], project: Any) -> None:
        regions = acc.regions(config, self.settings.video_keyframe_tolerance)
        for region in regions:
            self.memory.replace(run.task_id, region["id"], partial.get(region["id"]), region)
        if not isinstance(run.task_id, int) or not regions:
            return
        try:
            self._write(project, run.task_id, regions, model_version=version + TRACKS_SUFFIX,
                        replace_versions=(version + TRACKS_SUFFIX,), merge=True)
        except Exception as exc:  # the job records the reason
            run.error = f"the finished tracks could not be written to Label Studio: {exc}"
            log.error("task %s: %s", run.task_id, run.error)

    # ------------------------------------------------------------------ runs
    def _failed(self, key: tuple, task_id: Any, exc: Exception) -> TrackRun:
        run = TrackRun(key, task_id, TrackRunJob("failed"), priority=Priority.BATCH, error=str(exc))
        self._count("task_errors")
        log.error("task %s: %s", task_id, exc)
        run.done.set()
        return run

    def _close(self, run: TrackRun) -> None:
        frames = run.accumulator.frames_done if run.accumulator is not None else 0
        run.job.end(run.error, {"task": run.task_id, "frames": frames})
        run.done.set()
        with self._runs_lock:
            if self._runs.get(run.key) is run:
                del self._runs[run.key]

    def _enqueue(self, run: TrackRun, work: Callable[[], None]) -> None:
        """Prelabel jobs run one at a time on one worker thread, in order."""
        with self._queue_cv:
            self._queue.append((run, work))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="video-prelabel", daemon=True)
                self._worker.start()
            self._queue_cv.notify()

    def _work(self) -> None:
        while True:
            with self._queue_cv:
                if not self._queue:
                    self._queue_cv.wait(timeout=30)
                    if not self._queue:
                        self._worker = None
                        return
                run, work = self._queue.pop(0)
            work()


__all__ = ["KIND", "RegionMemory", "TRACKS_SUFFIX", "VideoService"]
