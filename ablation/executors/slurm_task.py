"""What a Slurm job runs on its compute node: the training processes of its run folders.

Imported by the Slurm executor as it submits, and by submitit on the node as it unpickles
the task; never by the command line's parser: importing submitit configures logging
(`import_submitit` says how it is imported here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ablation import devices
from ablation.errors import AblationError
from ablation.executors.base import JobProcess
from ablation.protocol import PROGRESS_FILE, SLURM_FILE, Exit


def import_submitit() -> Any:
    """submitit, imported without the logging configuration it applies as it is first
    imported: `logging.config.dictConfig` closes every logging handler the process already
    has, and absl's (TensorFlow's) then closes the stream it holds, which need not be its
    own (a test's captured stderr was). The driver prints its own lines; submitit's
    warnings reach stderr through Python's last-resort handler. On a node, submitit's own
    entry point imports it first, configured as usual. SUBMITIT_LOG_LEVEL, where a user
    set it, is kept."""
    if "submitit" in sys.modules:
        return sys.modules["submitit"]
    unset = "SUBMITIT_LOG_LEVEL" not in os.environ
    if unset:
        os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
    try:
        import submitit
    except ImportError:
        raise AblationError("--executor slurm needs submitit: pip install -e "
                            "'.[slurm]'") from None
    finally:
        if unset:
            os.environ.pop("SUBMITIT_LOG_LEVEL", None)
    return submitit


Checkpointable = import_submitit().helpers.Checkpointable

# after its training processes were stopped by a signal, how long a task waits for Slurm
# to end its job (KillWait, a preemption's GraceTime) before it ends itself
STOPPING_SECONDS = 600.0


class SlurmTask(Checkpointable):
    """What a Slurm job runs (submitit pickles it): the training processes of its run
    folders, side by side on the job's GPU, each with the memory settings of a packed
    local job. Returns [(queue id, exit code, the output's last lines)] when they end.

    A submitit `Checkpointable`: on submitit's signal (the time limit near, a preemption
    with a grace time) it stops its processes at a safe point and is resubmitted as it
    was given, holding nothing of the attempt (each process resumes from its snapshot).
    """

    def __init__(self, jobs: list[tuple[int, str]], gpus: int, sharing: int, threads: int,
                 steps_per_execution: int | None = None):
        self.jobs, self.gpus, self.sharing = jobs, gpus, sharing
        self.threads, self.steps_per_execution = threads, steps_per_execution
        self.procs: list[JobProcess] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "procs": []}  # a requeued task starts its own processes

    def __call__(self) -> list[tuple[int, int, list[str]]]:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "") if self.gpus else ""
        env = devices.job_env(os.environ, gpu, self.sharing if gpu else 1,
                              threads=self.threads,
                              steps_per_execution=self.steps_per_execution)
        self.procs = []
        for job_id, run_dir in self.jobs:
            _record_slurm(Path(run_dir))
            self.procs.append(JobProcess(job_id, run_dir, env,
                                         _appender(Path(run_dir) / PROGRESS_FILE)))
        codes = [p.wait() for p in self.procs]
        if any(c in (Exit.INTERRUPTED, -signal.SIGTERM, -signal.SIGINT) for c in codes):
            # Slurm is stopping this job (preemption, requeue, a cancel): no result, so
            # the driver waits for the requeued job (or sees it cancelled). Slurm ends it
            # within KillWait (or the grace time); a process stopped by anyone else must
            # not hold the allocation, so the task ends itself after STOPPING_SECONDS.
            time.sleep(STOPPING_SECONDS)
            raise AblationError(f"a training process was stopped by a signal and Slurm "
                                f"did not end the job within {STOPPING_SECONDS:.0f} s")
        return [(p.job_id, code, p.tail) for p, code in zip(self.procs, codes, strict=True)]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on its signal: stop the training processes at a safe point
        (every one told at once, then each waited for), then resubmit this task."""
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=120)
        return super().checkpoint(*args, **kwargs)


def _appender(path: Path):
    def sink(job_id: int, payload: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(payload.rstrip("\n") + "\n")
    return sink


def _record_slurm(run_dir: Path) -> None:
    """Which Slurm job runs this run folder (and how often it was requeued)."""
    info = {"job_id": os.environ.get("SLURM_JOB_ID"),
            "restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "node": os.environ.get("SLURMD_NODENAME")}
    with contextlib.suppress(OSError):
        (run_dir / SLURM_FILE).write_text(json.dumps(info) + "\n")
