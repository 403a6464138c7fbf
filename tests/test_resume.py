"""Interrupting `ablation run`: resume after SIGKILL, Ctrl-C, two runners at once.

No test here can lose a race: a job that is to be signalled runs with the protocol's
hold hook (conftest.hold_after), so it stops after a known epoch, with its backup
written, and waits; the test signals only once the job says it is held. A job can
therefore neither finish before the signal nor be signalled before its first backup.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

from conftest import finish, history, hold_after, run_cli, run_dirs, start_cli, wait_for

from ablation.protocol import HELD_MARKER, read_held

TINY3 = ["--epochs", "3", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32"]


def _held(res, epoch: int | None = None):
    """Whether a job holds (after `epoch`: a marker left by an earlier hold says another
    epoch, so it is never mistaken for this one)."""
    def held() -> bool:
        markers = [r / HELD_MARKER for r in run_dirs(res)] if (res / "runs").exists() else []
        return any(m.exists() and (epoch is None or read_held(m.read_text())[0] == epoch)
                   for m in markers)
    return held


def _h5_arrays(path) -> dict[str, bytes]:
    """Every array of a saved model (weights and optimizer state), by name, as bytes."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()].tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
    return out


# a modern recipe (docs/studies.md): what a resume must bring back grows with it
MODERN = ["--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05", "--schedule",
          "cosine", "--warmup", "linear", "--warmup-epochs", "1", "--warmup-lr", "0.0001",
          "--label-smoothing", "0.1", "--mixup", "0.2", "--ema", "0.999"]


def test_resume_after_sigkill_inside_an_epoch_is_an_uninterrupted_run(tmp_path, cifar_dir,
                                                                      tiny):
    """Under a modern recipe (AdamW, cosine per step after a linear warm-up, label
    smoothing, mixup, EMA), snapshots every 2 steps: killed (kill -9) inside epoch 2,
    after its step-2 snapshot; the same command goes on from there, keeps every finished
    epoch once, and ends with the history and the saved model (weights and optimizer
    state) of an uninterrupted run, bit for bit; the report says the recipe in words."""
    res = tmp_path / "results"
    args = ["tiny8", *tiny, *TINY3, *MODERN, "--snapshot-every", "2"]
    p = start_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(res),
                  env=hold_after("1+2"))
    wait_for(_held(res), "the job to snapshot step 2 of epoch 2 and hold", p)
    hist = lambda: [h for r in run_dirs(res) if (r / "history.csv").exists()  # noqa: E731
                    for h in history(r)]
    os.killpg(p.pid, signal.SIGKILL)  # the runner and its training process, no warning
    p.wait()
    before = hist()
    assert len(before) == 1
    gone = run_cli("status", "--results", str(res)).stdout  # not "running": gone, and why
    assert "running (gone)" in gone and "its process on this host has exited" in gone
    r = run_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming inside epoch 2 after step 2 of 4" in (
        run_dirs(res)[0] / "train.log").read_text()
    after = hist()
    ref = tmp_path / "uninterrupted"
    r = run_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(ref))
    assert r.returncode == 0, r.stdout + r.stderr
    timing = ("epoch_seconds", "images_per_second")
    assert [{k: v for k, v in row.items() if k not in timing} for row in after] == [
        {k: v for k, v in row.items() if k not in timing} for row in history(run_dirs(ref)[0])]
    assert _h5_arrays(run_dirs(res)[0] / "model.h5") == _h5_arrays(
        run_dirs(ref)[0] / "model.h5")
    assert [row["epoch"] for row in after] == ["0", "1", "2"]
    # the epochs finished before the kill were kept, not retrained: the whole prefix
    assert after[:len(before)] == before
    # the lr of each epoch's first step: the warm-up's start, then the cosine's
    assert [float(row["lr"]) for row in after][:2] == [0.0001, 0.002]
    assert 0 < float(after[2]["lr"]) < float(after[1]["lr"]) == 0.002
    out = tmp_path / "report"
    rep = run_cli("report", *tiny, "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "README.md").read_text()
    assert ("AdamW lr 0.002, wd 0.05 decoupled, cosine to 0 (per step) after 1 linear "
            "warm-up epoch(s) from lr 0.0001, label smoothing 0.1, mixup 0.2, EMA 0.999 (test "
            "accuracy on the averaged weights)") in md


def test_ctrl_c_and_sigterm_mark_interrupted_and_a_rerun_resumes(tmp_path, cifar_dir, tiny):
    """Ctrl-C (SIGINT to the terminal's process group) after epoch 1; then, started as
    under `nohup` (SIGINT ignored, so a Ctrl-C to its group changes nothing), SIGTERM,
    what a scheduler sends on preemption, to the runner alone, after epoch 2: each time
    the job stops at a safe point and is marked interrupted, the runner exits 130, then
    143; the same command resumes it, each epoch trained once."""
    res = tmp_path / "results"
    args = ["tiny8", *tiny, "--epochs", "3", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "32"]
    for epoch, nohup, code, cause in ((1, False, 130, "Ctrl-C"), (2, True, 143, "SIGTERM")):
        p = start_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(res),
                      env=hold_after(epoch), nohup=nohup)
        wait_for(_held(res, epoch), f"the job to finish epoch {epoch} and hold", p)
        # what the terminal sends to the foreground group: under nohup it is ignored by
        # the runner and its job alike (the job holds until a signal ends it, so it is
        # still there when SIGTERM comes; Python handles SIGINT before SIGTERM)
        os.killpg(p.pid, signal.SIGINT)
        if nohup:
            os.kill(p.pid, signal.SIGTERM)  # to the runner alone: it stops its job itself
        out = finish(p, f"`ablation run` to exit after {cause}", timeout=120)
        assert p.returncode == code, out
        assert f"interrupted by {cause}" in out and "Traceback" not in out
        st = run_cli("status", "--results", str(res))
        assert " interrupted " in st.stdout and f"interrupted by {cause}" in st.stdout
    r = run_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["epoch"] for row in history(run_dirs(res)[0])] == ["0", "1", "2"]
    assert (run_dirs(res)[0] / "train.log").read_text().count("resuming after epoch") == 2


