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

from conftest import ROOT, TINY, finish, hold_after, need, run_cli, start_cli, wait_for

from ablation.protocol import HELD_MARKER, read_held


def run_dirs(results: Path) -> dict[str, Path]:
    return {p.name: p for p in (results / "runs").glob("*/*") if p.is_dir()}


def test_ray_runs_jobs_and_isolates_a_failure(tmp_path, cifar_dir, tiny):
    need("ray")
    res = tmp_path / "results"
    jobs = ["tiny8", "tiny8_b", *tiny]
    plan = run_cli("run", *jobs, *TINY, "--data-dir", str(cifar_dir), "--results", str(res),
                   "--dry-run")
    bad = next(line.split()[-1] for line in plan.stdout.splitlines() if "tiny8_b" in line)
    (Path(bad) / "history.csv").mkdir(parents=True)  # sabotage one job
    r = run_cli("run", *jobs, *TINY, "--data-dir", str(cifar_dir), "--results", str(res),
                "--executor", "ray")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "with Ray at" in r.stdout and "epoch 2/2" in r.stdout
    assert "FAILED tiny8_b@" in r.stderr and "1 done" in r.stdout
    runs = {name.split("-")[0]: run for name, run in run_dirs(res).items()}
    for name in ("tiny8",):
        s = json.loads((runs[name] / "summary.json").read_text())
        assert s["status"] == "done" and s["epochs_done"] == 2
        assert s["h5_bytes"] == (runs[name] / "model.h5").stat().st_size
        assert (runs[name] / "history.csv").read_text().count("\n") == 3
        assert "--- attempt started" in (runs[name] / "train.log").read_text()
    st = run_cli("status", "--results", str(res)).stdout
    assert st.count(" done ") == 1 and st.count(" failed ") == 1


def _kill_own_worker(res: Path, epoch: int, proc) -> None:
    """Wait until the job holds after `epoch`, then SIGKILL the Ray worker running it
    (the training process's parent, named in the marker): no other process on the host."""
    def held() -> bool:
        markers = list((res / "runs").glob(f"*/*/{HELD_MARKER}"))
        return bool(markers) and read_held(markers[0].read_text())[0] == epoch

    wait_for(held, f"the Ray job to finish epoch {epoch} and hold", proc)
    marker = next((res / "runs").glob(f"*/*/{HELD_MARKER}"))
    _, _, worker = read_held(marker.read_text())
    cmdline = Path(f"/proc/{worker}/cmdline").read_bytes().decode(errors="replace")
    assert "ray" in cmdline.lower(), f"process {worker} is not a Ray worker: {cmdline!r}"
    os.kill(worker, signal.SIGKILL)  # the node's worker dies mid-job


def test_killed_ray_worker_is_retried_resumes_and_runs_out_of_retries(tmp_path, cifar_dir,
                                                                      tiny):
    """Held after epoch 1 and killed, Ray retries the job, which resumes from epoch 1;
    held after epoch 2 and killed again, the one retry is spent: the job fails naming
    Ray. Rerunning with --retry-failed resumes from epoch 2; each epoch is trained once."""
    need("ray")
    res = tmp_path / "results"
    args = ["run", "tiny8", *tiny, "--epochs", "4", "--train-limit", "128", "--test-limit", "64",
            "--batch-size", "32", "--data-dir", str(cifar_dir), "--results", str(res),
            "--executor", "ray", "--ray-retries", "1"]
    p = start_cli(*args, env=hold_after(1, 2))
    _kill_own_worker(res, 1, p)
    _kill_own_worker(res, 2, p)
    out = finish(p, "the Ray run to give up on the job", timeout=400)
    assert p.returncode == 1, out
    assert "FAILED tiny8@" in out and " s0: Ray:" in out
    run = next(iter(run_dirs(res).values()))
    log = (run / "train.log").read_text()
    assert log.count("--- attempt started") == 2 and "resuming after epoch 1" in log
    r = run_cli(*args, "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming after epoch 2" in (run / "train.log").read_text()
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
    from ablation.executors.ray_cluster import _train_on_worker
    from ablation.protocol import Exit

    code, tail = _train_on_worker(str(tmp_path / "elsewhere"), 1, None)
    assert code == Exit.NOT_VISIBLE and "put --results on shared storage" in tail[-1]
