"""`--executor slurm` against a real one-node Slurm cluster (.ci/slurm.sh starts one; CI
runs it before the tests): a tiny study through Slurm, Ctrl-C on the driver cancels its
Slurm job, a real preemption (a job of the higher-priority partition) requeues it, and
it resumes; each epoch trained once. Plus the sbatch script submitit writes, the packing
of K jobs on one GPU, and the mistakes a user makes, in one line.

No test races a Slurm job: the job is held after a known epoch (HOLD_ENV) before the
driver is interrupted or the job is preempted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import (
    ROOT,
    TINY,
    finish,
    hold_after,
    one_line_error,
    run_cli,
    run_dirs,
    start_cli,
    wait_for,
)

from ablation.protocol import HELD_MARKER, read_held


def _slurm_up() -> None:
    if shutil.which("sinfo") is None or subprocess.run(
            ["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Slurm cluster answers here: `bash .ci/slurm.sh` starts a one-node "
                    "one (as root, Debian's slurm-wlm and munge)")


def _held_at(res, epoch: int):
    def held() -> bool:
        return (res / "runs").exists() and any(
            (r / HELD_MARKER).exists() and read_held((r / HELD_MARKER).read_text())[0] == epoch
            for r in run_dirs(res))
    return held


def test_a_study_runs_on_slurm_survives_ctrl_c_and_a_preemption(tmp_path, cifar_dir, tiny):
    _slurm_up()
    res = tmp_path / "results"
    args = ["run", "tiny8", *tiny, "--epochs", "3", "--train-limit", "128", "--test-limit",
            "64", "--batch-size", "32", "--data-dir", str(cifar_dir), "--results", str(res),
            "--executor", "slurm", "--slurm-cpus", "1", "--slurm-time", "30"]
    # Ctrl-C on the driver, the job held after epoch 1: it cancels its Slurm job
    p = start_cli(*args, env=hold_after(1))
    wait_for(_held_at(res, 1), "the Slurm job to finish epoch 1 and hold", p, timeout=240)
    os.killpg(p.pid, signal.SIGINT)
    out = finish(p, "the driver to stop after Ctrl-C", timeout=240)
    assert p.returncode == 130 and "interrupted by Ctrl-C" in out, out
    assert "to run with Slurm (the default partition" in out and "epoch 1/3" in out
    run = run_dirs(res)[0]
    job = json.loads((run / "slurm.json").read_text())["job_id"]
    assert " interrupted " in run_cli("status", "--results", str(res)).stdout
    # the same command resumes it; held after epoch 2, a job of the `high` partition
    # that needs both CPUs preempts it: Slurm requeues it, and it resumes from epoch 2
    p = start_cli(*args, env=hold_after(2))
    wait_for(_held_at(res, 2), "the resumed job to finish epoch 2 and hold", p, timeout=240)
    first = json.loads((run / "slurm.json").read_text())
    assert first["job_id"] != job and first["restarts"] == 0
    high = subprocess.run(["sbatch", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap",
                           "sleep 1"], capture_output=True, text=True, timeout=60)
    assert high.returncode == 0, high.stderr
    out = finish(p, "the preempted job to be requeued and finish", timeout=300)
    assert p.returncode == 0, out
    again = json.loads((run / "slurm.json").read_text())
    assert again["job_id"] == first["job_id"] and again["restarts"] == 1
    assert [row.split(",")[0] for row in (run / "history.csv").read_text().splitlines()[1:]] \
        == ["0", "1", "2"]  # each epoch once
    log = (run / "train.log").read_text()
    assert log.count("resuming after epoch 1") == 1 and log.count("resuming after epoch 2") == 1
    assert json.loads((run / "summary.json").read_text())["status"] == "done"


def test_the_sbatch_script_the_packing_and_mistakes(tmp_path, monkeypatch, cifar_dir):
    _slurm_up()
    from ablation.executors.slurm import SlurmExecutor
    from ablation.executors.slurm_task import SlurmTask

    ex = SlurmExecutor(tmp_path, table={"gpus": 1, "cpus": 8, "mem": 32, "time": 120,
                                        "partition": "gpu", "account": "lab", "qos": "normal"},
                       options={"constraint": "a100"}, jobs_per_gpu=4)
    text = ex.executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu",
                 "#SBATCH --account=lab", "#SBATCH --qos=normal", "#SBATCH --mem=32GB",
                 "#SBATCH --time=120", "#SBATCH --constraint=a100"):
        assert line in text, (line, text)
    # K = 4 training jobs to a Slurm job, each with the memory share of a packed local job
    sent = []
    monkeypatch.setattr(ex.executor, "submit", lambda task: sent.append(task) or _Fake())
    for i in range(6):
        ex.submit(i, tmp_path / f"r{i}")
    assert [len(t.jobs) for t in sent] == [4] and sorted(ex.running()) == list(range(6))
    ex._flush()  # what waits is sent at the next poll, not held back
    assert [len(t.jobs) for t in sent] == [4, 2] and all(isinstance(t, SlurmTask)
                                                        for t in sent)
    assert sent[0].sharing == 4 and sent[0].gpus == 1
    # squeue is asked at most every SQUEUE_SECONDS, but at once after a submission
    from ablation.executors import slurm

    asked = []
    monkeypatch.setattr(slurm, "_states", lambda ids: asked.append(ids) or {"1": "RUNNING"})
    for _ in range(3):
        assert ex.poll(timeout=0) == []
    assert len(asked) == 1
    ex.submit(6, tmp_path / "r6")
    ex._flush()
    assert ex.poll(timeout=0) == [] and len(asked) == 2
    # mistakes, each one line
    r = run_cli("run", "resnet32_e", *TINY, "--executor", "slurm", "--slurm-option",
                "constraint", "--results", str(tmp_path / "r"))
    assert "--slurm-option 'constraint': give KEY=VALUE" in one_line_error(r)
    r = run_cli("run", "resnet32_e", *TINY, "--executor", "slurm", "--results",
                str(tmp_path / "r"), env={"PATH": "/nonexistent"})
    assert "--executor slurm needs Slurm's sbatch, srun, squeue, scancel here" in \
        one_line_error(r)
    # sbatch without srun (0.6: an internal error)
    only = tmp_path / "only-sbatch"
    only.mkdir()
    (only / "sbatch").symlink_to(shutil.which("sbatch"))
    r = run_cli("run", "resnet32_e", *TINY, "--executor", "slurm", "--results",
                str(tmp_path / "r"), env={"PATH": f"{only}:{os.path.dirname(sys.executable)}"})
    assert "--executor slurm needs Slurm's srun, squeue, scancel here" in one_line_error(r)
    # a partition the cluster lacks: sbatch refuses, the job stays queued to resume
    r = run_cli("run", "resnet32_e", *TINY, "--executor", "slurm", "--slurm-partition",
                "nope", "--data-dir", str(cifar_dir), "--results", str(tmp_path / "r"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "1 job(s) not started: sbatch refused the job: " in r.stderr
    assert "Invalid partition" in r.stderr.splitlines()[-1]
    assert " interrupted " in run_cli("status", "--results", str(tmp_path / "r")).stdout


class _Fake:
    job_id = "1"

    class paths:
        class result_pickle:
            @staticmethod
            def exists() -> bool:
                return False


def test_the_slurm_task_is_checkpointable_holds_nothing_and_ends(tmp_path, monkeypatch):
    """submitit's Checkpointable: the resubmitted task is the one given, without the
    attempt's processes; a task whose process was stopped by a signal Slurm did not
    follow with the job's end ends itself instead of holding the allocation."""
    import pickle

    from ablation.errors import AblationError
    from ablation.executors import slurm_task

    submitit = slurm_task.import_submitit()

    class Stopped:  # a training process that a signal stopped (exit 130)
        def __init__(self, job_id, run_dir, env, sink):
            self.job_id, self.tail = job_id, ["stopped"]

        def wait(self, timeout=None):
            return 130

        def terminate(self):
            pass

    monkeypatch.setattr(slurm_task, "JobProcess", Stopped)
    monkeypatch.setattr(slurm_task, "STOPPING_SECONDS", 0.0)
    task = slurm_task.SlurmTask([(1, str(tmp_path / "r1"))], gpus=0, sharing=1, threads=1)
    (tmp_path / "r1").mkdir()
    assert isinstance(task, submitit.helpers.Checkpointable)
    with pytest.raises(AblationError, match="stopped by a signal and Slurm did not end"):
        task()
    assert len(task.procs) == 1  # the attempt's processes, until requeued
    again = task.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    resubmitted = pickle.loads(pickle.dumps(again.function))
    assert resubmitted.jobs == task.jobs and resubmitted.procs == []


def test_submitit_leaves_the_process_logging_alone():
    """Importing submitit applies its logging configuration (`logging.config.dictConfig`),
    which closes every handler the process has; absl's (TensorFlow's) closed the stream it
    held, which was pytest's captured stderr, and every later test in that worker failed.
    No command but `run --executor slurm` imports submitit, and that one without its
    configuration. In a fresh process: this one's state is not the question."""
    code = """
import io, sys
from absl import logging as absl_logging
stream = io.StringIO()
absl_logging.get_absl_handler().python_handler.stream = stream  # not sys.stderr
from ablation import cli
cli.build_parser()
assert "submitit" not in sys.modules, "the parser imported submitit"
from ablation.executors import slurm_task
assert slurm_task.Checkpointable.__module__ == "submitit.helpers"
assert not stream.closed, "importing submitit closed absl's stream"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
