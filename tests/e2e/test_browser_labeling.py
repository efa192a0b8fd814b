"""End to end in the real labeling UI: Label Studio 1.23.2's page in headless Chromium, the
sam3-backend with the tiny model behind it, all on loopback.

An API-level test can pass while a user gets nothing: these tests click where a user clicks and
check three things each time: what the browser posted, what the backend answered (through the
recording proxy), and what the page then shows (the bottom bar's suggestions, the stored
annotation). They share the session's Label Studio, backend and proxy with
``test_label_studio.py`` but use projects of their own, and a fresh task per test (Label Studio
keeps a draft of every opened task, which would change what a later click lands on).

The tiny model is random: the checks are about structure and wiring, not mask quality. Video
tasks (a drawn box tracked by a label click) are in ``test_browser_video.py``.

Run alone: ``SAM3_E2E=1 .venv/bin/python -m pytest tests/e2e/test_browser_labeling.py -q``
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image, ImageDraw
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from ls_harness import LABEL_CONFIG, phase, wait_for

pytestmark = pytest.mark.e2e

# How far the coordinates the UI sends may be from where the test clicked (percent of the image):
# the pointer lands on whole screen pixels, about 0.15 % of these images.
COORD_TOLERANCE = 1.0
_IMAGE_NUMBERS = itertools.count()


# --------------------------------------------------------------------------------------------
# Projects and tasks of these tests only


@dataclass
class BrowserProject:
    id: int
    ml_id: int
    images: Path

    def new_task(self, label_studio, size: tuple[int, int] = (64, 48)) -> int:
        """Upload one new image (a bright ellipse on a dark background) as a task; return its id."""
        w, h = size
        path = self.images / f"browser-{next(_IMAGE_NUMBERS)}-{w}x{h}.png"
        img = Image.new("RGB", size, (25, 30, 45))
        ImageDraw.Draw(img).ellipse((w * 0.25, h * 0.25, w * 0.7, h * 0.75), fill=(230, 170, 60))
        img.save(path)
        before = {t["id"] for t in label_studio.tasks(self.id)}
        label_studio.upload_files(self.id, [path])
        new = [t["id"] for t in label_studio.tasks(self.id) if t["id"] not in before]
        assert len(new) == 1, f"uploading {path.name} made tasks {new}"
        return new[0]


def make_project(label_studio, proxy, tmp_path_factory, title: str, *, prelabel: bool) -> BrowserProject:
    """A project with the e2e label config, connected to the backend through the proxy.

    ``prelabel``: the project's "Use predictions to prelabel tasks" (Label Studio's default: on).
    """
    body = {"title": title, "label_config": LABEL_CONFIG}
    if not prelabel:
        body["show_collab_predictions"] = False
    p = label_studio.api("POST", "/api/projects", json=body)
    assert p["show_collab_predictions"] is prelabel, f"Label Studio's default changed? {p}"
    ml = label_studio.connect_ml_backend(p["id"], proxy.url, title="sam3 (browser e2e)")
    return BrowserProject(id=p["id"], ml_id=ml["id"], images=tmp_path_factory.mktemp(f"browser-images-{p['id']}"))


@pytest.fixture(scope="module")
def interactive_project(label_studio, backend, proxy, tmp_path_factory) -> BrowserProject:
    """Prelabel off: what README recommends for interactive work."""
    with phase("browser: create projects"):
        return make_project(label_studio, proxy, tmp_path_factory, "sam3 e2e browser: interactive", prelabel=False)


@pytest.fixture(scope="module")
def prelabel_project(label_studio, backend, proxy, tmp_path_factory) -> BrowserProject:
    """Label Studio's default: opening a task without predictions prelabels it."""
    with phase("browser: create projects"):
        return make_project(label_studio, proxy, tmp_path_factory, "sam3 e2e browser: prelabel on", prelabel=True)


# --------------------------------------------------------------------------------------------
# Checks


def backend_exchange_for(proxy, mark: int, interaction):
    """The backend's side of one smart prompt: the one interactive /predict since ``mark``."""
    sent = [e for e in proxy.find("POST", "/predict", since=mark) if e.request_json["params"].get("context")]
    assert len(sent) == 1, f"expected one interactive /predict, got {len(sent)}:\n" + proxy.report(10)
    exchange = sent[0]
    assert exchange.status == 200, exchange.summary(2000)
    assert exchange.request_json["params"]["context"]["result"] == interaction.context
    answered = exchange.response_json["results"][0]["result"]
    assert {r["id"] for r in answered} == interaction.result_ids, "LS passed on something else than the backend sent"
    return exchange


