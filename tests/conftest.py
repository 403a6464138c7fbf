"""Shared fixtures and helpers: where the real CIFAR-10 lives, a CLI runner, tiny job
flags, run-folder readers, and race-free ways to stop a job mid-training."""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# jobs do not time their networks' inference (a few seconds each) unless a test asks
# (`env={"ABLATION_NO_INFERENCE_TIMING": None}`: tests/test_ops.py, tests/test_inference.py)
os.environ["ABLATION_NO_INFERENCE_TIMING"] = "1"
ROOT = Path(__file__).resolve().parent.parent

# the smallest real training job: 4 steps of 32 images, 2 epochs, 64 test images
TINY = ["--epochs", "2", "--train-limit", "128", "--test-limit", "64", "--batch-size", "32"]


def find_cifar10() -> Path | None:
    """ABLATION_DATA_DIR when it is set (and then only there), else ../shared/data
    beside the checkout."""
    env = os.environ.get("ABLATION_DATA_DIR")
    for cand in ([env] if env is not None else [ROOT.parent / "shared" / "data"]):
        if cand and (Path(cand) / "cifar-10-batches-py" / "test_batch").is_file():
            return Path(cand)
    return None


IN_CI = bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (the CI variable set), where the real CIFAR-10 and every optional package
    are installed, a test that would skip fails instead, naming the reason: a missing
    file or package never passes silently there."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"would skip, and nothing may skip in CI (CI is set): {reason}"


def need(module: str):
    """Import an optional package, or skip (a failure in CI) naming the extra."""
    return pytest.importorskip(module, reason=f"{module} is not installed "
                                              "(pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    found = find_cifar10()
    if found is None:
        pytest.skip("real CIFAR-10 not found: set ABLATION_DATA_DIR to the folder holding "
                    "cifar-10-batches-py/ (or place it at ../shared/data)")
    return found


# The files whose tests train the most, longest first (measured with `pytest
# --durations=0`). xdist hands each worker whole files (pyproject's addopts); started
# first, these never end up last on an already busy worker. Every other file follows in
# its usual order: a stale list costs minutes, never a test.
LONGEST_FIRST = ("test_ops.py", "test_run.py", "test_studies.py", "test_resume.py",
                 "test_tune.py", "test_ray.py", "test_halving.py", "test_parallel.py",
                 "test_datasets.py", "test_ondevice.py", "test_packed.py",
                 "test_gpu_benchmark.py",
                 "test_slurm.py", "test_analyze.py", "test_robustness.py", "test_families.py",
                 "test_report.py",
                 "test_features.py", "test_docs.py", "test_paper_studies.py",
                 "test_devices.py", "test_bench.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Start the longest files first, and mark every test that needs real CIFAR-10
    `slow` (`-m "not slow"` runs the rest, which need no data, in about five minutes on
    two cores)."""
    for item in items:
        if "cifar_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def _shared_once(tmp_path_factory, worker_id, name: str, make) -> Path:
    """A folder made once per test session and shared by every xdist worker: the first
    to ask makes it (`make(folder)`), the others wait on a lock."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # one per session
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "DONE").exists():
            make(folder)
            (folder / "DONE").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_e_results(tmp_path_factory, worker_id, cifar_dir) -> tuple[Path, str]:
    """`ablation run resnet32_e --seeds 2` with TINY flags: the run folder and what the
    command printed. Shared (conftest._shared_once); read-only: copy before changing."""
    def make(folder: Path) -> None:
        r = run_cli("run", "resnet32_e", "--seeds", "2", *TINY, "--data-dir", str(cifar_dir),
                    "--results", str(folder / "results"))
        assert r.returncode == 0, r.stdout + r.stderr
        (folder / "stdout.txt").write_text(r.stdout)

    folder = _shared_once(tmp_path_factory, worker_id, "tiny-e", make)
    return folder / "results", (folder / "stdout.txt").read_text()


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory, worker_id, cifar_dir, tiny_e_results) -> Path:
    """resnet32 and resnet32_e, two seeds each, TINY recipe, model.h5 kept (the runs of
    tiny_e_results plus resnet32's). Shared; read-only: copy before changing."""
    def make(folder: Path) -> None:
        shutil.copytree(tiny_e_results[0], folder, dirs_exist_ok=True)
        r = run_cli("run", "resnet32", "--seeds", "2", "--workers", "2", *TINY,
                    "--data-dir", str(cifar_dir), "--results", str(folder))
        assert r.returncode == 0, r.stdout + r.stderr

    return _shared_once(tmp_path_factory, worker_id, "tiny-results", make)


