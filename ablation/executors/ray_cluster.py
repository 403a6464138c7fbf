"""Run the queue on a Ray cluster: one Ray task per job, placed by Ray on a free GPU
(or CPUs) anywhere in the cluster.

The task runs exactly what the local executor runs, `python -m ablation.job RUN_DIR`,
on the worker node, so a job's artefacts are the same whichever executor
ran it. The results folder must therefore be shared storage (NFS or similar) mounted
at the same path on every node; the queue database stays with the driver (SQLite
locking is unreliable over NFS), and workers report back through Ray.

A worker lost mid-job makes Ray retry the task (`max_retries`); the retry resumes
from the last finished epoch through the same backup as a local restart.

GPUs: Ray pins a GPU task through CUDA_VISIBLE_DEVICES; the job gets the same memory
settings as a locally packed one (`ablation.devices`), sized by the task's GPU
fraction. A task that asks for no GPU is shown none: recent Ray no longer hides the
node's GPUs from it. Slots are counted per node, as Ray places them, with the
fraction Ray itself uses (4 decimals), so 0.1 GPU gives 10 tasks per GPU, not 9.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ablation import argtypes, devices
from ablation.errors import AblationError
from ablation.executors.base import JobProcess, LineSink, outcome_from
from ablation.protocol import Exit, JobState, Outcome
from ablation.store import CONFIG, RunFolder

EPS = 1e-9


def task_env(gpus_per_job: float, threads: int, steps_per_execution: int | None = None,
             base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment inside a Ray task: no GPU at all for a CPU task; for a GPU
    task the GPU(s) Ray pinned, shared by 1 / fraction tasks."""
    base = os.environ if base is None else base
    if not gpus_per_job:
        return devices.job_env(base, "", threads=threads,
                               steps_per_execution=steps_per_execution)
    gpu = base.get("CUDA_VISIBLE_DEVICES")
    if not gpu:
        import ray

        gpu = ",".join(str(g) for g in ray.get_gpu_ids())
    sharing = max(1, math.floor(1 / gpus_per_job + EPS)) if gpus_per_job < 1 else 1
    return devices.job_env(base, gpu, sharing, threads=threads,
                           steps_per_execution=steps_per_execution)


def slots(nodes: list[dict], gpus_per_job: float, cpus_per_job: float) -> int:
    """Tasks the cluster runs at once: per alive node, as many as both its GPUs (for GPU
    tasks) and its CPUs hold; at least 1."""
    total = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        res = node.get("Resources", {})
        n = math.floor(float(res.get("CPU", 0)) / cpus_per_job + EPS)
        if gpus_per_job:
            n = min(n, math.floor(float(res.get("GPU", 0)) / gpus_per_job + EPS))
        total += n
    return max(1, total)


def default_cpus(nodes: list[dict], gpus_per_job: float) -> float:
    """CPUs per task when not given: a GPU task gets its share of its node's cores (the
    smallest GPU node's, so every node can take its full count), which feeds its input
    pipeline; a CPU task 1, as before."""
    shares = [math.floor(float(n["Resources"].get("CPU", 1))
                         / max(1, math.floor(float(n["Resources"]["GPU"]) / gpus_per_job + EPS)))
              for n in nodes if n.get("Alive", True) and gpus_per_job
              and float(n.get("Resources", {}).get("GPU", 0)) >= gpus_per_job]
    return float(max(1, min(shares))) if shares else 1.0


def _train_on_worker(run_dir: str, job_id: int, progress, gpus_per_job: float = 0.0,
                     threads: int = 1, steps_per_execution: int | None = None
                     ) -> tuple[int, list[str]]:
    """Body of the Ray task: run the job's process, copy its output into the shared
    train.log, forward progress lines to the driver through a Ray queue."""
    if not RunFolder(run_dir).file(CONFIG).is_file():
        return Exit.NOT_VISIBLE, [f"results folder {run_dir} is not visible on worker "
                             f"{socket.gethostname()}: put --results on shared storage"]
    job = JobProcess(job_id, run_dir, task_env(gpus_per_job, threads, steps_per_execution),
                     lambda jid, line: progress.put((jid, line)))
    try:
        return job.wait(), job.tail
    except KeyboardInterrupt:  # ray.cancel: stop training cleanly, keep the backup
        job.stop(60)
        raise


