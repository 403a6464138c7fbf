"""What every executor shares: the `Executor` protocol the runner drives, the one node
runner (`JobProcess`: a job's training process, started, its output collected, stopped),
and turning a finished job's process into a queue outcome.

An executor runs `python -m ablation.job RUN_DIR` and reports the outcome (exit code
+ the run folder's summary.json), so a job's artefacts do not depend on who ran it.
Only the driver (ablation.runner) touches the queue database.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ablation.protocol import PROGRESS_PREFIX, Exit, JobState, Outcome, module_command
from ablation.store import LOG, RunFolder

LineSink = Callable[[int, str], None]  # (job id, progress payload) -> None


class Executor(Protocol):
    """What the runner needs of a place that runs training processes."""

    size: int  # jobs it can run at once
    describe: str  # one line for the console

    @property
    def capacity(self) -> int: ...  # free slots now

    def next_place(self) -> str: ...  # where the next submitted job will run, in words

    def running(self) -> list[int]: ...  # job ids submitted whose outcome poll owes

    def submit(self, job_id: int, run_dir: Path) -> None: ...

    def poll(self, timeout: float = 1.0) -> list[Outcome]: ...  # jobs that ended

    def cancel(self) -> list[Outcome]: ...  # stop all; their outcomes

    def shutdown(self) -> None: ...


def train_command(run_dir: str) -> list[str]:
    return module_command("ablation.job", str(run_dir))


class JobProcess:
    """One job's training process on the node that runs it, whichever executor placed it
    there (local, a Ray task, a Slurm job): started with its environment, its output
    copied into the run folder's train.log with progress lines handed to `sink`, waited
    for, or stopped at a safe point (SIGTERM: it keeps its last finished epoch)."""

    def __init__(self, job_id: int, run_dir: str | Path, env: dict[str, str],
                 sink: LineSink):
        self.job_id, self.run_dir = job_id, Path(run_dir)
        self.tail: list[str] = []  # the output's last lines, for a failure's reason
        self.proc = subprocess.Popen(train_command(str(run_dir)), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        self.reader = threading.Thread(
            target=pump, args=(self.proc.stdout, RunFolder(run_dir).file(LOG), job_id, sink,
                               self.tail), daemon=True)
        self.reader.start()

    def poll(self) -> int | None:
        """Its exit code once it has ended (its output read to the end), else None."""
        code = self.proc.poll()
        if code is not None:
            self.reader.join(timeout=10)
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(timeout=10)
        return code

    def terminate(self) -> None:
        """Ask it to stop at a safe point (SIGTERM), where it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
        self.terminate()
        try:
            return self.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait()

    def outcome(self) -> Outcome:
        """How it ended, as the queue records it (`outcome_from`)."""
        return outcome_from(self.job_id, self.run_dir, self.proc.returncode, self.tail)


def outcome_from(job_id: int, run_dir: Path, code: int, tail: list[str]) -> Outcome:
    """Turn a finished job's process into a queue state."""
    record = RunFolder(run_dir).record_or_none()
    status = record.status if record else None
    if code == Exit.DONE and status in (JobState.DONE, JobState.PAUSED):
        return Outcome(job_id, status)
    if code in (Exit.INTERRUPTED, -signal.SIGINT, -signal.SIGTERM):
        return Outcome(job_id, JobState.INTERRUPTED, "interrupted; resumes from its last epoch")
    if code == Exit.NO_DEVICE:
        return Outcome(job_id, JobState.INTERRUPTED,
                       (record and record.error) or "given a GPU, it sees none", machine=True)
    reason = record.error if status == JobState.FAILED else None
    if code == Exit.DONE and record is None and (why := RunFolder(run_dir).damaged()):
        # It finished and wrote its record, which this process cannot read: a record
        # written by another version of the package (an upgrade mid-queue) reads so.
        reason = (f"exit code 0, but {why}; was it run by another ablation version than"
                  " this runner's?")
    if not reason:
        last = [t for t in tail if t.strip()]
        reason = f"exit code {code}" + (f": {last[-1].strip()[:300]}" if last else "")
        if code in (-signal.SIGKILL, 137):
            reason += " (killed: out of memory?)"
        elif code in (-signal.SIGSEGV, -signal.SIGABRT, 139, 134):
            reason += (" (a crash in native code; with TensorFlow on a CPU, TF_ENABLE_ONEDNN_OPTS=0"
                       " or KERAS_BACKEND=jax may avoid it)")
    return Outcome(job_id, JobState.FAILED, reason)


def pump(stream, log_path: Path, job_id: int, sink: LineSink, tail: list[str]) -> None:
    """Copy a job's output into its train.log; progress lines go to sink."""
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
