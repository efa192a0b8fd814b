"""Pure helpers for task media URLs: origins, the host allowlist, redaction, ``data:`` URIs, suffixes.

Nothing here does I/O, so the rules that decide what ``media.MediaFetcher`` may fetch, and what
its error messages may show, can be read and tested on their own.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import os
import re
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

from urllib3.util import parse_url

from ..errors import BadRequest, MediaUnavailable

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
LS_PATH_PREFIXES = ("/data/", "/tasks/", "/storage-data/", "/api/")
PRESIGN_PATH = re.compile(r"^/tasks/\d+/presign/?$")
MB = 1024 * 1024


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in, so equal origins compare equal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


# Characters that URL parsers disagree about: Python's urlsplit keeps a backslash in the authority,
# while urllib3 (which requests connects with) ends the authority there, as browsers do.
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\]")


def client_origin(url: str) -> tuple[str, str, int]:
    """``origin(url)`` after checking that the HTTP client connects exactly there.

    Every host check reads the URL with ``urlsplit``; requests connects with urllib3's own parser.
    A URL the two read differently (``http://127.0.0.1:EVIL\\@ls:8080/...`` is Label Studio to one
    and EVIL to the other) would let a check pass for one host while the token goes to another,
    so such URLs are refused: backslashes, whitespace or control characters anywhere, userinfo,
    percent-escapes or non-ASCII in the authority, or any disagreement on scheme, host or port.
    """
    where = repr(url.split("?", 1)[0][:200])  # as it is: redact() would show one parser's reading
    if _AMBIGUOUS.search(url):
        raise MediaUnavailable(
            f"refusing to fetch {where}: it contains a backslash, whitespace or a control character, "
            "which HTTP clients read differently"
        )
    parts = urlsplit(url)
    if "@" in parts.netloc or "%" in parts.netloc or not parts.netloc.isascii():
        raise MediaUnavailable(
            f"refusing to fetch {redact(url)}: user names, percent-escapes and non-ASCII characters are not allowed "
            "in the host part of media URLs"
        )
    mine = origin(url)
    try:
        theirs = parse_url(url)
        their_port = theirs.port or (443 if (theirs.scheme or "").lower() == "https" else 80)
        same = ((theirs.scheme or "").lower(), (theirs.host or "").strip("[]").lower(), their_port) == mine
    except ValueError:
        same = False
    if not same or not mine[1]:
        raise MediaUnavailable(f"refusing to fetch {where}: its host or port cannot be read unambiguously")
    return mine


def host_matches(entry: str, host: str, port: int) -> bool:
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


def rebase(url: str, setup_url: str | None, env_url: str | None) -> str:
    """``url`` moved from the /setup hostname to LABEL_STUDIO_URL when it lies at the former.

    Label Studio announces the address it knows itself by (often http://localhost:8080), which a
    backend in another container cannot reach; LABEL_STUDIO_URL is how this backend reaches it.
    """
    if not env_url or not setup_url or origin(url) != origin(setup_url) or origin(url) == origin(env_url):
        return url
    parts = urlsplit(url)
    prefix = urlsplit(setup_url).path.rstrip("/")
    path = parts.path[len(prefix) :] if prefix and parts.path.startswith(prefix + "/") else parts.path
    return env_url.rstrip("/") + path + (f"?{parts.query}" if parts.query else "")


def redact(url: str) -> str:
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
    keep_query = parts.path.startswith("/data/") or PRESIGN_PATH.match(parts.path)
    query = f"?{parts.query}" if parts.query and keep_query else ("?..." if parts.query else "")
    return f"{parts.scheme}://{netloc}{parts.path}{query}"[:300]


def b64url(part: str) -> bytes:
    """Decode unpadded base64url, as in JWTs and Label Studio's ``fileuri=``."""
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_data_uri(uri: str, limit: int) -> bytes:
    """The bytes of a ``data:`` URI; the size is checked before decoding so huge URIs fail cheaply."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise BadRequest("data: URI has no ',' separating the header from the data")
    is_base64 = header.lower().endswith(";base64")
    estimate = len(payload) * 3 // 4 if is_base64 else len(payload)
    if estimate > limit:
        raise MediaUnavailable(too_big(estimate, limit, "the data: URI"))
    try:
        data = base64.b64decode(payload, validate=False) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"data: URI holds invalid base64: {exc}") from exc
    if len(data) > limit:
        raise MediaUnavailable(too_big(len(data), limit, "the data: URI"))
    return data


def suffix_of(path: str) -> str:
    """A short lowercase file extension, or "" (cached files keep it so video readers see the type)."""
    suffix = os.path.splitext(path)[1].lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) and suffix != ".part" else ""


def media_suffix(url: str) -> str:
    """The file extension, looked for in the path and then in ``?d=`` / ``?filepath=`` / ``?fileuri=``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    candidates = [parts.path] + query.get("d", []) + query.get("filepath", [])
    for fileuri in query.get("fileuri", []):
        try:
            candidates.append(urlsplit(b64url(fileuri).decode()).path)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
    for candidate in candidates:
        suffix = suffix_of(candidate)
        if suffix:
            return suffix
    return ""


def data_suffix(uri: str) -> str:
    """The file extension for a ``data:`` URI's media type, or ""."""
    mime = uri[5:].split(";", 1)[0].split(",", 1)[0].lower()
    sub = mime.split("/", 1)[1] if "/" in mime else ""
    return {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "mp4": ".mp4", "webm": ".webm"}.get(sub, "")


# -- message text ------------------------------------------------------------------------------


def _human(size: int) -> str:
    if size >= MB:
        return f"{size / MB:.1f} MB"
    return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"


def too_big(size: int, limit: int, what: str, at_least: bool = False) -> str:
    """The MEDIA_MAX_BYTES message, naming the setting so the user knows what to raise."""
    amount = f"{'at least ' if at_least else ''}{_human(size)}"
    return (
        f"{what} is {amount}, over MEDIA_MAX_BYTES ({_human(limit)}); "
        "raise MEDIA_MAX_BYTES if such files are expected"
    )


def short_error(exc: BaseException) -> str:
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
