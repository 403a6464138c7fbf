"""`ablation run --executor ray` on a local Ray instance: same artefacts and queue
states as the local executor, a failing job, and a job whose Ray worker is killed
mid-training and that Ray retries from its last finished epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, finish, hold_after, run_cli, start_cli, wait_for

from ablation.protocol import HELD_MARKER

pytest.importorskip("ray")


def run_dirs(results: Path) -> dict[str, Path]:
    return {p.name: p for p in (results / "runs").glob("*/*") if p.is_dir()}


def test_ray_runs_jobs_and_isolates_a_failure(tmp_path, cifar_dir):
    res = tmp_path / "results"
    jobs = ["resnet32_c", "resnet32_e", "resnet34"]
    plan = run_cli("run", *jobs, *TINY, "--data-dir", str(cifar_dir), "--results", str(res),
                   "--dry-run")
    bad = next(line.split()[-1] for line in plan.stdout.splitlines() if "resnet34" in line)
    (Path(bad) / "history.csv").mkdir(parents=True)  # sabotage one job
    r = run_cli("run", *jobs, *TINY, "--data-dir", str(cifar_dir), "--results", str(res),
                "--executor", "ray")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "with Ray at" in r.stdout and "epoch 2/2" in r.stdout
    assert "FAILED resnet34 s0" in r.stdout and "2 done" in r.stdout
    runs = run_dirs(res)
    for name in ("resnet32_c-s0", "resnet32_e-s0"):
        s = json.loads((runs[name] / "summary.json").read_text())
        assert s["status"] == "done" and s["epochs_done"] == 2
        assert s["h5_bytes"] == (runs[name] / "model.h5").stat().st_size
        assert (runs[name] / "history.csv").read_text().count("\n") == 3
        assert "--- attempt started" in (runs[name] / "train.log").read_text()
    st = run_cli("status", "--results", str(res)).stdout
    assert st.count(" done ") == 2 and st.count(" failed ") == 1


def test_killed_ray_worker_is_retried_and_resumes(tmp_path, cifar_dir):
    """The job holds after epoch 1 (conftest.hold_after), so the worker is always killed
    mid-job; Ray's retry resumes from that epoch and no longer holds."""
    res = tmp_path / "results"
    p = start_cli("run", "resnet32_d", "--epochs", "4", "--train-limit", "128",
                  "--test-limit", "64", "--batch-size", "32", "--data-dir", str(cifar_dir),
                  "--results", str(res), "--executor", "ray", env=hold_after(1))
    wait_for(lambda: bool(list((res / "runs").glob(f"*/*/{HELD_MARKER}"))),
             "the Ray job to finish epoch 1 and hold", p)
    pids = subprocess.run(["pgrep", "-f", "ray::_train_on_worker"], capture_output=True,
                          text=True).stdout.split()
    assert pids, "no Ray worker found running the job"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)  # the node's worker dies mid-job
    out = finish(p, "the Ray run to retry and finish the job", timeout=400)
    assert p.returncode == 0, out
    run = next(iter(run_dirs(res).values()))
    log = (run / "train.log").read_text()
    assert log.count("--- attempt started") == 2 and "resuming after epoch" in log
    with open(run / "history.csv") as f:
        assert [line.split(",")[0] for line in f][1:] == ["0", "1", "2", "3"]


def test_without_ray_the_flag_is_a_one_line_error(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from ablation.cli import main;"
            "sys.exit(main(['run', 'resnet32', '--executor', 'ray', '--results', "
            f"{str(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("ablation: error: --executor ray needs Ray: "
                                "pip install -e '.[ray]'")


def test_worker_that_cannot_see_the_results_folder_says_so(tmp_path):
    from ablation.protocol import Exit
    from ablation.ray_executor import _train_on_worker

    code, tail = _train_on_worker(str(tmp_path / "elsewhere"), 1, None)
    assert code == Exit.NOT_VISIBLE and "put --results on shared storage" in tail[-1]
