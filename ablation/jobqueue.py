"""The job queue: one SQLite database per results folder.

States: queued -> running -> done | failed | interrupted. A claim is one
`BEGIN IMMEDIATE` transaction, so two runners on the same folder never take the
same job. A running job is reclaimed only when its runner is provably gone: on the
same host, its process no longer exists (pid and start time, so a recycled pid does
not fool us); on another host, its heartbeat is older than `stale_after` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ablation.errors import AblationError

DB_NAME = "queue.sqlite"
STATES = ("queued", "running", "done", "failed", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    variant TEXT NOT NULL,
    seed INTEGER NOT NULL,
    recipe_id TEXT NOT NULL,
    recipe TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    host TEXT,
    pid INTEGER,
    pid_start TEXT,
    heartbeat REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    UNIQUE (variant, seed, recipe_id)
);
"""


@dataclass(frozen=True)
class JobRow:
    id: int
    variant: str
    seed: int
    recipe_id: str
    recipe: dict
    run_dir: str
    status: str
    attempts: int
    worker: str | None
    host: str | None
    pid: int | None
    heartbeat: float | None
    created: float
    started: float | None
    finished: float | None
    error: str | None


def _proc_start(pid: int) -> str | None:
    """Start time of a process (Linux /proc), to tell a live pid from a recycled one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    return start is None or now is None or now == start


class JobQueue:
    """All queue state lives in the database; this object holds only a connection."""

    def __init__(self, results: Path, stale_after: float = 600.0):
        self.path = Path(results) / DB_NAME
        self.stale_after = stale_after
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_start = _proc_start(self.pid)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise AblationError(f"damaged queue database {self.path}: {e}; move it aside to "
                                "start a new queue (run folders are kept)") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def add(self, jobs: Iterable[tuple[str, int, str, dict, str]],
            retry_failed: bool = False) -> list[int]:
        """Insert (variant, seed, recipe_id, recipe, run_dir) rows, skipping known ones.

        Returns the ids of all the given jobs, in order. Interrupted jobs are requeued;
        failed ones only with `retry_failed`.
        """
        ids = []
        now = time.time()
        with self._tx():
            for variant, seed, recipe_id, recipe, run_dir in jobs:
                self.db.execute(
                    "INSERT OR IGNORE INTO jobs (variant, seed, recipe_id, recipe, run_dir,"
                    " created) VALUES (?, ?, ?, ?, ?, ?)",
                    (variant, seed, recipe_id, json.dumps(recipe, sort_keys=True), run_dir, now))
                row = self.db.execute(
                    "SELECT id, status FROM jobs WHERE variant=? AND seed=? AND recipe_id=?",
                    (variant, seed, recipe_id)).fetchone()
                ids.append(row[0])
                if row[1] == "interrupted" or (retry_failed and row[1] == "failed"):
                    self.db.execute("UPDATE jobs SET status='queued', error=NULL WHERE id=?",
                                    (row[0],))
        return ids

    def claim(self, ids: list[int], worker: str) -> JobRow | None:
        """Atomically take the first runnable job among `ids` (queued, or running for a
        runner that is gone), mark it running for this process, and return it."""
        if not ids:
            return None
        marks = ",".join("?" * len(ids))
        with self._tx():
            rows = self.db.execute(
                f"SELECT id, status, host, pid, pid_start, heartbeat FROM jobs WHERE id IN"
                f" ({marks}) AND status IN ('queued', 'running') ORDER BY id", ids).fetchall()
            for job_id, status, host, pid, pid_start, heartbeat in rows:
                if status == "running" and not self._orphaned(host, pid, pid_start, heartbeat):
                    continue
                now = time.time()
                self.db.execute(
                    "UPDATE jobs SET status='running', attempts=attempts+1, worker=?, host=?,"
                    " pid=?, pid_start=?, heartbeat=?, started=?, finished=NULL, error=NULL"
                    " WHERE id=?",
                    (worker, self.host, self.pid, self.pid_start, now, now, job_id))
                return self.get(job_id)
        return None

    def _orphaned(self, host: str | None, pid: int | None, pid_start: str | None,
                  heartbeat: float | None) -> bool:
        if host == self.host:
            if pid == self.pid and pid_start == self.pid_start:
                return False  # our own, being run by another worker thread
            return not _alive(pid, pid_start)
        return heartbeat is None or time.time() - heartbeat > self.stale_after

    def heartbeat(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self.db.execute(
                f"UPDATE jobs SET heartbeat=? WHERE status='running' AND pid=? AND host=?"
                f" AND id IN ({','.join('?' * len(ids))})",
                (time.time(), self.pid, self.host, *ids))

    def finish(self, job_id: int, status: str, error: str | None = None) -> None:
        if status not in STATES:
            raise ValueError(status)
        self.db.execute("UPDATE jobs SET status=?, error=?, finished=?, heartbeat=NULL"
                        " WHERE id=?", (status, error, time.time(), job_id))

    # --- reading ------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRow:
        return self._rows("WHERE id=?", (job_id,))[0]

    def all(self) -> list[JobRow]:
        return self._rows("ORDER BY id", ())

    def _rows(self, where: str, args: tuple) -> list[JobRow]:
        cur = self.db.execute(
            "SELECT id, variant, seed, recipe_id, recipe, run_dir, status, attempts, worker,"
            f" host, pid, heartbeat, created, started, finished, error FROM jobs {where}", args)
        return [JobRow(*r[:4], json.loads(r[4]), *r[5:]) for r in cur.fetchall()]

    @contextlib.contextmanager
    def _tx(self):
        """One write transaction, taken up front so concurrent claims serialise."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
