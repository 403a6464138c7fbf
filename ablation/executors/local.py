"""The local executor: jobs as subprocesses of this machine, each pinned to one GPU slot
(K slots per GPU with `--jobs-per-gpu K`), or on the CPU where there is no GPU.
Which GPUs, how they are shared and each job's environment: `ablation.devices`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation import argtypes, devices
from ablation.executors.base import JobProcess, LineSink
from ablation.protocol import Outcome


@dataclass
class _Slot:
    place: devices.Slot
    job: JobProcess | None = None


class LocalExecutor:
    """Runs jobs as subprocesses, one per slot."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--workers", type=argtypes.integer(1), default=None,
                            help="local jobs at once (default: GPUs × --jobs-per-gpu, or 1)")

    @classmethod
    def from_args(cls, args: Any, sink: LineSink) -> LocalExecutor:
        return cls(args.workers, sink, args.jobs_per_gpu, args.loader_threads,
                   args.steps_per_execution, getattr(args, "devices_per_job", 1))

    def __init__(self, workers: int | None = None, sink: LineSink | None = None,
                 jobs_per_gpu: int | None = None, loader_threads: int | None = None,
                 steps_per_execution: int | None = None, devices_per_job: int = 1):
        self.gpus = devices.list_gpus()
        self.slots = [_Slot(p) for p in devices.plan_slots(self.gpus, workers, jobs_per_gpu,
                                                            devices_per_job)]
        self.size = len(self.slots)
        self.threads = loader_threads or devices.loader_threads(self.size)
        self.steps_per_execution = steps_per_execution
        self.sink = sink or (lambda job_id, line: None)
        if self.gpus.ids:
            per = max(s.place.sharing for s in self.slots)
            where = (f" on GPU(s) {', '.join(self.gpus.ids)} (from {self.gpus.source}), "
                     + (f"{devices_per_job} GPUs per job" if devices_per_job > 1
                        else f"{per} job(s) per GPU"))
            memory = devices.memory_settings(per, os.environ)
            where += "; " + (", ".join(f"{k}={v}" for k, v in memory.items())
                             or "memory variables as set")
        else:
            where = " on the CPU (no GPU found)" + (
                f", each job data parallel on {devices_per_job} CPU devices"
                if devices_per_job > 1 else "")
        self.describe = (f"{self.size} local worker(s){where}; {self.threads} loader "
                         "thread(s) per job")

    @property
    def capacity(self) -> int:
        return sum(s.job is None for s in self.slots)

    def _free(self) -> _Slot:
        return next(s for s in self.slots if s.job is None)

    def next_place(self) -> str:
        return self._free().place.describe()

    def running(self) -> list[int]:
        return [s.job.job_id for s in self.slots if s.job is not None]

    def submit(self, job_id: int, run_dir: Path) -> None:
        slot = self._free()
        env = devices.job_env(os.environ, slot.place.gpu, slot.place.sharing,
                              self.gpus.pci_order, self.threads, self.steps_per_execution)
        slot.job = JobProcess(job_id, run_dir, env, self.sink)

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        """Outcomes of the jobs that ended since the last call (waits up to timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            done = []
            for s in self.slots:
                if s.job is not None and s.job.poll() is not None:
                    done.append(s.job.outcome())
                    s.job = None
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.2)

    def cancel(self, grace: float = 30.0) -> list[Outcome]:
        """Stop every running job (SIGTERM, then SIGKILL after `grace` seconds)."""
        for s in self.slots:  # every job told at once, then each waited for
            if s.job is not None:
                s.job.terminate()
        deadline = time.monotonic() + grace
        for s in self.slots:
            if s.job is not None:
                s.job.stop(max(0.1, deadline - time.monotonic()))
        return self.poll(timeout=0)

    def shutdown(self) -> None:
        pass
