"""Attacks on media fetching: where credentials can be made to go, and which addresses it reaches.

Every test here runs real HTTP servers on 127.0.0.1 that record what reaches them, so "no
credentials left" is checked on the wire, not inferred from the code.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from sam3_backend.config import Settings
from sam3_backend.errors import MediaUnavailable
from sam3_backend.ls.media import MediaFetcher
from sam3_backend.ls.netguard import is_public

TOKEN = "secret-label-studio-token-0123456789"


class Server:
    """Serves every path with a few bytes and records (path, Authorization) of each request."""

    def __init__(self, redirect_to: str | None = None):
        self.seen: list[tuple[str, str | None]] = []
        self.redirect_to = redirect_to
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                outer.seen.append((self.path, self.headers.get("Authorization")))
                if outer.redirect_to and self.path.startswith("/tasks/"):
                    self.send_response(302)
                    self.send_header("Location", outer.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"bytes")

            do_GET = _answer

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ls():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def evil():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def fetcher(tmp_path, ls_url=None, key=None, **overrides) -> MediaFetcher:
    return MediaFetcher(Settings(model_dir=tmp_path, label_studio_url=ls_url, label_studio_api_key=key, **overrides))


# -- URLs the HTTP client reads differently from the host check --------------------------------


def test_backslash_url_sends_no_token_to_the_hidden_host(tmp_path, ls, evil):
    """urlsplit reads Label Studio's host after the '@'; urllib3 stops at the backslash and
    connects to EVIL. Before the fix EVIL received ``Authorization: Token ...``."""
    f = fetcher(tmp_path, ls.url, TOKEN)
    attack = f"http://127.0.0.1:{evil.port}\\@127.0.0.1:{ls.port}/data/upload/1/x.png"
    with pytest.raises(MediaUnavailable, match="backslash"):
        f.fetch_bytes(attack)
    assert evil.seen == [] and ls.seen == []


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{ls}@127.0.0.1:{evil}/data/upload/1/x.png",  # userinfo naming Label Studio
        "http://user:pw@127.0.0.1:{ls}/data/upload/1/x.png",  # userinfo at all
        "http://127.0.0.1:{evil}\t@127.0.0.1:{ls}/data/upload/1/x.png",  # control character
        "http://127.0.0.1:{evil} @127.0.0.1:{ls}/data/upload/1/x.png",  # whitespace
        "http://%31%32%37.0.0.1:{ls}/data/upload/1/x.png",  # percent-escaped host
        "http://127.0.0.1:{ls}/data/upload/1/x.png\\..\\..\\",  # backslash in the path
    ],
)
def test_urls_that_parsers_read_differently_are_refused(tmp_path, ls, evil, template):
    f = fetcher(tmp_path, ls.url, TOKEN, media_allowed_hosts=(f"127.0.0.1:{evil.port}",))
    with pytest.raises(MediaUnavailable, match="refusing to fetch"):
        f.fetch_bytes(template.format(ls=ls.port, evil=evil.port))
    assert all(auth is None for _, auth in evil.seen) and ls.seen == []


# -- which Label Studio gets which token -------------------------------------------------------


def test_setup_hostname_hijack_sends_no_token(tmp_path, ls, evil):
    """A caller POSTs /setup with its own hostname for a project: relative URLs of that project now
    resolve there, but no token goes with them: the empty token of that /setup does not keep the
    real Label Studio's token alive, and no other project is affected."""
    f = fetcher(tmp_path)
    f.setup("1.100", ls.url, TOKEN)
    f.setup("2.100", ls.url, TOKEN)
    assert f.fetch_bytes("/data/upload/1/a.png", project="1.100") == b"bytes"
    assert ls.seen[-1] == ("/data/upload/1/a.png", f"Token {TOKEN}")

    f.setup("1.100", evil.url, "")  # the hijack
    f.fetch_bytes("/data/upload/1/b.png", project="1.100")
    assert evil.seen == [("/data/upload/1/b.png", None)]
    assert f.fetch_bytes("/data/upload/1/c.png", project="2.100") == b"bytes"  # untouched
    assert ls.seen[-1] == ("/data/upload/1/c.png", f"Token {TOKEN}")


def test_personal_access_token_is_never_exchanged_at_another_host(tmp_path, ls, evil):
    import base64
    import json

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    pat = f"{part({'alg': 'HS256'})}.{part({'token_type': 'refresh', 'exp': 4102444800})}.c2ln"
    f = fetcher(tmp_path)
    f.setup("1.100", ls.url, pat)
    f.setup("1.100", evil.url, None)  # hijack with no token
    f.fetch_bytes("/data/upload/1/b.png", project="1.100")
    assert evil.seen == [("/data/upload/1/b.png", None)]  # no POST /api/token/refresh/ with the PAT
    assert all(path != "/api/token/refresh/" for path, _ in evil.seen)


