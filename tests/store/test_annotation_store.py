"""The annotation store: webhook semantics, reconciliation, limits, concurrency."""

from __future__ import annotations

import copy
import sqlite3
import threading

import pytest

from sam3_backend.errors import BadRequest
from sam3_backend.store.annotations import AnnotationStore, Limits

CREATED = "webhook:ANNOTATION_CREATED  [step annotation_created]"
UPDATED = "webhook:ANNOTATION_UPDATED  [step annotation_updated]"
DELETED = "webhook:ANNOTATIONS_DELETED  [step annotation_deleted]"


def hook(payloads, key, **annotation):
    body = copy.deepcopy(payloads[key]["json"])
    if annotation:
        body["annotation"].update(annotation)
    return body


def created(aid, task=1, project=1, updated="2026-01-01T00:00:00.000000Z", result=None):
    return {"action": "ANNOTATION_CREATED", "project": {"id": project, "label_config": "<View/>"},
            "annotation": {"id": aid, "task": task, "project": project, "updated_at": updated,
                           "result": result if result is not None else [{"type": "rectanglelabels", "n": aid}]},
            "task": {"id": task, "data": {"image": f"/data/upload/{project}/img{task}.png"}}}


@pytest.fixture
def store(tmp_path):
    return AnnotationStore(tmp_path / "annotations.sqlite3")


def test_recorded_create_update_delete(store, payloads):
    r = store.ingest(hook(payloads, CREATED))
    assert (r.project, r.stored) == (1, 1)
    (a,) = store.annotations(1)
    assert (a.id, a.task, a.result[0]["value"]["rectanglelabels"]) == (1, 1, ["cat"])
    assert store.task_data(1) == {1: {"image": "/data/upload/1/8db9e49a-img0.png"}}
    store.ingest(hook(payloads, UPDATED))  # the user cleared the regions
    assert store.annotations(1)[0].result == []
    r = store.ingest(hook(payloads, DELETED))
    assert r.removed == 1 and store.annotations(1) == []


def test_replays_are_idempotent_and_never_go_back_in_time(store, payloads):
    first, second = hook(payloads, CREATED), hook(payloads, UPDATED)
    for body in (first, second, first, second, first):  # replays, out of order
        store.ingest(body)
    assert store.annotations(1)[0].result == []  # the newest (updated_at) wins
    assert len(store.annotations(1)) == 1
    store.ingest(hook(payloads, DELETED))
    r = store.ingest(first)  # a late replay of the creation does not resurrect it
    assert r.ignored == 1 and store.annotations(1) == []


def test_bulk_created_keeps_good_items_and_counts_junk(store):
    items = [created(i)["annotation"] for i in range(1, 6)]
    items += ["junk", {"id": "7", "task": 1, "result": []}, {"id": 8, "task": 1, "result": "x"}, {"id": 9, "result": []}]
    body = {"action": "ANNOTATIONS_CREATED", "annotation": items, "project": {"id": 1},
            "task": [{"id": 1, "data": {"image": "a.png"}}]}
    r = store.ingest(body)
    assert r.stored == 5 and sum(r.rejected.values()) == 4
    assert [a.id for a in store.annotations(1)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("body", [
    {"action": "ANNOTATION_CREATED"},
    {"action": "ANNOTATION_CREATED", "annotation": "x"},
    {"action": "ANNOTATIONS_CREATED", "annotation": {"id": 1}},
    {"action": "ANNOTATIONS_DELETED", "annotations": "x"},
    {"action": "PROJECT_UPDATED"},
])
def test_unusable_payloads_are_refused(store, body):
    with pytest.raises(BadRequest):
        store.ingest(body)


def test_reconcile_makes_the_store_match_label_studio(store):
    for aid in (1, 2, 3):
        store.ingest(created(aid, task=aid))
    store.delete(1, [4])  # a tombstone Label Studio disagrees with
    tasks = [
        {"id": 2, "data": {"image": "b.png"}, "annotations": [{"id": 2, "result": [{"n": "api"}], "updated_at": "2026-02-01"}]},
        {"id": 4, "data": {"image": "d.png"}, "annotations": [{"id": 4, "result": [{"n": 4}]}]},
        {"id": 3, "data": {"image": "c.png"}, "annotations": [{"id": 3}]},  # a stub without result: kept as is
    ]
    r = store.replace_project(1, tasks, "<View>cfg</View>")
    assert r.removed == 1  # annotation 1 is gone from Label Studio
    got = {a.id: a.result for a in store.annotations(1)}
    assert got == {2: [{"n": "api"}], 3: [{"type": "rectanglelabels", "n": 3}], 4: [{"n": 4}]}
    assert store.label_config(1) == "<View>cfg</View>"
    assert store.task_data(1)[4] == {"image": "d.png"}


def test_changes_since_training(store):
    for aid in (1, 2, 2, 3):
        store.ingest(created(aid, updated=f"2026-01-0{aid}T00:00:00Z"))
    assert store.changes_since_training(1) == 3  # distinct annotations
    store.mark_trained(1)
    assert store.changes_since_training(1) == 0
    store.delete(1, [1])
    assert store.changes_since_training(1) == 1


def test_limits(tmp_path):
    store = AnnotationStore(tmp_path / "a.sqlite3", Limits(max_result_bytes=200, max_task_data_bytes=100, max_bulk=3))
    r = store.ingest(created(1, result=[{"rle": list(range(100))}]))
    assert r.stored == 0 and r.rejected
    body = created(2)
    body["task"]["data"] = {"image": "x" * 200}
    r = store.ingest(body)
    assert r.stored == 1 and r.rejected and store.task_data(1) == {}
    with pytest.raises(BadRequest):
        store.ingest({"action": "ANNOTATIONS_CREATED", "project": {"id": 1},
                      "annotation": [created(i)["annotation"] for i in range(4)]})
    with pytest.raises(BadRequest):
        store.ingest({"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": i} for i in range(1, 5)]})


def test_threads_and_two_processes_share_one_file(tmp_path):
    path = tmp_path / "a.sqlite3"
    a, b = AnnotationStore(path), AnnotationStore(path)  # as two worker processes would
    errors = []

    def work(store, start):
        try:
            for i in range(start, start + 25):
                store.ingest(created(i, task=i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, 1 + 25 * k)) for k, s in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [x.id for x in b.annotations(1)] == list(range(1, 101))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reconciliation_is_not_a_change_for_auto_training(store):
    store.ingest(created(1))
    store.mark_trained(1)
    store.replace_project(1, [{"id": t, "data": {}, "annotations": [{"id": t, "result": []}]} for t in (1, 2, 3)])
    assert store.changes_since_training(1) == 0 and len(store.annotations(1)) == 3