def check_prompt_answered(labeling, proxy, mark: int, interaction) -> None:
    """The backend answered with regions, Label Studio passed them on, the page shows them as
    suggestions with accept/reject in the bottom bar."""
    assert "errors" not in interaction.answer, f"Label Studio reports: {interaction.answer['errors']}"
    assert interaction.result, f"the backend answered no regions: {interaction.answer}"
    backend_exchange_for(proxy, mark, interaction)
    labeling.wait_suggestions(len(interaction.result))
    state = labeling.state()
    assert state.suggestion_sources == interaction.result_ids, (state.suggestions, interaction.result_ids)


def check_keypoint(region: dict, fx: float, fy: float, size, *, positive: bool) -> None:
    assert region["type"] == "keypointlabels" and region["from_name"] == "kp", region
    assert region["is_positive"] is positive, region
    assert (region["original_width"], region["original_height"]) == size, region
    assert region["value"]["keypointlabels"] == ["cat"], region
    assert abs(region["value"]["x"] - 100 * fx) < COORD_TOLERANCE, (region["value"], fx)
    assert abs(region["value"]["y"] - 100 * fy) < COORD_TOLERANCE, (region["value"], fy)


def brush_mask(region: dict, size: tuple[int, int]) -> np.ndarray:
    """Decode a stored brushlabels region; assert its RLE covers exactly the image."""
    w, h = size
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle", region["type"]
    assert (region["original_width"], region["original_height"]) == size
    flat = decode_rle(region["value"]["rle"])
    assert flat.size == w * h * 4, f"RLE decodes to {flat.size} values, want {w}x{h}x4 = {w * h * 4}"
    return flat.reshape(h, w, 4)[:, :, 3] > 0


def start_keypoint_prompting(labeling) -> None:
    labeling.enable_auto_annotation()
    labeling.pick_smart_tool("key-point-tool")
    labeling.select_label("kp", "cat")


def assert_click_sent_nothing(labeling, proxy, mark: int, requests_before: int) -> None:
    """After a click the UI handled as a selection: no interactive request left the page.

    The selection is the positive sync; the UI would have posted in the same event handler, and the
    short window below only catches a request that is late anyway.
    """
    labeling.wait_state("a.selectedRegions.length > 0")
    try:
        labeling.page.wait_for_event("request", lambda r: "interactive-annotating" in r.url, timeout=1500)
    except PlaywrightTimeoutError:
        pass  # nothing was sent, as expected
    assert len(labeling.interactive_requests) == requests_before, labeling.log[-10:]
    assert not [e for e in proxy.find("POST", "/predict", since=mark) if e.request_json["params"].get("context")]


# --------------------------------------------------------------------------------------------
# Prelabel off (the README's setting for interactive work)


def test_smart_keypoint_click_draws_backend_suggestion(label_studio, proxy, interactive_project, labeling):
    size = (64, 48)
    task_id = interactive_project.new_task(label_studio, size)
    mark = proxy.mark()
    with phase("browser: open task"):
        labeling.open_task(interactive_project.id, task_id, LABEL_CONFIG)
    assert not proxy.find("POST", "/predict", since=mark), "prelabel is off: opening must not call /predict"
    assert labeling.state().regions == []

    start_keypoint_prompting(labeling)
    mark = proxy.mark()
    with phase("browser: smart clicks (UI round trip)"):
        click = labeling.smart_click(0.5, 0.5)
    assert len(click.context) == 1, click.context
    check_keypoint(click.context[0], 0.5, 0.5, size, positive=True)
    check_prompt_answered(labeling, proxy, mark, click)
    # The prompt stays as the user's keypoint; the masks are suggestions until accepted.
    assert [r["type"] for r in labeling.state().regions] == ["keypointregion"]


def test_alt_click_adds_negative_point_and_replaces_suggestion(label_studio, proxy, interactive_project, labeling):
    size = (80, 60)
    task_id = interactive_project.new_task(label_studio, size)
    labeling.open_task(interactive_project.id, task_id, LABEL_CONFIG)
    start_keypoint_prompting(labeling)
    mark = proxy.mark()
    first = labeling.smart_click(0.5, 0.5)
    check_prompt_answered(labeling, proxy, mark, first)

    labeling.select_label("kp", "cat")
    mark = proxy.mark()
    with phase("browser: smart clicks (UI round trip)"):
        second = labeling.smart_click(0.15, 0.5, negative=True)
    # Points accumulate: the first one again, then the negative one.
    assert len(second.context) == 2, second.context
    assert second.context[0]["id"] == first.context[0]["id"]
    check_keypoint(second.context[0], 0.5, 0.5, size, positive=True)
    check_keypoint(second.context[1], 0.15, 0.5, size, positive=False)
    check_prompt_answered(labeling, proxy, mark, second)
    # Replaced, not added: only the second answer's regions are suggested now.
    assert not (labeling.state().suggestion_sources & first.result_ids)
    assert labeling.suggestion_text().split()[0] == str(len(second.result))


