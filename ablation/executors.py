"""Executors: where a job's training process runs.

An executor runs `python -m ablation.training RUN_DIR` and reports the outcome (exit
code + the run folder's summary.json), so a job's artefacts do not depend on who ran
it. Only the driver (ablation.runner) touches the queue database.

`Executor` declares what the runner uses; `EXECUTORS` maps `--executor NAME` to a
class. Each class adds its own command-line options and builds itself from them, so
a new executor (Slurm, Kubernetes) is one class and one map entry, never a CLI edit.
`LocalExecutor`: subprocesses on this machine, one per GPU slot (CUDA_VISIBLE_DEVICES
pinned), or one on a CPU machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ablation import argtypes, results
from ablation.errors import AblationError
from ablation.protocol import PROGRESS_PREFIX, Exit, JobState, Outcome

LineSink = Callable[[int, str], None]  # (job id, progress payload) -> None


class Executor(Protocol):
    """What the runner needs of a place that runs training processes."""

    size: int  # jobs it can run at once
    describe: str  # one line for the console

    @property
    def capacity(self) -> int: ...  # free slots now

    def running(self) -> list[int]: ...  # job ids in flight

    def submit(self, job_id: int, run_dir: Path) -> None: ...

    def poll(self, timeout: float = 1.0) -> list[Outcome]: ...  # jobs that ended

    def cancel(self) -> list[Outcome]: ...  # stop all; their outcomes

    def shutdown(self) -> None: ...


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def train_command(run_dir: str) -> list[str]:
    return [sys.executable, "-m", "ablation.training", str(run_dir)]


def outcome_from(job_id: int, run_dir: Path, code: int, tail: list[str]) -> Outcome:
    """Turn a finished training process into a queue state."""
    summary = {}
    with contextlib.suppress(FileNotFoundError, AblationError):
        summary = results.read_json(Path(run_dir) / "summary.json")
    if code == Exit.DONE and summary.get("status") == JobState.DONE:
        return Outcome(job_id, JobState.DONE)
    if code in (Exit.INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
        return Outcome(job_id, JobState.INTERRUPTED, "interrupted; resumes from its last epoch")
    reason = summary.get("error") if summary.get("status") == JobState.FAILED else None
    if not reason:
        last = [t for t in tail if t.strip()]
        reason = f"exit code {code}" + (f": {last[-1].strip()[:300]}" if last else "")
        if code in (-signal.SIGKILL, 137):
            reason += " (killed: out of memory?)"
    return Outcome(job_id, JobState.FAILED, reason)


def pump(stream, log_path: Path, job_id: int, sink: LineSink, tail: list[str]) -> None:
    """Copy a training process's output into its train.log; progress lines go to sink."""
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"--- attempt started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
        for raw in stream:
            line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if line.startswith(PROGRESS_PREFIX):
                sink(job_id, line[len(PROGRESS_PREFIX):])
            else:
                log.write(line)
                log.flush()
                tail.append(line)
                del tail[:-20]


@dataclass
class _Slot:
    gpu: str | None
    job_id: int | None = None
    proc: subprocess.Popen | None = None
    run_dir: Path | None = None
    reader: threading.Thread | None = None
    tail: list[str] = field(default_factory=list)


class LocalExecutor:
    """Runs jobs as subprocesses, `workers` at a time, each pinned to one GPU slot."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--workers", type=argtypes.integer(1), default=None,
                            help="local jobs at once (default: one per GPU, or 1)")

    @classmethod
    def from_args(cls, args: Any, sink: LineSink) -> LocalExecutor:
        return cls(args.workers, sink)

    def __init__(self, workers: int | None = None, sink: LineSink | None = None):
        gpus = visible_gpus()
        n = workers or max(1, len(gpus))
        self.size = n
        self.slots = [_Slot(gpus[i % len(gpus)] if gpus else None) for i in range(n)]
        self.sink = sink or (lambda job_id, line: None)
        self.describe = (f"{n} local worker(s)"
                         + (f" on GPU(s) {', '.join(gpus)}" if gpus else " on the CPU"))

    @property
    def capacity(self) -> int:
        return sum(s.job_id is None for s in self.slots)

    def running(self) -> list[int]:
        return [s.job_id for s in self.slots if s.job_id is not None]

    def submit(self, job_id: int, run_dir: Path) -> None:
        slot = next(s for s in self.slots if s.job_id is None)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        slot.tail = []
        slot.proc = subprocess.Popen(train_command(str(run_dir)), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        slot.job_id, slot.run_dir = job_id, Path(run_dir)
        slot.reader = threading.Thread(
            target=pump, args=(slot.proc.stdout, slot.run_dir / "train.log", job_id, self.sink,
                               slot.tail), daemon=True)
        slot.reader.start()

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        """Outcomes of the jobs that ended since the last call (waits up to timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            done = []
            for s in self.slots:
                if s.proc is not None and s.proc.poll() is not None:
                    s.reader.join(timeout=10)
                    done.append(outcome_from(s.job_id, s.run_dir, s.proc.returncode, s.tail))
                    s.job_id = s.proc = s.run_dir = s.reader = None
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.2)

    def cancel(self, grace: float = 30.0) -> list[Outcome]:
        """Stop every running job (SIGTERM, then SIGKILL after `grace` seconds)."""
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for s in self.slots:
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
        return self.poll(timeout=0)

    def shutdown(self) -> None:
        pass


def _ray_executor() -> type:
    from ablation.ray_executor import RayExecutor

    return RayExecutor


# --executor NAME -> the class (a callable, so heavy modules load only when chosen)
EXECUTORS: dict[str, Callable[[], type]] = {
    "local": lambda: LocalExecutor,
    "ray": _ray_executor,
}
