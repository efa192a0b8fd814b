"""Label Studio credentials for media requests: which header a key needs, and exchanging it.

Label Studio accepts two kinds of key. Legacy tokens are sent as ``Authorization: Token <key>``.
Personal access tokens are JWT *refresh* tokens: they are exchanged at ``/api/token/refresh/`` for
a short-lived access token sent as ``Bearer``, which is cached until shortly before it expires and
exchanged again when Label Studio refuses it. Which key goes to which Label Studio is decided in
``connections``; an auth object only ever talks to its own base URL.
"""

from __future__ import annotations

import binascii
import json
import re
import threading
import time
from collections.abc import Callable

import requests

from ..errors import MediaUnavailable
from .urls import b64url, short_error

_JWT_PART = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_TOKEN_MARGIN_SECONDS = 30  # refresh an access token this long before it expires
_REFRESH_PATH = "/api/token/refresh/"


class LabelStudioAuth:
    """The Authorization header for one Label Studio and one key; thread-safe.

    ``key`` is sent only to ``base_url`` (the caller checks the origin of every request);
    ``source`` names where the key came from, for error messages. ``post`` sends a request the
    way the fetcher does (its session, proxies, CA bundle).
    """

    def __init__(self, base_url: str, key: str | None, source: str, post: Callable[..., requests.Response],
                 timeout: float):
        self.base_url = base_url.rstrip("/")
        self._key = (key or "").strip() or None
        self._source = source
        self._post = post
        self._timeout = timeout
        self._access: tuple[str, float] | None = None  # (access token, expiry)
        self._lock = threading.Lock()

    def api_key(self) -> tuple[str | None, str]:
        """(key, where it came from) for error messages."""
        return self._key, self._source

    @property
    def exchanges(self) -> bool:
        """Whether the key is a personal access token, so a 401 is worth one more exchange."""
        return _key_kind(self.api_key()[0]) == "refresh"

    def headers(self) -> dict[str, str]:
        """The Authorization header for a request to Label Studio ({} without a key)."""
        key, _ = self.api_key()
        kind = _key_kind(key)
        if kind == "refresh":
            return {"Authorization": f"Bearer {self.refresh()}"}
        if kind == "access":
            return {"Authorization": f"Bearer {key}"}
        return {"Authorization": f"Token {key}"} if key else {}

    def refresh(self, stale: str | None = None) -> str:
        """An access token for the personal access token (a JWT refresh token), cached until near expiry.

        ``stale`` is an access token Label Studio just refused; another thread may have replaced it.
        """
        key, source = self.api_key()
        with self._lock:
            cached = self._access
            fresh = cached and cached[1] - _TOKEN_MARGIN_SECONDS > time.time()
            if fresh and cached[0] != stale:
                return cached[0]
            url = f"{self.base_url}{_REFRESH_PATH}"
            try:
                response = self._post(url, json={"refresh": key}, timeout=self._timeout, allow_redirects=False)
            except requests.RequestException as exc:
                raise MediaUnavailable(
                    f"could not reach {url} to exchange the personal access token: {short_error(exc)}"
                ) from exc
            if response.status_code != 200:
                raise MediaUnavailable(
                    f"Label Studio answered {response.status_code} when exchanging the personal access token at "
                    f"{_REFRESH_PATH}: check {source} (it may be expired or revoked; create a new one under "
                    "Account & Settings)"
                )
            try:
                access = response.json()["access"]
            except (ValueError, KeyError, TypeError) as exc:
                raise MediaUnavailable(
                    f"{url} did not return an access token; is {self.base_url} really Label Studio?"
                ) from exc
            expiry = _jwt_claims(access).get("exp")
            self._access = (access, float(expiry) if isinstance(expiry, (int, float)) else time.time() + 240)
            return access

    def denied_hint(self) -> str:
        """What to check when Label Studio answers 401/403, depending on the kind of key in use."""
        key, source = self.api_key()
        if not key:
            return (
                "no token for it: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the backend from "
                "Label Studio so /setup supplies a token"
            )
        if _looks_like_jwt(key):
            return f"check {source} (the personal access token may be revoked or lack access to this project)"
        return (
            f"check {source}; legacy tokens also need LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true "
            "on the Label Studio server"
        )


def _looks_like_jwt(key: str | None) -> bool:
    """Three dot-separated base64url parts whose first decodes to a JSON header with ``alg``."""
    if not key:
        return False
    parts = key.split(".")
    if len(parts) != 3 or not all(_JWT_PART.match(p) for p in parts[:2]):
        return False
    try:
        header = json.loads(b64url(parts[0]))
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
    """The unverified payload of a JWT ({} if unreadable): only its type and expiry are used."""
    try:
        claims = json.loads(b64url(token.split(".")[1]))
    except (ValueError, IndexError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}