def test_smart_rectangle_drag_draws_backend_suggestion(label_studio, proxy, interactive_project, labeling):
    size = (64, 48)
    task_id = interactive_project.new_task(label_studio, size)
    labeling.open_task(interactive_project.id, task_id, LABEL_CONFIG)
    labeling.enable_auto_annotation()
    labeling.pick_smart_tool("rectangle-tool")
    labeling.select_label("rect", "cat")
    mark = proxy.mark()
    with phase("browser: smart rectangle (UI round trip)"):
        drag = labeling.smart_drag((0.3, 0.3), (0.7, 0.75))
    assert len(drag.context) == 1, drag.context
    rect = drag.context[0]
    assert rect["type"] == "rectanglelabels" and rect["from_name"] == "rect" and "is_positive" not in rect
    assert (rect["original_width"], rect["original_height"]) == size
    want = {"x": 30.0, "y": 30.0, "width": 40.0, "height": 45.0}
    assert all(abs(rect["value"][k] - v) < COORD_TOLERANCE for k, v in want.items()), rect["value"]
    check_prompt_answered(labeling, proxy, mark, drag)


def test_accept_and_submit_stores_the_backend_mask(label_studio, proxy, interactive_project, labeling):
    size = (50, 70)  # portrait, W != H: a swapped size cannot decode to the right length
    task_id = interactive_project.new_task(label_studio, size)
    labeling.open_task(interactive_project.id, task_id, LABEL_CONFIG)
    start_keypoint_prompting(labeling)
    mark = proxy.mark()
    click = labeling.smart_click(0.4, 0.6)
    check_keypoint(click.context[0], 0.4, 0.6, size, positive=True)
    check_prompt_answered(labeling, proxy, mark, click)
    backend_regions = {r["id"]: r for r in backend_exchange_for(proxy, mark, click).response_json["results"][0]["result"]}

    labeling.accept_suggestions()
    state = labeling.state()
    assert not state.suggestions
    assert {r["id"].split("#", 1)[0] for r in state.regions} >= set(backend_regions)
    with phase("browser: submit"):
        created = labeling.submit(task_id)

    annotations = label_studio.api("GET", f"/api/tasks/{task_id}/annotations/")
    assert [a["id"] for a in annotations] == [created["id"]]
    stored = annotations[0]["result"]
    brushes = [r for r in stored if r["type"] == "brushlabels"]
    assert brushes, f"no brush region stored: {[r['type'] for r in stored]}"
    assert {r["id"] for r in brushes} == {i for i, r in backend_regions.items() if r["type"] == "brushlabels"}
    for region in brushes:
        mask = brush_mask(region, size)
        assert mask.any(), "stored mask is empty"
        assert region["value"]["brushlabels"] == ["cat"]
        # What was stored is what the backend sent, byte for byte.
        assert region["value"]["rle"] == backend_regions[region["id"]]["value"]["rle"]


# --------------------------------------------------------------------------------------------
# "Use predictions to prelabel tasks" on (Label Studio's default): what README tells users
#
# Opening a task without predictions prelabels it (/predict with context null) and copies the
# regions into the user's annotation. A smart click that lands on a visible region selects that
# region and sends nothing; while a region is selected, a label click relabels it and clicks
# beside it send nothing either, until Esc. What works: turn the setting off (Settings ->
# Annotation), or hide the regions (Regions panel's eye button), or press Esc and click beside them.


