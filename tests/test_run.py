"""`ablation run` end to end on tiny real-data jobs: recording, resume after SIGKILL,
Ctrl-C, two runners at once, failure isolation, bad input, and the JAX backend."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

TINY = ["--epochs", "2", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32"]


def tiny_run(results: Path, cifar: Path, *args: str, env: dict | None = None):
    return run_cli("run", *args, *TINY, "--data-dir", str(cifar), "--results", str(results),
                   env=env)


def run_dirs(results: Path) -> list[Path]:
    return sorted(p for p in (results / "runs").glob("*/*") if p.is_dir())


def history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_run_records_everything(tmp_path, cifar_dir):
    res = tmp_path / "results"
    r = tiny_run(res, cifar_dir, "resnet32_e", "--seeds", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[job 1/2] resnet32_e s0  epoch 1/2" in r.stdout and "ETA job" in r.stdout
    runs = run_dirs(res)
    assert [p.name for p in runs] == ["resnet32_e-s0", "resnet32_e-s1"]
    for run in runs:
        rows = history(run)
        assert [row["epoch"] for row in rows] == ["0", "1"]
        assert {"accuracy", "loss", "val_accuracy", "val_loss", "lr",
                "epoch_seconds"} <= set(rows[0])
        assert [float(row["lr"]) for row in rows] == [0.1, 0.01]  # scaled schedule, E=2
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "done" and s["epochs_done"] == s["epochs_planned"] == 2
        assert (s["params_total"], s["params_trainable"], s["params_non_trainable"]) == (
            470_218, 467_946, 2_272)
        assert s["h5_bytes"] == (run / "model.h5").stat().st_size > 3_000_000
        for key in ("best_val_accuracy", "final_val_accuracy", "train_seconds",
                    "images_per_second", "device", "python", "keras", "backend",
                    "git_commit", "git_dirty", "data_checksum", "recipe", "peak_rss_mb"):
            assert key in s, key
        assert s["recipe"]["epochs"] == 2 and s["recipe"]["train_limit"] == 128
        assert (run / "train.log").stat().st_size > 0
        assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
        assert not (run / "backup").exists()
    # seeds differ; the same seed gives the same data checksum
    s0, s1 = (json.loads((p / "summary.json").read_text()) for p in runs)
    assert s0["init_seed"] != s1["init_seed"] and s0["data_checksum"] == s1["data_checksum"]
    # the saved model loads with plain Keras, no project code, optimizer included
    code = ("import keras, sys; m = keras.models.load_model(sys.argv[1]);"
            "print(m.count_params(), m.optimizer.__class__.__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(runs[0] / "model.h5")],
                         capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.split()[-2:] == ["470218", "SGD"]
    # rerunning skips done jobs; status shows the queue
    again = tiny_run(res, cifar_dir, "resnet32_e", "--seeds", "2")
    assert again.returncode == 0 and "2 already done, 0 to run" in again.stdout
    st = run_cli("status", "--results", str(res))
    assert st.returncode == 0 and st.stdout.count(" done ") == 2


def _wait_for(pred, timeout=240.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.5)
    return False


def _start(res: Path, cifar: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablation.cli", "run", *args,
                             "--data-dir", str(cifar), "--results", str(res)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_resume_after_sigkill_keeps_every_epoch_once(tmp_path, cifar_dir):
    res = tmp_path / "results"
    args = ["resnet32_a", "--epochs", "4", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "32"]
    p = _start(res, cifar_dir, *args)
    hist = lambda: [h for r in run_dirs(res) if (r / "history.csv").exists()  # noqa: E731
                    for h in history(r)]
    assert _wait_for(lambda: len(hist()) >= 2 and (run_dirs(res)[0] / "backup" / "LATEST")
                     .exists()), p.communicate()[0] if p.poll() is not None else "timeout"
    os.killpg(p.pid, signal.SIGKILL)  # the runner and its training process, no warning
    p.wait()
    before = hist()
    assert 2 <= len(before) < 4
    r = run_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming after epoch" in (run_dirs(res)[0] / "train.log").read_text()
    after = hist()
    assert [row["epoch"] for row in after] == ["0", "1", "2", "3"]
    # the epochs finished before the kill were kept, not retrained
    assert after[0] == before[0]
    st = run_cli("status", "--results", str(res))
    assert " done " in st.stdout


def test_ctrl_c_marks_interrupted_and_rerun_resumes(tmp_path, cifar_dir):
    res = tmp_path / "results"
    args = ["resnet32_b", "--epochs", "3", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "32"]
    p = _start(res, cifar_dir, *args)
    assert _wait_for(lambda: run_dirs(res) and (run_dirs(res)[0] / "backup" / "LATEST")
                     .exists())
    os.killpg(p.pid, signal.SIGINT)  # what the terminal sends to the foreground group
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    st = run_cli("status", "--results", str(res))
    assert "interrupted" in st.stdout
    r = run_cli("run", *args, "--data-dir", str(cifar_dir), "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["epoch"] for row in history(run_dirs(res)[0])] == ["0", "1", "2"]


def test_two_runners_never_run_a_job_twice(tmp_path, cifar_dir):
    res = tmp_path / "results"
    args = ["resnet32_c", "resnet32_d", *TINY]
    a = _start(res, cifar_dir, *args)
    time.sleep(1.0)
    b = _start(res, cifar_dir, *args)
    out_a, _ = a.communicate(timeout=400)
    out_b, _ = b.communicate(timeout=400)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    for run in run_dirs(res):
        log = (run / "train.log").read_text()
        assert log.count("--- attempt started") == 1, run
        assert json.loads((run / "summary.json").read_text())["status"] == "done"
    st = run_cli("status", "--results", str(res))
    assert st.stdout.count(" done ") == 2


def test_a_failing_job_does_not_stop_the_queue(tmp_path, cifar_dir):
    res = tmp_path / "results"
    plan = tiny_run(res, cifar_dir, "resnet32_d_v2", "resnet32_e_v2", "--dry-run")
    assert plan.returncode == 0 and "2 job(s); nothing was run" in plan.stdout
    assert not run_dirs(res)
    # sabotage one job: a folder where its history.csv must go
    bad = next(line.split()[-1] for line in plan.stdout.splitlines() if "resnet32_d_v2" in line)
    (Path(bad) / "history.csv").mkdir(parents=True)
    r = tiny_run(res, cifar_dir, "resnet32_d_v2", "resnet32_e_v2")
    assert r.returncode == 1
    assert "FAILED resnet32_d_v2 s0" in r.stdout and "1 done" in r.stdout
    st = run_cli("status", "--results", str(res))
    assert "failed" in st.stdout and "done" in st.stdout
    # without --retry-failed the failed job stays failed; with it, it runs again
    (Path(bad) / "history.csv").rmdir()
    again = tiny_run(res, cifar_dir, "resnet32_d_v2", "resnet32_e_v2")
    assert again.returncode == 1 and "1 failed" in again.stdout
    retry = tiny_run(res, cifar_dir, "resnet32_d_v2", "resnet32_e_v2", "--retry-failed")
    assert retry.returncode == 0, retry.stdout + retry.stderr


def test_nan_loss_fails_the_job_with_its_reason(tmp_path, cifar_dir):
    res = tmp_path / "results"
    r = tiny_run(res, cifar_dir, "resnet32", "--lr", "1e9")
    assert r.returncode == 1
    assert "loss became NaN" in r.stdout
    s = json.loads((run_dirs(res)[0] / "summary.json").read_text())
    assert s["status"] == "failed" and "NaN" in s["error"]


@pytest.mark.parametrize("args,needle", [
    (["resnet33"], "unknown variant 'resnet33'"),
    (["resnet32", "--epochs", "0"], "--epochs: must be at least 1"),
    (["resnet32", "--lr", "-1"], "--lr: must be a positive number"),
    (["resnet32", "--augment", "mixup"], "invalid choice: 'mixup'"),
    (["resnet32", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    ([], "name the variants"),
])
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = run_cli("run", *args, "--results", str(tmp_path / "r"))
    assert needle in one_line_error(r)


def test_unwritable_results_dir_is_one_line(tmp_path, cifar_dir):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    r = run_cli("run", "resnet32", *TINY, "--data-dir", str(cifar_dir), "--results",
                str(blocker))
    assert "is a file" in one_line_error(r)
    r = run_cli("status", "--results", str(tmp_path / "nothing"))
    assert "no queue" in one_line_error(r)


def test_damaged_data_dir_is_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"truncated")
    r = run_cli("run", "resnet32", *TINY, "--data-dir", str(tmp_path), "--results",
                str(tmp_path / "r"))
    assert "damaged data file" in one_line_error(r)


def test_jax_backend_trains_a_tiny_job(tmp_path, cifar_dir):
    pytest.importorskip("jax")
    res = tmp_path / "results"
    r = tiny_run(res, cifar_dir, "resnet32_e", env={"KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((run_dirs(res)[0] / "summary.json").read_text())
    assert s["backend"] == "jax" and s["status"] == "done" and s["epochs_done"] == 2
