"""Fetch task media the way Label Studio serves them, safely.

A task's media URL is one of:

- relative to Label Studio: ``/data/upload/<project>/<file>``, ``/data/local-files/?d=<path>``,
  ``/tasks/<id>/presign/?fileuri=...`` (prefixed with the Label Studio URL, sent with its token);
- a cloud storage URI (``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``), resolved through
  ``GET {ls}/tasks/{task_id}/presign/?fileuri=<urlsafe base64 of the URI>``, which redirects to a
  presigned URL at the provider;
- an absolute ``http(s)://`` URL, a ``data:`` URI, or a local path (``file://`` or absolute) that
  lies under one of ``MEDIA_LOCAL_DIRS``.

Safety rules (this is never an open proxy):

* every URL is read the way the HTTP client will connect (``urls.client_origin``): URLs that
  parsers read differently are refused;
* the Label Studio host of the request's project (``connections``) and ``MEDIA_ALLOWED_HOSTS``
  are fetched on any address; the storage URL Label Studio's presign endpoint redirects to, and
  any host under ``MEDIA_ALLOW_ANY_HOST``, only on public addresses, checked on the connected
  socket (``netguard``); everything else is refused;
* redirects are followed by hand and every hop is checked again;
* a Label Studio token goes only to that Label Studio's origin;
* size (``MEDIA_MAX_BYTES``) and total time (``MEDIA_TIMEOUT``) are enforced while streaming.

Downloads land in the on-disk cache of ``media_cache``, keyed by the task URL (resolved against
Label Studio, never a presigned URL). Decoding images is ``images.load_image``, re-exported here.
The pure URL rules live in ``urls``, Label Studio tokens in ``ls_auth``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3

from ..config import Settings
from ..errors import BadRequest, MediaUnavailable
from ..lru import SizedLRU
from ..types import ImageInput
from .connections import Connections, LabelStudioConnection
from .images import load_image
from .media_cache import DiskCache
from .netguard import BlockedAddress, check_resolved, public_only_session
from .urls import (
    CLOUD_SCHEMES,
    LS_PATH_PREFIXES,
    MB,
    PRESIGN_PATH,
    client_origin,
    data_suffix,
    decode_data_uri,
    host_matches,
    media_suffix,
    rebase,
    redact,
    short_error,
    suffix_of,
    too_big,
)

log = logging.getLogger(__name__)

_REDIRECT_CODES = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


@dataclass
class MediaStats:
    """Counters for /metrics and tests. ``downloaded_bytes`` counts network bytes only."""

    hits: int = 0
    misses: int = 0
    downloaded_bytes: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class _Source:
    """Where one task URL leads: ``kind`` is "http", "data" or "local"."""

    kind: str
    location: str  # first URL to GET, the data: URI, or the local path
    cache_key: str  # the task URL resolved against Label Studio (never a presigned URL)
    suffix: str = ""  # file extension for the cached file (helps video readers)


class MediaFetcher:
    """Fetches task media for the Label Studio side; thread-safe, one per process.

    Every fetch names the Label Studio project it is for (``project``, as Label Studio sends it):
    relative URLs resolve against that project's Label Studio and only its token is sent there
    (``connections``). ``setup`` records what a ``POST /setup`` sent.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._lock = threading.Lock()  # guards the stats
        self.connections = Connections(settings, self._post)
        self._stripes = [threading.Lock() for _ in range(64)]  # one download per cache key
        self._local = threading.local()
        self._cache = DiskCache(settings.media_cache_dir, settings.media_cache_mb * MB)
        self._decoded = SizedLRU(settings.media_image_cache_mb * MB, sizeof=lambda im: im.pixels.nbytes)
        self.stats = MediaStats()
        self.observe: Callable[[str, float], None] | None = None  # hears "fetch" and "decode" timings

    # -- configuration -----------------------------------------------------------------------

    def setup(self, project: str | None, hostname: object, access_token: object) -> None:
        """Record the hostname and token a /setup sent for ``project`` (see ``connections``)."""
        self.connections.setup(project, hostname, access_token)

    def label_studio_url(self, project: str | None = None) -> str | None:
        """The Label Studio base URL media of ``project`` are fetched from, if known."""
        conn = self.connections.for_project(project)
        return conn.url if conn is not None else None

    # -- public API ----------------------------------------------------------------------------

    def fetch_bytes(self, url: str, task_id: int | None = None, project: str | None = None) -> bytes:
        """The media bytes behind a task URL. Raises BadRequest (malformed URL) or MediaUnavailable."""
        conn = self.connections.for_project(project)
        return self._bytes_for(self._resolve(url, task_id, conn), url, conn)

    def _bytes_for(self, source: "_Source", url: str, conn: LabelStudioConnection | None) -> bytes:
        if source.kind == "data":
            return decode_data_uri(source.location, self._settings.media_max_bytes)
        if source.kind == "local":
            return self._read_local(Path(source.location))
        for _ in range(3):
            path = self._fetch_cached(source, conn)
            try:
                return path.read_bytes()
            except FileNotFoundError:  # evicted by another process in between: fetch again
                continue
        raise MediaUnavailable(
            f"the media cache {self._cache.root} keeps losing {redact(url)}; is MEDIA_CACHE_MB too small for it?"
        )

    def fetch_path(self, url: str, task_id: int | None = None, project: str | None = None) -> Path:
        """Like ``fetch_bytes`` but returns a file (the cached copy, or the allowed local file).

        Open it promptly: a cached file can be evicted when later downloads need the room.
        """
        conn = self.connections.for_project(project)
        source = self._resolve(url, task_id, conn)
        if source.kind == "local":
            path = Path(source.location)
            self._check_local_size(path)
            return path
        if source.kind == "data":
            data = decode_data_uri(source.location, self._settings.media_max_bytes)
            final = self._cache.path_for(source.cache_key, source.suffix)
            with self._stripe(source.cache_key):
                if not self._cache.touch(final):
                    _, evicted = self._cache.store(final, lambda fh: fh.write(data))
                    with self._lock:
                        self.stats.evictions += evicted
            return final
        return self._fetch_cached(source, conn)

    def fetch_image(self, url: str, task_id: int | None = None, project: str | None = None) -> ImageInput:
        """``load_image(fetch_bytes(url, task_id))``, with the decoded result kept in memory.

        Every interactive click on a task sends its image URL again; re-reading and decoding a
        1080p file costs ~10 ms a click, the decoded-image LRU makes it free.
        """
        conn = self.connections.for_project(project)
        source = self._resolve(url, task_id, conn)
        key = self._decoded_key(source)
        if key is not None:
            cached = self._decoded.get(key)
            if cached is not None:
                return cached
        started = time.perf_counter()
        data = self._bytes_for(source, url, conn)
        fetched = time.perf_counter()
        image = load_image(data, self._settings.media_max_pixels)
        if self.observe is not None:
            self.observe("fetch", fetched - started)
            self.observe("decode", time.perf_counter() - fetched)
        if key is not None:
            self._decoded.put(key, image)
        return image

    def decoded_cache_stats(self):
        """Hits, misses, entries and bytes of the decoded-image cache (for /metrics)."""
        return self._decoded.stats()

    def _decoded_key(self, source: "_Source") -> tuple | None:
        """Same URL, same image: remote files are immutable to us (as in the disk cache); local
        files count as changed when their size or mtime does; data URIs are not worth keeping."""
        if source.kind == "local":
            try:
                st = Path(source.location).stat()
            except OSError:
                return None
            return ("local", source.location, st.st_size, st.st_mtime_ns)
        if source.kind == "data":
            return None
        return ("remote", source.cache_key)

    # -- resolving task URLs -----------------------------------------------------------------

    def _resolve(self, url: str, task_id: int | None, conn: LabelStudioConnection | None) -> _Source:
        if not isinstance(url, str) or not url.strip():
            raise BadRequest(f"task media URL must be a non-empty string, got {url!r}")
        url = url.strip()
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise BadRequest(f"task media URL {url[:200]!r} is malformed: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme == "data":
            return _Source("data", url, "data:" + hashlib.sha256(url.encode()).hexdigest(), data_suffix(url))
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise BadRequest(
                    f"{redact(url)} is a cloud storage URI; it needs the task id to be presigned by Label Studio"
                )
            if isinstance(task_id, bool) or not str(task_id).isdigit():
                raise BadRequest(f"task id must be a non-negative integer, got {task_id!r}")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            presign = f"{self._require_ls(url, conn)}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"
            return _Source("http", presign, url, suffix_of(parts.path))
        if scheme in ("http", "https"):
            if conn is not None:
                url = rebase(url, conn.announced_url, conn.url)
            return _Source("http", url, url, media_suffix(url))
        if scheme == "file":
            return _Source("local", str(self._allowed_local(unquote(parts.path), url)), url)
        if scheme:
            raise BadRequest(
                f"task media URL {redact(url)} has unsupported scheme {scheme!r}: "
                "use http(s), /data/..., a cloud URI or data:"
            )
        if url.startswith(("upload/", "/upload/")):  # old Label Studio exports
            url = "/data/" + url.lstrip("/")
        if url.startswith("/") and not url.startswith("//"):
            if not url.startswith(LS_PATH_PREFIXES) and self._settings.media_local_dirs:
                local = self._maybe_local(url)
                if local is not None:
                    return _Source("local", str(local), url)
            full = self._require_ls(url, conn) + url
            return _Source("http", full, full, media_suffix(url))
        raise BadRequest(f"task media URL {url[:200]!r} is neither absolute nor relative to Label Studio (/data/...)")

    @staticmethod
    def _require_ls(url: str, conn: LabelStudioConnection | None) -> str:
        if conn is None:
            raise MediaUnavailable(
                f"{redact(url)} must be fetched from Label Studio, but its URL is unknown: set LABEL_STUDIO_URL "
                "or connect the backend from Label Studio so /setup supplies the hostname"
            )
        return conn.url

    def _roots(self) -> list[Path]:
        return [Path(os.path.realpath(d)) for d in self._settings.media_local_dirs]

    def _maybe_local(self, path: str) -> Path | None:
        real = Path(os.path.realpath(path))
        return real if any(real.is_relative_to(root) for root in self._roots()) else None

    def _allowed_local(self, path: str, url: str) -> Path:
        real = self._maybe_local(path) if path else None
        if real is None:
            raise MediaUnavailable(
                f"local file {redact(url)} is outside the allowed directories; add its directory to MEDIA_LOCAL_DIRS"
            )
        return real

    def _check_local_size(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise MediaUnavailable(f"local file {path} cannot be read: {exc.strerror or exc}") from exc
        if size > self._settings.media_max_bytes:
            raise MediaUnavailable(too_big(size, self._settings.media_max_bytes, str(path)))

    def _read_local(self, path: Path) -> bytes:
        self._check_local_size(path)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MediaUnavailable(f"local file {path} cannot be read: {exc.strerror or exc}") from exc

    # -- cache ---------------------------------------------------------------------------------

    def _stripe(self, key: str) -> threading.Lock:
        return self._stripes[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(self._stripes)]

    def _fetch_cached(self, source: _Source, conn: LabelStudioConnection | None) -> Path:
        final = self._cache.path_for(source.cache_key, source.suffix)
        with self._stripe(source.cache_key):
            if self._cache.touch(final):
                with self._lock:
                    self.stats.hits += 1
                return final
            with self._lock:
                self.stats.misses += 1
            size, evicted = self._cache.store(final, lambda fh: self._download(source, fh, conn))
        with self._lock:
            self.stats.downloaded_bytes += size
            self.stats.evictions += evicted
        return final

    # -- HTTP ----------------------------------------------------------------------------------

    def _session(self, public_only: bool) -> requests.Session:
        """This thread's session for trusted hosts, or its public-only one (``netguard``)."""
        name = "public_session" if public_only else "session"
        session = getattr(self._local, name, None)
        if session is None:
            session = public_only_session() if public_only else requests.Session()
            # No .netrc (it would replace our Authorization header); proxies and CA bundles are
            # taken from the environment per request (_transport).
            session.trust_env = False
            session.headers["User-Agent"] = "sam3-backend"
            setattr(self._local, name, session)
        return session

    @staticmethod
    def _is_ls(url: str, conn: LabelStudioConnection | None) -> bool:
        return conn is not None and client_origin(url) == conn.origin

    def _allowed_host(self, host: str, port: int) -> bool:
        return any(host_matches(entry, host, port) for entry in self._settings.media_allowed_hosts)

    def _check_hop(self, url: str, conn: LabelStudioConnection | None, presigned: bool) -> bool:
        """Whether ``url`` may be fetched, and how: False = a trusted host (any address), True =
        public addresses only. Raises MediaUnavailable when it may not be fetched at all.

        ``presigned``: the URL is where Label Studio's presign endpoint redirected to.
        """
        scheme, host, port = client_origin(url)
        if scheme not in ("http", "https"):
            raise MediaUnavailable(f"refusing to fetch {redact(url)}: only http and https URLs are fetched")
        if self._is_ls(url, conn) or self._allowed_host(host, port):
            return False
        if presigned or self._settings.media_allow_any_host:
            return True
        raise MediaUnavailable(
            f"host {host}:{port} is not allowed (fetching {redact(url)}); add it to MEDIA_ALLOWED_HOSTS "
            "or set MEDIA_ALLOW_ANY_HOST=true (public addresses only)"
        )

    def _download(self, source: _Source, out: BinaryIO, conn: LabelStudioConnection | None) -> int:
        """GET ``source.location`` into ``out`` following redirects by hand; returns the byte count."""
        deadline = time.monotonic() + self._settings.media_timeout
        url, presigned, redirects, refreshed = source.location, False, 0, False
        while True:
            public_only = self._check_hop(url, conn, presigned)
            headers = conn.auth.headers() if self._is_ls(url, conn) else {}
            response = self._get(url, headers, deadline, public_only, conn)
            try:
                status = response.status_code
                if status in _REDIRECT_CODES:
                    location = response.headers.get("Location")
                    if not location:
                        raise MediaUnavailable(f"{redact(url)} answered {status} without a Location header")
                    redirects += 1
                    if redirects > _MAX_REDIRECTS:
                        where = redact(source.location)
                        raise MediaUnavailable(f"{where} redirected more than {_MAX_REDIRECTS} times")
                    # Label Studio's presign endpoint hands out the provider's URL: any host, public addresses.
                    presigned = self._is_ls(url, conn) and bool(PRESIGN_PATH.match(urlsplit(url).path))
                    url = urljoin(url, location)
                    continue
                if status == 401 and not refreshed and self._is_ls(url, conn) and conn.auth.exchanges:
                    refreshed = True  # the access token expired or was revoked: exchange again, once
                    conn.auth.refresh(stale=headers.get("Authorization", "")[len("Bearer ") :])
                    continue
                if status != 200:
                    raise self._status_error(status, url, conn)
                return self._stream(response, out, url, deadline)
            finally:
                response.close()

    def _get(self, url: str, headers: dict[str, str], deadline: float, public_only: bool,
             conn: LabelStudioConnection | None) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(url, self._settings.media_timeout)
        transport = _transport(url)
        try:
            if public_only and transport["proxies"]:
                _, host, port = client_origin(url)
                check_resolved(host, port)  # the proxy connects, so our socket's peer is the proxy
            return self._session(public_only).get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(remaining, 10.0), remaining),
                **transport,
            )
        except BlockedAddress as exc:
            raise MediaUnavailable(
                f"refusing to fetch {redact(url)}: {exc}; hosts on private networks must be listed in "
                "MEDIA_ALLOWED_HOSTS"
            ) from exc
        except requests.Timeout as exc:
            raise _timeout(url, self._settings.media_timeout) from exc
        except requests.ConnectionError as exc:
            hint = ""
            if self._is_ls(url, conn):
                hint = (
                    "; is Label Studio reachable from the backend at this address? (the hostname /setup sends is "
                    "often not reachable from inside a container: set LABEL_STUDIO_URL)"
                )
            raise MediaUnavailable(f"could not connect to {redact(url)}: {short_error(exc)}{hint}") from exc
        except requests.RequestException as exc:
            raise MediaUnavailable(f"fetching {redact(url)} failed: {short_error(exc)}") from exc

    def _post(self, url: str, **kwargs) -> requests.Response:
        """POST to Label Studio through this thread's session; ``ls_auth`` exchanges tokens with it."""
        return self._session(public_only=False).post(url, **kwargs, **_transport(url))

    def _stream(self, response: requests.Response, out: BinaryIO, url: str, deadline: float) -> int:
        limit = self._settings.media_max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise MediaUnavailable(too_big(int(declared), limit, redact(url)))
        raw = response.raw
        # read1 returns after one socket read, so a server that drips bytes still meets the deadline.
        read = raw.read1 if hasattr(raw, "read1") else raw.read
        total = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise _timeout(url, self._settings.media_timeout)
                chunk = read(_CHUNK, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise MediaUnavailable(too_big(total, limit, redact(url), at_least=True))
                out.write(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError) or time.monotonic() > deadline:
                raise _timeout(url, self._settings.media_timeout) from exc
            of = f" of {declared}" if declared.isdigit() else ""
            raise MediaUnavailable(
                f"download of {redact(url)} broke off after {total}{of} bytes ({short_error(exc)})"
            ) from exc
        if declared.isdigit() and not response.headers.get("Content-Encoding") and total != int(declared):
            raise MediaUnavailable(f"download of {redact(url)} broke off after {total} of {declared} bytes")
        return total

    def _status_error(self, status: int, url: str, conn: LabelStudioConnection | None) -> MediaUnavailable:
        where = redact(url)
        if self._is_ls(url, conn) and status in (401, 403):
            return MediaUnavailable(f"Label Studio answered {status} for {where}: {conn.auth.denied_hint()}")
        if status in (401, 403):
            return MediaUnavailable(
                f"{where} answered {status}: the URL may need credentials or its signature may have expired"
            )
        if status == 404:
            hint = ""
            if self._is_ls(url, conn) and not urlsplit(url).path.startswith(LS_PATH_PREFIXES):
                hint = "; if it is a path on the backend's disk, add its directory to MEDIA_LOCAL_DIRS"
            return MediaUnavailable(
                f"{where} answered 404: the file is missing or the task points at a wrong path{hint}"
            )
        return MediaUnavailable(f"{where} answered HTTP {status}")


# -- helpers -----------------------------------------------------------------------------------


def _transport(url: str) -> dict:
    """Proxies and CA bundle from the environment, which the sessions ignore (see _session)."""
    return {
        "proxies": requests.utils.get_environ_proxies(url),
        "verify": os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True,
    }


def _timeout(url: str, seconds: float) -> MediaUnavailable:
    return MediaUnavailable(
        f"fetching {redact(url)} took longer than MEDIA_TIMEOUT ({seconds:g} s); "
        "raise MEDIA_TIMEOUT for large files or slow storage"
    )


__all__ = ["MediaFetcher", "MediaStats", "load_image"]
