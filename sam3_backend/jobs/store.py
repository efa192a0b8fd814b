"""Job state in SQLite (WAL) at ``MODEL_DIR/jobs.sqlite3``, safe across threads and processes.

A job is queued → running → done | failed | cancelled. ``progress`` is free-form (stage, rate,
ETA, loss, ...). ``owner`` is "<host>:<pid>" of the process running it: ``recover`` marks running
jobs whose owner process is gone as failed ("interrupted"), so a job killed mid-run never looks
alive and can simply be started again. ``create(exclusive=True)`` is atomic across processes:
at most one queued or running job per kind and project.

(Minimal version written for the training job against the job-layer contract; the job layer's
own issue owns this file.)
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    project: str | None
    state: JobState
    done: int
    total: int | None
    failed: int
    reason: str | None
    params: dict
    result: dict
    progress: dict
    created_at: float
    started_at: float | None
    finished_at: float | None
    owner: str | None

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["state"] = self.state.value
        return out


class JobConflict(Exception):
    """A queued or running job of the same kind and project exists (``existing``)."""

    def __init__(self, existing: Job):
        super().__init__(f"{existing.kind} job {existing.id} for project {existing.project} is already {existing.state.value}")
        self.existing = existing


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, project TEXT, state TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, total INTEGER, failed INTEGER NOT NULL DEFAULT 0, reason TEXT,
    params TEXT NOT NULL, result TEXT NOT NULL DEFAULT '{}', progress TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, owner TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_by_kind ON jobs (kind, project, state);
"""
_COLUMNS = "id, kind, project, state, done, total, failed, reason, params, result, progress, created_at, started_at, finished_at, owner"


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None) -> bool:
    """False only when ``owner`` ran on this host and its process is gone."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: we cannot tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job(row) -> Job:
    (jid, kind, project, state, done, total, failed, reason, params, result, progress,
     created, started, finished, owner) = row
    return Job(jid, kind, project, JobState(state), done, total, failed, reason, json.loads(params),
               json.loads(result), json.loads(progress), created, started, finished, owner)


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # idempotent; executescript manages its own transaction

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *rest):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "_Tx":
        return self._Tx(self._db())

    # ------------------------------------------------------------------ create / read
    def create(self, kind: str, project: str | None, params: dict, *, exclusive: bool = False) -> Job:
        project = None if project is None else str(project)
        now = time.time()
        with self._tx() as db:
            if exclusive:
                rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE kind=? AND project IS ? AND state IN (?, ?)",
                                  (kind, project, JobState.QUEUED.value, JobState.RUNNING.value)).fetchall()
                for row in rows:
                    existing = _job(row)
                    if existing.state == JobState.RUNNING and not _owner_alive(existing.owner):
                        self._interrupted(db, existing, now)
                        continue
                    raise JobConflict(existing)
            jid = uuid.uuid4().hex[:12]
            db.execute("INSERT INTO jobs (id, kind, project, state, params, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (jid, kind, project, JobState.QUEUED.value, json.dumps(params, default=str), now))
        return self.get(jid)

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, *, kind: str | None = None, project: str | None = None, states=None, limit: int = 50) -> list[Job]:
        where, args = [], []
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        if project is not None:
            where.append("project=?")
            args.append(str(project))
        if states:
            states = [JobState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        sql = f"SELECT {_COLUMNS} FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC LIMIT ?"
        return [_job(r) for r in self._db().execute(sql, (*args, max(1, int(limit))))]

    # ------------------------------------------------------------------ transitions
    def start(self, job_id: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, started_at=?, owner=? WHERE id=? AND state=?",
                       (JobState.RUNNING.value, time.time(), owner, job_id, JobState.QUEUED.value))

    def progress(self, job_id: str, *, done: int | None = None, total: int | None = None,
                 failed: int | None = None, **progress) -> None:
        with self._tx() as db:
            row = db.execute("SELECT progress FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return
            merged = json.loads(row[0]) | progress
            db.execute("UPDATE jobs SET done=COALESCE(?, done), total=COALESCE(?, total), failed=COALESCE(?, failed), "
                       "progress=? WHERE id=?", (done, total, failed, json.dumps(merged, default=str), job_id))

    def _end(self, job_id: str, state: JobState, *, reason: str | None = None, result: dict | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, reason=?, result=COALESCE(?, result), finished_at=? "
                       "WHERE id=? AND state IN (?, ?)",
                       (state.value, reason, None if result is None else json.dumps(result, default=str), time.time(),
                        job_id, JobState.QUEUED.value, JobState.RUNNING.value))

    def finish(self, job_id: str, result: dict) -> None:
        self._end(job_id, JobState.DONE, result=result)

    def fail(self, job_id: str, reason: str, result: dict | None = None) -> None:
        self._end(job_id, JobState.FAILED, reason=reason, result=result)

    def cancel(self, job_id: str) -> None:
        """A queued job is cancelled at once; a running one is asked to stop (``cancel_requested``)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, finished_at=?, reason='cancelled before it started' WHERE id=? AND state=?",
                       (JobState.CANCELLED.value, time.time(), job_id, JobState.QUEUED.value))
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND state=?", (job_id, JobState.RUNNING.value))

    def mark_cancelled(self, job_id: str, reason: str = "cancelled") -> None:
        self._end(job_id, JobState.CANCELLED, reason=reason)

    def cancel_requested(self, job_id: str) -> bool:
        row = self._db().execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def recover(self) -> list[Job]:
        """Running jobs whose owner process is gone → failed ("interrupted ..."); returns them."""
        out = []
        now = time.time()
        with self._tx() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state=?", (JobState.RUNNING.value,)).fetchall()
            for row in rows:
                job = _job(row)
                if not _owner_alive(job.owner):
                    self._interrupted(db, job, now)
                    out.append(self.get_in(db, job.id))
        return out

    @staticmethod
    def _interrupted(db, job: Job, now: float) -> None:
        db.execute("UPDATE jobs SET state=?, reason=?, finished_at=? WHERE id=?",
                   (JobState.FAILED.value, f"interrupted: its process ({job.owner}) stopped while it ran; start it again",
                    now, job.id))

    @staticmethod
    def get_in(db, job_id: str) -> Job:
        return _job(db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone())
