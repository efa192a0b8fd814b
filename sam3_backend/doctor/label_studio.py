"""Checks of the Label Studio the backend talks to: reachable at ``LABEL_STUDIO_URL``, the
token accepted, and one task's media fetched the way a prediction fetches it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import requests

from ..config import Settings
from ..errors import BackendError
from .net import _json, _quiet_get, _resolves, is_local_host
from .report import FAIL, OK, SKIP, WARN, Check

COMPOSE_LS_URL = "http://label-studio:8080"
_MEDIA_TAGS = ("Image", "Video", "Audio", "HyperText", "Text", "TimeSeries", "Paragraphs")
_MEDIA_URL = re.compile(r"^(/data/|/upload/|upload/|https?://|s3://|gs://|azure-blob://|azure-spi://|data:|file://)")


class LabelStudioChecks:
    """``check_label_studio``, ``check_token`` and ``check_media`` of ``Doctor``, in that order:
    each runs only when the one before found Label Studio (``_ls_reachable``) and the token good
    (``_token_ok``)."""

    settings: Settings
    container: bool
    timeout: float
    project_id: int | None
    task_id: int | None
    _ls_reachable: bool
    _token_ok: bool

    def check_label_studio(self) -> Check:
        url = self.settings.label_studio_url
        if url is None:
            return Check("label-studio", WARN,
                         "LABEL_STUDIO_URL is not set: the backend uses the hostname and token Label Studio sends on "
                         "connect, which this check cannot see",
                         "set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to how this machine reaches Label Studio")
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            return Check("label-studio", FAIL, f"LABEL_STUDIO_URL={url} is not an http(s) URL",
                         "set it like http://label-studio:8080")
        if not _resolves(host):
            return Check("label-studio", FAIL, f"the hostname {host} of LABEL_STUDIO_URL={url} does not resolve here",
                         "check the spelling; a compose service name (label-studio) resolves only inside that compose "
                         "network, from the host use localhost and the published port")
        try:
            r = requests.get(f"{url}/health", timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            if self.container and is_local_host(host):
                fix = (f"inside a container localhost is the container itself: use {COMPOSE_LS_URL} in the compose "
                       "stack, or the host's address")
            else:
                fix = ("is Label Studio running and listening there? check the host and port (`docker compose ps`; "
                       "`label-studio start --port`), and that no firewall is in between")
            return Check("label-studio", FAIL, f"no answer from {url}: {type(exc).__name__}", fix)
        body = _json(r)
        if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "UP":
            return Check("label-studio", FAIL, f"{url}/health answered HTTP {r.status_code} {r.text[:120]!r}, not "
                         "Label Studio's {\"status\": \"UP\"}",
                         "point LABEL_STUDIO_URL at Label Studio's base URL (with its subpath, if served under one)")
        self._ls_reachable = True
        version = _json(_quiet_get(f"{url}/api/version", self.timeout))
        release = version.get("release") if isinstance(version, dict) else None
        return Check("label-studio", OK, f"Label Studio {release or '(version unknown)'} answers at {url}")

    def _auth(self):
        """The Authorization the backend sends to LABEL_STUDIO_URL (legacy token or personal access token)."""
        from ..ls.ls_auth import LabelStudioAuth

        def post(target: str, **kwargs) -> requests.Response:
            return requests.post(target, **kwargs)

        return LabelStudioAuth(self.settings.label_studio_url or "", self.settings.label_studio_api_key,
                               "LABEL_STUDIO_API_KEY", post, self.settings.media_timeout)

    def check_token(self) -> Check:
        url = self.settings.label_studio_url
        if not self._ls_reachable:
            return Check("token", SKIP, "Label Studio is not reachable (see above)")
        if not self.settings.label_studio_api_key:
            return Check("token", WARN, "LABEL_STUDIO_API_KEY is not set: media requests carry the token Label "
                         "Studio sends on connect",
                         "set LABEL_STUDIO_API_KEY to a token from Label Studio's Account & Settings so media "
                         "fetching does not depend on the connect call")
        auth = self._auth()
        kind = "personal access token" if auth.exchanges else "legacy token"
        try:
            headers = auth.headers()
        except BackendError as exc:
            return Check("token", FAIL, str(exc), auth.denied_hint())
        try:
            r = requests.get(f"{url}/api/current-user/whoami", headers=headers, timeout=self.timeout,
                             allow_redirects=False)
        except requests.RequestException as exc:
            return Check("token", FAIL, f"GET {url}/api/current-user/whoami failed: {type(exc).__name__}",
                         "Label Studio answered /health but not its API; check LABEL_STUDIO_URL")
        body = _json(r)
        if r.status_code == 200 and isinstance(body, dict):
            self._token_ok = True
            user = body.get("email") or body.get("username")
            return Check("token", OK, f"LABEL_STUDIO_API_KEY ({kind}) accepted for {user}")
        said = body.get("detail") if isinstance(body, dict) else r.text[:200]
        fix = auth.denied_hint()
        if said and "legacy token authentication has been disabled" in str(said):
            fix = ("legacy tokens are off for this organization: switch on Legacy Tokens under Organization → "
                   "API Tokens Settings (LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true only applies when Label Studio "
                   "creates the organization on its first start), or use a personal access token")
        return Check("token", FAIL, f"Label Studio answered {r.status_code} to the {kind}: {said}", fix)

    # -- media ---------------------------------------------------------------------------------

    def _ls_get(self, path: str, **params):
        r = requests.get(f"{self.settings.label_studio_url}{path}", headers=self._auth().headers(), params=params,
                         timeout=max(self.timeout, 10), allow_redirects=False)
        r.raise_for_status()
        return r.json()

    def _pick_task(self) -> tuple[dict, str | None] | None:
        """(task, its project's label config) of the task to fetch, or None when there is none."""
        if self.task_id is not None:
            task = self._ls_get(f"/api/tasks/{int(self.task_id)}")
            project = self._ls_get(f"/api/projects/{task['project']}") if task.get("project") else {}
            return task, project.get("label_config")
        if self.project_id is not None:
            projects = [self._ls_get(f"/api/projects/{int(self.project_id)}")]
        else:
            body = self._ls_get("/api/projects", page_size=20, ordering="-created_at")
            projects = body.get("results", []) if isinstance(body, dict) else body
        for project in projects:
            body = self._ls_get("/api/tasks", project=project["id"], page_size=1)
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            if tasks:
                return tasks[0], project.get("label_config")
        return None

    def check_media(self) -> Check:
        from ..ls.images import load_image
        from ..ls.media import MediaFetcher

        if not self._token_ok:
            return Check("media", SKIP, "needs a reachable Label Studio and an accepted LABEL_STUDIO_API_KEY")
        try:
            picked = self._pick_task()
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            return Check("media", FAIL, f"could not read a task from Label Studio's API: {type(exc).__name__}: {exc}",
                         "check --task / --project and that the token's user can see the project")
        if picked is None:
            return Check("media", SKIP, "no project with tasks to fetch media from",
                         "import a task (or pass --task ID) and run doctor again")
        task, label_config = picked
        field, url = _media_url(task, label_config)
        if url is None:
            return Check("media", SKIP, f"task {task.get('id')} has no media URL in its data")
        where = f"task {task.get('id')} ({field}={url[:120]})"
        fetcher = MediaFetcher(self.settings)
        try:
            data = fetcher.fetch_bytes(url, task.get("id"))
        except BackendError as exc:
            return Check("media", FAIL, f"{where}: {exc}", _media_fix(str(exc), self))
        kind = _media_kind(label_config, field)
        if kind == "Image":
            try:
                image = load_image(data)
            except BackendError as exc:
                return Check("media", FAIL, f"{where}: fetched {len(data)} bytes but they are not an image: {exc}",
                             "the task's image file is broken or not an image; re-import it")
            return Check("media", OK, f"{where}: fetched {len(data)} bytes, a {image.width}x{image.height} image")
        return Check("media", OK, f"{where}: fetched {len(data)} bytes")


def _media_fields(label_config: str | None) -> list[tuple[str, str]]:
    """(tag, data field) of each object tag in a label config, in document order."""
    if not label_config:
        return []
    pattern = rf"<({'|'.join(_MEDIA_TAGS)})\b[^>]*?\bvalue\s*=\s*\"\$([\w.-]+)\""
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, label_config)]