def test_environment_key_needs_its_url():
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL"):
        Settings.from_env({"LABEL_STUDIO_API_KEY": TOKEN})
    with pytest.raises(ValueError, match="must be an http"):
        Settings.from_env({"LABEL_STUDIO_URL": "ftp://ls", "LABEL_STUDIO_API_KEY": TOKEN})


def test_environment_key_never_follows_a_setup_hostname(tmp_path, ls, evil):
    f = fetcher(tmp_path, ls.url, TOKEN)
    f.setup("1.100", evil.url, "attacker-token")
    f.fetch_bytes("/data/upload/1/a.png", project="1.100")
    assert evil.seen == [] and ls.seen == [("/data/upload/1/a.png", f"Token {TOKEN}")]
    with pytest.raises(MediaUnavailable, match="not allowed"):  # absolute URLs at the announced host are not LS
        f.fetch_bytes(f"http://127.0.0.1:{evil.port}/x.png", project="2.100")
    assert evil.seen == []


def test_project_table_is_bounded(tmp_path):
    from sam3_backend.ls.connections import MAX_PROJECTS

    f = fetcher(tmp_path)
    for i in range(MAX_PROJECTS + 50):
        f.setup(f"{i}.1", f"http://ls-{i}:8080", f"t{i}")
    assert len(f.connections._setups) == MAX_PROJECTS
    assert f.label_studio_url("0.1") is None  # the oldest were dropped
    assert f.label_studio_url(f"{MAX_PROJECTS + 49}.1") == f"http://ls-{MAX_PROJECTS + 49}:8080"


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.216.34", True), ("2606:4700::1111", True),
        ("127.0.0.1", False), ("::1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False), ("fe80::1", False), ("fd00:ec2::254", False), ("100.100.100.200", False),
        ("0.0.0.0", False), ("::", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("not-an-ip", False),
    ],
)
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_allow_any_host_opens_public_addresses_only(tmp_path, evil):
    f = fetcher(tmp_path, media_allow_any_host=True)
    for url in (f"{evil.url}/a.png", f"http://localhost:{evil.port}/a.png"):
        with pytest.raises(MediaUnavailable, match="not a public address"):
            f.fetch_bytes(url)
    assert evil.seen == []


def test_address_is_checked_where_the_socket_connects(tmp_path, evil, monkeypatch):
    """DNS rebinding: a lookup made for a check answers a public address, the connection a moment
    later lands on loopback. The check is on the connected socket, so the loopback server never
    sees the request (a resolve-then-check implementation would have let it through)."""
    import urllib3.util.connection as u3conn

    real_getaddrinfo, real_connect = socket.getaddrinfo, u3conn.create_connection

    def looks_public(host, *args, **kwargs):
        if host == "rebind.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", evil.port))]
        return real_getaddrinfo(host, *args, **kwargs)

    def lands_on_loopback(address, *args, **kwargs):
        host, port = address
        return real_connect(("127.0.0.1" if host == "rebind.example" else host, port), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", looks_public)
    monkeypatch.setattr(u3conn, "create_connection", lands_on_loopback)
    f = fetcher(tmp_path, media_allow_any_host=True)
    with pytest.raises(MediaUnavailable, match="127.0.0.1, which is not a public address"):
        f.fetch_bytes(f"http://rebind.example:{evil.port}/a.png")
    assert evil.seen == []


def test_presigned_storage_url_is_public_only(tmp_path, ls, evil):
    """Label Studio's presign endpoint redirects to the provider; a storage config pointing at an
    internal address does not turn the backend into a proxy to it (unless the host is listed)."""
    ls.redirect_to = f"{evil.url}/bucket/key.png?X-Amz-Signature=s"
    f = fetcher(tmp_path, ls.url, TOKEN)
    with pytest.raises(MediaUnavailable, match="not a public address.*MEDIA_ALLOWED_HOSTS"):
        f.fetch_bytes("s3://bucket/key.png", task_id=3)
    assert evil.seen == []
    assert ls.seen[0][0].startswith("/tasks/3/presign/") and ls.seen[0][1] == f"Token {TOKEN}"
    listed = fetcher(tmp_path / "2", ls.url, TOKEN, media_allowed_hosts=(urlsplit(evil.url).netloc,))
    assert listed.fetch_bytes("s3://bucket/key.png", task_id=3) == b"bytes"
    assert evil.seen == [("/bucket/key.png?X-Amz-Signature=s", None)]


def test_public_only_hops_through_a_proxy_check_the_resolved_name(tmp_path, evil, monkeypatch):
    """With a proxy, our socket's peer is the proxy: the target name's addresses are checked instead."""
    proxy = Server()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        f = fetcher(tmp_path, media_allow_any_host=True)
        with pytest.raises(MediaUnavailable, match="not a public address"):
            f.fetch_bytes(f"http://localhost:{evil.port}/a.png")
        assert proxy.seen == [] and evil.seen == []
    finally:
        proxy.close()
