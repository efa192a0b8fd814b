"""Jobs persisted in SQLite (``MODEL_DIR/jobs.sqlite3``, WAL): state, progress, result, owner.

Safe for many threads and many processes (gunicorn workers, a CLI run beside the server): every
write is one short ``BEGIN IMMEDIATE`` transaction, readers never block writers (WAL).

Ownership: a job's ``owner`` is the process that runs it, ``host:pid:start-ticks`` (the process
start time guards against a recycled pid). ``recover`` marks queued or running jobs whose owner is
gone as FAILED with an "interrupted" reason; such a job is resumed by running a new job with the
same parameters (``resumed_from`` points back), which skips the work already done. A process on
another host cannot be probed, so there the heartbeat decides: a running job refreshes
``heartbeat_at`` at least every ``HEARTBEAT_SECONDS``; one silent for ``stale_after`` is interrupted.

Cancel is cooperative: ``cancel`` ends a queued job at once and sets a flag on a running one,
which the job polls (``cancel_requested``) between units of work and then ends itself.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import BackendError

HEARTBEAT_SECONDS = 20.0
DEFAULT_STALE_AFTER = 120.0  # seconds without a heartbeat before a job of another host counts as gone
_BUSY_TIMEOUT_MS = 30_000


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class Job:
    """One job as stored. ``progress`` is free-form (rate, eta, stage, ...); times are Unix seconds."""

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
    cancel_requested: bool = False
    heartbeat_at: float | None = None
    resumed_from: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready, for the HTTP API and the CLI."""
        return {
            "id": self.id, "kind": self.kind, "project": self.project, "state": self.state.value,
            "done": self.done, "total": self.total, "failed": self.failed, "reason": self.reason,
            "params": self.params, "progress": self.progress, "result": self.result,
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "owner": self.owner, "cancel_requested": self.cancel_requested, "resumed_from": self.resumed_from,
        }


class JobConflict(BackendError):
    """A job of this kind is already queued or running for the project (HTTP 409)."""

    status = 409

    def __init__(self, existing: Job):
        self.existing = existing
        super().__init__(
            f"{existing.kind} job {existing.id} is already {existing.state.value} for project {existing.project}: "
            f"watch it (GET /jobs/{existing.id}) or cancel it (POST /jobs/{existing.id}/cancel) first"
        )


class JobNotFound(BackendError):
    status = 404

    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}; GET /jobs lists the recent ones")


# --------------------------------------------------------------------------- owners


def _start_ticks(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), "0" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return "0"


