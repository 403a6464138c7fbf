"""Run the queue on a Ray cluster: one Ray task per job, placed by Ray on a free GPU
(or CPUs) anywhere in the cluster.

The task runs exactly what the local executor runs, `python -m ablation.training
RUN_DIR`, on the worker node, so a job's artefacts are the same whichever executor
ran it. The results folder must therefore be shared storage (NFS or similar) mounted
at the same path on every node; the queue database stays with the driver (SQLite
locking is unreliable over NFS), and workers report back through Ray.

A worker lost mid-job makes Ray retry the task (`max_retries`); the retry resumes
from the last finished epoch through the same backup as a local restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from ablation import argtypes
from ablation.errors import AblationError
from ablation.executors import LineSink, outcome_from, pump, train_command
from ablation.protocol import Exit, JobState, Outcome


def _train_on_worker(run_dir: str, job_id: int, progress) -> tuple[int, list[str]]:
    """Body of the Ray task: run the training process, copy its output into the shared
    train.log, forward progress lines to the driver through a Ray queue."""
    if not (Path(run_dir) / "config.json").is_file():
        return Exit.NOT_VISIBLE, [f"results folder {run_dir} is not visible on worker "
                             f"{socket.gethostname()}: put --results on shared storage"]
    tail: list[str] = []
    proc = subprocess.Popen(train_command(run_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        pump(proc.stdout, Path(run_dir) / "train.log", job_id,
             lambda jid, line: progress.put((jid, line)), tail)
        return proc.wait(), tail
    except KeyboardInterrupt:  # ray.cancel: stop training cleanly, keep the backup
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


class RayExecutor:
    """The `Executor` protocol on a Ray cluster: one Ray task per job."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--ray-address", help="Ray cluster address, e.g. auto (default: "
                                                  "start a local Ray instance)")
        parser.add_argument("--ray-gpus", type=argtypes.number("nonneg"), default=None,
                            help="GPUs per Ray task (default: 1 if the cluster has GPUs, "
                                 "else 0)")
        parser.add_argument("--ray-cpus", type=argtypes.number("pos"), default=1.0,
                            help="CPUs per Ray task")
        parser.add_argument("--ray-retries", type=argtypes.integer(0), default=3,
                            help="Ray retries of a job whose worker died (default 3)")

    @classmethod
    def from_args(cls, args: Any, sink: LineSink) -> RayExecutor:
        return cls(args.ray_address, sink, args.ray_gpus, args.ray_cpus, args.ray_retries)

    def __init__(self, address: str | None = None, sink=None, gpus_per_job: float | None = None,
                 cpus_per_job: float = 1.0, max_retries: int = 3):
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise AblationError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        self.ray = ray
        self.started_here = not (address or ray.is_initialized())
        try:
            if not ray.is_initialized():
                kwargs = {"include_dashboard": False, "log_to_driver": False,
                          "configure_logging": False}
                if address:
                    kwargs["address"] = address
                else:  # a local instance, sized for a workstation
                    kwargs["object_store_memory"] = 200 * 1024 * 1024
                    # Ray runs workers at nice 15 by default, as if they were background
                    # work: the training jobs are the work, and niced they starve behind
                    # anything else on the machine (a cluster's raylets keep their own)
                    os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise AblationError(f"cannot connect to Ray at {address or 'a new local instance'}:"
                                f" {str(e).splitlines()[0]}") from None
        res = ray.cluster_resources()
        gpus = float(res.get("GPU", 0))
        self.gpus_per_job = (1.0 if gpus else 0.0) if gpus_per_job is None else gpus_per_job
        if self.gpus_per_job:
            self.size = max(1, int(gpus // self.gpus_per_job))
        else:
            self.size = max(1, int(float(res.get("CPU", 1)) // cpus_per_job))
        self.progress = Queue()
        self.sink = sink or (lambda job_id, line: None)
        self.task = ray.remote(_train_on_worker).options(
            num_gpus=self.gpus_per_job, num_cpus=cpus_per_job, max_retries=max_retries,
            retry_exceptions=False)
        self.refs: dict = {}  # ObjectRef -> (job id, run dir)
        where = ray.get_runtime_context().gcs_address
        self.describe = (f"Ray at {where} ({self.size} task(s) of "
                         f"{self.gpus_per_job:g} GPU / {cpus_per_job:g} CPU)")

    @property
    def capacity(self) -> int:
        return max(0, self.size - len(self.refs))

    def running(self) -> list[int]:
        return [job_id for job_id, _ in self.refs.values()]

    def submit(self, job_id: int, run_dir: Path) -> None:
        ref = self.task.remote(str(run_dir), job_id, self.progress)
        self.refs[ref] = (job_id, Path(run_dir))

    def _drain_progress(self) -> None:
        while not self.progress.empty():
            job_id, line = self.progress.get_nowait()
            self.sink(job_id, line)

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        ray = self.ray
        self._drain_progress()
        if not self.refs:
            return []
        ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        self._drain_progress()
        done = []
        for ref in ready:
            job_id, run_dir = self.refs.pop(ref)
            try:
                code, tail = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                done.append(Outcome(job_id, JobState.INTERRUPTED, "cancelled"))
                continue
            except ray.exceptions.RayError as e:  # worker lost after all retries, ...
                reason = str(e).strip().splitlines()[0][:300]
                done.append(Outcome(job_id, JobState.FAILED, f"Ray: {reason}"))
                continue
            if code == Exit.NOT_VISIBLE:
                done.append(Outcome(job_id, JobState.FAILED, tail[-1]))
            else:
                done.append(outcome_from(job_id, run_dir, code, tail))
        return done

    def cancel(self, grace: float = 60.0) -> list[Outcome]:
        for ref in list(self.refs):
            self.ray.cancel(ref)
        out = []
        for ref, (job_id, run_dir) in list(self.refs.items()):
            try:
                code, tail = self.ray.get(ref, timeout=grace)
                out.append(outcome_from(job_id, run_dir, code, tail))
            except Exception:
                out.append(Outcome(job_id, JobState.INTERRUPTED, "cancelled"))
            self.refs.pop(ref, None)
        return out

    def shutdown(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
