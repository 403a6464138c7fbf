"""The recipe's schedule and identity; the queue's claim and reclaim rules."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ablation.errors import AblationError
from ablation.jobqueue import JobQueue
from ablation.protocol import JobKey
from ablation.recipe import Recipe


def test_blog_schedule_at_200_epochs():
    r = Recipe()
    assert r.lr_drops() == (81, 122)
    assert [r.learning_rate(e) for e in (0, 80, 81, 121, 122, 199)] == [
        0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


@pytest.mark.parametrize("epochs", [1, 2, 10, 30, 100, 164, 200, 333])
def test_schedule_scales_as_fractions(epochs):
    r = Recipe(epochs=epochs)
    for e in range(epochs):
        want = 0.1 if e < 0.405 * epochs - 1e-9 else 0.01 if e < 0.61 * epochs - 1e-9 else 0.001
        assert r.learning_rate(e) == pytest.approx(want)


def test_recipe_ids_separate_recipes():
    assert Recipe(epochs=30).id != Recipe(epochs=200).id
    assert Recipe().id == Recipe().id
    assert Recipe(train_limit=100).id.startswith("cifar10-e200-b128-blog-fp32-sub100-all-")


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0},
                                 {"augment": "mixup"}, {"precision": "int8"},
                                 {"train_limit": 0}])
def test_bad_recipes_are_refused(bad):
    with pytest.raises(AblationError):
        Recipe(**bad)


def _jobs(n):
    return [(JobKey("resnet32", "", s, "rid"), {}) for s in range(n)]


def test_claims_are_exclusive_and_done_jobs_skipped(tmp_path):
    with JobQueue(tmp_path) as q:
        ids = q.add(_jobs(3))
        assert q.add(_jobs(3)) == ids  # idempotent
        a = q.claim(ids, "w1")
        b = q.claim(ids, "w2")
        assert a.id != b.id and a.status == b.status == "running" and a.attempts == 1
        q.finish(a.id, "done")
        q.finish(b.id, "failed", "boom")
        c = q.claim(ids, "w1")
        assert c.id not in (a.id, b.id)
        assert q.claim(ids, "w1") is None  # c is ours and alive; a done; b failed
        q.add(_jobs(3), retry_failed=True)
        assert q.get(b.id).status == "queued"


def test_dead_runner_is_reclaimed_live_one_is_not(tmp_path):
    # a runner process that claims a job and then dies
    code = ("import sys; from ablation.jobqueue import JobQueue; q = JobQueue(sys.argv[1]);"
            "ids = q.add([(('resnet32', '', 0, 'rid'), {})]);"
            "print(q.claim(ids, 'w').id, flush=True)")
    dead = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, check=True)
    job_id = int(dead.stdout)
    (tmp_path / "live").mkdir()
    # the live runner blocks on its stdin until the test closes it: no sleep to outlast
    live = subprocess.Popen([sys.executable, "-c", code + "; sys.stdin.read()",
                             str(tmp_path / "live")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        live_id = int(live.stdout.readline())
        with JobQueue(tmp_path) as q:
            job = q.claim([job_id], "me")
            assert job is not None and job.attempts == 2 and job.pid == os.getpid()
        with JobQueue(tmp_path / "live") as q:
            assert q.claim([live_id], "me") is None  # its runner is alive
            # a stale heartbeat from another host is reclaimed
            q.db.execute("UPDATE jobs SET host='elsewhere', heartbeat=0 WHERE id=?", (live_id,))
            assert q.claim([live_id], "me") is not None
    finally:
        live.stdin.close()
        live.wait()


def test_a_live_runner_stays_alive_when_the_wall_clock_steps(tmp_path, monkeypatch):
    """A clock step (NTP, a VM's clock sync) moves psutil's creation time, which is
    wall-clock based: a live runner must not look gone because of it (a second runner
    then ran its job twice). A recycled pid (another start) and a 0.5 record still work."""
    import psutil

    from ablation import jobqueue

    mine = jobqueue._proc_start(os.getpid())
    assert mine.startswith(jobqueue.BOOT_TICKS)
    real = psutil.boot_time()
    monkeypatch.setattr(psutil, "boot_time", lambda: real + 1.0)  # the clock stepped 1 s
    monkeypatch.setattr("psutil._pslinux.boot_time", lambda: real + 1.0, raising=False)
    assert jobqueue._alive(os.getpid(), mine)
    assert not jobqueue._alive(os.getpid(), jobqueue.BOOT_TICKS + "1")  # a recycled pid
    monkeypatch.undo()
    old = repr(psutil.Process(os.getpid()).create_time())  # how 0.5 recorded it
    assert jobqueue._alive(os.getpid(), old)
    assert not jobqueue._alive(os.getpid(), repr(float(old) - 5))


def test_damaged_database_is_a_one_line_error(tmp_path):
    (tmp_path / "queue.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(AblationError, match="damaged queue database"):
        JobQueue(tmp_path)


def test_a_queue_of_the_first_version_is_migrated_keeping_its_jobs(tmp_path):
    """Version 0 keyed jobs on (variant, seed, recipe): its done jobs stay done."""
    import sqlite3

    old = sqlite3.connect(tmp_path / "queue.sqlite")
    old.executescript("""
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, variant TEXT NOT NULL,
            seed INTEGER NOT NULL, recipe_id TEXT NOT NULL, recipe TEXT NOT NULL,
            run_dir TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'queued',
            attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, host TEXT, pid INTEGER,
            pid_start TEXT, heartbeat REAL, created REAL NOT NULL, started REAL,
            finished REAL, error TEXT, UNIQUE (variant, seed, recipe_id));
        INSERT INTO jobs (variant, seed, recipe_id, recipe, run_dir, status, attempts,
            created) VALUES ('resnet32', 0, 'rid', '{}', '/tmp/x0', 'done', 1, 0);
    """)
    old.commit()
    old.close()
    with JobQueue(tmp_path) as q:
        (row,) = q.all()
        assert (row.variant, row.tag, row.status, row.attempts) == ("resnet32", "", "done", 1)
        assert q.add(_jobs(1)) == [row.id]  # the same job, still done
        assert q.get(row.id).status == "done"
        # a second definition of one variant is a second job
        other = q.add([(JobKey("resnet32", "0a1b2c3d", 0, "rid"), {})])
        assert other != [row.id] and q.get(other[0]).status == "queued"
    with JobQueue(tmp_path) as q:  # opening again changes nothing
        assert len(q.all()) == 2


def test_a_speed_measured_at_one_image_size_is_not_projected_at_another():
    """The dry run's projection reads runs at the recipe's image size only: the committed
    0.5 runs trained at CIFAR's own 32x32, so at 224 px there is no speed to project."""
    from pathlib import Path

    from ablation import runs

    folder = Path(__file__).parent / "data" / "results-0.5"
    native = runs.speeds(folder, image_hw=None)
    assert native == runs.speeds(folder) and native["resnet32_e"].images_per_second == 20.4
    assert runs.speeds(folder, image_hw=(224, 224)) == {}