def process_owner(pid: int | None = None) -> str:
    """``host:pid:start-ticks`` of this process (or of ``pid`` on this host)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str | None, heartbeat_at: float | None, *, stale_after: float, now: float | None = None) -> bool:
    """Whether the process named by ``owner`` may still be working on its job.

    On this host: its pid exists and started at the recorded time. Elsewhere: its last
    heartbeat is younger than ``stale_after`` seconds.
    """
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        return ticks in ("", "0") or _start_ticks(pid) in ("0", ticks)
    now = time.time() if now is None else now
    return heartbeat_at is not None and now - heartbeat_at < stale_after


# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    project TEXT,
    state TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    failed INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    progress TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    heartbeat_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resumed_from TEXT
);
CREATE INDEX IF NOT EXISTS jobs_kind_project_state ON jobs (kind, project, state);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""

_COLUMNS = ("id", "kind", "project", "state", "done", "total", "failed", "reason", "params", "result", "progress",
            "created_at", "started_at", "finished_at", "owner", "heartbeat_at", "cancel_requested", "resumed_from")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], kind=row["kind"], project=row["project"], state=JobState(row["state"]),
        done=row["done"], total=row["total"], failed=row["failed"], reason=row["reason"],
        params=json.loads(row["params"]), result=json.loads(row["result"]), progress=json.loads(row["progress"]),
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        owner=row["owner"], cancel_requested=bool(row["cancel_requested"]), heartbeat_at=row["heartbeat_at"],
        resumed_from=row["resumed_from"],
    )


class _Local(threading.local):
    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.pid = 0


class JobStore:
    """Jobs in one SQLite file; one instance per process is enough, and it is thread-safe."""

    def __init__(self, path: Path | str, *, stale_after: float = DEFAULT_STALE_AFTER):
        self.path = Path(path)
        self.stale_after = stale_after
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = _Local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")  # persistent for the file
        conn.executescript(_SCHEMA)

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (and per process: never reuse one across a fork)."""
        local = self._local
        if local.conn is None or local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database's write lock up front (no upgrade deadlocks)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _get(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def _require(self, conn: sqlite3.Connection, job_id: str) -> Job:
        job = self._get(conn, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._get(self._conn(), job_id)

    def list(self, *, kind: str | None = None, project: str | int | None = None,
             states: Sequence[JobState | str] | None = None, limit: int = 50) -> list[Job]:
        """Newest first."""
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if project is not None:
            where.append("project = ?")
            args.append(str(project))
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += [JobState(s).value for s in states]
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [_row_to_job(r) for r in self._conn().execute(sql, (*args, int(limit))).fetchall()]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs there are per (kind, state), for /metrics."""
        rows = self._conn().execute("SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state").fetchall()
        return {(r["kind"], r["state"]): int(r["n"]) for r in rows}

    def cancel_requested(self, job_id: str) -> bool:
        """True once ``cancel`` was called (or the job already ended as cancelled)."""
        row = self._conn().execute("SELECT state, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and (bool(row["cancel_requested"]) or row["state"] == JobState.CANCELLED.value)

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self, kind: str, project: str | int | None, params: dict, *, exclusive: bool = False,
               owner: str | None = None, resumed_from: str | None = None) -> Job:
        """A new QUEUED job owned by ``owner`` (default: this process, which will run it).

        ``exclusive``: refuse (``JobConflict``) while a job of this kind is queued or running for
        the project; jobs of processes that are gone are recovered first, so a crash never blocks.
        """
        project = None if project is None else str(project)
        if exclusive:
            self.recover()
        now = time.time()
        job_id = uuid.uuid4().hex[:12]
        with self._write() as conn:
            if exclusive:
                active = conn.execute(
                    "SELECT * FROM jobs WHERE kind = ? AND project IS ? AND state IN (?, ?) ORDER BY created_at LIMIT 1",
                    (kind, project, JobState.QUEUED.value, JobState.RUNNING.value),
                ).fetchone()
                if active is not None:
                    raise JobConflict(_row_to_job(active))
            conn.execute(
                "INSERT INTO jobs (id, kind, project, state, params, created_at, owner, heartbeat_at, resumed_from)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, project, JobState.QUEUED.value, _dumps(params), now, owner or process_owner(), now,
                 resumed_from),
            )
            return self._require(conn, job_id)

    def start(self, job_id: str, owner: str | None = None, *, exclusive: bool = False) -> Job | None:
        """QUEUED → RUNNING under ``owner``; None if the job is no longer queued (cancelled meanwhile)
        or, with ``exclusive``, while another job of its kind runs for the same project."""
        now = time.time()
        with self._write() as conn:
            job = self._require(conn, job_id)
            if job.state != JobState.QUEUED:
                return None
            if exclusive:
                peer = conn.execute(
                    "SELECT id FROM jobs WHERE kind = ? AND project IS ? AND state = ? AND id != ? LIMIT 1",
                    (job.kind, job.project, JobState.RUNNING.value, job_id),
                ).fetchone()
                if peer is not None:
                    return None
            conn.execute(
                "UPDATE jobs SET state = ?, owner = ?, started_at = ?, heartbeat_at = ? WHERE id = ?",
                (JobState.RUNNING.value, owner or process_owner(), now, now, job_id),
            )
            return self._get(conn, job_id)

    def progress(self, job_id: str, *, done: int | None = None, total: int | None = None, failed: int | None = None,
                 **progress: Any) -> None:
        """Update counters and merge ``progress`` (a key set to None is removed); refreshes the heartbeat."""
        with self._write() as conn:
            row = conn.execute("SELECT progress FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            merged = json.loads(row["progress"])
            for key, value in progress.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            sets, args = ["progress = ?", "heartbeat_at = ?"], [_dumps(merged), time.time()]
            for name, value in (("done", done), ("total", total), ("failed", failed)):
                if value is not None:
                    sets.append(f"{name} = ?")
                    args.append(int(value))
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))

    def heartbeat(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time(), job_id))

    def _end(self, job_id: str, state: JobState, *, result: dict | None, reason: str | None) -> Job:
        with self._write() as conn:
            job = self._require(conn, job_id)
            if not job.state.active:
                return job  # ended already (e.g. recovered as interrupted): keep the first ending
            conn.execute(
                "UPDATE jobs SET state = ?, result = ?, reason = ?, finished_at = ? WHERE id = ?",
                (state.value, _dumps(result if result is not None else job.result), reason, time.time(), job_id),
            )
            return self._require(conn, job_id)

    def finish(self, job_id: str, result: dict, *, cancelled: bool = False) -> Job:
        """RUNNING → DONE (or CANCELLED, when the job stopped early on request) with its result."""
        return self._end(job_id, JobState.CANCELLED if cancelled else JobState.DONE, result=result,
                         reason="cancelled on request" if cancelled else None)

    def fail(self, job_id: str, reason: str, result: dict | None = None) -> Job:
        return self._end(job_id, JobState.FAILED, result=result, reason=reason)

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job ends now; a running one is asked to stop (it ends itself soon)."""
        with self._write() as conn:
            job = self._require(conn, job_id)
            if job.state == JobState.QUEUED:
                conn.execute("UPDATE jobs SET state = ?, cancel_requested = 1, reason = ?, finished_at = ? WHERE id = ?",
                             (JobState.CANCELLED.value, "cancelled before it started", time.time(), job_id))
            elif job.state == JobState.RUNNING:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return self._require(conn, job_id)

    def recover(self) -> list[Job]:
        """Queued or running jobs whose owner process is gone → FAILED "interrupted ..."; returns them."""
        now = time.time()
        recovered = []
        with self._write() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE state IN (?, ?)",
                                (JobState.QUEUED.value, JobState.RUNNING.value)).fetchall()
            for row in rows:
                job = _row_to_job(row)
                if owner_alive(job.owner, job.heartbeat_at, stale_after=self.stale_after, now=now):
                    continue
                reason = (f"interrupted: the process that {'ran' if job.state == JobState.RUNNING else 'queued'} it "
                          f"({job.owner}) stopped; resume it to continue where it left off")
                conn.execute("UPDATE jobs SET state = ?, reason = ?, finished_at = ? WHERE id = ?",
                             (JobState.FAILED.value, reason, now, job.id))
                recovered.append(self._require(conn, job.id))
        return recovered

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        if self._local.conn is not None:
            self._local.conn.close()
            self._local.conn = None


__all__ = [
    "ACTIVE_STATES", "HEARTBEAT_SECONDS", "Job", "JobConflict", "JobNotFound", "JobState", "JobStore",
    "owner_alive", "process_owner",
]
