"""The durable annotation store: Label Studio's annotation webhooks, kept in SQLite for training.

``MODEL_DIR/annotations.sqlite3``, WAL journal with ``synchronous=FULL``: a webhook is answered
only after its transaction is fsynced, so an acknowledged annotation survives ``kill -9`` of the
server and a power cut (``NORMAL`` would survive the first only). A commit takes a few
milliseconds, well inside Label Studio's 1-s webhook timeout. Safe across threads (one
connection per thread) and processes (SQLite locking, ``busy_timeout``).

Semantics, per (project, annotation id):

* ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` / ``ANNOTATIONS_CREATED`` upsert: the stored copy
  is replaced unless it is newer (``updated_at``), so a replayed or reordered webhook never
  brings back an old result;
* ``ANNOTATIONS_DELETED`` removes and leaves a tombstone, so a late replay of the creation does
  not resurrect it (Label Studio never reuses annotation ids);
* the task's ``data`` (its image URL) is kept with it, the project's label config too.

``replace_project`` reconciles a project with what Label Studio's API returns (the truth when
training starts), so annotations made before the backend was connected count as well.

Inputs are validated and bounded (``Limits``): junk gets ``BadRequest`` (HTTP 400) or, inside a
bulk payload, is skipped and counted; nothing is half-written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadRequest

STORE_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    project INTEGER NOT NULL, id INTEGER NOT NULL, task INTEGER NOT NULL,
    result TEXT NOT NULL, was_cancelled INTEGER NOT NULL, ground_truth INTEGER NOT NULL,
    updated_at TEXT NOT NULL, received_at REAL NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (project, id));
CREATE INDEX IF NOT EXISTS annotations_by_task ON annotations (project, task);
CREATE TABLE IF NOT EXISTS tasks (
    project INTEGER NOT NULL, id INTEGER NOT NULL, data TEXT NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (project, id));
CREATE TABLE IF NOT EXISTS deleted (
    project INTEGER NOT NULL, id INTEGER NOT NULL, deleted_at REAL NOT NULL, PRIMARY KEY (project, id));
CREATE TABLE IF NOT EXISTS changed (
    project INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (project, id));
CREATE TABLE IF NOT EXISTS projects (
    project INTEGER PRIMARY KEY, label_config TEXT, reconciled_at REAL);
"""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one webhook may make us store."""

    max_result_bytes: int = 32 * 1024 * 1024  # one annotation's result as JSON (brush RLE is big)
    max_task_data_bytes: int = 256 * 1024
    max_bulk: int = 10_000  # annotations in one ANNOTATIONS_CREATED / DELETED
    max_label_config_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class StoredAnnotation:
    project: int
    id: int
    task: int
    result: list
    was_cancelled: bool
    ground_truth: bool
    updated_at: str

    def as_ls(self) -> dict:
        """The Label Studio shape (what ``ls.annotations.choose_annotation`` reads)."""
        return {"id": self.id, "task": self.task, "result": self.result, "was_cancelled": self.was_cancelled,
                "ground_truth": self.ground_truth, "updated_at": self.updated_at}


@dataclass
class IngestResult:
    """What one webhook did: stored, ignored (older than the stored copy, or deleted), removed, rejected."""

    action: str
    project: int | None = None
    stored: int = 0
    ignored: int = 0
    removed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1

    def as_dict(self) -> dict:
        out = {"stored": self.stored, "ignored": self.ignored, "removed": self.removed}
        if self.rejected:
            out["rejected"] = dict(self.rejected)
        return out


def _id(value: object) -> int | None:
    """A positive Label Studio id, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        return None
    return value


