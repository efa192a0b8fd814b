"""Fixtures for the end-to-end tests against a real Label Studio 1.23.2.

Session-scoped, in dependency order: install Label Studio (``.venv-ls/``) -> start it on a free
loopback port with a fresh data dir -> write the tiny SAM 3 model and serve it -> put a
recording proxy in front of the backend -> create a project, connect the backend, import tasks.

The e2e tests only run when selected: ``pytest tests/e2e -m e2e`` (or ``SAM3_E2E=1``); a plain
``pytest`` skips them instead of spending minutes installing Label Studio.

The browser tests (``test_browser_labeling.py``, ``test_browser_video.py``) add, on first use:
Debian's Chromium (``scripts/install-chromium.sh``, idempotent, like the Label Studio install) ->
one headless browser logged in to Label Studio -> a fresh browser context and ``LabelingPage`` per
test.

Environment knobs: ``SAM3_E2E_DEVICE`` (backend device, default ``cpu``),
``SAM3_E2E_BACKEND_CLI`` (another ``sam3-backend`` executable, e.g. a stub while developing the
harness; default ``<repo>/.venv/bin/sam3-backend``), ``SAM3_E2E_CHROMIUM`` (another
Chromium/Chrome executable; nothing is installed then) and ``SAM3_E2E_ARTIFACTS`` (where failed
browser tests leave screenshots and logs; default ``<repo>/.e2e/browser-artifacts/<run>/``).

On any failure the report gets the tails of the Label Studio and backend logs and the last
requests Label Studio sent to the backend with the backend's answers; a failed browser test also
gets the paths of its screenshot, page HTML and browser log, and that log's tail. Phase timings
are printed at the end of the session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import browser_harness as bh  # noqa: E402
import ls_harness as h  # noqa: E402
from ls_harness import LABEL_CONFIG, phase  # noqa: E402

# What the failure report reads; filled in by the fixtures below.
_ACTIVE: dict[str, object] = {}
# Failed browser tests: node id -> the artifacts saved for it.
_BROWSER_ARTIFACTS: dict[str, list[Path]] = {}


# --------------------------------------------------------------------------------------------
# Selection, reporting


def _e2e_selected(config) -> bool:
    return "e2e" in (config.getoption("markexpr", "") or "") or os.environ.get("SAM3_E2E") == "1"


def pytest_collection_modifyitems(config, items):
    if _e2e_selected(config):
        return
    skip = pytest.mark.skip(reason="end-to-end test: run with `pytest tests/e2e -m e2e` (or SAM3_E2E=1)")
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed or not item.get_closest_marker("e2e"):
        return
    for key, title in (("label_studio", "Label Studio log (tail)"), ("backend", "sam3-backend log (tail)")):
        obj = _ACTIVE.get(key)
        if obj is not None:
            rep.sections.append((f"{title}: {obj.process.log_path}", obj.process.log_tail(80)))
    proxy = _ACTIVE.get("proxy")
    if proxy is not None:
        rep.sections.append(("what Label Studio sent to the backend, and its answers (last 20)", proxy.report(20)))
    _save_browser_artifacts(item, rep)


def _save_browser_artifacts(item, rep) -> None:
    """A failed browser test: screenshot, HTML and browser log, saved while its page is still open."""
    page = item.funcargs.get("labeling") if hasattr(item, "funcargs") else None
    root = _ACTIVE.get("browser_artifacts")
    if page is None or root is None or item.nodeid in _BROWSER_ARTIFACTS:
        return
    directory = Path(root) / re.sub(r"[^\w.-]+", "_", item.nodeid.split("::", 1)[-1])
    paths = page.save_artifacts(directory)
    _BROWSER_ARTIFACTS[item.nodeid] = paths
    listing = "\n".join(str(p) for p in paths)
    rep.sections.append(("browser artifacts (screenshot, page HTML, browser log)", listing))
    rep.sections.append(("browser log (tail): console, page errors, ML requests", "\n".join(page.log[-60:])))


def pytest_terminal_summary(terminalreporter):
    if _BROWSER_ARTIFACTS:
        terminalreporter.section("browser artifacts of failed tests")
        for nodeid, paths in _BROWSER_ARTIFACTS.items():
            terminalreporter.write_line(nodeid)
            for p in paths:
                terminalreporter.write_line(f"    {p}")
    if not h.TIMINGS:
        return
    terminalreporter.section("e2e phase timings")
    for name, seconds in h.TIMINGS.items():
        terminalreporter.write_line(f"{name:<40} {seconds:7.1f} s")


# --------------------------------------------------------------------------------------------
# Processes


def _backend_cli() -> Path:
    return Path(os.environ.get("SAM3_E2E_BACKEND_CLI") or h.BACKEND_CLI)


@pytest.fixture(scope="session")
def backend_cli() -> Path:
    """The ``sam3-backend`` command; the e2e tests skip if it is not there yet."""
    cli = _backend_cli()
    if not cli.exists():
        pytest.skip(f"{cli} is missing: install the package (`.venv/bin/pip install -e .`) first")
    if cli == h.BACKEND_CLI:
        # The editable install writes the console script before the module exists.
        probe = subprocess.run(
            [str(h.REPO_ROOT / ".venv" / "bin" / "python"), "-c", "import sam3_backend.cli"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            pytest.skip(f"{cli} exists but `import sam3_backend.cli` fails: {probe.stderr.strip().splitlines()[-1]}")
    return cli


@pytest.fixture(scope="session")
def label_studio_exe(backend_cli) -> Path:
    with phase("install label-studio (idempotent)"):
        return h.ensure_label_studio()


@pytest.fixture(scope="session")
def label_studio(label_studio_exe, tmp_path_factory):
    ls = h.LabelStudio(tmp_path_factory.mktemp("label-studio"), exe=label_studio_exe)
    _ACTIVE["label_studio"] = ls
    try:
        with phase("start label-studio"):
            ls.start()
        yield ls
    finally:
        with phase("stop label-studio"):
            code = ls.stop()
        print(f"\nlabel-studio stopped (exit code {code}); log: {ls.process.log_path}")


@pytest.fixture(scope="session")
def backend(label_studio, backend_cli, tmp_path_factory):
    be = h.Backend(
        tmp_path_factory.mktemp("backend"),
        label_studio_url=label_studio.url,
        api_key=label_studio.token,
        cli=backend_cli,
        extra_env={
            # The tiny model is random: keep every query so counts are deterministic (> 0).
            "SAM3_SCORE_THRESHOLD": "0.0",
            "SAM3_MAX_INSTANCES": "3",
            # video: keep every detection and the objects they start (random detections never
            # match their tracks, so SAM 3's hot-start would drop them all)
            "SAM3_VIDEO_SCORE_THRESHOLD": "0.0",
            "SAM3_VIDEO_HOTSTART_FRAMES": "0",
            "SAM3_VIDEO_MAX_OBJECTS": "3",
            "SAM3_DEVICE": os.environ.get("SAM3_E2E_DEVICE", "cpu"),
            "LOG_LEVEL": "INFO",
            # Fine-tuning (test_training_live.py): a few images and steps; every version is promoted.
            "TRAIN_MIN_IMAGES": "4",
            "TRAIN_STEPS": "10",
            "TRAIN_PROMOTION_MARGIN": "-1",
        },
    )
    _ACTIVE["backend"] = be
    try:
        with phase("backend: write tiny model"):
            be.write_tiny_model()
        with phase("backend: start until /health UP"):
            be.start()
        yield be
    finally:
        code = be.stop()
        print(f"\nsam3-backend stopped (exit code {code}); log: {be.process.log_path}")


@pytest.fixture(scope="session")
def proxy(backend):
    p = h.RecordingProxy(backend.url).start()
    _ACTIVE["proxy"] = p
    yield p
    p.stop()
    path = p.dump(backend.workdir / "traffic.json")
    print(f"\nevery request Label Studio sent to the backend, with its answers: {path}")


# --------------------------------------------------------------------------------------------
# The project


# (file name, size, format) of the images uploaded as tasks; distinct sizes catch W/H mix-ups.
UPLOADS = (("img0.png", (64, 48), "PNG"), ("img1.jpg", (80, 60), "JPEG"), ("img2.png", (50, 70), "PNG"))
LOCAL_FILE = ("local0.png", (40, 30), "PNG")


def make_image(path: Path, size: tuple[int, int], fmt: str, seed: int) -> None:
    """A small picture with one bright ellipse on a dark background."""
    from PIL import Image, ImageDraw

    w, h_ = size
    img = Image.new("RGB", size, (20 + 30 * seed, 30, 40))
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.25, h_ * 0.25, w * 0.7, h_ * 0.75), fill=(230, 180 - 40 * seed, 60))
    img.save(path, fmt)


@dataclass
class E2EProject:
    id: int
    ml_id: int
    ml_backend: dict
    good_tasks: dict[int, tuple[int, int]] = field(default_factory=dict)  # task id -> (W, H)
    broken_tasks: list[int] = field(default_factory=list)
    task_urls: dict[int, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def project(label_studio, backend, proxy, tmp_path_factory) -> E2EProject:
    ls = label_studio
    with phase("create project, connect backend, import tasks"):
        p = ls.create_project("sam3 e2e", LABEL_CONFIG)
        ml = ls.connect_ml_backend(p["id"], proxy.url, title="sam3 (e2e)")

        images = tmp_path_factory.mktemp("images")
        paths = []
        sizes_by_name = {}
        for i, (name, size, fmt) in enumerate(UPLOADS):
            make_image(images / name, size, fmt, i)
            paths.append(images / name)
            sizes_by_name[name] = size
        ls.upload_files(p["id"], paths)

        # One image through Local Storage: LS gives it an absolute http://<HOST>/data/local-files/?d=...
        local_dir = ls.files_root / "e2e"
        local_dir.mkdir(parents=True, exist_ok=True)
        name, size, fmt = LOCAL_FILE
        make_image(local_dir / name, size, fmt, 3)
        sizes_by_name[name] = size
        ls.add_local_storage(p["id"], local_dir)

        # Broken images: an upload that does not exist (LS 1.23.2 answers it with a 500) and a
        # loopback port where nothing listens.
        broken_urls = [f"/data/upload/{p['id']}/deadbeef-missing.png", f"http://{h.LOOPBACK}:9/missing.png"]
        ls.import_tasks(p["id"], [{"data": {"image": url}} for url in broken_urls])

        proj = E2EProject(id=p["id"], ml_id=ml["id"], ml_backend=ml)
        for task in ls.tasks(p["id"]):
            url = task["data"]["image"]
            proj.task_urls[task["id"]] = url
            if url in broken_urls:
                proj.broken_tasks.append(task["id"])
                continue
            matches = [s for n, s in sizes_by_name.items() if url.endswith(n)]
            assert len(matches) == 1, f"cannot tell which image task {task['id']} holds: {url}"
            proj.good_tasks[task["id"]] = matches[0]
    assert len(proj.good_tasks) == len(sizes_by_name) and len(proj.broken_tasks) == len(broken_urls), proj
    return proj


# --------------------------------------------------------------------------------------------
# The real labeling UI in headless Chromium


@pytest.fixture(scope="session")
def chromium_exe() -> Path:
    """Debian's chromium, installed on first use (root + apt) like Label Studio is."""
    with phase("install chromium (idempotent)"):
        return bh.ensure_chromium()


@pytest.fixture(scope="session")
def browser_artifacts() -> Path:
    """Where failed browser tests leave their files: not pytest's temporary directory, which
    keeps only the last three runs of anyone's pytest on the machine."""
    configured = os.environ.get("SAM3_E2E_ARTIFACTS")
    run = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    directory = Path(configured) if configured else h.REPO_ROOT / ".e2e" / "browser-artifacts" / run
    _ACTIVE["browser_artifacts"] = directory
    return directory


@pytest.fixture(scope="session")
def playwright_driver():
    """The session's one sync Playwright: a second one in the same thread refuses to start
    ("Sync API inside the asyncio loop"), so every browser test launches through this one."""
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    try:
        yield driver
    finally:
        driver.stop()


@pytest.fixture(scope="session")
def browser(chromium_exe, label_studio, browser_artifacts, playwright_driver):
    b = bh.Browser(chromium_exe, label_studio.url, label_studio.username, label_studio.password)
    try:
        with phase("browser: launch chromium, log in"):
            b.start(playwright_driver)
        yield b
    finally:
        b.stop()


@pytest.fixture
def labeling(browser):
    """A fresh browser context (logged in) with one labeling page; closed after the test."""
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()