def test_prelabel_on_click_on_region_is_swallowed_until_regions_are_hidden(
    label_studio, proxy, prelabel_project, labeling
):
    size = (64, 48)
    task_id = prelabel_project.new_task(label_studio, size)
    mark = proxy.mark()
    with phase("browser: open task (prelabel on)"):
        labeling.open_task(prelabel_project.id, task_id, LABEL_CONFIG)
    batch = wait_for(
        lambda: [e for e in proxy.find("POST", "/predict", since=mark) if e.request_json["params"]["context"] is None],
        what="the prelabel /predict Label Studio sends when the task opens",
    )[0]
    assert batch.status == 200 and [t["id"] for t in batch.request_json["tasks"]] == [task_id], batch.summary(1000)
    prelabel = batch.response_json["results"][0]["result"]
    assert prelabel, "the tiny model with threshold 0 always prelabels something"
    labeling.wait_state(f"a.regions.length === {len(prelabel)}")
    assert {r["origin"] for r in labeling.state().regions} == {"prediction"}

    # The trap: the click lands on a prelabel region, which gets selected; nothing is sent.
    start_keypoint_prompting(labeling)
    mark = proxy.mark()
    before = labeling.plain_click(0.5, 0.5)
    assert_click_sent_nothing(labeling, proxy, mark, before)

    # README: hide the regions (or turn prelabel off); Esc first ends the selection.
    labeling.page.keyboard.press("Escape")
    labeling.wait_state("a.selectedRegions.length === 0")
    labeling.hide_all_regions()
    labeling.select_label("kp", "cat")
    mark = proxy.mark()
    click = labeling.smart_click(0.5, 0.5)
    check_keypoint(click.context[0], 0.5, 0.5, size, positive=True)
    assert len(click.context) == 1, "hidden prelabel regions are not sent as prompts"
    check_prompt_answered(labeling, proxy, mark, click)

    labeling.accept_suggestions()
    created = labeling.submit(task_id)
    stored = label_studio.api("GET", f"/api/annotations/{created['id']}/")["result"]
    # Hidden regions are only hidden: the prelabel is submitted along with the accepted mask.
    stored_ids = {r["id"] for r in stored}
    assert {r["id"] for r in prelabel} <= stored_ids
    assert click.result_ids <= stored_ids
    for region in stored:
        if region["type"] == "brushlabels":
            brush_mask(region, size)


def test_prelabel_on_click_beside_prelabel_region_after_esc(label_studio, proxy, prelabel_project, labeling):
    size = (64, 48)
    task_id = prelabel_project.new_task(label_studio, size)
    # A known prelabel: one box over the top-left quarter (a task with a prediction is shown as
    # is; Label Studio does not ask the backend again).
    box = {"x": 0, "y": 0, "width": 25, "height": 25, "rotation": 0, "rectanglelabels": ["dog"]}
    label_studio.api(
        "POST",
        "/api/predictions",
        json={
            "task": task_id,
            "model_version": "imported",
            "result": [
                {
                    "from_name": "rect",
                    "to_name": "image",
                    "type": "rectanglelabels",
                    "original_width": size[0],
                    "original_height": size[1],
                    "image_rotation": 0,
                    "value": box,
                }
            ],
        },
    )
    mark = proxy.mark()
    labeling.open_task(prelabel_project.id, task_id, LABEL_CONFIG)
    labeling.wait_state("a.regions.length === 1")
    assert [(r["type"], r["origin"]) for r in labeling.state().regions] == [("rectangleregion", "prediction")]
    assert not proxy.find("POST", "/predict", since=mark), "a task with a prediction is not prelabeled again"

    start_keypoint_prompting(labeling)
    mark = proxy.mark()
    before = labeling.plain_click(0.1, 0.1)  # on the box
    assert_click_sent_nothing(labeling, proxy, mark, before)

    labeling.page.keyboard.press("Escape")
    labeling.wait_state("a.selectedRegions.length === 0")
    labeling.select_label("kp", "cat")
    mark = proxy.mark()
    click = labeling.smart_click(0.6, 0.6)  # beside it
    check_keypoint(click.context[0], 0.6, 0.6, size, positive=True)
    check_prompt_answered(labeling, proxy, mark, click)


def test_turning_prelabel_off_in_settings_lets_clicks_through(
    label_studio, proxy, backend, tmp_path_factory, labeling
):
    """README's first advice, done where README says: Settings -> Annotation -> Prelabeling."""
    project = make_project(label_studio, proxy, tmp_path_factory, "sam3 e2e browser: prelabel turned off", prelabel=True)
    page = labeling.page
    page.goto(f"{labeling.ls_url}/projects/{project.id}/settings/annotation")
    toggle = page.get_by_label("Use predictions to prelabel tasks")
    expect(toggle).to_be_checked(timeout=60_000)  # the form fills in once the project has loaded
    toggle.uncheck()
    with page.expect_response(lambda r: r.request.method == "PATCH" and f"/api/projects/{project.id}" in r.url) as info:
        page.get_by_role("button", name="Save").click()
    assert info.value.status == 200
    assert label_studio.api("GET", f"/api/projects/{project.id}")["show_collab_predictions"] is False

    size = (64, 48)
    task_id = project.new_task(label_studio, size)
    mark = proxy.mark()
    labeling.open_task(project.id, task_id, LABEL_CONFIG)
    assert not proxy.find("POST", "/predict", since=mark), "prelabel is off: opening must not call /predict"
    assert labeling.state().regions == []
    start_keypoint_prompting(labeling)
    mark = proxy.mark()
    click = labeling.smart_click(0.5, 0.5)
    check_prompt_answered(labeling, proxy, mark, click)
