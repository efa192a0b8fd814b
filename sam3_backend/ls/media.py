"""Fetch task media the way Label Studio serves them, safely.

A task's media URL is one of:

- relative to Label Studio: ``/data/upload/<project>/<file>``, ``/data/local-files/?d=<path>``,
  ``/tasks/<id>/presign/?fileuri=...`` (prefixed with the Label Studio URL, sent with its token);
- a cloud storage URI (``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``), resolved through
  ``GET {ls}/tasks/{task_id}/presign/?fileuri=<urlsafe base64 of the URI>``, which redirects to a
  presigned URL at the provider;
- an absolute ``http(s)://`` URL, a ``data:`` URI, or a local path (``file://`` or absolute) that
  lies under one of ``MEDIA_LOCAL_DIRS``.

Safety rules: only the Label Studio host and ``MEDIA_ALLOWED_HOSTS`` are fetched (unless
``MEDIA_ALLOW_ANY_HOST``); redirects are followed by hand and every hop re-checked, except the one
redirect Label Studio's presign endpoint hands out; the token goes only to Label Studio's origin;
size (``MEDIA_MAX_BYTES``) and total time (``MEDIA_TIMEOUT``) are enforced while streaming.

Downloads land in the on-disk cache of ``media_cache``, keyed by the task URL (resolved against
Label Studio, never a presigned URL). Decoding images is ``images.load_image``, re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, unquote_to_bytes, urljoin, urlsplit

import requests
import urllib3

from ..config import Settings
from ..errors import BadRequest, MediaUnavailable
from ..lru import SizedLRU
from ..types import ImageInput
from .images import load_image
from .media_cache import DiskCache

log = logging.getLogger(__name__)

_CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
_LS_PATH_PREFIXES = ("/data/", "/tasks/", "/storage-data/", "/api/")
_PRESIGN_PATH = re.compile(r"^/tasks/\d+/presign/?$")
_REDIRECT_CODES = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_JWT_PART = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_TOKEN_MARGIN_SECONDS = 30  # refresh an access token this long before it expires
_MB = 1024 * 1024


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

    ``configure`` takes what ``POST /setup`` supplies; values from the environment win.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._lock = threading.Lock()  # guards the /setup values and stats
        self._setup_url: str | None = None
        self._setup_token: str | None = None
        self._access: tuple[str, str, float] | None = None  # (refresh key, access token, expiry)
        self._token_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(64)]  # one download per cache key
        self._local = threading.local()
        self._cache = DiskCache(settings.media_cache_dir, settings.media_cache_mb * _MB)
        self._decoded = SizedLRU(settings.media_image_cache_mb * _MB, sizeof=lambda im: im.pixels.nbytes)
        self.stats = MediaStats()

    # -- configuration -----------------------------------------------------------------------

    def configure(self, hostname: str | None, access_token: str | None) -> None:
        """Fill in the Label Studio URL and token from /setup where the environment left them empty.

        A hostname that is not an http(s) URL is ignored with a warning rather than failing /setup.
        """
        if hostname:
            hostname = hostname.strip().rstrip("/")
            if urlsplit(hostname).scheme not in ("http", "https") or not urlsplit(hostname).hostname:
                log.warning("ignoring /setup hostname %r: not an http(s) URL like http://localhost:8080", hostname)
                hostname = None
        with self._lock:
            self._setup_url = hostname or self._setup_url
            self._setup_token = (access_token or "").strip() or self._setup_token

    @property
    def label_studio_url(self) -> str | None:
        """The Label Studio base URL in use: LABEL_STUDIO_URL, else the /setup hostname."""
        url = self._settings.label_studio_url or self._setup_url
        return url.rstrip("/") if url else None

    def _api_key(self) -> tuple[str | None, str]:
        """(key, where it came from) for error messages."""
        if self._settings.label_studio_api_key:
            return self._settings.label_studio_api_key.strip(), "LABEL_STUDIO_API_KEY"
        return self._setup_token, "the access token sent by /setup"

    # -- public API ----------------------------------------------------------------------------

    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        """The media bytes behind a task URL. Raises BadRequest (malformed URL) or MediaUnavailable."""
        return self._bytes_for(self._resolve(url, task_id), url)

    def _bytes_for(self, source: "_Source", url: str) -> bytes:
        if source.kind == "data":
            return _decode_data_uri(source.location, self._settings.media_max_bytes)
        if source.kind == "local":
            return self._read_local(Path(source.location))
        for _ in range(3):
            path = self._fetch_cached(source)
            try:
                return path.read_bytes()
            except FileNotFoundError:  # evicted by another process in between: fetch again
                continue
        raise MediaUnavailable(
            f"the media cache {self._cache.root} keeps losing {_redact(url)}; is MEDIA_CACHE_MB too small for it?"
        )

    def fetch_path(self, url: str, task_id: int | None = None) -> Path:
        """Like ``fetch_bytes`` but returns a file (the cached copy, or the allowed local file).

        Open it promptly: a cached file can be evicted when later downloads need the room.
        """
        source = self._resolve(url, task_id)
        if source.kind == "local":
            path = Path(source.location)
            self._check_local_size(path)
            return path
        if source.kind == "data":
            data = _decode_data_uri(source.location, self._settings.media_max_bytes)
            final = self._cache.path_for(source.cache_key, source.suffix)
            with self._stripe(source.cache_key):
                if not self._cache.touch(final):
                    _, evicted = self._cache.store(final, lambda fh: fh.write(data))
                    with self._lock:
                        self.stats.evictions += evicted
            return final
        return self._fetch_cached(source)

    def fetch_image(self, url: str, task_id: int | None = None) -> ImageInput:
        """``load_image(fetch_bytes(url, task_id))``, with the decoded result kept in memory.

        Every interactive click on a task sends its image URL again; re-reading and decoding a
        1080p file costs ~10 ms a click, the decoded-image LRU makes it free.
        """
        source = self._resolve(url, task_id)
        key = self._decoded_key(source)
        if key is not None:
            cached = self._decoded.get(key)
            if cached is not None:
                return cached
        image = load_image(self._bytes_for(source, url))
        if key is not None:
            self._decoded.put(key, image)
        return image

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

    def _resolve(self, url: str, task_id: int | None) -> _Source:
        if not isinstance(url, str) or not url.strip():
            raise BadRequest(f"task media URL must be a non-empty string, got {url!r}")
        url = url.strip()
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise BadRequest(f"task media URL {url[:200]!r} is malformed: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme == "data":
            return _Source("data", url, "data:" + hashlib.sha256(url.encode()).hexdigest(), _data_suffix(url))
        if scheme in _CLOUD_SCHEMES:
            if task_id is None:
                raise BadRequest(
                    f"{_redact(url)} is a cloud storage URI; it needs the task id to be presigned by Label Studio"
                )
            if isinstance(task_id, bool) or not str(task_id).isdigit():
                raise BadRequest(f"task id must be a non-negative integer, got {task_id!r}")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            presign = f"{self._require_ls(url)}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"
            return _Source("http", presign, url, _suffix_of(parts.path))
        if scheme in ("http", "https"):
            url = self._rebase_setup_hostname(url)
            return _Source("http", url, url, _media_suffix(url))
        if scheme == "file":
            return _Source("local", str(self._allowed_local(unquote(parts.path), url)), url)
        if scheme:
            raise BadRequest(
                f"task media URL {_redact(url)} has unsupported scheme {scheme!r}: "
                "use http(s), /data/..., a cloud URI or data:"
            )
        if url.startswith(("upload/", "/upload/")):  # old Label Studio exports
            url = "/data/" + url.lstrip("/")
        if url.startswith("/") and not url.startswith("//"):
            if not url.startswith(_LS_PATH_PREFIXES) and self._settings.media_local_dirs:
                local = self._maybe_local(url)
                if local is not None:
                    return _Source("local", str(local), url)
            full = self._require_ls(url) + url
            return _Source("http", full, full, _media_suffix(url))
        raise BadRequest(f"task media URL {url[:200]!r} is neither absolute nor relative to Label Studio (/data/...)")

    def _rebase_setup_hostname(self, url: str) -> str:
        """Absolute URLs at the hostname /setup sent go to LABEL_STUDIO_URL when that is set.

        Label Studio announces the address it knows itself by (often http://localhost:8080), which a
        backend in another container cannot reach; LABEL_STUDIO_URL is how this backend reaches it.
        """
        env_url, setup_url = self._settings.label_studio_url, self._setup_url
        if not env_url or not setup_url or _origin(url) != _origin(setup_url) or _origin(url) == _origin(env_url):
            return url
        parts = urlsplit(url)
        prefix = urlsplit(setup_url).path.rstrip("/")
        path = parts.path[len(prefix) :] if prefix and parts.path.startswith(prefix + "/") else parts.path
        return env_url.rstrip("/") + path + (f"?{parts.query}" if parts.query else "")

    def _require_ls(self, url: str) -> str:
        base = self.label_studio_url
        if not base:
            raise MediaUnavailable(
                f"{_redact(url)} must be fetched from Label Studio, but its URL is unknown: set LABEL_STUDIO_URL "
                "or connect the backend from Label Studio so /setup supplies the hostname"
            )
        return base

    def _roots(self) -> list[Path]:
        return [Path(os.path.realpath(d)) for d in self._settings.media_local_dirs]

    def _maybe_local(self, path: str) -> Path | None:
        real = Path(os.path.realpath(path))
        return real if any(real.is_relative_to(root) for root in self._roots()) else None

    def _allowed_local(self, path: str, url: str) -> Path:
        real = self._maybe_local(path) if path else None
        if real is None:
            raise MediaUnavailable(
                f"local file {_redact(url)} is outside the allowed directories; add its directory to MEDIA_LOCAL_DIRS"
            )
        return real

    def _check_local_size(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise MediaUnavailable(f"local file {path} cannot be read: {exc.strerror or exc}") from exc
        if size > self._settings.media_max_bytes:
            raise MediaUnavailable(_too_big(size, self._settings.media_max_bytes, str(path)))

    def _read_local(self, path: Path) -> bytes:
        self._check_local_size(path)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MediaUnavailable(f"local file {path} cannot be read: {exc.strerror or exc}") from exc

    # -- cache ---------------------------------------------------------------------------------

    def _stripe(self, key: str) -> threading.Lock:
        return self._stripes[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(self._stripes)]

    def _fetch_cached(self, source: _Source) -> Path:
        final = self._cache.path_for(source.cache_key, source.suffix)
        with self._stripe(source.cache_key):
            if self._cache.touch(final):
                with self._lock:
                    self.stats.hits += 1
                return final
            with self._lock:
                self.stats.misses += 1
            size, evicted = self._cache.store(final, lambda fh: self._download(source, fh))
        with self._lock:
            self.stats.downloaded_bytes += size
            self.stats.evictions += evicted
        return final

    # -- HTTP ----------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # No .netrc (it would replace our Authorization header); proxies and CA bundles are
            # taken from the environment per request in _get.
            session.trust_env = False
            session.headers["User-Agent"] = "sam3-backend"
            self._local.session = session
        return session

    def _ls_origin(self) -> tuple[str, str, int] | None:
        base = self.label_studio_url
        return _origin(base) if base else None

    def _is_ls(self, url: str) -> bool:
        origin = self._ls_origin()
        return origin is not None and _origin(url) == origin

    def _host_allowed(self, url: str) -> bool:
        if self._settings.media_allow_any_host:
            return True
        _, host, port = _origin(url)
        ls = self._ls_origin()
        if ls is not None and (host, port) == ls[1:]:
            return True
        return any(_host_matches(entry, host, port) for entry in self._settings.media_allowed_hosts)

    def _check_hop(self, url: str, trusted: bool) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise MediaUnavailable(f"refusing to fetch {_redact(url)}: only http and https URLs are fetched")
        try:
            port = parts.port
        except ValueError as exc:
            raise MediaUnavailable(f"refusing to fetch {_redact(url)}: {exc}") from exc
        if not trusted and not self._host_allowed(url):
            host = parts.hostname if port is None else f"{parts.hostname}:{port}"
            raise MediaUnavailable(
                f"host {host} is not allowed (fetching {_redact(url)}); add it to MEDIA_ALLOWED_HOSTS "
                "or set MEDIA_ALLOW_ANY_HOST=true"
            )

    def _download(self, source: _Source, out: BinaryIO) -> int:
        """GET ``source.location`` into ``out`` following redirects by hand; returns the byte count."""
        deadline = time.monotonic() + self._settings.media_timeout
        url, trusted, redirects, refreshed = source.location, False, 0, False
        while True:
            self._check_hop(url, trusted)
            headers = self._auth_headers() if self._is_ls(url) else {}
            response = self._get(url, headers, deadline)
            try:
                status = response.status_code
                if status in _REDIRECT_CODES:
                    location = response.headers.get("Location")
                    if not location:
                        raise MediaUnavailable(f"{_redact(url)} answered {status} without a Location header")
                    redirects += 1
                    if redirects > _MAX_REDIRECTS:
                        where = _redact(source.location)
                        raise MediaUnavailable(f"{where} redirected more than {_MAX_REDIRECTS} times")
                    # Label Studio's presign endpoint hands out the provider's URL: follow that one.
                    trusted = self._is_ls(url) and bool(_PRESIGN_PATH.match(urlsplit(url).path))
                    url = urljoin(url, location)
                    continue
                if status == 401 and not refreshed and self._is_ls(url) and _key_kind(self._api_key()[0]) == "refresh":
                    refreshed = True  # the access token expired or was revoked: exchange again, once
                    self._refresh_access(stale=headers.get("Authorization", "")[len("Bearer ") :])
                    continue
                if status != 200:
                    raise self._status_error(status, url)
                return self._stream(response, out, url, deadline)
            finally:
                response.close()

    def _get(self, url: str, headers: dict[str, str], deadline: float) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(url, self._settings.media_timeout)
        try:
            return self._session().get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(min(remaining, 10.0), remaining),
                proxies=requests.utils.get_environ_proxies(url),
                verify=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True,
            )
        except requests.Timeout as exc:
            raise _timeout(url, self._settings.media_timeout) from exc
        except requests.ConnectionError as exc:
            hint = ""
            if self._is_ls(url):
                hint = (
                    "; is Label Studio reachable from the backend at this address? (the hostname /setup sends is "
                    "often not reachable from inside a container: set LABEL_STUDIO_URL)"
                )
            raise MediaUnavailable(f"could not connect to {_redact(url)}: {_short(exc)}{hint}") from exc
        except requests.RequestException as exc:
            raise MediaUnavailable(f"fetching {_redact(url)} failed: {_short(exc)}") from exc

    def _stream(self, response: requests.Response, out: BinaryIO, url: str, deadline: float) -> int:
        limit = self._settings.media_max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise MediaUnavailable(_too_big(int(declared), limit, _redact(url)))
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
                    raise MediaUnavailable(_too_big(total, limit, _redact(url), at_least=True))
                out.write(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError) or time.monotonic() > deadline:
                raise _timeout(url, self._settings.media_timeout) from exc
            of = f" of {declared}" if declared.isdigit() else ""
            raise MediaUnavailable(
                f"download of {_redact(url)} broke off after {total}{of} bytes ({_short(exc)})"
            ) from exc
        if declared.isdigit() and not response.headers.get("Content-Encoding") and total != int(declared):
            raise MediaUnavailable(f"download of {_redact(url)} broke off after {total} of {declared} bytes")
        return total

    def _status_error(self, status: int, url: str) -> MediaUnavailable:
        where = _redact(url)
        if self._is_ls(url) and status in (401, 403):
            key, source = self._api_key()
            if not key:
                todo = "set LABEL_STUDIO_API_KEY or connect the backend from Label Studio so /setup supplies a token"
            elif _looks_like_jwt(key):
                todo = f"check {source} (the personal access token may be revoked or lack access to this project)"
            else:
                todo = (
                    f"check {source}; legacy tokens also need LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true "
                    "on the Label Studio server"
                )
            return MediaUnavailable(f"Label Studio answered {status} for {where}: {todo}")
        if status in (401, 403):
            return MediaUnavailable(
                f"{where} answered {status}: the URL may need credentials or its signature may have expired"
            )
        if status == 404:
            hint = ""
            if self._is_ls(url) and not urlsplit(url).path.startswith(_LS_PATH_PREFIXES):
                hint = "; if it is a path on the backend's disk, add its directory to MEDIA_LOCAL_DIRS"
            return MediaUnavailable(
                f"{where} answered 404: the file is missing or the task points at a wrong path{hint}"
            )
        return MediaUnavailable(f"{where} answered HTTP {status}")

    # -- tokens --------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        key, _ = self._api_key()
        kind = _key_kind(key)
        if kind == "refresh":
            return {"Authorization": f"Bearer {self._refresh_access()}"}
        if kind == "access":
            return {"Authorization": f"Bearer {key}"}
        return {"Authorization": f"Token {key}"} if key else {}

    def _refresh_access(self, stale: str | None = None) -> str:
        """An access token for the personal access token (a JWT refresh token), cached until near expiry.

        ``stale`` is an access token Label Studio just refused; another thread may have replaced it.
        """
        key, source = self._api_key()
        with self._token_lock:
            cached = self._access
            fresh = cached and cached[0] == key and cached[2] - _TOKEN_MARGIN_SECONDS > time.time()
            if fresh and cached[1] != stale:
                return cached[1]
            base = self._require_ls("/api/token/refresh/")
            url = f"{base}/api/token/refresh/"
            try:
                response = self._session().post(
                    url,
                    json={"refresh": key},
                    timeout=self._settings.media_timeout,
                    allow_redirects=False,
                    proxies=requests.utils.get_environ_proxies(url),
                    verify=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True,
                )
            except requests.RequestException as exc:
                raise MediaUnavailable(
                    f"could not reach {url} to exchange the personal access token: {_short(exc)}"
                ) from exc
            if response.status_code != 200:
                raise MediaUnavailable(
                    f"Label Studio answered {response.status_code} when exchanging the personal access token at "
                    f"/api/token/refresh/: check {source} (it may be expired or revoked; create a new one under "
                    "Account & Settings)"
                )
            try:
                access = response.json()["access"]
            except (ValueError, KeyError, TypeError) as exc:
                raise MediaUnavailable(f"{url} did not return an access token; is {base} really Label Studio?") from exc
            expiry = _jwt_claims(access).get("exp")
            self._access = (key, access, float(expiry) if isinstance(expiry, (int, float)) else time.time() + 240)
            return access


# -- helpers -----------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _host_matches(entry: str, host: str, port: int) -> bool:
    """MEDIA_ALLOWED_HOSTS entries: ``example.com``, ``example.com:8443``, ``*.example.com``, ``.example.com``."""
    entry = entry.strip().lower()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    entry = entry.split("/", 1)[0]
    wildcard = entry.startswith(("*.", "."))
    entry = entry.lstrip("*").lstrip(".")
    try:
        parts = urlsplit("//" + entry)
        want_host, want_port = (parts.hostname or ""), parts.port
    except ValueError:
        return False
    if want_port is not None and want_port != port:
        return False
    return host.endswith("." + want_host) if wildcard else host == want_host


def _looks_like_jwt(key: str | None) -> bool:
    """Three dot-separated base64url parts whose first decodes to a JSON header with ``alg``."""
    if not key:
        return False
    parts = key.split(".")
    if len(parts) != 3 or not all(_JWT_PART.match(p) for p in parts[:2]):
        return False
    try:
        header = json.loads(_b64url(parts[0]))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and "alg" in header


def _key_kind(key: str | None) -> str:
    """ "none", "legacy" (sent as ``Token``), "refresh" (a personal access token to exchange) or "access"."""
    if not key:
        return "none"
    if not _looks_like_jwt(key):
        return "legacy"
    return "access" if _jwt_claims(key).get("token_type") == "access" else "refresh"


def _jwt_claims(token: str) -> dict:
    try:
        claims = json.loads(_b64url(token.split(".")[1]))
    except (ValueError, IndexError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _decode_data_uri(uri: str, limit: int) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise BadRequest("data: URI has no ',' separating the header from the data")
    is_base64 = header.lower().endswith(";base64")
    estimate = len(payload) * 3 // 4 if is_base64 else len(payload)
    if estimate > limit:
        raise MediaUnavailable(_too_big(estimate, limit, "the data: URI"))
    try:
        data = base64.b64decode(payload, validate=False) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"data: URI holds invalid base64: {exc}") from exc
    if len(data) > limit:
        raise MediaUnavailable(_too_big(len(data), limit, "the data: URI"))
    return data


def _suffix_of(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) and suffix != ".part" else ""


def _media_suffix(url: str) -> str:
    """The file extension, looked for in the path and then in ``?d=`` / ``?filepath=``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    candidates = [parts.path] + query.get("d", []) + query.get("filepath", [])
    for fileuri in query.get("fileuri", []):
        try:
            candidates.append(urlsplit(_b64url(fileuri).decode()).path)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
    for candidate in candidates:
        suffix = _suffix_of(candidate)
        if suffix:
            return suffix
    return ""


def _data_suffix(uri: str) -> str:
    mime = uri[5:].split(";", 1)[0].split(",", 1)[0].lower()
    sub = mime.split("/", 1)[1] if "/" in mime else ""
    return {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "mp4": ".mp4", "webm": ".webm"}.get(sub, "")


def _redact(url: str) -> str:
    """The URL without userinfo and, for absolute URLs, without its query (presigned signatures)."""
    if url.startswith("data:"):
        return "a data: URI"
    try:
        parts = urlsplit(url)
    except ValueError:
        return url[:200]
    if not parts.scheme or not parts.netloc:
        return url[:200]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    keep_query = parts.path.startswith("/data/") or _PRESIGN_PATH.match(parts.path)
    query = f"?{parts.query}" if parts.query and keep_query else ("?..." if parts.query else "")
    return f"{parts.scheme}://{netloc}{parts.path}{query}"[:300]


def _human(size: int) -> str:
    if size >= _MB:
        return f"{size / _MB:.1f} MB"
    return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"


def _too_big(size: int, limit: int, what: str, at_least: bool = False) -> str:
    amount = f"{'at least ' if at_least else ''}{_human(size)}"
    return (
        f"{what} is {amount}, over MEDIA_MAX_BYTES ({_human(limit)}); "
        "raise MEDIA_MAX_BYTES if such files are expected"
    )


def _timeout(url: str, seconds: float) -> MediaUnavailable:
    return MediaUnavailable(
        f"fetching {_redact(url)} took longer than MEDIA_TIMEOUT ({seconds:g} s); "
        "raise MEDIA_TIMEOUT for large files or slow storage"
    )


def _short(exc: BaseException) -> str:
    """The root cause of a requests/urllib3 error ("Connection refused"), else its text, shortened."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if isinstance(cause, http.client.IncompleteRead):
            return "connection closed early"
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)), None)
        cause = inner or cause.__cause__ or cause.__context__
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


__all__ = ["MediaFetcher", "MediaStats", "load_image"]
