"""ls.client against the fake Label Studio API where real Label Studio cannot misbehave on cue:
key handling (legacy token, personal access token), no redirects, retries, short errors.
The same calls run against real Label Studio in tests/e2e/test_bulk_prelabel.py."""

from __future__ import annotations

import pytest

from fake_ls_api import TOKEN, FakeLabelStudioAPI
from helpers import FULL_CONFIG
from sam3_backend.ls.client import (
    LabelStudioApiError,
    LabelStudioAuthError,
    LabelStudioClient,
    ApiAccess,
    LabelStudioNotFound,
    LabelStudioUnavailable,
)


@pytest.fixture
def api():
    fake = FakeLabelStudioAPI()
    yield fake
    fake.close()


@pytest.fixture
def project(api):
    pid = api.add_project(FULL_CONFIG)
    for i in range(7):
        api.add_task(pid, {"image": f"/data/upload/{pid}/{i}.png"}, annotations=1 if i == 2 else 0)
    return pid


def _client(api, key=TOKEN, **kw):
    kw.setdefault("backoff", 0.01)
    return LabelStudioClient(ApiAccess(api.url, key), **kw)


def test_paging_filters_and_exact_model_versions(api, project):
    client = _client(api)
    assert client.project(project).label_config == FULL_CONFIG
    pages = list(client.iter_tasks(project, page_size=2))
    assert [[t.id for t in page] for page, _ in pages] == [[1, 2], [4, 5], [6, 7]]  # task 3 is annotated
    assert pages[0][1] == 6  # the number matching, from the first page
    assert [t.id for page, _ in client.iter_tasks(project, filter="all") for t in page] == list(range(1, 8))
    assert [t.id for page, _ in client.iter_tasks(project, filter="all", task_ids=[7, 3, 99]) for t in page] == [3, 7]
    client.import_predictions(project, [{"task": 1, "result": [], "model_version": "sam3-abc"},
                                        {"task": 2, "result": [], "model_version": "sam3-abc-finetuned"}])
    # Label Studio's filter matches substrings; the client keeps exact matches only
    assert client.tasks_with_prediction(project, "sam3-abc") == {1}
    assert client.tasks_with_prediction(project, "sam3-abc", task_ids=[2, 3]) == set()
    assert client.existing_tasks(project, [1, 5, 99]) == {1, 5}
    assert client.stats.snapshot()["calls"] >= 8


def test_a_legacy_key_goes_as_token_and_a_personal_access_token_is_exchanged(api, project):
    _client(api).project(project)
    assert api.auth_headers[-1] == f"Token {TOKEN}"
    pat = api.personal_access_token()
    client = _client(api, pat)
    client.project(project)
    assert api.count("POST", r"^/api/token/refresh/$") == 1
    assert api.auth_headers[-1].startswith("Bearer ") and api.auth_headers[-1] != f"Bearer {pat}"
    client.project(project)
    assert api.count("POST", r"^/api/token/refresh/$") == 1  # the access token is cached
    api.revoked = True
    with pytest.raises(LabelStudioAuthError, match="refused the API key"):
        _client(api, pat).project(project)


def test_redirects_are_not_followed_so_the_key_stays_with_label_studio(api, project):
    elsewhere = FakeLabelStudioAPI(token="other")
    try:
        api.redirect_to = elsewhere.url
        with pytest.raises(LabelStudioApiError, match="redirected"):
            _client(api).project(project)
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_reads_are_retried_then_give_up_with_a_clear_error(api, project):
    sleeps = []
    client = _client(api, retries=2, sleep=sleeps.append)
    api.fail_next("GET", r"^/api/projects/", 503, times=2)
    assert client.project(project).id == project
    assert len(sleeps) == 2 and client.stats.snapshot()["retries"] == 2
    api.fail_next("GET", r"^/api/projects/", 429, times=5, retry_after=7)
    with pytest.raises(LabelStudioUnavailable, match="gave up after 3 attempts"):
        client.project(project)
    assert sleeps[-1] == 7  # Retry-After honoured
    with pytest.raises(LabelStudioUnavailable, match="cannot reach Label Studio"):
        LabelStudioClient(ApiAccess("http://127.0.0.1:9", "k"), retries=1, backoff=0.01).project(1)


def test_writes_are_not_retried_and_errors_are_short(api, project):
    client = _client(api)
    api.fail_next("POST", r"/import/predictions$", 503, times=1)
    with pytest.raises(LabelStudioUnavailable):
        client.import_predictions(project, [{"task": 1, "result": []}])
    assert api.predictions_of(1) == [] and api.count("POST", r"/import/predictions$") == 1
    with pytest.raises(LabelStudioApiError) as err:
        client.import_predictions(project, [{"task": 999, "result": []}])
    assert err.value.status_code == 400 and "answered 400" in str(err.value) and "couldn't be retrieved" in str(err.value)
    assert len(str(err.value)) < 800
    with pytest.raises(LabelStudioNotFound, match="project 42 does not exist"):
        client.project(42)
    with pytest.raises(ValueError, match="at most 500"):
        client.import_predictions(project, [{"task": 1, "result": []}] * 501)


def test_connections_validate_and_never_show_the_key():
    conn = ApiAccess("http://ls:8080/", " secret-key ")
    assert conn.url == "http://ls:8080" and conn.api_key == "secret-key" and "secret" not in repr(conn)
    with pytest.raises(ValueError, match="http"):
        ApiAccess("ls:8080", "k")
    with pytest.raises(ValueError, match="API key"):
        ApiAccess("http://ls:8080", "")
