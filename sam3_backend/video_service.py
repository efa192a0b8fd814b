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
loaded model (``engine.video``) and shares its scheduler, so a click on an image waits for at most
one video frame.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .engine.scheduler import Priority
from .errors import BackendError, BadRequest, EngineNotReady
from .jobs.track import TrackAccumulator, TrackObject, run_track
from .ls.client import LabelStudioClient
from .ls.media import MediaFetcher
from .ls.results import prediction
from .ls.video_config import VideoProjectConfig
from .ls.video_memory import RegionMemory
from .ls.video_prompts import VideoRegionPrompt, keyframe_box, parse_video_context
from .ls.video_results import frame_start, frames_count, stable_region_id
from .types import VideoInfo, VideoObjectPrompt

log = logging.getLogger(__name__)

TRACKS_SUFFIX = "-tracks"  # model version suffix of predictions written by background interactive tracks
KIND = "track"  # job kind of a run that outlives its request
_STORE_EVERY = 1.0  # seconds between progress writes to the job store


# ---------------------------------------------------------------------------------------- jobs


class _RunJob:
    """The ``JobContext`` surface of one tracking run (``progress``, ``cancelled``).

    A run starts as a plain thread of this process; when it outlives its request it is recorded
    as a ``track`` job (``attach``): from then on its progress goes to the job store (throttled),
    a cancel there stops it, and ``end`` records how it finished.
    """

    def __init__(self, name: str):
        self.name = name
        self.state: dict[str, Any] = {}
        self._cancel = threading.Event()
        self._store = None
        self._job_id: str | None = None
        self._written_at = 0.0
        self._lock = threading.Lock()

    @property
    def job_id(self) -> str | None:
        return self._job_id

    def attach(self, store, kind: str, project: Any, params: dict) -> None:
        """Record this run as a running job (owner: this process)."""
        try:
            job = store.create(kind, project, params)
            store.start(job.id)
        except Exception:  # the store is bookkeeping: never fail the tracking for it
            log.exception("could not record %s as a job", self.name)
            return
        with self._lock:
            self._store, self._job_id = store, job.id
        self._flush(force=True)

    def progress(self, *, done=None, total=None, failed=None, **extra) -> None:
        with self._lock:
            self.state.update({k: v for k, v in dict(done=done, total=total, failed=failed, **extra).items()
                               if v is not None})
        self._flush()

    def _flush(self, force: bool = False) -> None:
        with self._lock:
            store, job_id, state = self._store, self._job_id, dict(self.state)
            due = force or time.monotonic() - self._written_at >= _STORE_EVERY
            if store is None or not due:
                return
            self._written_at = time.monotonic()
        counters = {k: state.pop(k) for k in ("done", "total", "failed") if k in state}
        try:
            store.progress(job_id, **counters, **state)
            if store.cancel_requested(job_id):
                self._cancel.set()
        except Exception:
            log.warning("progress of job %s could not be recorded", job_id, exc_info=True)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def end(self, error: str | None, result: dict | None = None) -> None:
        """Record how the job ended (no-op for a run that never became a job)."""
        with self._lock:
            store, job_id = self._store, self._job_id
        if store is None:
            return
        self._flush(force=True)
        try:
            if error is not None:
                store.fail(job_id, error)
            else:
                store.finish(job_id, result or {}, cancelled=self._cancel.is_set())
        except Exception:
            log.warning("the end of job %s could not be recorded", job_id, exc_info=True)


@dataclass
class _Run:
    """One tracking job and what requests need from it."""

    key: tuple
    task_id: Any
    job: _RunJob
    priority: Any
    accumulator: TrackAccumulator | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    completed: bool = False  # the job has its final result (set with ``lock`` held)
    handed_off: bool = False  # a request answered without the final result: the job writes it
    answered: threading.Event = field(default_factory=threading.Event)  # that request is done with the run
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """After waiting: True if the result is final (the request answers with it), else the
        job is handed off to the background (it writes the result itself when done)."""
        with self.lock:
            if self.completed or self.done.is_set():
                return True
            self.handed_off = True
            self.priority = Priority.BACKGROUND
            return False

    def complete(self) -> bool:
        """Called by the job at its end; True if it must write the result itself."""
        with self.lock:
            self.completed = True
            return self.handed_off


