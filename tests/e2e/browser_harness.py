"""Drive Label Studio 1.23.2's own labeling page in headless Chromium (Playwright for Python).

The browser is Debian's ``chromium`` (``scripts/install-chromium.sh``); Playwright never downloads
one of its own. Pieces:

- ``ensure_chromium`` installs the browser if needed and returns its path.
- ``Browser`` launches it once per test session and logs in to Label Studio once; every test gets
  a fresh context (cookies copied from that login) and one ``LabelingPage``.
- ``LabelingPage`` is a page object for the labeling UI: open a task, Auto-Annotation, smart tools,
  labels, clicks and drags in image coordinates, suggestions, Submit; on a video task, the
  player's frame counter, boxes drawn and moved in video coordinates, label clicks on a selected
  region. Every action waits for a specific element, request or store state, never for a fixed
  time. It records the browser
  console and the page's ML requests, and on failure saves a screenshot, the HTML and that log.

Selectors and behaviour were read off Label Studio 1.23.2's real UI (its ``web/dist`` bundle and
by driving it); the facts that matter are next to the code that relies on them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ls_harness import REPO_ROOT, HarnessError

INSTALL_CHROMIUM = REPO_ROOT / "scripts" / "install-chromium.sh"

# This closed network refuses Chromium's background connections (updates, sync, Google lookups);
# without these flags it retries them all the time. --no-sandbox: CI runs as root.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 60_000  # one UI step on a busy 2-core machine: page load, a model answer

INTERACTIVE_PATH = re.compile(r"/api/ml/\d+/interactive-annotating")


def ensure_chromium(timeout: float = 900.0) -> Path:
    """Install Debian's chromium if needed (idempotent); return the browser executable."""
    proc = subprocess.run(["bash", str(INSTALL_CHROMIUM)], capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise HarnessError(
            f"{INSTALL_CHROMIUM.name} failed with exit code {proc.returncode}.\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    exe = Path(lines[-1])
    if not exe.exists():
        raise HarnessError(f"{INSTALL_CHROMIUM.name} printed {exe}, which does not exist")
    return exe


# --------------------------------------------------------------------------------------------
# The browser, once per session


class Browser:
    """One headless Chromium for the session, logged in to Label Studio once."""

    def __init__(self, exe: Path, ls_url: str, username: str, password: str):
        self.exe = Path(exe)
        self.ls_url = ls_url
        self.username = username
        self.password = password
        self._pw = None
        self.browser = None
        self.storage_state: dict | None = None

    def start(self, playwright=None) -> "Browser":
        """``playwright``: the session's driver (one sync Playwright per thread can run); None
        starts one that ``stop`` ends."""
        if playwright is None:
            from playwright.sync_api import sync_playwright

            self._pw = playwright = sync_playwright().start()
        self.browser = playwright.chromium.launch(executable_path=str(self.exe), headless=True,
                                                  args=list(CHROMIUM_ARGS))
        self.storage_state = self._login()
        return self

    def _login(self) -> dict:
        """Log in through Label Studio's own form; keep the session cookie for later contexts."""
        context = self.browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{self.ls_url}/user/login/")
            page.fill("#email", self.username)
            page.fill("#password", self.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url)
            return context.storage_state()
        finally:
            context.close()

    def new_page(self) -> "LabelingPage":
        context = self.browser.new_context(viewport=VIEWPORT, storage_state=self.storage_state)
        return LabelingPage(context, self.ls_url)

    def stop(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._pw is not None:
            self._pw.stop()


# --------------------------------------------------------------------------------------------
# What one interactive prompt did


@dataclass
class Interaction:
    """One interactive prompt (a smart-tool gesture, a label click on a video region) as the
    browser saw it: what the UI posted and what LS answered."""

    context: list[dict]  # the regions the UI sent as params.context.result
    answer: dict  # LS's JSON answer: {"data": {"result": [...]}} or {"errors": [...]}
    seconds: float  # browser-side round trip, click to answer

    @property
    def result(self) -> list[dict]:
        data = self.answer.get("data") or {}
        return list(data.get("result") or [])

    @property
    def result_ids(self) -> set[str]:
        return {r["id"] for r in self.result}


@dataclass
class AnnotationState:
    """The labeling UI's current annotation, read from its store (``window.Htx``)."""

    suggestions: list[dict]  # [{"id", "type"}]; LS's id is "<backend region id>#<annotation id>"
    regions: list[dict]  # [{"id", "type", "origin", "hidden"}]
    selected: list[str]  # ids of selected regions

    @property
    def suggestion_sources(self) -> set[str]:
        """The backend region ids the suggestions were made from."""
        return {s["id"].split("#", 1)[0] for s in self.suggestions}


# The store of Label Studio's labeling UI (window.Htx in 1.23.2): the one place that tells which
# regions are suggestions and which are selected; the DOM only shows the count.
_STATE_JS = """() => {
  const a = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;
  if (!a) return null;
  return {
    suggestions: Array.from(a.suggestions.values()).map(r => ({id: r.id, type: r.type})),
    regions: a.regions.map(r => ({id: r.id, type: r.type, origin: r.origin, hidden: !!r.hidden})),
    selected: a.selectedRegions.map(r => r.id),
  };
}"""

# The task's image is an <img alt="image"> under the Konva stage; LS positions it (and zooms it
# slightly after the side panels lay out), so its box is what maps the screen to image percent.
# Ready = loaded and the box unchanged over the last polls.
_IMAGE_STABLE_JS = """(polls) => {
  const img = document.querySelector('img[alt="image"]');
  if (!img || !img.complete || !img.naturalWidth) { window.__e2eImgBox = null; return false; }
  const r = img.getBoundingClientRect();
  const key = [r.x, r.y, r.width, r.height].map(v => Math.round(v * 10)).join(',');
  const s = window.__e2eImgBox;
  window.__e2eImgBox = (s && s.key === key) ? {key, n: s.n + 1} : {key, n: 1};
  return window.__e2eImgBox.n >= polls;
}"""

# A <Video> task (HtxVideo + VideoCanvas in 1.23.2): the frame is painted on a canvas, centred in
# the Konva stage ``.lsf-video__main .konvajs-content`` at the player's zoom and pan, and the stage
# maps the pointer back to video pixels the same way (VideoRegions). The player's ref
# (``item.ref.current``) carries that zoom, pan, the video's and the canvas's sizes and the clip's
# length in frames; from them comes the video's box on screen (as VideoRegions computes it for an
# unpanned player: these tests never pan). Ready = the clip's length is known and that box
# unchanged over the last polls.
_VIDEO_BOX_JS = """([name, polls]) => {
  const a = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;
  const item = a && a.names.get(name);
  const player = item && item.ref && item.ref.current;
  const stage = document.querySelector('.lsf-video__main .konvajs-content');
  if (!player || !stage || !player.length || !player.videoDimensions.width) {
    window.__e2eVideoBox = null;
    return null;
  }
  const s = stage.getBoundingClientRect();
  const width = player.videoDimensions.width * player.zoom;
  const height = player.videoDimensions.height * player.zoom;
  const box = {
    x: s.x + (player.width - width) / 2 + player.pan.x, y: s.y + (player.height - height) / 2 + player.pan.y,
    width, height, stage: {x: s.x, y: s.y, width: s.width, height: s.height},
    frame: item.frame, frames: player.length,
  };
  const key = [box.x, box.y, width, height].map(v => Math.round(v * 10)).join(',');
  const last = window.__e2eVideoBox;
  window.__e2eVideoBox = (last && last.key === key) ? {key, n: last.n + 1} : {key, n: 1};
  return window.__e2eVideoBox.n >= polls ? box : null;
}"""

# The annotation as Label Studio would save it: what a label click sends as context is taken from
# the same serialization.
_RESULTS_JS = """() => {
  const a = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;
  return a ? a.serializeAnnotation() : null;
}"""


class LabelingPage:
    """Label Studio's labeling UI for one task, in one fresh browser context."""

    def __init__(self, context, ls_url: str):
        self.context = context
        self.ls_url = ls_url
        self.page = context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.t0 = time.monotonic()
        self.log: list[str] = []  # console messages, page errors, failed requests, ML traffic
        self.interactive_requests: list[Any] = []  # playwright Request objects, in order
        self.label_groups: dict[str, int] = {}
        self.video_name: str | None = None  # the <Video> tag's name, for a video task
        self.page.on("console", lambda m: self._log(f"console.{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self._log(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self._log(f"request failed: {r.method} {r.url}: {r.failure}"))
        self.page.on("request", self._on_request)
        self.page.on("response", self._on_response)

    # -- logging ---------------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        self.log.append(f"[{time.monotonic() - self.t0:7.2f} s] {line}")

    def _on_request(self, request) -> None:
        if INTERACTIVE_PATH.search(request.url):
            self.interactive_requests.append(request)
            self._log(f"-> {request.method} {request.url} {_short(request.post_data or '', 400)}")

    def _on_response(self, response) -> None:
        # Only what the event carries: reading a body here would block the event dispatch.
        if INTERACTIVE_PATH.search(response.url) or (response.status >= 400 and "/api/" in response.url):
            self._log(f"<- {response.status} {response.request.method} {response.url}")

    def save_artifacts(self, directory: Path) -> list[Path]:
        """Screenshot, HTML, store state and the log, for a failed test; returns what was written."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        log_path = directory / "browser.log"
        try:
            state = json.dumps(self.page.evaluate(_STATE_JS), indent=1)
            results = json.dumps(self.page.evaluate(_RESULTS_JS), indent=1)
        except Exception as exc:
            state = results = f"<unreadable: {exc}>"
        log_path.write_text(
            "\n".join(self.log) + f"\n\nURL: {self.page.url}\nannotation store:\n{state}\nresults:\n{results}\n"
        )
        written.append(log_path)
        for name, save in (
            ("screenshot.png", lambda p: self.page.screenshot(path=str(p), full_page=True)),
            ("page.html", lambda p: p.write_text(self.page.content())),
        ):
            try:
                save(directory / name)
                written.append(directory / name)
            except Exception as exc:
                self._log(f"could not save {name}: {exc}")
        return written

    def close(self) -> None:
        self.context.close()

    # -- navigation --------------------------------------------------------------------------------

    def open_task(self, project_id: int, task_id: int, label_config: str) -> "LabelingPage":
        """Open the task in the Data Manager's labeling view; wait until the image is laid out."""
        self.label_groups = label_groups(label_config)
        self.page.goto(f"{self.ls_url}/projects/{project_id}/data?task={task_id}")
        self.page.wait_for_selector(".lsf-toolbar")
        self.page.wait_for_function("() => !!(window.Htx && window.Htx.annotationStore.selected)")
        self.wait_image_ready()
        return self

    def wait_image_ready(self) -> None:
        self.page.wait_for_function(_IMAGE_STABLE_JS, arg=4, polling=150)

    def open_video_task(self, project_id: int, task_id: int, label_config: str) -> "LabelingPage":
        """Open a video task; wait until the player knows the clip's length and is laid out.

        A video project has no toolbar: the VideoRectangle control draws wherever the stage is
        dragged, with or without a label chosen.
        """
        names = re.findall(r'<Video\b[^>]*\bname="([^"]+)"', label_config)
        if len(names) != 1:
            raise HarnessError(f"expected one <Video name=...> in the label config, found {names}")
        self.video_name = names[0]
        self.label_groups = label_groups(label_config)
        self.page.goto(f"{self.ls_url}/projects/{project_id}/data?task={task_id}")
        self.page.wait_for_function("() => !!(window.Htx && window.Htx.annotationStore.selected)")
        self.video_box()
        return self

    def video_box(self) -> dict:
        """The video's box on screen (x, y, width, height), the stage's, the current frame
        (1-based) and the clip's length in frames; waits until the player is ready."""
        handle = self.page.wait_for_function(_VIDEO_BOX_JS, arg=[self.video_name, 3], polling=150)
        return handle.json_value()

    def results(self) -> list[dict]:
        """The current annotation's regions, serialized as Label Studio saves and sends them."""
        results = self.page.evaluate(_RESULTS_JS)
        if results is None:
            raise HarnessError("the labeling UI's store (window.Htx) has no annotation: is the task open?")
        return results

    def result(self, region_id: str) -> dict:
        results = self.results()
        for region in results:
            if region["id"] == region_id:
                return region
        raise HarnessError(f"no region {region_id!r} in the annotation: {[r['id'] for r in results]}")

    def state(self) -> AnnotationState:
        raw = self.page.evaluate(_STATE_JS)
        if raw is None:
            raise HarnessError("the labeling UI's store (window.Htx) has no annotation: is the task open?")
        return AnnotationState(**raw)

    def wait_state(self, predicate_js: str) -> None:
        """Wait until ``predicate_js`` (a JS expression over ``a``, the annotation) is true."""
        self.page.wait_for_function(
            "() => { const a = window.Htx && window.Htx.annotationStore.selected;"
            f" if (!a) return false; return ({predicate_js}); }}"
        )

    # -- bottom bar and toolbar ------------------------------------------------------------------

    def enable_auto_annotation(self) -> None:
        """Turn Auto-Annotation on (found by its text; the checkbox carries a data-testid)."""
        toggle = self.page.get_by_test_id("bottombar-auto-annotation-toggle")
        if not toggle.is_checked():
            self.page.get_by_text("Auto-Annotation", exact=True).click()
        self.page.wait_for_function(
            "() => { const t = document.querySelector('[data-testid=\"bottombar-auto-annotation-toggle\"]');"
            " return t && t.checked; }"
        )

    def pick_smart_tool(self, tool: str) -> None:
        """Pick ``key-point-tool`` or ``rectangle-tool`` from the smart tool group.

        With Auto-Annotation on, the toolbar gets a group of ``button.lsf-tool_smart``; hovering it
        opens ``.lsf-toolbar__smart`` with one button per smart tool (``aria-label``).
        """
        self.page.locator("button.lsf-tool_smart").first.hover()
        button = self.page.locator(f".lsf-toolbar__smart button[aria-label={tool}]")
        button.click()
        self.page.wait_for_selector(f".lsf-toolbar button.lsf-tool_smart.lsf-tool_active[aria-label={tool}]")

    def select_label(self, control: str, label: str) -> None:
        """Select ``label`` of the labels control named ``control``.

        The UI drops the selection after every region it creates, so a smart click needs this
        before each click. Each control's labels render as one ``.lsf-labels`` row, in config order.
        """
        index = self.label_groups[control]
        selected_js = (
            "([i, text]) => Array.from(document.querySelectorAll('.lsf-labels')[i].querySelectorAll('.lsf-label'))"
            ".some(l => l.className.includes('selected') && l.querySelector('.lsf-label__text').innerText === text)"
        )
        if self.page.evaluate(selected_js, [index, label]):
            return  # a second click would unselect it
        self._label_chip(control, label).click()
        self.page.wait_for_function(selected_js, arg=[index, label])

    def _label_chip(self, control: str, label: str):
        row = self.page.locator(".lsf-labels").nth(self.label_groups[control])
        text = self.page.locator(".lsf-label__text", has_text=re.compile(f"^{re.escape(label)}$"))
        return row.locator(".lsf-label", has=text)

    def click_label(self, control: str, label: str) -> "Interaction":
        """Click a label chip while a video region is selected: it toggles the label on that
        region and, with Auto-Annotation on, sends the one interactive request a video has.
        Returns the exchange."""
        return self._prompt(self._label_chip(control, label).click)

    # -- pointer, in image coordinates -----------------------------------------------------------

    def image_point(self, fx: float, fy: float) -> tuple[float, float]:
        """Screen coordinates of the point at fractions (fx, fy) of the image's width and height."""
        box = self.page.locator('img[alt="image"]').bounding_box()
        stage = self.page.locator(".konvajs-content").bounding_box()
        x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        inside = stage["x"] <= x <= stage["x"] + stage["width"] and stage["y"] <= y <= stage["y"] + stage["height"]
        if not inside:
            raise HarnessError(f"image point ({fx}, {fy}) -> ({x:.0f}, {y:.0f}) lies outside the stage {stage}")
        return x, y

    def _prompt(self, gesture) -> Interaction:
        """Run ``gesture`` and wait for the interactive request it causes and LS's answer."""
        t0 = time.monotonic()
        with self.page.expect_response(lambda r: bool(INTERACTIVE_PATH.search(r.url))) as info:
            gesture()
        response = info.value
        seconds = time.monotonic() - t0
        sent = response.request.post_data_json or {}
        answer = response.json()
        self._log(f"   answer after {seconds:.3f} s: {_short(json.dumps(answer), 600)}")
        return Interaction(context=(sent.get("context") or {}).get("result") or [], answer=answer, seconds=seconds)

    def smart_click(self, fx: float, fy: float, *, negative: bool = False) -> Interaction:
        """Click the image at (fx, fy); Alt held makes a negative point. Returns the exchange."""
        x, y = self.image_point(fx, fy)

        def click():
            if negative:
                self.page.keyboard.down("Alt")
            try:
                self.page.mouse.click(x, y)
            finally:
                if negative:
                    self.page.keyboard.up("Alt")

        return self._prompt(click)

    def smart_drag(self, f0: tuple[float, float], f1: tuple[float, float]) -> Interaction:
        """Drag a smart rectangle from image fractions ``f0`` to ``f1``. Returns the exchange."""
        p0, p1 = self.image_point(*f0), self.image_point(*f1)
        return self._prompt(lambda: self._drag(p0, p1))

    def _drag(self, p0: tuple[float, float], p1: tuple[float, float]) -> None:
        (x0, y0), (x1, y1) = p0, p1
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
        self.page.mouse.move(x1, y1, steps=4)
        self.page.mouse.up()

    def plain_click(self, fx: float, fy: float) -> int:
        """Click the image; return how many interactive requests the page had made before it."""
        before = len(self.interactive_requests)
        self.page.mouse.click(*self.image_point(fx, fy))
        return before

    # -- video: frames and boxes, in video coordinates ------------------------------------------

    def video_point(self, fx: float, fy: float) -> tuple[float, float]:
        """Screen coordinates of the point at fractions (fx, fy) of the video's width and height."""
        box = self.video_box()
        stage = box["stage"]
        x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        inside = stage["x"] <= x <= stage["x"] + stage["width"] and stage["y"] <= y <= stage["y"] + stage["height"]
        if not inside:
            raise HarnessError(f"video point ({fx}, {fy}) -> ({x:.0f}, {y:.0f}) lies outside the stage {stage}")
        return x, y

    def seek_frame(self, frame: int) -> None:
        """Go to ``frame`` (1-based) by typing it into the timeline's frame counter ("1 of 24")."""
        self.page.locator(".lsf-frames-control").click()
        counter = self.page.locator(".lsf-frames-control input")
        counter.fill(str(frame))
        counter.press("Enter")
        self.page.wait_for_function(
            "([name, frame]) => window.Htx.annotationStore.selected.names.get(name).frame === frame",
            arg=[self.video_name, frame],
        )

    def draw_video_box(self, f0: tuple[float, float], f1: tuple[float, float]) -> dict:
        """Drag a new box from video fractions ``f0`` to ``f1`` on the current frame; return the
        region as serialized (one keyframe). Nothing is sent to the backend for it."""
        before = {r["id"] for r in self.results()}
        self._drag(self.video_point(*f0), self.video_point(*f1))
        self.wait_state(f"a.regions.length === {len(before) + 1}")
        [region] = [r for r in self.results() if r["id"] not in before]
        return region

    def move_video_box(self, region_id: str, f0: tuple[float, float], f1: tuple[float, float]) -> dict:
        """Drag the box under ``f0`` to ``f1``: on a frame without a keyframe that adds one.
        Returns the region as serialized."""
        keyframes = len(self.result(region_id)["value"]["sequence"])
        self._drag(self.video_point(*f0), self.video_point(*f1))
        self.wait_state(
            f"(() => {{ const r = a.regions.find(r => r.id === {json.dumps(region_id)});"
            f" return r && r.sequence.length === {keyframes + 1}; }})()"
        )
        return self.result(region_id)

    def select_video_region(self, region_id: str, fx: float, fy: float) -> None:
        """Click the video at (fx, fy), on the box of ``region_id``; wait until it is the selection."""
        self.page.mouse.click(*self.video_point(fx, fy))
        self.wait_state(f"a.selectedRegions.length === 1 && a.selectedRegions[0].id === {json.dumps(region_id)}")

    # -- suggestions and submit ------------------------------------------------------------------

    def wait_suggestions(self, count: int) -> None:
        """Wait until the bottom bar says ``count`` suggestions with accept and reject buttons."""
        info = self.page.locator(".lsf-auto-accept__info")
        # LS 1.23.2 renders "<n> suggestions" ("1 suggestions" included).
        info.filter(has_text=re.compile(rf"^\s*{count} suggestions?\s*$")).wait_for()
        self.page.get_by_test_id("bottombar-accept-suggestions-button").wait_for()
        self.page.get_by_test_id("bottombar-reject-suggestions-button").wait_for()

    def suggestion_text(self) -> str:
        return self.page.locator(".lsf-auto-accept__info").inner_text()

    def accept_suggestions(self) -> None:
        self.page.get_by_test_id("bottombar-accept-suggestions-button").click()
        self.page.locator(".lsf-auto-accept__info").wait_for(state="detached")

    def submit(self, task_id: int) -> dict:
        """Click Submit; return Label Studio's answer to the annotation it creates."""
        with self.page.expect_response(
            lambda r: r.request.method == "POST" and f"/api/tasks/{task_id}/annotations" in r.url
        ) as info:
            self.page.get_by_test_id("bottombar-submit-button").click()
        response = info.value
        if response.status != 201:
            raise HarnessError(f"Submit: Label Studio answered {response.status}: {response.text()[:1000]}")
        return response.json()

    def hide_all_regions(self) -> None:
        """The eye button at the top of the Regions panel."""
        self.page.get_by_role("button", name="Hide all regions").click()
        self.wait_state("a.regions.length > 0 && a.regions.every(r => r.hidden)")


def label_groups(label_config: str) -> dict[str, int]:
    """Control name -> index of its row of label chips (the order of the *Labels tags)."""
    names = re.findall(r'<\w*Labels\b[^>]*\bname="([^"]+)"', label_config)
    return {name: i for i, name in enumerate(names)}


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...<{len(text) - limit} more chars>"

