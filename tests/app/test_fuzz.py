"""Malformed requests never crash the server: any JSON at any place in a real payload gets a
2xx or a 4xx with a message, never a 500."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FULL_CONFIG, recorded

KEYPOINTS = "predict:interactive:keypointlabels:n=2  [step real_ui_smart_keypoint_rectangle]"
RECTS = "predict:interactive:rectanglelabels:n=2  [step real_ui_smart_keypoint_rectangle]"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    """Every place in a JSON document (dict keys and list indices), the root excluded."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _replace(doc, path, new):
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return doc


def _mutated(data, body):
    paths = sorted(set(_paths(body)), key=str)
    path = data.draw(st.sampled_from(paths))
    return path, _replace(body, path, data.draw(json_values))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_a_real_payload_never_gives_a_500(client, payloads, data):
    which = data.draw(st.sampled_from([KEYPOINTS, RECTS]))
    body = recorded(payloads, which, FULL_CONFIG)
    body["tasks"][0].pop("predictions", None)  # big and ignored: keep the search on what we read
    path, mutated = _mutated(data, body)
    r = client.post("/predict", json=mutated)
    assert r.status_code < 500, (path, r.get_json())
    if r.status_code >= 400:
        assert r.get_json()["error"]


SETUP = "POST /setup  [step connect_backend_image]"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_setup_and_webhooks_never_gives_a_500(client, payloads, data):
    setup = dict(payloads[SETUP]["json"], schema=FULL_CONFIG)
    hooks = sorted(k for k in payloads if k.startswith("webhook:"))
    which = data.draw(st.sampled_from([SETUP, *hooks]))
    body = setup if which == SETUP else copy.deepcopy(payloads[which]["json"])
    path, mutated = _mutated(data, body)
    r = client.post("/setup" if which == SETUP else "/webhook", json=mutated)
    assert r.status_code < 500, (which, path, r.get_json())
    if r.status_code >= 400:
        assert r.get_json()["error"]