@contextmanager
def _pinned(path: Path):
    """A private hard link (or copy) of a media-cache file for the length of a job, so the cache
    can evict the original meanwhile without pulling the video from under the decoder."""
    folder = Path(tempfile.mkdtemp(prefix="sam3-video-"))
    target = folder / ("video" + path.suffix)
    try:
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------- service


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
        self._engine = None
        self._engine_lock = threading.Lock()
        self._infos: OrderedDict[tuple, VideoInfo] = OrderedDict()
        self._infos_lock = threading.Lock()
        self._runs: dict[tuple, _Run] = {}
        self._runs_lock = threading.Lock()
        self._queue: list[tuple[_Run, Callable[[], None]]] = []
        self._queue_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self.stats = {"prelabel_tasks": 0, "interactive_requests": 0, "cached_regions": 0, "handed_off": 0,
                      "task_errors": 0, "background_writes": 0}  # for /metrics (sam3_video_events_total)
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ engine
    def engine(self):
        """The video engine over the current image engine's model (built on first use)."""
        image_engine = self._engine_provider()
        loaded = getattr(image_engine, "model", None)
        if loaded is None:
            raise EngineNotReady(getattr(image_engine, "reason", "the SAM 3 model is still loading; retry in a moment"))
        with self._engine_lock:
            if self._engine is None or self._engine.model_version != loaded.version:
                from .engine.video.models import build_video_models
                from .engine.video.tracker import Sam3VideoEngine

                s = self.settings
                self._engine = Sam3VideoEngine(
                    build_video_models(loaded), image_engine.scheduler,
                    new_object_threshold=s.video_score_threshold,
                    detection_threshold=min(0.5, s.video_score_threshold), max_objects=s.video_max_objects,
                    hotstart_frames=s.video_hotstart_frames,
                    wait_timeout=getattr(image_engine, "wait_timeout", None),
                )
            return self._engine

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

    def _hand_off(self, run: "_Run", project: Any, params: dict) -> None:
        """The run outlives its request: record it as a job (``GET /jobs``)."""
        if self.jobs is not None:
            from .jobs.handoff import project_id

            run.job.attach(self.jobs, KIND, project_id(project, []) or project, {"task": run.task_id, **params})

    def _probe(self, path: Path) -> VideoInfo:
        from .engine.video.decode import probe_video

        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._infos_lock:
            info = self._infos.get(key)
        if info is None:
            info = probe_video(path, max_pixels=self.settings.video_max_pixels)
            with self._infos_lock:
                self._infos[key] = info
                while len(self._infos) > 64:
                    self._infos.popitem(last=False)
        return info

    def _video_url(self, task: dict, config: VideoProjectConfig) -> str:
        data = task.get("data")
        url = data.get(config.video_value) if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise BadRequest(f"task {task.get('id')} has no video at data.{config.video_value}")
        return url

    def _plan(self, info: VideoInfo, extra=()):
        from .engine.video.tracker import plan_frames

        return plan_frames(info, stride=self.settings.video_stride, max_frames=self.settings.video_max_frames, extra=extra)

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

    def _prelabel_run(self, task: dict, config: VideoProjectConfig, version: str, project: Any) -> _Run:
        task_id = task.get("id")
        concepts = tuple(config.concept_text(label) for label in config.labels)
        try:
            url = self._video_url(task, config)
        except BackendError as exc:
            return self._failed(("prelabel", task_id), task_id, exc)
        key = ("prelabel", task_id, url, concepts, version)
        with self._runs_lock:
            existing = self._runs.get(key)
            if existing is not None:
                return existing  # already being tracked (Label Studio asked again): wait for that job
            run = _Run(key, task_id, _RunJob(f"track task {task_id}"), priority=Priority.BATCH)
            self._runs[key] = run

        def work() -> None:
            try:
                engine = self.engine()
                with _pinned(self.fetcher.fetch_path(url, task_id, project)) as path:
                    info = self._probe(path)
                    self._check_rate(info, config, task_id)
                    frames = self._plan(info)
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

    def _finish_prelabel(self, run: _Run, config: VideoProjectConfig, version: str, acc: TrackAccumulator,
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
                regions.append(_with_label(answer, region.label))
        return prediction(regions, [r["score"] for r in regions], version)

    def _object_prompts(self, task_id: Any, regions: list[VideoRegionPrompt], info: VideoInfo,
                        config: VideoProjectConfig) -> tuple[list[VideoObjectPrompt], dict[int, VideoRegionPrompt], dict]:
        """Label Studio regions ↔ engine objects, in one place: object ``i`` is ``regions[i]``;
        its keyframes (``RegionMemory.prompts``) become (frame index, pixel box) prompts."""
        last = frames_count(info.duration, config.framerate)
        objects, by_object, used = [], {}, {}
        for i, region in enumerate(regions):
            prompts = self.memory.prompts(task_id, region)
            keyframes = []
            for key in prompts:
                if key.frame > last:
                    raise BadRequest(
                        f"region {region.region_id!r} has a keyframe on frame {key.frame}, but the video has {last} frames "
                        f"at the config's framerate={config.framerate:g} ({info.duration:.2f} s)"
                    )
                index = info.index_at(frame_start(key.frame, config.framerate))
                keyframes.append((index, keyframe_box(key, info.width, info.height, f"keyframe of region {region.region_id!r}")))
            dedup = {}
            for index, box in keyframes:
                dedup[index] = box  # two Label Studio frames on one source frame: the later wins
            objects.append(VideoObjectPrompt(i, tuple(sorted(dedup.items()))))
            by_object[i] = region
            used[region.region_id] = prompts
        return objects, by_object, used

    def _track_regions(self, task: dict, config: VideoProjectConfig, regions: list[VideoRegionPrompt], version: str,
                       deadline: float, project: Any) -> dict[str, dict | None]:
        task_id = task.get("id")
        engine = self.engine()
        url = self._video_url(task, config)
        pin = _pinned(self.fetcher.fetch_path(url, task_id, project))
        path = pin.__enter__()
        try:
            info = self._probe(path)
            self._check_rate(info, config, task_id)
            objects, by_object, prompts = self._object_prompts(task_id, regions, info, config)
            frames = self._plan(info, extra=[k for o in objects for k, _ in o.keyframes])
            session = engine.box_session(path, info, objects, frames=frames)
        except BaseException:
            pin.__exit__(None, None, None)
            raise
        named = {i: TrackObject(r.region_id, r.label) for i, r in by_object.items()}
        run = _Run(("interactive", task_id, time.monotonic()), task_id, _RunJob(f"track regions of task {task_id}"),
                   priority=Priority.INTERACTIVE)
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

    def _finish_interactive(self, run: _Run, config: VideoProjectConfig, version: str, acc: TrackAccumulator,
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
    def _failed(self, key: tuple, task_id: Any, exc: Exception) -> _Run:
        run = _Run(key, task_id, _RunJob("failed"), priority=Priority.BATCH, error=str(exc))
        self._count("task_errors")
        log.error("task %s: %s", task_id, exc)
        run.done.set()
        return run

    def _close(self, run: _Run) -> None:
        frames = run.accumulator.frames_done if run.accumulator is not None else 0
        run.job.end(run.error, {"task": run.task_id, "frames": frames})
        run.done.set()
        with self._runs_lock:
            if self._runs.get(run.key) is run:
                del self._runs[run.key]

    def _enqueue(self, run: _Run, work: Callable[[], None]) -> None:
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


def _with_label(region: dict, label: str | None) -> dict:
    """The region with the request's label (the editor puts the active label over it anyway)."""
    value = dict(region["value"])
    if label is None:
        value.pop("labels", None)
    else:
        value["labels"] = [label]
    return {**region, "value": value}


__all__ = ["KIND", "RegionMemory", "TRACKS_SUFFIX", "VideoService"]
