"""The job queue: one SQLite database per results folder.

States (`ablation.protocol.JobState`): queued -> running -> done | failed |
interrupted | paused. A claim is one `BEGIN IMMEDIATE` transaction, so two runners on
the same folder never take the same job. A running job is reclaimed only when its runner
is provably gone: on the same host, its process no longer exists (pid and start time, so
a recycled pid does not fool us, and a start no clock change moves); on another host,
its heartbeat is older than `stale_after` seconds.

A job is its `JobKey` (variant, definition tag, seed, recipe id): the tag tells two
definitions of one user variant apart (ablation.study.folder_tag), so an edited variant
is a new job. A job's run folder is derived from its key under the folder the queue
lies in, never read back from the database: a results folder copied or moved elsewhere
works there, and never writes into the folder it was copied from.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import quote

import psutil

from ablation import results
from ablation.errors import AblationError
from ablation.protocol import JobKey, JobState

DB_NAME = "queue.sqlite"
SCHEMA_VERSION = 1

_COLUMNS = """
    id INTEGER PRIMARY KEY,
    variant TEXT NOT NULL,
    tag TEXT NOT NULL DEFAULT '',
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
    UNIQUE (variant, tag, seed, recipe_id)
"""
_V0_COLUMNS = ("id, variant, seed, recipe_id, recipe, run_dir, status, attempts, worker, "
               "host, pid, pid_start, heartbeat, created, started, finished, error")


@dataclass(frozen=True)
class JobRow:
    id: int
    variant: str
    tag: str
    seed: int
    recipe_id: str
    recipe: dict
    run_dir: str
    status: JobState
    attempts: int
    worker: str | None
    host: str | None
    pid: int | None
    pid_start: str | None
    heartbeat: float | None
    created: float
    started: float | None
    finished: float | None
    error: str | None

    @property
    def label(self) -> str:
        """The variant as people see it: name, and the definition tag if any."""
        return f"{self.variant}@{self.tag}" if self.tag else self.variant

    @property
    def key(self) -> JobKey:
        return JobKey(self.variant, self.tag, self.seed, self.recipe_id)


BOOT_TICKS = "boot+"  # a start recorded in clock ticks since boot (0.6)


def _proc_start(pid: int) -> str | None:
    """When a process started, to tell a live pid from a recycled one. On Linux, its
    start in clock ticks since boot (`/proc/PID/stat`, field 22), which no clock change
    moves; elsewhere psutil's creation time, which is wall-clock based (an NTP step or a
    VM's clock sync moves it, so a live runner could look gone: why Linux avoids it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux, and the process is gone
        stat = None
    except OSError:
        return None
    if stat is not None:
        return BOOT_TICKS + stat.rsplit(")", 1)[1].split()[19]
    try:
        return repr(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _alive(pid: int | None, start: str | None) -> bool:
    if not pid or not psutil.pid_exists(pid):
        return False
    if start is None:
        return True
    if start.startswith(BOOT_TICKS):
        now = _proc_start(pid)
        return now is None or now == start
    try:  # recorded by 0.5 or earlier, or off Linux: the wall-clock creation time
        now = repr(psutil.Process(pid).create_time())
        return abs(float(now) - float(start)) < 1e-3
    except (psutil.Error, OSError):
        return True
    except ValueError:  # another format still
        return True


class JobQueue:
    """All queue state lives in the database; this object holds only a connection."""

    def __init__(self, results: Path, stale_after: float = 600.0):
        self.root = Path(results)
        self.path = self.root / DB_NAME
        self.stale_after = stale_after
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_start = _proc_start(self.pid)
        try:
            try:
                self.db = self._connect(f"file:{quote(str(self.path))}", "WAL")
                self._migrate()
            except sqlite3.OperationalError:
                if not self.path.is_file() or os.access(self.root, os.W_OK):
                    raise
                # a folder this user may read but not write (WAL needs its -shm file
                # beside the database): read the database as it lies, for `status`
                self.db.close()
                self.db = self._connect(f"file:{quote(str(self.path))}?mode=ro&immutable=1",
                                        None)
        except sqlite3.OperationalError as e:
            raise AblationError(f"cannot open the queue database {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            raise AblationError(f"damaged queue database {self.path}: {e}; move it aside to "
                                "start a new queue (run folders are kept)") from e

    def _connect(self, uri: str, journal: str | None) -> sqlite3.Connection:
        self.db = sqlite3.connect(uri, timeout=60, isolation_level=None, uri=True)
        self.db.row_factory = sqlite3.Row
        if journal:
            self.db.execute(f"PRAGMA journal_mode={journal}")
        return self.db

    def _migrate(self) -> None:
        """Create the table, or bring a database of an earlier version up to date."""
        with self._tx():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            old = self.db.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone()
            if old:  # version 0: no definition tag in the key
                self.db.execute("ALTER TABLE jobs RENAME TO jobs_v0")
            self.db.execute(f"CREATE TABLE jobs ({_COLUMNS})")
            if old:
                self.db.execute(f"INSERT INTO jobs ({_V0_COLUMNS}) SELECT {_V0_COLUMNS} "
                                "FROM jobs_v0")
                self.db.execute("DROP TABLE jobs_v0")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def add(self, jobs: Iterable[tuple[JobKey, dict]], retry_failed: bool = False) -> list[int]:
        """Insert (key, recipe) rows, skipping known ones. Returns the ids of all the given
        jobs, in order. Interrupted jobs are requeued; failed ones only with
        `retry_failed`."""
        ids = []
        now = time.time()
        with self._tx():
            for (variant, tag, seed, recipe_id), recipe in jobs:
                # the run folder, relative to the results folder (for a person reading the
                # database; the queue itself derives it from the key: `_rows`)
                where = results.run_dir(Path("."), recipe_id, variant, seed, tag)
                self.db.execute(
                    "INSERT OR IGNORE INTO jobs (variant, tag, seed, recipe_id, recipe, run_dir,"
                    " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (variant, tag, seed, recipe_id, json.dumps(recipe, sort_keys=True),
                     str(where), now))
                row = self.db.execute(
                    "SELECT id, status FROM jobs WHERE variant=? AND tag=? AND seed=? AND"
                    " recipe_id=?", (variant, tag, seed, recipe_id)).fetchone()
                ids.append(row["id"])
                # interrupted jobs go on; a paused one (a rung of successive halving) is
                # in a plan only when the search promotes it
                if row["status"] in (JobState.INTERRUPTED, JobState.PAUSED) or (
                        retry_failed and row["status"] == JobState.FAILED):
                    self.db.execute("UPDATE jobs SET status=?, error=NULL WHERE id=?",
                                    (JobState.QUEUED, row["id"]))
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
                f" ({marks}) AND status IN (?, ?) ORDER BY id",
                (*ids, JobState.QUEUED, JobState.RUNNING)).fetchall()
            for r in rows:
                if r["status"] == JobState.RUNNING and not self._orphaned(
                        r["host"], r["pid"], r["pid_start"], r["heartbeat"]):
                    continue
                now = time.time()
                self.db.execute(
                    "UPDATE jobs SET status=?, attempts=attempts+1, worker=?, host=?,"
                    " pid=?, pid_start=?, heartbeat=?, started=?, finished=NULL, error=NULL"
                    " WHERE id=?",
                    (JobState.RUNNING, worker, self.host, self.pid, self.pid_start, now, now,
                     r["id"]))
                return self.get(r["id"])
        return None

    def gone(self, row: JobRow) -> str | None:
        """Why a `running` row's runner is provably gone (its process on this host has
        exited; another host's heartbeat is stale), or None while it may be alive."""
        if row.status != JobState.RUNNING or not self._orphaned(
                row.host, row.pid, row.pid_start, row.heartbeat):
            return None
        if row.host == self.host:
            return "its process on this host has exited: rerun to resume"
        age = "none" if row.heartbeat is None else \
            f"{(time.time() - row.heartbeat) / 60:.0f} min old"
        return f"no heartbeat from {row.host} ({age}): rerun to resume"

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
                f"UPDATE jobs SET heartbeat=? WHERE status=? AND pid=? AND host=?"
                f" AND id IN ({','.join('?' * len(ids))})",
                (time.time(), JobState.RUNNING, self.pid, self.host, *ids))

    def finish(self, job_id: int, status: JobState, error: str | None = None) -> None:
        status = JobState(status)  # a typo is a bug: ValueError
        self.db.execute("UPDATE jobs SET status=?, error=?, finished=?, heartbeat=NULL"
                        " WHERE id=?", (status, error, time.time(), job_id))

    # --- reading ------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRow:
        return self._rows("WHERE id=?", (job_id,))[0]

    def all(self) -> list[JobRow]:
        return self._rows("ORDER BY id", ())

    def _rows(self, where: str, args: tuple) -> list[JobRow]:
        names = [f.name for f in fields(JobRow)]
        cur = self.db.execute(f"SELECT {', '.join(names)} FROM jobs {where}", args)
        return [JobRow(**{**dict(r), "recipe": json.loads(r["recipe"]),
                          "status": JobState(r["status"]),
                          "run_dir": str(results.run_dir(self.root, r["recipe_id"], r["variant"],
                                                         r["seed"], r["tag"]))})
                for r in cur.fetchall()]

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
