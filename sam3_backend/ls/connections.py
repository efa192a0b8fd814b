"""Which Label Studio a request's media come from, and which key may be sent there.

One backend can serve several projects, even several Label Studio instances, and ``POST /setup``
is unauthenticated unless basic auth is on. So credentials follow two rules:

* the key from the environment (``LABEL_STUDIO_API_KEY``) only ever goes to
  ``LABEL_STUDIO_URL`` (``Settings`` refuses a key without that URL);
* a token that a ``/setup`` sent only ever goes to the hostname of that same ``/setup``. It is
  kept per project (Label Studio's ``project`` field, ``"<id>.<created_at>"``), so one caller
  cannot redirect another project's media, and a ``/setup`` with an empty token clears that
  project's token rather than keeping another host's alive.

With ``LABEL_STUDIO_URL`` set, every project's Label Studio is reached there (the hostname
Label Studio announces, often ``http://localhost:8080``, is rarely reachable from a container)
with the environment's key, or, without one, with the project's ``/setup`` token only when that
``/setup`` came from the same origin.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from ..config import Settings
from .client import ApiAccess
from .ls_auth import LabelStudioAuth
from .urls import origin

log = logging.getLogger(__name__)

MAX_PROJECTS = 256  # /setup entries kept (least recently used dropped): unauthenticated input stays bounded


@dataclass(frozen=True)
class _SetupEntry:
    hostname: str | None  # an http(s) base URL, or None when /setup sent none usable
    token: str | None


@dataclass(frozen=True)
class LabelStudioConnection:
    """Where this backend reaches one Label Studio, and how it authenticates there.

    url: base URL requests go to. announced_url: the base URL Label Studio announced in /setup
    when it differs from ``url`` (absolute task URLs at it are moved to ``url``). auth: the key
    for ``url`` only.
    """

    url: str
    announced_url: str | None
    auth: LabelStudioAuth

    @property
    def origin(self) -> tuple[str, str, int]:
        return origin(self.url)


def setup_hostname(hostname: object) -> str | None:
    """The /setup ``hostname`` as a base URL, or None (with a warning) when it is not http(s)."""
    if not isinstance(hostname, str) or not hostname.strip():
        return None
    url = hostname.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        log.warning("ignoring /setup hostname %r: not an http(s) URL like http://localhost:8080", hostname)
        return None
    return url


class Connections:
    """Per-project Label Studio connections, bounded; thread-safe."""

    def __init__(self, settings: Settings, post: Callable[..., requests.Response], capacity: int = MAX_PROJECTS):
        self._settings = settings
        self._post = post
        self._capacity = capacity
        self._setups: OrderedDict[str, _SetupEntry] = OrderedDict()
        self._auths: OrderedDict[tuple[str, str | None], LabelStudioAuth] = OrderedDict()
        self._lock = threading.Lock()

    def setup(self, project: str | None, hostname: object, token: object) -> None:
        """Remember what a /setup sent for ``project`` (replacing, never merging, earlier values)."""
        entry = _SetupEntry(setup_hostname(hostname), token.strip() or None if isinstance(token, str) else None)
        key = project or ""
        with self._lock:
            self._setups.pop(key, None)
            self._setups[key] = entry
            while len(self._setups) > self._capacity:
                self._setups.popitem(last=False)

    def for_project(self, project: str | None) -> LabelStudioConnection | None:
        """The connection for a request of ``project`` (None: no Label Studio known for it)."""
        env_url = self._settings.label_studio_url
        with self._lock:
            entry = self._setups.get(project or "")
            if entry is not None:
                self._setups.move_to_end(project or "")
        if env_url:
            env_url = env_url.rstrip("/")
            announced = entry.hostname if entry is not None else None
            if self._settings.label_studio_api_key:
                key, source = self._settings.label_studio_api_key, "LABEL_STUDIO_API_KEY"
            elif entry is not None and announced and origin(announced) == origin(env_url):
                key, source = entry.token, f"the token /setup sent for project {project}"
            else:
                key, source = None, "LABEL_STUDIO_API_KEY"
            return LabelStudioConnection(env_url, announced if announced != env_url else None, self._auth(env_url, key, source))
        if entry is None or entry.hostname is None:
            return None
        source = f"the token /setup sent for project {project}"
        return LabelStudioConnection(entry.hostname, None, self._auth(entry.hostname, entry.token, source))

    def setup_key(self, project: str | int | None) -> str | None:
        """Label Studio's ``"<id>.<created_at>"`` project key: as given, or for a bare id (the jobs
        API, a training job) the one of the most recent /setup of a project with that id."""
        key = project if isinstance(project, str) or project is None else str(project)
        if key is not None and "." not in key:
            with self._lock:
                matches = [k for k in self._setups if k.split(".", 1)[0] == key]
            key = matches[-1] if matches else key
        return key

    def api_access(self, project: str | int | None) -> ApiAccess | None:
        """URL + key for Label Studio's API on behalf of ``project`` (jobs write predictions with it),
        by the same rules as media: the environment's pair, else that project's /setup pair.

        ``project`` is Label Studio's ``"<id>.<created_at>"`` or a bare id (the jobs API): a bare id
        takes the most recent /setup of a project with that id.
        """
        conn = self.for_project(self.setup_key(project))
        token = conn.auth.api_key()[0] if conn is not None else None
        return ApiAccess(conn.url, token) if conn is not None and token else None

    def _auth(self, url: str, key: str | None, source: str) -> LabelStudioAuth:
        """One auth object per (url, key), so exchanged access tokens are cached across requests."""
        with self._lock:
            auth = self._auths.get((url, key))
            if auth is None:
                auth = LabelStudioAuth(url, key, source, self._post, self._settings.media_timeout)
                self._auths[(url, key)] = auth
                while len(self._auths) > self._capacity:
                    self._auths.popitem(last=False)
            else:
                self._auths.move_to_end((url, key))
            return auth


__all__ = ["Connections", "LabelStudioConnection", "MAX_PROJECTS", "setup_hostname"]