def test_two_runners_never_run_a_job_twice(tmp_path, cifar_dir, tiny):
    """Whatever the interleaving (one runner may even find everything done), each job is
    attempted once and both runners exit 0."""
    res = tmp_path / "results"
    args = ["run", "tiny8", "tiny8_c", *tiny, "--epochs", "2", "--train-limit", "128",
            "--test-limit", "64", "--batch-size", "32", "--data-dir", str(cifar_dir),
            "--results", str(res)]
    a = start_cli(*args)
    b = start_cli(*args)
    out_a = finish(a, "the first runner")
    out_b = finish(b, "the second runner")
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    for run in run_dirs(res):
        log = (run / "train.log").read_text()
        assert log.count("--- attempt started") == 1, run
        assert json.loads((run / "summary.json").read_text())["status"] == "done"
    st = run_cli("status", "--results", str(res))
    assert st.stdout.count(" done ") == 2


def test_a_damaged_snapshot_fails_the_job_and_a_fresh_start_trains_each_epoch_once(
        tmp_path, cifar_dir, tiny):
    """The weights of the latest snapshot are lost after a kill (a full disk, a cleaner):
    the rerun refuses to train on, in one line, keeping the files and the history; with
    the backup deleted, --retry-failed trains from epoch 0, each epoch once."""
    res = tmp_path / "results"
    args = ["tiny8", *tiny, "--epochs", "2", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "32", "--data-dir", str(cifar_dir), "--results", str(res)]
    p = start_cli("run", *args, env=hold_after(1))
    wait_for(_held(res), "the job to finish epoch 1 and hold", p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    run = run_dirs(res)[0]
    latest = run / "backup" / (run / "backup" / "LATEST").read_text().strip()
    (latest / "latest.weights.h5").unlink()
    kept = history(run)
    r = run_cli("run", *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "damaged snapshot" in r.stderr and "no latest.weights.h5" in r.stderr
    assert history(run) == kept and (latest / "training_metadata.json").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "damaged snapshot" in summary["error"]
    assert "damaged snapshot" in run_cli("status", "--results", str(res)).stdout
    shutil.rmtree(run / "backup")  # what the message says to do
    r = run_cli("run", *args, "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["epoch"] for row in history(run)] == ["0", "1"]