def _media_url(task: dict, label_config: str | None) -> tuple[str | None, str | None]:
    data = task.get("data") or {}
    for _tag, field in _media_fields(label_config):
        value = data.get(field)
        if isinstance(value, str) and value.strip():
            return field, value
    for field, value in data.items():
        if isinstance(value, str) and _MEDIA_URL.match(value.strip()):
            return field, value
    return None, None


def _media_kind(label_config: str | None, field: str | None) -> str | None:
    for tag, name in _media_fields(label_config):
        if name == field:
            return tag
    return None


def _media_fix(message: str, doctor: LabelStudioChecks) -> str:
    if " 401 " in message or " 403 " in message or "answered 401" in message or "answered 403" in message:
        return doctor._auth().denied_hint()
    if "could not connect" in message:
        return "the task's URL points at a host this machine cannot reach; set LABEL_STUDIO_URL to Label Studio's " \
               "address as seen from here"
    if "not allowed" in message:
        return "add the host to MEDIA_ALLOWED_HOSTS (or set MEDIA_ALLOW_ANY_HOST=true)"
    if "404" in message:
        return "the file behind the task is missing in Label Studio or the task points at a wrong path; re-import it"
    if "MEDIA_LOCAL_DIRS" in message:
        return "add the file's directory to MEDIA_LOCAL_DIRS (and mount it into the container)"
    return "see the message: it names the setting to change"


__all__ = ["COMPOSE_LS_URL", "LabelStudioChecks"]
