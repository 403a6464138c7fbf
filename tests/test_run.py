"""`ablation run` end to end on tiny real-data jobs: recording, failure isolation, bad
input, and the JAX backend. (Interrupting and resuming: test_resume.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, history, need, one_line_error, run_cli, run_dirs, tiny_study


def tiny_run(results: Path, cifar: Path, *args: str, env: dict | None = None):
    return run_cli("run", *args, *TINY, "--data-dir", str(cifar), "--results", str(results),
                   env=env)


def test_run_records_everything(tmp_path, cifar_dir, tiny_e_results):
    # `tiny_run(res, cifar_dir, "resnet32_e", "--seeds", "2")`, run once for the session
    res = tmp_path / "results"
    shutil.copytree(tiny_e_results[0], res)
    stdout = tiny_e_results[1]
    assert "[job 1/2] resnet32_e s0  epoch 1/2" in stdout and "ETA job" in stdout
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


def test_failing_jobs_do_not_stop_the_queue(tmp_path, cifar_dir, tiny):
    """Two jobs fail in two ways — a folder where a file must go, a loss that becomes NaN
    — and the third trains; each failure is its reason, on stderr."""
    res = tmp_path / "results"
    jobs = ["tiny8_c", "tiny8", "tiny8_nan", *tiny]
    plan = tiny_run(res, cifar_dir, *jobs, "--dry-run")
    assert plan.returncode == 0 and "3 job(s); no speed measured in" in plan.stdout
    assert "nothing was run (--dry-run)" in plan.stdout
    assert not run_dirs(res)
    # sabotage one job: a folder where its history.csv must go
    bad = next(line.split()[-1] for line in plan.stdout.splitlines() if "tiny8_c" in line)
    (Path(bad) / "history.csv").mkdir(parents=True)
    r = tiny_run(res, cifar_dir, *jobs)
    assert r.returncode == 1
    assert "FAILED tiny8_c@" in r.stderr and "1 done" in r.stdout  # failures: stderr
    assert "loss became NaN" in r.stderr and "2 failed" in r.stdout
    nan = next(d for d in run_dirs(res) if d.name.startswith("tiny8_nan"))
    s = json.loads((nan / "summary.json").read_text())
    assert s["status"] == "failed" and "NaN" in s["error"]
    st = run_cli("status", "--results", str(res))
    assert "failed" in st.stdout and "done" in st.stdout
    # without --retry-failed the failed job stays failed; with it, it runs again
    (Path(bad) / "history.csv").rmdir()
    jobs.remove("tiny8_nan")
    again = tiny_run(res, cifar_dir, *jobs)
    assert again.returncode == 1 and "1 failed" in again.stdout
    retry = tiny_run(res, cifar_dir, *jobs, "--retry-failed")
    assert retry.returncode == 0, retry.stdout + retry.stderr


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
    assert "no results folder" in one_line_error(r)


def test_damaged_data_dir_is_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"truncated")
    r = run_cli("run", "resnet32", *TINY, "--data-dir", str(tmp_path), "--results",
                str(tmp_path / "r"))
    assert "damaged data file" in one_line_error(r)


def test_without_tensorflow_a_job_trains_on_jax_with_no_flag(tmp_path, cifar_dir):
    """A GPU image with JAX and no TensorFlow: `import tensorflow` fails (here a package
    on PYTHONPATH that refuses to import, and counts the tries). With no flag and no
    KERAS_BACKEND, the job trains on JAX (augmenting in the step),
    writes TensorBoard logs without TensorFlow, and `ablation report` reads it."""
    need("jax")
    blocker = tmp_path / "blocker"
    (blocker / "tensorflow").mkdir(parents=True)
    tries = tmp_path / "tries.txt"
    (blocker / "tensorflow" / "__init__.py").write_text(
        "import os\n"
        f"with open({str(tries)!r}, 'a') as f:\n"
        "    f.write(str(os.getpid()) + '\\n')\n"
        "raise ImportError('blocked by the test: no TensorFlow in this environment')\n")
    study = tiny_study(tmp_path)  # (its own copy: the report goes beside it)
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
           "KERAS_BACKEND": None, "KERAS_HOME": str(tmp_path / "keras-home")}
    res = tmp_path / "results"
    # snapshots inside each epoch too (the JAX trainer's state synced for them); as a
    # lab's GPU image would run it: augmentation in the step (across JAX's CPU devices:
    # not in the suite, tests/test_parallel.py says why)
    r = tiny_run(res, cifar_dir, "tiny8", "--study", str(study), "--snapshot-every", "2",
                 "--augment-on", "device", "--mixup", "0.2", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = run_dirs(res)[0]
    s = json.loads((run / "summary.json").read_text())
    assert s["backend"] == "jax" and s["status"] == "done" and s["epochs_done"] == 2
    assert s["augment_ran"] == "device" and s["devices_per_job"] == 1
    assert "TensorFlow cannot be imported (blocked by the test" in s["note"]
    assert s["jit_compile"] is True and s["matmul_precision"] == "float32"
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} == {"train", "validation"}
    assert tries.read_text().strip()  # the blocker was in the job's way
    rep = run_cli("report", "--study", str(study), "--results", str(res),
                  "--out", str(tmp_path / "report"), env=env)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "jax" in (tmp_path / "report" / "README.md").read_text()
    assert "tiny8" in (tmp_path / "report" / "runs.csv").read_text()