class RayExecutor:
    """The `Executor` protocol on a Ray cluster: one Ray task per job."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--ray-address", help="Ray cluster address, e.g. auto (default: "
                                                  "start a local Ray instance)")
        parser.add_argument("--ray-gpus", type=argtypes.number("nonneg"), default=None,
                            help="GPUs per Ray task: a fraction packs tasks on a GPU "
                                 "(default: 1 / --jobs-per-gpu if the cluster has GPUs, "
                                 "else 0)")
        parser.add_argument("--ray-cpus", type=argtypes.number("pos"), default=None,
                            help="CPUs per Ray task (default: a GPU task its share of its "
                                 "node's cores, a CPU task 1)")
        parser.add_argument("--ray-retries", type=argtypes.integer(0), default=3,
                            help="Ray retries of a job whose worker died (default 3)")

    @classmethod
    def from_args(cls, args: Any, sink: LineSink) -> RayExecutor:
        gpus = args.ray_gpus
        per_job = getattr(args, "devices_per_job", 1)
        if per_job > 1:  # a job across devices: that many whole GPUs per task
            devices.check_packing(per_job, args.jobs_per_gpu)
            if gpus is not None and gpus != per_job:
                raise AblationError(f"--ray-gpus {gpus:g} and --devices-per-job {per_job} "
                                    "disagree; give one of them")
            gpus = None if gpus is None else float(per_job)
            return cls(args.ray_address, sink, gpus, args.ray_cpus, args.ray_retries,
                       args.loader_threads, args.steps_per_execution, per_job)
        if args.jobs_per_gpu is not None:
            packed = round(1 / args.jobs_per_gpu, 4)  # Ray's own resolution
            if gpus is not None and abs(gpus - packed) > 1e-4:
                raise AblationError(f"--ray-gpus {gpus:g} and --jobs-per-gpu "
                                    f"{args.jobs_per_gpu} disagree; give one of them")
            gpus = packed
        return cls(args.ray_address, sink, gpus, args.ray_cpus, args.ray_retries,
                   args.loader_threads, args.steps_per_execution)

    def __init__(self, address: str | None = None, sink=None, gpus_per_job: float | None = None,
                 cpus_per_job: float | None = None, max_retries: int = 3,
                 loader_threads: int | None = None, steps_per_execution: int | None = None,
                 devices_per_job: int = 1):
        if gpus_per_job is not None and gpus_per_job > 1 and not float(gpus_per_job).is_integer():
            raise AblationError(f"--ray-gpus {gpus_per_job:g}: Ray takes a fraction up to 1 "
                                "or a whole number of GPUs per task")
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
                                f" {str(e).splitlines()[0]}") from e
        nodes = ray.nodes()
        gpus = float(ray.cluster_resources().get("GPU", 0))
        # a GPU per task on a cluster with GPUs (a job across devices: that many), else none
        self.gpus_per_job = (float(devices_per_job) if gpus else 0.0) \
            if gpus_per_job is None else gpus_per_job
        if self.gpus_per_job and not gpus:
            raise AblationError(f"--ray-gpus {self.gpus_per_job:g} given, but the Ray cluster "
                                "has no GPU")
        cpus = cpus_per_job or default_cpus(nodes, self.gpus_per_job)
        self.size = slots(nodes, self.gpus_per_job, cpus)
        self.threads = loader_threads or max(1, min(devices.MAX_LOADER_THREADS, int(cpus)))
        self.progress = Queue()
        self.sink = sink or (lambda job_id, line: None)
        self.task = ray.remote(_train_on_worker).options(
            num_gpus=self.gpus_per_job, num_cpus=cpus, max_retries=max_retries,
            retry_exceptions=False)
        self.task_args = (self.gpus_per_job, self.threads, steps_per_execution)
        self.refs: dict = {}  # ObjectRef -> (job id, run dir)
        where = ray.get_runtime_context().gcs_address
        self.place = f"Ray task of {self.gpus_per_job:g} GPU / {cpus:g} CPU"
        self.describe = (f"Ray at {where} ({self.size} task(s) of {self.gpus_per_job:g} GPU / "
                         f"{cpus:g} CPU; {self.threads} loader thread(s) per job)")

    @property
    def capacity(self) -> int:
        return max(0, self.size - len(self.refs))

    def next_place(self) -> str:
        return self.place

    def running(self) -> list[int]:
        return [job_id for job_id, _ in self.refs.values()]

    def submit(self, job_id: int, run_dir: Path) -> None:
        ref = self.task.remote(str(run_dir), job_id, self.progress, *self.task_args)
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
