"""Label Studio's REST API, through label-studio-sdk, for jobs that work on whole projects.

What a bulk job needs: the project's label config; its tasks page by page (all, or only those
without annotations; or an explicit id list); which tasks already carry a prediction of a model
version (so re-runs never duplicate); and prediction imports in batches.

Connection: an explicit ``ApiAccess`` (base URL + key). The key goes only to that
base URL: the SDK sends every request there, and redirects are not followed. The SDK picks the
header from the key: a legacy token is sent as ``Token``; a personal access token (a JWT refresh
token) is exchanged at ``/api/token/refresh/`` for a short-lived access token sent as
``Bearer`` and exchanged again when it nears expiry.

Retries: reads are retried on 408/409/429/5xx and on transport errors, with exponential
backoff (Retry-After honoured), ``retries`` times; then ``LabelStudioUnavailable``. Writes are
never retried here, since a write that timed out may have been stored: the caller re-checks what
landed before writing again (``jobs.prelabel``). 401/403 → ``LabelStudioAuthError`` at once.

Tasks are paged by id (``id > last seen``, ordered by id), not by page number, so tasks that
gain predictions or annotations meanwhile never shift a page. No torch here.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson

from ..errors import BackendError

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}
FILTERS = ("unlabeled", "all")
IMPORT_BATCH_MAX = 500  # Label Studio validates an import in slices of 500; stay within one slice
_VERSIONS_CHAR_LIMIT = 500  # Label Studio cuts Data Manager list columns at 500 characters
_IDS_PER_QUERY = 200  # explicit id lists travel in the query string: keep URLs short


class LabelStudioApiError(BackendError):
    """Label Studio refused a request (HTTP 502 for our callers: the upstream said no)."""

    status = 502

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class LabelStudioUnavailable(LabelStudioApiError):
    """Unreachable, timing out, or answering 429/5xx beyond the retries."""


class LabelStudioAuthError(LabelStudioApiError):
    """401/403: the key is wrong, revoked, expired or lacks access."""


class LabelStudioNotFound(LabelStudioApiError):
    status = 404


@dataclass(frozen=True)
class ApiAccess:
    """Where Label Studio is and the key to it (a legacy token or a personal access token)."""

    url: str
    api_key: str = field(repr=False)

    def __post_init__(self):
        url = (self.url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL {self.url!r} must start with http:// or https://")
        if not (self.api_key or "").strip():
            raise ValueError("a Label Studio API key is needed (LABEL_STUDIO_API_KEY: a legacy token or a "
                             "personal access token from Account & Settings)")
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "api_key", self.api_key.strip())


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    title: str
    label_config: str
    evaluate_predictions_automatically: bool = False


@dataclass(frozen=True)
class ProjectExport:
    """A project's label config and its annotated tasks (Label Studio's JSON), for training."""

    label_config: str | None
    tasks: list[dict]


@dataclass(frozen=True)
class TaskRef:
    """A task as a job needs it: its id and its data (media URLs)."""

    id: int
    data: dict


@dataclass
class ApiStats:
    """Time spent waiting for Label Studio (for job summaries and benchmarks)."""

    calls: int = 0
    seconds: float = 0.0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, seconds: float, retries: int) -> None:
        with self._lock:
            self.calls += 1
            self.seconds += seconds
            self.retries += retries

    def snapshot(self) -> dict:
        with self._lock:
            return {"calls": self.calls, "seconds": round(self.seconds, 3), "retries": self.retries}


class LabelStudioClient:
    """Thread-safe; one per job (or per connection). ``retries``/``backoff`` shape read retries."""

    def __init__(self, connection: ApiAccess, *, timeout: float = 60.0, retries: int = 5,
                 backoff: float = 1.0, max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep):
        self.connection = connection
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = ApiStats()
        self._sleep = sleep
        self._timeout = timeout
        self._sdk_client = None
        self._sdk_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.connection.url})"

    # -- the SDK and error mapping --------------------------------------------------------------

    @property
    def _sdk(self):
        """The SDK client, built on first use (it validates a personal access token's expiry)."""
        with self._sdk_lock:
            if self._sdk_client is None:
                from label_studio_sdk import LabelStudio

                http = httpx.Client(timeout=self._timeout, follow_redirects=False, trust_env=True)
                self._sdk_client = self._guard(lambda: LabelStudio(
                    base_url=self.connection.url, api_key=self.connection.api_key, httpx_client=http,
                    timeout=self._timeout, max_retries=0), "connect")
            return self._sdk_client

    def _ready(self) -> None:
        assert self._sdk is not None

    def _guard(self, fn: Callable[[], T], what: str) -> T:
        """Run one SDK call, translating its errors into ours (no retry)."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn()
        except ApiError as exc:
            raise self._api_error(exc.status_code, exc.body, what, getattr(exc, "headers", None)) from exc
        except httpx.TimeoutException as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.connection.url} did not answer within {self._timeout:g} s ({what})") from exc
        except httpx.TransportError as exc:
            raise LabelStudioUnavailable(
                f"cannot reach Label Studio at {self.connection.url} ({what}): {type(exc).__name__}: {exc}; "
                "check LABEL_STUDIO_URL and that Label Studio is running") from exc
        except ValueError as exc:  # a 200 that is not JSON: not Label Studio, or a login page
            raise LabelStudioApiError(
                f"{self.connection.url} answered {what} with something that is not Label Studio's JSON ({exc}); "
                "is LABEL_STUDIO_URL really Label Studio's base URL?") from exc

    def _api_error(self, status: int | None, body: Any, what: str, headers=None) -> LabelStudioApiError:
        detail = _detail(body)
        if status in (401, 403):
            return LabelStudioAuthError(
                f"Label Studio refused the API key ({status} on {what}: {detail}); check LABEL_STUDIO_API_KEY "
                "(it may be revoked or expired, or lack access to the project; legacy tokens also need "
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)", status_code=status)
        if status == 404:
            return LabelStudioNotFound(f"Label Studio answered 404 on {what}: {detail}", status_code=status)
        if status in RETRYABLE:
            err = LabelStudioUnavailable(f"Label Studio answered {status} on {what}: {detail}", status_code=status)
            err.retry_after = _retry_after(headers)
            return err
        if status is not None and 300 <= status < 400:
            return LabelStudioApiError(
                f"Label Studio redirected {what} ({status}); set LABEL_STUDIO_URL to the address it redirects to "
                "(credentials are never sent on across a redirect)", status_code=status)
        return LabelStudioApiError(f"Label Studio answered {status} on {what}: {detail}", status_code=status)

    def _read(self, fn: Callable[[], T], what: str) -> T:
        """A read with retries and backoff on transient failures."""
        self._ready()  # the SDK imported and built outside the timed part
        started = time.perf_counter()
        attempt = 0
        try:
            while True:
                try:
                    return self._guard(fn, what)
                except LabelStudioUnavailable as exc:
                    if attempt >= self.retries:
                        raise LabelStudioUnavailable(
                            f"{exc} (gave up after {attempt + 1} attempts)", status_code=exc.status_code) from exc
                    delay = self.delay(attempt, getattr(exc, "retry_after", None))
                    log.warning("%s; retrying in %.1f s", exc, delay)
                    self._sleep(delay)
                    attempt += 1
        finally:
            self.stats.add(time.perf_counter() - started, attempt)

    def _write(self, fn: Callable[[], T], what: str) -> T:
        self._ready()
        started = time.perf_counter()
        try:
            return self._guard(fn, what)
        finally:
            self.stats.add(time.perf_counter() - started, 0)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry ``attempt`` (0-based): Retry-After if given, else exponential ±10 %."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_backoff)
        return min(self.backoff * 2 ** attempt, self.max_backoff) * random.uniform(0.9, 1.1)

    # -- projects ------------------------------------------------------------------------------

    def project(self, project_id: int) -> ProjectInfo:
        try:
            p = self._read(lambda: self._sdk.projects.get(int(project_id)), f"project {project_id}")
        except LabelStudioNotFound as exc:
            raise LabelStudioNotFound(
                f"project {project_id} does not exist in Label Studio at {self.connection.url} (or the API key "
                "cannot see it)", status_code=404) from exc
        return ProjectInfo(id=int(p.id), title=p.title or "", label_config=p.label_config or "",
                           evaluate_predictions_automatically=bool(getattr(p, "evaluate_predictions_automatically",
                                                                           False)))

    # -- tasks ---------------------------------------------------------------------------------

    def _task_page(self, project_id: int, items: list[dict], *, after: int, page_size: int, include: str | None,
                   selected: Sequence[int] | None = None, fields: str = "task_only"):
        filters = [{"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after}, *items]
        query: dict[str, Any] = {"filters": {"conjunction": "and", "items": filters}, "ordering": ["tasks:id"]}
        if selected is not None:
            query["selectedItems"] = {"all": False, "included": [int(i) for i in selected]}
        try:
            pager = self._read(lambda: self._sdk.tasks.list(
                project=int(project_id), page=1, page_size=page_size, fields=fields, include=include,
                query=json.dumps(query)), f"task list of project {project_id}")
        except LabelStudioNotFound:
            return [], 0  # past the last page (the SDK's pager says so with a 404)
        return list(pager.items or []), int(getattr(pager.response, "total", 0) or 0)

    def _walk(self, project_id: int, items: list[dict], *, page_size: int, include: str | None,
              task_ids: Sequence[int] | None, fields: str = "task_only") -> Iterator[tuple[list, int]]:
        """(page of SDK tasks, total matching) pages, ascending id; explicit ids in slices."""
        slices = [None] if task_ids is None else [
            sorted(task_ids)[i : i + _IDS_PER_QUERY] for i in range(0, len(task_ids), _IDS_PER_QUERY)]
        for ids in slices:
            after = 0
            while True:
                page, total = self._task_page(project_id, items, after=after, page_size=page_size, include=include,
                                              selected=ids, fields=fields)
                if not page:
                    break
                yield page, total
                after = max(int(t.id) for t in page)
                if len(page) < page_size:
                    break

    def iter_tasks(self, project_id: int, *, filter: str = "unlabeled", task_ids: Sequence[int] | None = None,
                   page_size: int = 500) -> Iterator[tuple[list[TaskRef], int | None]]:
        """Pages of tasks (id and data), ascending id, with the number matching (when known).

        ``filter``: "unlabeled" (no annotations; cancelled ones do not count) or "all";
        ``task_ids``: only these tasks (ids not in the project are left out silently).
        """
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {filter!r}")
        items = [] if filter == "all" else [
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]
        for page, total in self._walk(project_id, items, page_size=page_size, include="id,data", task_ids=task_ids):
            refs = [TaskRef(int(t.id), dict(t.data or {})) for t in page]
            yield refs, (total if task_ids is None else None)

    def annotated_tasks(self, project_id: int, *, page_size: int = 100) -> Iterator[list[dict]]:
        """Pages of the tasks that have annotations, ascending id, each as Label Studio's JSON
        ``{"id", "data", "annotations": [...]}`` (training reconciles its annotation store with it)."""
        items = [{"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]
        # No ``include``: with it, Label Studio 1.23 cuts every annotation down to its id.
        for page, _ in self._walk(project_id, items, page_size=page_size, include=None, task_ids=None, fields="all"):
            yield [{"id": int(t.id), "data": dict(t.data or {}), "annotations": list(getattr(t, "annotations", None) or [])}
                   for t in page]

    def tasks_with_prediction(self, project_id: int, model_version: str, *, task_ids: Sequence[int] | None = None,
                              page_size: int = 1000) -> set[int]:
        """Ids of tasks that carry a prediction whose model_version is exactly ``model_version``.

        Label Studio's filter matches substrings, so each candidate's list of versions is checked
        exactly; a list cut at Label Studio's 500-character column limit is settled per task.
        """
        items = [{"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
                  "value": [model_version]}]
        found: set[int] = set()
        for page, _ in self._walk(project_id, items, page_size=page_size, include="id,predictions_model_versions",
                                  task_ids=task_ids):
            for task in page:
                versions = getattr(task, "predictions_model_versions", None) or ""
                if isinstance(versions, list):
                    listed = [str(v).strip() for v in versions]
                else:
                    listed = [v.strip() for v in str(versions).split(",")]
                if model_version in listed:
                    found.add(int(task.id))
                elif len(str(versions)) >= _VERSIONS_CHAR_LIMIT and self._task_has_version(int(task.id), model_version):
                    found.add(int(task.id))
        return found

    def _task_has_version(self, task_id: int, model_version: str) -> bool:
        preds = self._read(lambda: self._sdk.predictions.list(task=task_id), f"predictions of task {task_id}")
        return any(getattr(p, "model_version", None) == model_version for p in preds or [])

    def existing_tasks(self, project_id: int, task_ids: Iterable[int]) -> set[int]:
        """Which of ``task_ids`` still exist in the project."""
        ids = sorted({int(i) for i in task_ids})
        found: set[int] = set()
        for page, _ in self._walk(project_id, [], page_size=_IDS_PER_QUERY, include="id", task_ids=ids):
            found.update(int(t.id) for t in page)
        return found

    # -- predictions ---------------------------------------------------------------------------

    def import_predictions(self, project_id: int, predictions: Sequence[dict]) -> int:
        """Create ``predictions`` ({"task", "result", "score", "model_version"}) in one request.

        Not retried (see the module doc); at most ``IMPORT_BATCH_MAX`` per call, so Label Studio
        validates the whole batch before storing any of it.
        """
        from label_studio_sdk.core.api_error import ApiError

        if not predictions:
            return 0
        if len(predictions) > IMPORT_BATCH_MAX:
            raise ValueError(f"import at most {IMPORT_BATCH_MAX} predictions per call, got {len(predictions)}")
        # The body is encoded here with orjson and sent through the SDK's HTTP client (its base URL,
        # its auth headers and token refresh): the SDK's own encoder walks every RLE number in
        # Python, ~500x slower (134 ms vs 0.26 ms for 16 brush predictions at 640x480).
        body = orjson.dumps([{"task": int(p["task"]), "result": p["result"], "score": p.get("score"),
                              "model_version": p.get("model_version")} for p in predictions],
                            option=orjson.OPT_SERIALIZE_NUMPY)
        path = f"api/projects/{int(project_id)}/import/predictions"

        def send():
            http = self._sdk._client_wrapper.httpx_client
            response = http.request(path, method="POST", content=body, headers={"Content-Type": "application/json"},
                                    request_options={"max_retries": 0})
            try:
                answer = response.json()
            except ValueError:
                answer = response.text
            if not 200 <= response.status_code < 300:
                raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=answer)
            return answer

        answer = self._write(send, f"prediction import into project {project_id}")
        created = answer.get("created") if isinstance(answer, dict) else None
        return int(created) if created is not None else len(predictions)


    def upsert_prediction(self, task_id: int, result: list[dict], *, score: float, model_version: str,
                          replace_versions: Sequence[str] = (), merge: bool = False) -> int:
        """Write ``result`` as one prediction of the task; returns the prediction's id.

        ``replace_versions``: update (instead of adding to) the task's prediction that carries one
        of these model versions, if any. ``merge``: keep that prediction's regions whose ids are not
        in ``result`` (several background video tracks of one task end up in one prediction).
        Used for single late predictions (video tracks that outlive their request); bulk jobs use
        ``import_predictions``. The write is not retried (it may have been stored).
        """
        task_id = int(task_id)
        if replace_versions:
            existing = self._read(lambda: self._sdk.predictions.list(task=task_id), f"predictions of task {task_id}")
            for old in existing or []:
                if getattr(old, "model_version", None) in replace_versions:
                    regions = list(result)
                    if merge:
                        ids = {r.get("id") for r in result}
                        regions = [r for r in (old.result or []) if r.get("id") not in ids] + regions
                    self._write(lambda: self._sdk.predictions.update(int(old.id), result=regions, score=score,
                                                                     model_version=model_version),
                                f"prediction {old.id} of task {task_id}")
                    return int(old.id)
        created = self._write(lambda: self._sdk.predictions.create(task=task_id, result=result, score=score,
                                                                   model_version=model_version),
                              f"a prediction for task {task_id}")
        return int(created.id)


def _detail(body: Any) -> str:
    """Label Studio's error detail, short: validation errors or ``detail``, never an HTML page."""
    if isinstance(body, dict):
        errors = body.get("validation_errors")
        text = json.dumps(errors) if errors else str(body.get("detail") or body)
    elif isinstance(body, str) and body.lstrip().startswith("<"):
        text = "an HTML page (wrong URL?)"
    else:
        text = str(body)
    return text if len(text) <= 500 else text[:500] + "..."


def _retry_after(headers) -> float | None:
    if not headers:
        return None
    value = {k.lower(): v for k, v in dict(headers).items()}.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


__all__ = [
    "IMPORT_BATCH_MAX", "ApiStats", "LabelStudioApiError", "LabelStudioAuthError", "LabelStudioClient",
    "ApiAccess", "LabelStudioNotFound", "LabelStudioUnavailable", "ProjectExport", "ProjectInfo", "TaskRef",
]
