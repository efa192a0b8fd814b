"""Load through a served app (real threads, loopback HTTP): overload is shed at once with 503 +
Retry-After, no request waits forever, and mixed concurrent traffic gets the answers it would
get alone."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from werkzeug.serving import make_server

from helpers import FULL_CONFIG, recorded

KEYPOINT1 = "predict:interactive:keypointlabels:n=1  [step real_ui_smart_keypoint_rectangle]"


@pytest.fixture
def served(make_app):
    """``serve(**settings)`` -> (base URL, app) of an app on a threaded loopback server."""
    servers = []

    def serve(**overrides):
        app = make_app(**overrides)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", app

    yield serve
    for server in servers:
        server.shutdown()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_overload_is_shed_at_once_and_the_server_recovers(served, payloads):
    from sam3_backend.engine.scheduler import Priority

    url, app = served(max_pending_requests=4, queue_timeout=30)
    engine = app.extensions["sam3"]["holder"].engine
    body = recorded(payloads, KEYPOINT1, FULL_CONFIG)
    assert requests.post(f"{url}/predict", json=body, timeout=30).status_code == 200  # warm

    engine.scheduler.acquire(Priority.BACKGROUND)  # the model is busy (a long job holds it)
    held = True
    try:
        with ThreadPoolExecutor(16) as pool:
            started = time.monotonic()
            futures = [pool.submit(requests.post, f"{url}/predict", json=body, timeout=60) for _ in range(16)]
            # The excess is answered while the model is still held: it never waited for the model.
            _wait_until(lambda: sum(f.done() for f in futures) == 12)
            shed_seconds = time.monotonic() - started
            assert engine.scheduler.waiting()["interactive"] == 4
            engine.scheduler.release()
            held = False
            answers = [f.result(timeout=60) for f in futures]
    finally:
        if held:
            engine.scheduler.release()
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 4 + [503] * 12
    assert shed_seconds < 5  # the excess did not wait for the model
    for r in answers:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "5" and "MAX_PENDING_REQUESTS" in r.json()["error"]
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert requests.post(f"{url}/predict", json=body, timeout=30).status_code == 200

    # Many more rejected requests: memory and threads stay where they were.
    with ThreadPoolExecutor(8) as pool:
        engine.scheduler.acquire(Priority.BACKGROUND)
        try:
            blockers = [pool.submit(requests.post, f"{url}/predict", json=body, timeout=60) for _ in range(4)]
            _wait_until(lambda: engine.scheduler.waiting()["interactive"] == 4)
            threads_before, rss_before = threading.active_count(), _rss_mb()
            flood = list(pool.map(lambda _: requests.post(f"{url}/predict", json=body, timeout=30).status_code,
                                  range(300)))
            threads_after, rss_after = threading.active_count(), _rss_mb()
        finally:
            engine.scheduler.release()
        assert [b.result(timeout=60).status_code for b in blockers] == [200] * 4
    assert flood == [503] * 300
    assert rss_after - rss_before < 100
    assert threads_after <= threads_before + 10
    metrics = requests.get(f"{url}/metrics?format=json", timeout=5).json()["service"]
    assert metrics["rejected"]["overload"] == 312


def test_a_request_waits_at_most_queue_timeout_for_the_model(served, payloads):
    from sam3_backend.engine.scheduler import Priority

    url, app = served(queue_timeout=0.5)
    engine = app.extensions["sam3"]["holder"].engine
    body = recorded(payloads, KEYPOINT1, FULL_CONFIG)
    engine.scheduler.acquire(Priority.BACKGROUND)
    try:
        started = time.monotonic()
        r = requests.post(f"{url}/predict", json=body, timeout=30)
        waited = time.monotonic() - started
    finally:
        engine.scheduler.release()
    assert r.status_code == 503 and "QUEUE_TIMEOUT" in r.json()["error"] and r.headers["Retry-After"]
    assert 0.5 <= waited < 10
    assert requests.post(f"{url}/predict", json=body, timeout=30).status_code == 200


def _strip_ids(result: dict) -> list:
    return sorted((reg["type"], str(reg["value"])) for reg in result["result"])


def test_concurrent_clicks_and_a_prelabel_get_the_answers_they_get_alone(served, payloads):
    """8 threads: clicks on several images (keypoints and rectangles) and a prelabel, at once.
    Every answer equals the answer the same request gets on an idle server (region ids aside)."""
    url, _ = served(max_pending_requests=16)
    images = ["/data/upload/1/8db9e49a-img0.png", "/data/upload/1/9fa52609-img1.jpg",
              "/data/upload/1/b04a6451-img2.png", "/data/upload/1/98c745a9-ui.png"]
    click = recorded(payloads, KEYPOINT1, FULL_CONFIG)
    bodies = []
    for i, image in enumerate(images):
        b = copy.deepcopy(click)
        b["tasks"][0]["data"]["image"] = image
        b["params"]["context"]["result"][0]["value"].update(x=10.0 + 20 * i, y=30.0 + 10 * i)
        bodies.append(b)
        rect = copy.deepcopy(b)
        rect["params"]["context"]["result"] = [{
            "from_name": "rect", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
            "original_width": 64, "original_height": 48,
            "value": {"x": 5.0 + 5 * i, "y": 10.0, "width": 40.0, "height": 50.0, "rotation": 0,
                      "rectanglelabels": ["dog"]},
        }]
        bodies.append(rect)
    prelabel = {"tasks": [{"id": i, "data": {"image": image}} for i, image in enumerate(images * 2)],
                "label_config": FULL_CONFIG}
    bodies.append(prelabel)

    def post(body):
        r = requests.post(f"{url}/predict", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return [_strip_ids(res) for res in r.json()["results"]]

    alone = [post(b) for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(post, bodies * 2))
    assert together == alone * 2
    assert all(answer and answer[0] for answer in alone)  # every request produced regions
