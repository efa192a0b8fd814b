"""MediaFetcher against real HTTP servers on 127.0.0.1 that imitate Label Studio and a cloud bucket."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from sam3_backend.config import Settings
from sam3_backend.errors import BadRequest, MediaUnavailable
from sam3_backend.ls.media import MediaFetcher, load_image

REPO = Path(__file__).resolve().parents[2]
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def make_jwt(**claims) -> str:
    return f"{_b64url({'alg': 'HS256', 'typ': 'JWT'})}.{_b64url(claims)}.c2lnbmF0dXJl"


PAT = make_jwt(token_type="refresh", exp=int(time.time()) + 86400, jti="pat")


def png_bytes(width: int = 8, height: int = 6, color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


class Recorder:
    """Shared state of one fake server: files it serves and every request it saw."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.access_tokens: set[str] = set()
        self.refresh_calls = 0
        self.lock = threading.Lock()
        self.cloud_url = ""  # set once the cloud server runs
        self.other_url = ""

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.requests if p == path)


def make_handler(rec: Recorder, role: str):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if auth == f"Token {LEGACY_TOKEN}":
                return True
            return auth.startswith("Bearer ") and auth[7:] in rec.access_tokens

        def do_POST(self):
            with rec.lock:
                rec.requests.append(("POST", self.path, dict(self.headers)))
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if role == "ls" and self.path == "/api/token/refresh/":
                if body.get("refresh") != PAT:
                    return self._send(401, b'{"detail":"Token is invalid or expired"}')
                with rec.lock:
                    rec.refresh_calls += 1
                    access = make_jwt(token_type="access", exp=int(time.time()) + 300, n=rec.refresh_calls)
                    rec.access_tokens.add(access)
                return self._send(200, json.dumps({"access": access}).encode(), {"Content-Type": "application/json"})
            self._send(404)

        def do_GET(self):
            with rec.lock:
                rec.requests.append(("GET", self.path, dict(self.headers)))
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if role == "cloud":
                data = rec.files.get(parts.path)
                return self._send(200, data) if data is not None else self._send(404)
            # --- Label Studio ---
            if parts.path == "/slow":  # headers at once, then one byte every 0.1 s
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.1)
                return
            if parts.path == "/big":  # declares its size honestly
                return self._send(200, b"y" * 3000)
            if parts.path == "/big-no-length":  # no Content-Length: the limit must hold while streaming
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"z" * 3000)
                self.close_connection = True
                return
            if parts.path == "/truncated":  # promises 1000 bytes, sends 10, hangs up
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"0123456789")
                self.close_connection = True
                return
            if parts.path == "/redirect-out":
                return self._send(302, headers={"Location": rec.other_url + "/evil.png"})
            if parts.path == "/redirect-loop":
                return self._send(302, headers={"Location": "/redirect-loop"})
            if not self._authorized():
                return self._send(401, b'{"detail":"Authentication credentials were not provided."}')
            if parts.path.startswith("/data/upload/"):
                data = rec.files.get(parts.path)
                return self._send(200, data) if data is not None else self._send(404)
            if parts.path == "/data/local-files/":
                data = rec.files.get("local:" + query.get("d", [""])[0])
                return self._send(200, data) if data is not None else self._send(404)
            if parts.path.startswith("/tasks/") and parts.path.endswith("/presign/"):
                uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
                key = urlsplit(uri).path
                location = f"{rec.cloud_url}/{urlsplit(uri).netloc}{key}?X-Amz-Signature=secret"
                return self._send(303, headers={"Location": location})
            self._send(404)

    return Handler


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """The fetcher honours proxy variables; the loopback servers must be reached directly."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def servers():
    """(ls_url, cloud_url, other_url, ls_recorder, cloud_recorder) on three loopback ports."""
    recs = {"ls": Recorder(), "cloud": Recorder(), "other": Recorder()}
    running = {}
    for role, rec in recs.items():
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(rec, "cloud" if role != "ls" else "ls"))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running[role] = (server, thread, f"http://127.0.0.1:{server.server_address[1]}")
    recs["ls"].cloud_url = running["cloud"][2]
    recs["ls"].other_url = running["other"][2]
    yield running["ls"][2], running["cloud"][2], running["other"][2], recs["ls"], recs["cloud"]
    for server, thread, _ in running.values():
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_fetcher(tmp_path: Path, ls_url: str | None, key: str | None = LEGACY_TOKEN, **overrides) -> MediaFetcher:
    key = key if ls_url else None  # the environment's key always comes with its URL (Settings enforces it)
    settings = Settings(model_dir=tmp_path / "model", label_studio_url=ls_url, label_studio_api_key=key, **overrides)
    return MediaFetcher(settings)


def cache_files(fetcher: MediaFetcher) -> list[Path]:
    root = fetcher._settings.media_cache_dir
    return sorted(root.iterdir()) if root.exists() else []


# -- fetching ----------------------------------------------------------------------------------


def test_upload_with_legacy_token_then_cache_hit(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    data = png_bytes()
    ls.files["/data/upload/1/abcd1234-cat.png"] = data
    fetcher = make_fetcher(tmp_path, ls_url)

    assert fetcher.fetch_bytes("/data/upload/1/abcd1234-cat.png") == data
    assert ls.requests[-1][2]["Authorization"] == f"Token {LEGACY_TOKEN}"
    assert fetcher.fetch_bytes("/data/upload/1/abcd1234-cat.png") == data

    assert ls.count("/data/upload/1/abcd1234-cat.png") == 1
    assert (fetcher.stats.hits, fetcher.stats.misses, fetcher.stats.downloaded_bytes) == (1, 1, len(data))
    [cached] = cache_files(fetcher)
    assert cached.suffix == ".png" and cached.read_bytes() == data
    assert fetcher.fetch_path("/data/upload/1/abcd1234-cat.png") == cached


def test_local_files_url(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["local:images/dog.jpg"] = b"dog-bytes"
    fetcher = make_fetcher(tmp_path, ls_url)
    path = fetcher.fetch_path("/data/local-files/?d=images/dog.jpg")
    assert path.read_bytes() == b"dog-bytes" and path.suffix == ".jpg"


def test_personal_access_token_is_exchanged_and_refreshed_on_401(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    ls.files["/data/upload/1/b.png"] = b"B"
    fetcher = make_fetcher(tmp_path, ls_url, key=PAT)

    assert fetcher.fetch_bytes("/data/upload/1/a.png") == b"A"
    assert ls.refresh_calls == 1
    assert ls.requests[-1][2]["Authorization"].startswith("Bearer ")
    assert ls.requests[-1][2]["Authorization"][7:] in ls.access_tokens

    ls.access_tokens.clear()  # Label Studio forgets the access token: one 401, one refresh, one retry
    assert fetcher.fetch_bytes("/data/upload/1/b.png") == b"B"
    assert ls.refresh_calls == 2


def test_revoked_personal_access_token_says_what_to_check(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    fetcher = make_fetcher(tmp_path, ls_url, key=make_jwt(token_type="refresh", jti="revoked"))
    with pytest.raises(MediaUnavailable, match="/api/token/refresh/.*LABEL_STUDIO_API_KEY"):
        fetcher.fetch_bytes("/data/upload/1/a.png")


def test_cloud_uri_is_presigned_and_token_never_leaves_label_studio(servers, tmp_path):
    ls_url, cloud_url, _, ls, cloud = servers
    cloud.files["/bucket/videos/clip.mp4"] = b"video-bytes"
    # The fake bucket is on loopback: storage on a private address must be listed explicitly.
    fetcher = make_fetcher(tmp_path, ls_url, media_allowed_hosts=(urlsplit(cloud_url).netloc,))

    path = fetcher.fetch_path("s3://bucket/videos/clip.mp4", task_id=7)
    assert path.read_bytes() == b"video-bytes" and path.suffix == ".mp4"
    method, presign_path, headers = ls.requests[-1]
    assert presign_path.startswith("/tasks/7/presign/?fileuri=")
    assert (
        base64.urlsafe_b64decode(parse_qs(urlsplit(presign_path).query)["fileuri"][0]) == b"s3://bucket/videos/clip.mp4"
    )
    assert headers["Authorization"] == f"Token {LEGACY_TOKEN}"
    assert [h.get("Authorization") for _, _, h in cloud.requests] == [None]

    # Cached by the cloud URI, not the presigned URL: no second presign, no second download.
    assert fetcher.fetch_bytes("s3://bucket/videos/clip.mp4", task_id=7) == b"video-bytes"
    assert len(cloud.requests) == 1 and ls.count(presign_path) == 1
    assert fetcher.stats.hits == 1


def test_absolute_url_on_allowed_host_gets_no_token(servers, tmp_path):
    ls_url, cloud_url, _, _, cloud = servers
    cloud.files["/public/x.png"] = b"public"
    host = urlsplit(cloud_url).netloc
    fetcher = make_fetcher(tmp_path, ls_url, media_allowed_hosts=(host,))
    assert fetcher.fetch_bytes(cloud_url + "/public/x.png") == b"public"
    assert "Authorization" not in cloud.requests[-1][2]


def test_absolute_url_on_other_host_is_refused(servers, tmp_path):
    ls_url, cloud_url, _, _, cloud = servers
    cloud.files["/public/x.png"] = b"public"
    fetcher = make_fetcher(tmp_path, ls_url)
    with pytest.raises(MediaUnavailable, match="is not allowed.*MEDIA_ALLOWED_HOSTS"):
        fetcher.fetch_bytes(cloud_url + "/public/x.png")
    # MEDIA_ALLOW_ANY_HOST opens public addresses only: the loopback "bucket" stays closed ...
    with pytest.raises(MediaUnavailable, match="127.0.0.1, which is not a public address.*MEDIA_ALLOWED_HOSTS"):
        make_fetcher(tmp_path, ls_url, media_allow_any_host=True).fetch_bytes(cloud_url + "/public/x.png")
    assert cloud.requests == []
    # ... unless the operator names it.
    named = make_fetcher(tmp_path, ls_url, media_allowed_hosts=(urlsplit(cloud_url).netloc,))
    assert named.fetch_bytes(cloud_url + "/public/x.png") == b"public"


def test_redirect_to_disallowed_host_is_refused(servers, tmp_path):
    ls_url, _, other_url, ls, _ = servers
    fetcher = make_fetcher(tmp_path, ls_url)
    with pytest.raises(MediaUnavailable, match=f"host {urlsplit(other_url).netloc} is not allowed"):
        fetcher.fetch_bytes("/redirect-out")  # relative to Label Studio
    fetcher2 = make_fetcher(tmp_path, ls_url)
    with pytest.raises(MediaUnavailable, match="is not allowed"):
        fetcher2.fetch_bytes(ls_url + "/redirect-out")
    with pytest.raises(MediaUnavailable, match="redirected more than"):
        fetcher2.fetch_bytes(ls_url + "/redirect-loop")
    assert cache_files(fetcher2) == []


def test_wrong_token_says_check_api_key(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    with pytest.raises(MediaUnavailable, match="Label Studio answered 401.*LABEL_STUDIO_API_KEY"):
        make_fetcher(tmp_path, ls_url, key="wrong").fetch_bytes("/data/upload/1/a.png")
    with pytest.raises(MediaUnavailable, match="no token for it: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect"):
        make_fetcher(tmp_path, ls_url, key=None).fetch_bytes("/data/upload/1/a.png")
    with pytest.raises(MediaUnavailable, match="404"):
        make_fetcher(tmp_path, ls_url).fetch_bytes("/data/upload/1/missing.png")


def test_setup_fills_in_what_the_environment_leaves_empty(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    fetcher = make_fetcher(tmp_path, None, key=None)
    with pytest.raises(MediaUnavailable, match="set LABEL_STUDIO_URL or connect the backend from Label Studio"):
        fetcher.fetch_bytes("/data/upload/1/a.png", project="1.100")
    fetcher.setup("1.100", ls_url + "/", LEGACY_TOKEN)
    assert fetcher.label_studio_url("1.100") == ls_url
    assert fetcher.fetch_bytes("/data/upload/1/a.png", project="1.100") == b"A"
    assert ls.requests[-1][2]["Authorization"] == f"Token {LEGACY_TOKEN}"
    # Another project has its own /setup, or none: it never borrows project 1's.
    with pytest.raises(MediaUnavailable, match="its URL is unknown"):
        fetcher.fetch_bytes("/data/upload/1/a.png", project="2.200")
    fetcher.setup("1.100", "localhost:8080", None)  # not a URL: ignored, not fatal; and no token now
    assert fetcher.label_studio_url("1.100") is None


def test_environment_url_wins_and_its_key_goes_only_there(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    env_wins = make_fetcher(tmp_path, ls_url, key="wrong-env-key")
    env_wins.setup("1.100", "http://localhost:1", LEGACY_TOKEN)
    assert env_wins.label_studio_url("1.100") == ls_url
    with pytest.raises(MediaUnavailable, match="401"):  # the env key, not the /setup token from another host
        env_wins.fetch_bytes("/data/upload/1/a.png", project="1.100")
    assert ls.requests[-1][2]["Authorization"] == "Token wrong-env-key"


def test_setup_token_is_used_for_label_studio_url_only_when_setup_came_from_it(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    ls.files["/data/upload/2/b.png"] = b"B"
    fetcher = make_fetcher(tmp_path, ls_url, key=None)
    fetcher.setup("1.100", ls_url, LEGACY_TOKEN)  # same origin as LABEL_STUDIO_URL: its token may go there
    assert fetcher.fetch_bytes("/data/upload/1/a.png", project="1.100") == b"A"
    fetcher.setup("2.100", "http://other-label-studio:8080", "other-token")  # another instance's token: not here
    with pytest.raises(MediaUnavailable, match="401"):
        fetcher.fetch_bytes("/data/upload/2/b.png", project="2.100")
    assert "Authorization" not in ls.requests[-1][2]


def test_absolute_urls_at_the_setup_hostname_go_to_label_studio_url(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    fetcher = make_fetcher(tmp_path, ls_url)
    fetcher.setup("1.100", "http://localhost:8080", None)  # unreachable from a container
    assert fetcher.fetch_bytes("http://localhost:8080/data/upload/1/a.png", project="1.100") == b"A"
    assert ls.requests[-1][2]["Authorization"] == f"Token {LEGACY_TOKEN}"


def test_access_jwt_is_sent_as_bearer_without_exchange(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/a.png"] = b"A"
    access = make_jwt(token_type="access", exp=int(time.time()) + 300)
    ls.access_tokens.add(access)
    assert make_fetcher(tmp_path, ls_url, key=access).fetch_bytes("/data/upload/1/a.png") == b"A"
    assert ls.requests[-1][2]["Authorization"] == f"Bearer {access}" and ls.refresh_calls == 0


def test_size_limit_by_content_length_and_while_streaming(servers, tmp_path):
    ls_url, _, _, _, _ = servers
    fetcher = make_fetcher(tmp_path, ls_url, media_max_bytes=1000)
    with pytest.raises(MediaUnavailable, match="over MEDIA_MAX_BYTES"):
        fetcher.fetch_bytes(ls_url + "/big")
    with pytest.raises(MediaUnavailable, match="at least .* over MEDIA_MAX_BYTES"):
        fetcher.fetch_bytes(ls_url + "/big-no-length")
    assert cache_files(fetcher) == []  # no partial file, no leftover .part


def test_truncated_download_leaves_no_file(servers, tmp_path):
    ls_url, _, _, _, _ = servers
    fetcher = make_fetcher(tmp_path, ls_url)
    with pytest.raises(MediaUnavailable, match="broke off"):
        fetcher.fetch_bytes(ls_url + "/truncated")
    assert cache_files(fetcher) == []


def test_total_time_limit_holds_against_a_dripping_server(servers, tmp_path):
    ls_url, _, _, _, _ = servers
    fetcher = make_fetcher(tmp_path, ls_url, media_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(MediaUnavailable, match="MEDIA_TIMEOUT"):
        fetcher.fetch_bytes(ls_url + "/slow")
    assert time.monotonic() - start < 2.0
    assert cache_files(fetcher) == []


def test_unreachable_label_studio_explains(tmp_path):
    fetcher = make_fetcher(tmp_path, "http://127.0.0.1:9", media_timeout=2)  # port 9: discard, closed
    with pytest.raises(MediaUnavailable, match="could not connect.*LABEL_STUDIO_URL"):
        fetcher.fetch_bytes("/data/upload/1/a.png")


def test_eviction_keeps_total_under_the_bound(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    size = 300 * 1024
    for i in range(6):
        ls.files[f"/data/upload/1/{i}.bin"] = bytes([i]) * size
    fetcher = make_fetcher(tmp_path, ls_url, media_cache_mb=1)
    for i in range(6):
        assert fetcher.fetch_bytes(f"/data/upload/1/{i}.bin")[:1] == bytes([i])
        total = sum(p.stat().st_size for p in cache_files(fetcher))
        assert total <= 1024 * 1024
    assert fetcher.stats.evictions == 3
    # Least recently used went first: the last three remain, the first is fetched again.
    fetcher.fetch_bytes("/data/upload/1/5.bin")
    assert fetcher.stats.hits == 1
    fetcher.fetch_bytes("/data/upload/1/0.bin")
    assert ls.count("/data/upload/1/0.bin") == 2


def test_concurrent_fetches_of_one_url_download_once(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/same.png"] = png_bytes()
    fetcher = make_fetcher(tmp_path, ls_url)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fetcher.fetch_bytes("/data/upload/1/same.png"), range(16)))
    assert all(r == ls.files["/data/upload/1/same.png"] for r in results)
    assert ls.count("/data/upload/1/same.png") == 1
    assert (fetcher.stats.hits, fetcher.stats.misses) == (15, 1)


def test_bad_urls_are_bad_requests(tmp_path):
    fetcher = make_fetcher(tmp_path, "http://127.0.0.1:9")
    for url in ("", "ftp://host/x.png", "relative/path.png", "//host/x.png"):
        with pytest.raises(BadRequest):
            fetcher.fetch_bytes(url)
    with pytest.raises(BadRequest, match="task id"):
        fetcher.fetch_bytes("gs://bucket/x.png")


def test_data_uri(tmp_path):
    data = png_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    fetcher = make_fetcher(tmp_path, None)
    assert fetcher.fetch_bytes(uri) == data
    path = fetcher.fetch_path(uri)
    assert path.read_bytes() == data and path.suffix == ".png"
    with pytest.raises(MediaUnavailable, match="MEDIA_MAX_BYTES"):
        make_fetcher(tmp_path, None, media_max_bytes=10).fetch_bytes(uri)


def test_local_paths_only_under_allowed_dirs(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(b"local")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (allowed / "link.txt").symlink_to(tmp_path / "secret.txt")
    fetcher = make_fetcher(tmp_path, None, media_local_dirs=(allowed,))
    assert fetcher.fetch_bytes(str(allowed / "a.png")) == b"local"
    assert fetcher.fetch_path(f"file://{allowed / 'a.png'}") == allowed / "a.png"
    for url in (
        f"file://{tmp_path / 'secret.txt'}",
        f"file://{allowed / 'link.txt'}",
        f"file://{allowed}/../secret.txt",
    ):
        with pytest.raises(MediaUnavailable, match="MEDIA_LOCAL_DIRS"):
            fetcher.fetch_bytes(url)
    # Without MEDIA_LOCAL_DIRS an absolute path is a Label Studio path, never read from disk.
    with pytest.raises(MediaUnavailable, match="LABEL_STUDIO_URL"):
        make_fetcher(tmp_path, None).fetch_bytes(str(allowed / "a.png"))


def test_settings_parse_media_local_dirs():
    settings = Settings.from_env({"MEDIA_LOCAL_DIRS": "/a, /b/c"})
    assert settings.media_local_dirs == (Path("/a"), Path("/b/c"))


# -- images ------------------------------------------------------------------------------------


def test_load_image_rgb_and_key():
    data = png_bytes(8, 6, (10, 200, 30))
    image = load_image(data)
    assert image.pixels.shape == (6, 8, 3) and image.pixels.dtype == np.uint8
    assert tuple(image.pixels[0, 0]) == (10, 200, 30)
    assert image.key == hashlib.sha256(data).hexdigest()


def test_load_image_applies_exif_orientation():
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif, quality=95)
    image = load_image(buf.getvalue())
    assert (image.height, image.width) == (40, 20)
    top, bottom = image.pixels[5, 10].astype(int), image.pixels[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_load_image_modes():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert tuple(load_image(buf.getvalue()).pixels[0, 0]) == (255, 255, 255)  # transparent shows white
    gray16 = Image.fromarray(np.full((3, 5), 0x8000, np.uint16))
    buf = io.BytesIO()
    gray16.save(buf, "PNG")
    pixels = load_image(buf.getvalue()).pixels
    assert pixels.shape == (3, 5, 3) and tuple(pixels[0, 0]) == (128, 128, 128)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_load_image_rejects_bombs_and_non_images():
    with pytest.raises(MediaUnavailable, match="too large|megapixels"):
        load_image(_png_header_only(100_000, 100_000))
    with pytest.raises(MediaUnavailable, match="megapixels"):
        load_image(png_bytes(20, 20), max_pixels=100)
    with pytest.raises(MediaUnavailable, match="not an image.*HTML"):
        load_image(b"<!DOCTYPE html><html><body>Please log in</body></html>")
    with pytest.raises(MediaUnavailable, match="empty"):
        load_image(b"")
    with pytest.raises(MediaUnavailable, match="corrupt|truncated"):
        load_image(png_bytes(64, 64)[:80])


def test_fetch_image_end_to_end(servers, tmp_path):
    ls_url, _, _, ls, _ = servers
    ls.files["/data/upload/1/page.png"] = b"<html>login</html>"
    ls.files["/data/upload/1/ok.png"] = png_bytes(3, 2)
    fetcher = make_fetcher(tmp_path, ls_url)
    assert fetcher.fetch_image("/data/upload/1/ok.png").pixels.shape == (2, 3, 3)
    with pytest.raises(MediaUnavailable, match="not an image"):
        fetcher.fetch_image("/data/upload/1/page.png")


def test_import_does_not_import_torch():
    code = "import sys, sam3_backend.ls.media; sys.exit(1 if 'torch' in sys.modules else 0)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or "sam3_backend.ls.media imported torch"
