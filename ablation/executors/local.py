"""The local executor: jobs as subprocesses of this machine, each pinned to one GPU slot
(K slots per GPU with `--jobs-per-gpu K`), or on the CPU where there is no GPU.
Which GPUs, how they are shared and each job's environment: `ablation.devices`."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation import argtypes, devices
from ablation.executors.base import LineSink, outcome_from, pump, train_command
from ablation.protocol import Outcome


@dataclass
class _Slot:
    place: devices.Slot
    job_id: int | None = None
    proc: subprocess.Popen | None = None
    run_dir: Path | None = None
    reader: threading.Thread | None = None
    tail: list[str] = field(default_factory=list)


class LocalExecutor:
    """Runs jobs as subprocesses, one per slot."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--workers", type=argtypes.integer(1), default=None,
                            help="local jobs at once (default: GPUs × --jobs-per-gpu, or 1)")

    @classmethod
    def from_args(cls, args: Any, sink: LineSink) -> LocalExecutor:
        return cls(args.workers, sink, args.jobs_per_gpu, args.loader_threads,
                   args.steps_per_execution)

    def __init__(self, workers: int | None = None, sink: LineSink | None = None,
                 jobs_per_gpu: int | None = None, loader_threads: int | None = None,
                 steps_per_execution: int | None = None):
        self.gpus = devices.list_gpus()
        self.slots = [_Slot(p) for p in devices.plan_slots(self.gpus, workers, jobs_per_gpu)]
        self.size = len(self.slots)
        self.threads = loader_threads or devices.loader_threads(self.size)
        self.steps_per_execution = steps_per_execution
        self.sink = sink or (lambda job_id, line: None)
        if self.gpus.ids:
            per = max(s.place.sharing for s in self.slots)
            where = (f" on GPU(s) {', '.join(self.gpus.ids)} (from {self.gpus.source}), "
                     f"{per} job(s) per GPU")
            memory = devices.memory_settings(per, os.environ)
            where += "; " + (", ".join(f"{k}={v}" for k, v in memory.items())
                             or "memory variables as set")
        else:
            where = " on the CPU (no GPU found)"
        self.describe = (f"{self.size} local worker(s){where}; {self.threads} loader "
                         "thread(s) per job")

    @property
    def capacity(self) -> int:
        return sum(s.job_id is None for s in self.slots)

    def _free(self) -> _Slot:
        return next(s for s in self.slots if s.job_id is None)

    def next_place(self) -> str:
        return self._free().place.describe()

    def running(self) -> list[int]:
        return [s.job_id for s in self.slots if s.job_id is not None]

    def submit(self, job_id: int, run_dir: Path) -> None:
        slot = self._free()
        env = devices.job_env(os.environ, slot.place.gpu, slot.place.sharing,
                              self.gpus.pci_order, self.threads, self.steps_per_execution)
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