@pytest.fixture
def isolated_registry():
    """Studies loaded inside a test register variants and units for this process only
    for the test's duration, so no other test sees them."""
    from ablation import study

    state = study.snapshot()
    yield
    study.restore(state)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `ablation ...` as a user would, in a fresh process (`env` entries of None are
    removed from its environment)."""
    full_env = {k: v for k, v in dict(os.environ, **(env or {})).items() if v is not None}
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def as_in_a_terminal() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and
    # children inherit that (a CI runner may start the tests so): give the process a
    # terminal's default Ctrl-C, whatever the test runner inherited.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _as_under_nohup() -> None:
    # `nohup cmd &`, a script's `cmd &`: Ctrl-C cannot reach the command
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_cli(*args: str, env: dict | None = None, nohup: bool = False) -> subprocess.Popen:
    """Start `ablation ...` in its own process group, with Ctrl-C as a terminal has it
    (a terminal's foreground job), or ignored as under `nohup` (`nohup=True`): each test
    sets the disposition it relies on, whatever the test runner inherited."""
    return subprocess.Popen([sys.executable, "-m", "ablation.cli", *args], cwd=ROOT,
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_as_under_nohup if nohup else as_in_a_terminal)


def hold_after(*epochs: int | str) -> dict:
    """Environment for a job that stops after each of `epochs` finished epochs and waits
    for a signal (ablation.protocol.HOLD_ENV): a signal sent once it is held always finds
    the job with work left, however fast or slow the machine is."""
    from ablation.protocol import HOLD_ENV

    return {HOLD_ENV: ",".join(map(str, epochs))}


def wait_for(pred, what: str, proc: subprocess.Popen | None = None,
             timeout: float = 300.0) -> None:
    """Poll `pred` until true; fail naming `what` on timeout, or at once (with its
    output) if `proc` exits first."""
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n"
                        f"{proc.communicate()[0]}")
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, what: str, timeout: float = 300.0) -> str:
    """Wait for a process to exit; fail naming `what` on timeout. Returns its output."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n"
                    f"{proc.communicate()[0]}")


def tiny_study(folder: Path) -> Path:
    """A study of small networks, `tiny8` (resnet32_e with one unit per stage),
    `tiny8_c` and `tiny8_b` (the same with units (c) and (b)), for runs that test the
    machinery rather than the models: about a third of ResNet-32's time per image, and a
    faster first epoch. `tiny8_nan` trains at lr 1e9 (its own recipe): its loss becomes
    NaN in the first steps."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text('name = "tiny"\n\n[[variant]]\nname = "tiny8"\nbase = "resnet32_e"\n'
                    'stages = [[1, 16], [1, 32], [1, 64]]\n\n'
                    '[[variant]]\nname = "tiny8_c"\nbase = "tiny8"\nunit = "c"\n\n'
                    '[[variant]]\nname = "tiny8_b"\nbase = "tiny8"\nunit = "b"\n\n'
                    '[[variant]]\nname = "tiny8_nan"\nbase = "tiny8"\n'
                    'recipe = { lr = 1e9 }\n')
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> list[str]:
    """`--study FILE` of `tiny_study`, for `ablation run tiny8 ...`."""
    return ["--study", str(tiny_study(tmp_path_factory.mktemp("tiny-study")))]


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