def _project_of(payload: dict) -> int | None:
    project = payload.get("project")
    if isinstance(project, dict):
        return _id(project.get("id"))
    if isinstance(project, str):  # "<id>.<created_at>" as /setup and /train send it
        head = project.split(".")[0]
        return int(head) if head.isdigit() and 0 < int(head) < 2**63 else None
    return _id(project)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class AnnotationStore:
    def __init__(self, path: Path, limits: Limits = Limits(), busy_timeout_s: float = 10.0):
        self.path = Path(path)
        self.limits = limits
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(_SCHEMA)  # idempotent; executescript manages its own transaction

    # ------------------------------------------------------------------ connections
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_ms / 1000)
            db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *rest) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _write(self) -> "_Tx":
        return self._Tx(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # ------------------------------------------------------------------ webhooks
    def ingest(self, payload: dict) -> IngestResult:
        """Apply one annotation webhook; returns after the data is durably committed.

        Raises ``BadRequest`` when the payload as a whole is unusable (no project, no annotation).
        """
        action = payload.get("action")
        if action not in STORE_ACTIONS:
            raise BadRequest(f"webhook action {action!r} is not one the annotation store takes")
        result = IngestResult(action)
        project = _project_of(payload)
        if action == "ANNOTATIONS_DELETED":
            items = payload.get("annotations")
            if not isinstance(items, list) or len(items) > self.limits.max_bulk:
                raise BadRequest(f"ANNOTATIONS_DELETED needs 'annotations': a list of at most {self.limits.max_bulk} {{'id': ...}}")
            ids = []
            for item in items:
                aid = _id(item.get("id")) if isinstance(item, dict) else None
                if aid is None:
                    result.reject("bad annotation id")
                else:
                    ids.append(aid)
            result.project = project
            result.removed = self.delete(project, ids)
            return result

        annotations = payload.get("annotation")
        tasks = payload.get("task")
        if action == "ANNOTATIONS_CREATED":
            if not isinstance(annotations, list) or len(annotations) > self.limits.max_bulk:
                raise BadRequest(f"ANNOTATIONS_CREATED needs 'annotation': a list of at most {self.limits.max_bulk} annotations")
            tasks = tasks if isinstance(tasks, list) else []
        else:
            if not isinstance(annotations, dict):
                raise BadRequest(f"{action} needs 'annotation': an object with id, task and result")
            annotations, tasks = [annotations], [tasks] if isinstance(tasks, dict) else []
        task_data = {}
        for task in tasks:
            if isinstance(task, dict) and _id(task.get("id")) is not None and isinstance(task.get("data"), dict):
                task_data[task["id"]] = task["data"]
        rows = []
        for ann in annotations:
            row = self._row(ann, project, task_data, result)
            if row is not None:
                rows.append(row)
        if project is None and rows:
            project = rows[0][0]
        result.project = project
        label_config = payload["project"].get("label_config") if isinstance(payload.get("project"), dict) else None
        self._upsert(rows, result, f"webhook:{action}", label_config=(project, label_config))
        return result

    def _row(self, ann: object, project: int | None, task_data: dict, result: IngestResult):
        if not isinstance(ann, dict):
            result.reject("annotation is not an object")
            return None
        aid, task = _id(ann.get("id")), ann.get("task")
        task = _id(task.get("id") if isinstance(task, dict) else task)
        proj = project if project is not None else _id(ann.get("project"))
        if aid is None or task is None or proj is None:
            result.reject("annotation without a valid id, task or project")
            return None
        res = ann.get("result")
        if not isinstance(res, list):
            result.reject("annotation result is not a list")
            return None
        try:
            text = _dumps(res)
        except (TypeError, ValueError, RecursionError):
            result.reject("annotation result is not plain JSON")
            return None
        if len(text) > self.limits.max_result_bytes:
            result.reject(f"annotation result larger than {self.limits.max_result_bytes} bytes")
            return None
        data = task_data.get(task)
        data_text = None
        if data is not None:
            try:
                data_text = _dumps(data)
            except (TypeError, ValueError, RecursionError):
                data_text = ""
            if not data_text or len(data_text) > self.limits.max_task_data_bytes:
                result.reject(f"task data not plain JSON or larger than {self.limits.max_task_data_bytes} bytes")
                data_text = None
        updated = ann.get("updated_at") if isinstance(ann.get("updated_at"), str) else ""
        return (proj, aid, task, text, int(bool(ann.get("was_cancelled"))), int(bool(ann.get("ground_truth"))),
                updated[:64], data_text)

    def _upsert(self, rows, result: IngestResult, source: str, label_config=(None, None), *, changes: bool = True) -> None:
        """Insert or replace ``rows`` in one transaction; ``changes``: count them for auto-training
        (webhooks do; reconciliation copies what Label Studio already has and does not)."""
        now = time.time()
        project, config = label_config
        with self._write() as db:
            for proj, aid, task, text, cancelled, gt, updated, data_text in rows:
                if db.execute("SELECT 1 FROM deleted WHERE project=? AND id=?", (proj, aid)).fetchone():
                    result.ignored += 1
                    continue
                cur = db.execute(
                    "INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (project, id) DO UPDATE SET "
                    "task=excluded.task, result=excluded.result, was_cancelled=excluded.was_cancelled, "
                    "ground_truth=excluded.ground_truth, updated_at=excluded.updated_at, "
                    "received_at=excluded.received_at, source=excluded.source "
                    "WHERE excluded.updated_at >= annotations.updated_at",
                    (proj, aid, task, text, cancelled, gt, updated, now, source),
                )
                if cur.rowcount:
                    result.stored += 1
                    if changes:
                        db.execute("INSERT OR IGNORE INTO changed VALUES (?, ?)", (proj, aid))
                else:
                    result.ignored += 1
                if data_text is not None:
                    db.execute("INSERT INTO tasks VALUES (?,?,?,?) ON CONFLICT (project, id) DO UPDATE SET "
                               "data=excluded.data, received_at=excluded.received_at", (proj, task, data_text, now))
            if project is not None and isinstance(config, str) and len(config) <= self.limits.max_label_config_bytes:
                db.execute("INSERT INTO projects (project, label_config) VALUES (?, ?) ON CONFLICT (project) "
                           "DO UPDATE SET label_config=excluded.label_config", (project, config))

    def delete(self, project: int | None, ids: Iterable[int]) -> int:
        """Remove annotations (tombstoned); ``project`` None: by id in any project."""
        removed = 0
        now = time.time()
        with self._write() as db:
            for aid in ids:
                if project is None:
                    owners = [r[0] for r in db.execute("SELECT project FROM annotations WHERE id=?", (aid,))]
                else:
                    owners = [project]
                for proj in owners:
                    removed += db.execute("DELETE FROM annotations WHERE project=? AND id=?", (proj, aid)).rowcount
                    db.execute("INSERT OR REPLACE INTO deleted VALUES (?, ?, ?)", (proj, aid, now))
                    db.execute("INSERT OR IGNORE INTO changed VALUES (?, ?)", (proj, aid))
        return removed

    # ------------------------------------------------------------------ reconciliation
    def replace_project(self, project: int, tasks: Iterable[dict], label_config: str | None = None) -> IngestResult:
        """Make the store hold exactly the annotations of ``tasks`` (Label Studio's export of the
        project: tasks with ``data`` and ``annotations``), in one transaction."""
        result = IngestResult("RECONCILE", project)
        rows, keep = [], set()
        for task in tasks:
            if not isinstance(task, dict) or _id(task.get("id")) is None:
                result.reject("task without a valid id")
                continue
            data = {task["id"]: task["data"]} if isinstance(task.get("data"), dict) else {}
            annotations = task.get("annotations")
            for ann in annotations if isinstance(annotations, list) else []:
                if not isinstance(ann, dict):
                    result.reject("annotation is not an object")
                    continue
                if _id(ann.get("id")) is not None:
                    keep.add(ann["id"])  # listed by the API: never removed, even if unusable here
                row = self._row({**ann, "task": task["id"]}, project, data, result)
                if row is not None:
                    rows.append(row)
        now = time.time()
        with self._write() as db:
            stored = {r[0] for r in db.execute("SELECT id FROM annotations WHERE project=?", (project,))}
            for aid in stored - keep:
                db.execute("DELETE FROM annotations WHERE project=? AND id=?", (project, aid))
                result.removed += 1
            # The API is the truth: what it returns is not deleted, whatever webhooks said.
            db.executemany("DELETE FROM deleted WHERE project=? AND id=?", [(project, aid) for aid in keep])
            db.execute("INSERT INTO projects (project, reconciled_at) VALUES (?, ?) ON CONFLICT (project) "
                       "DO UPDATE SET reconciled_at=excluded.reconciled_at", (project, now))
        self._upsert(rows, result, "api", label_config=(project, label_config), changes=False)
        return result

    # ------------------------------------------------------------------ reading
    def annotations(self, project: int) -> list[StoredAnnotation]:
        rows = self._db().execute(
            "SELECT project, id, task, result, was_cancelled, ground_truth, updated_at FROM annotations "
            "WHERE project=? ORDER BY task, id", (project,))
        return [StoredAnnotation(p, i, t, json.loads(r), bool(c), bool(g), u) for p, i, t, r, c, g, u in rows]

    def task_data(self, project: int) -> dict[int, dict]:
        rows = self._db().execute("SELECT id, data FROM tasks WHERE project=?", (project,))
        return {tid: json.loads(data) for tid, data in rows}

    def label_config(self, project: int) -> str | None:
        row = self._db().execute("SELECT label_config FROM projects WHERE project=?", (project,)).fetchone()
        return row[0] if row else None

    def changes_since_training(self, project: int) -> int:
        """Distinct annotations created, updated or deleted since ``mark_trained`` (auto-training)."""
        return self._db().execute("SELECT COUNT(*) FROM changed WHERE project=?", (project,)).fetchone()[0]

    def mark_trained(self, project: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM changed WHERE project=?", (project,))

    def counts(self, project: int) -> dict[str, int]:
        db = self._db()
        return {
            "annotations": db.execute("SELECT COUNT(*) FROM annotations WHERE project=?", (project,)).fetchone()[0],
            "tasks": db.execute("SELECT COUNT(DISTINCT task) FROM annotations WHERE project=?", (project,)).fetchone()[0],
            "changes_since_training": self.changes_since_training(project),
        }
