"""Run the queue on a Slurm cluster: each job (or K jobs packed on one GPU) a Slurm job,
submitted through submitit from the driver on the login node.

The Slurm job runs exactly what the local executor runs, `python -m ablation.job
RUN_DIR`, on the compute node, so a job's artefacts are the same whichever executor
ran it. The driver alone writes the queue database (SQLite locking over NFS is
unreliable, and two nodes must never race on it); a compute node writes only its own
run folders: the job's train.log, its record, its snapshots, and its progress lines
(`progress.jsonl`, which the driver follows to print the same lines as a local run).
`--results` must be on storage every node mounts at the same path (docs/slurm.md).

Preemption, time limits, a node lost: the job process stops at a safe point on SIGTERM,
SIGUSR1 or SIGUSR2 (the last finished epoch is in its snapshot). Preempted or failed
nodes are requeued by Slurm (`--requeue`); a job near its time limit gets submitit's
signal (USR2, `slurm_signal_delay_s` before the limit), stops its training processes and
requeues itself (submitit's checkpoint). Either way the requeued Slurm job runs the same
command, which resumes from the snapshot: no epoch is lost or trained twice. While Slurm
is stopping a job it writes no result, so the driver sees the job running again, not
finished.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation import argtypes, devices
from ablation.errors import AblationError
from ablation.executors.base import LineSink, outcome_from
from ablation.protocol import PROGRESS_FILE, PROGRESS_PREFIX, Exit, JobState, Outcome

SQUEUE_SECONDS = 10.0  # between squeue calls while nothing was submitted or cancelled
# states squeue shows of a job that will not run again (a preempted or failed node's job
# is requeued: squeue shows it pending, then running)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}
# the [slurm] table's keys and the flags: (key, flag type, help)
OPTIONS = {
    "partition": (str, "the partition (default: the cluster's)"),
    "gpus": (argtypes.integer(0), "GPUs per Slurm job (default 0; with --jobs-per-gpu K, "
                                  "K jobs share each)"),
    "cpus": (argtypes.integer(1), "CPUs per Slurm job (default: 2 per training job in it)"),
    "mem": (argtypes.number("pos"), "memory per Slurm job, in GB (default: the partition's)"),
    "time": (argtypes.integer(1), "time limit per Slurm job, in minutes (default 1440): a "
                                  "job near it requeues itself and resumes"),
    "account": (str, "the account to charge"),
    "qos": (str, "the quality of service"),
    "jobs": (argtypes.integer(1), "Slurm jobs submitted at once (default 64)"),
}


@dataclass
class _Batch:
    jobs: list[tuple[int, Path]]
    slurm: Any = None  # the submitit job
    cancelled: bool = False
    offsets: dict[int, int] = field(default_factory=dict)


class SlurmExecutor:
    """The `Executor` protocol on Slurm: a Slurm job per batch of K training jobs (K =
    --jobs-per-gpu on a GPU partition, else 1)."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        for key, (kind, help_) in OPTIONS.items():
            parser.add_argument(f"--slurm-{key}", type=kind, default=None, help=help_)
        parser.add_argument("--slurm-option", action="append", default=None,
                            metavar="KEY=VALUE", help="any other sbatch option, e.g. "
                            "constraint=a100 (repeat it for more)")

    @classmethod
    def from_args(cls, args: Any, sink: LineSink) -> SlurmExecutor:
        table = dict(getattr(args, "slurm_table", None) or {})  # the study's [slurm]
        options = {**table.pop("options", {})}
        for key in OPTIONS:
            value = getattr(args, f"slurm_{key}", None)
            if value is not None:
                table[key] = value
        for item in args.slurm_option or []:
            if "=" not in item:
                raise AblationError(f"--slurm-option {item!r}: give KEY=VALUE")
            k, v = item.split("=", 1)
            options[k.strip().lstrip("-")] = v
        per_job = getattr(args, "devices_per_job", 1)
        if per_job > 1:  # a job across devices: a Slurm job holds it and its N GPUs
            devices.check_packing(per_job, args.jobs_per_gpu)
            if table.get("gpus") not in (None, per_job):
                raise AblationError(f"--slurm-gpus {table['gpus']} and --devices-per-job "
                                    f"{per_job} disagree (a Slurm job holds one training job "
                                    "and its GPUs); give one of them")
            table["gpus"] = per_job
        return cls(Path(args.results), sink, table, options, args.jobs_per_gpu,
                   args.loader_threads, args.steps_per_execution)

    def __init__(self, results: Path, sink: LineSink | None = None,
                 table: dict | None = None, options: dict | None = None,
                 jobs_per_gpu: int | None = None, loader_threads: int | None = None,
                 steps_per_execution: int | None = None):
        missing = [c for c in ("sbatch", "srun", "squeue", "scancel") if not shutil.which(c)]
        if missing:  # submitit's scripts call srun; the driver polls and cancels
            raise AblationError(f"--executor slurm needs Slurm's {', '.join(missing)} here "
                                "(sbatch, srun, squeue and scancel): run it on the "
                                "cluster's login node")
        from ablation.executors.slurm_task import SlurmTask, import_submitit

        submitit = import_submitit()
        self.task = SlurmTask
        table = dict(table or {})
        self.gpus = int(table.get("gpus", 0))
        self.pack = (jobs_per_gpu or 1) if self.gpus else 1
        self.threads = loader_threads or 1
        self.steps_per_execution = steps_per_execution
        self.size = int(table.get("jobs", 64)) * self.pack
        self.sink = sink or (lambda job_id, line: None)
        folder = Path(results).resolve() / "slurm" / "%j"
        self.executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "name": "ablation", "timeout_min": int(table.get("time", 1440)),
            "cpus_per_task": int(table.get("cpus", 2 * self.pack)),
            "slurm_signal_delay_s": 120,
            "slurm_additional_parameters": {"requeue": True, **(options or {})}}
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        for key, name in (("partition", "slurm_partition"), ("account", "slurm_account"),
                          ("qos", "slurm_qos")):
            if table.get(key):
                params[name] = table[key]
        if table.get("mem"):
            params["mem_gb"] = table["mem"]
        try:
            self.executor.update_parameters(**params)
        except (ValueError, TypeError) as e:
            raise AblationError(f"--executor slurm: {str(e).splitlines()[0]}") from e
        self.params = params
        self.batches: list[_Batch] = []
        self.waiting: list[tuple[int, Path]] = []  # submitted, not yet in a Slurm job
        self.refused: list[Outcome] = []  # sbatch said no: reported at the next poll
        self.states: dict[str, str] = {}  # squeue's last answer, and when it was asked
        self.asked = -math.inf
        where = table.get("partition") or "the default partition"
        self.describe = (f"Slurm ({where}; up to {self.size // self.pack} Slurm job(s) of "
                         f"{self.gpus} GPU / {params['cpus_per_task']} CPU"
                         + (f", {self.pack} training jobs per GPU" if self.pack > 1 else "")
                         + f"; logs in {folder.parent})")

    # --- the protocol -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        if self.refused:  # sbatch refused: nothing more is claimed until that is reported
            return 0
        return max(0, self.size - len(self.running()))

    def next_place(self) -> str:
        return "slurm"

    def running(self) -> list[int]:
        # a job sbatch refused is owed its outcome (the next poll's), not running on Slurm
        return ([i for i, _ in self.waiting] + [i for b in self.batches for i, _ in b.jobs]
                + [o.job_id for o in self.refused])

    def submit(self, job_id: int, run_dir: Path) -> None:
        self.waiting.append((job_id, Path(run_dir)))
        if len(self.waiting) >= self.pack:
            self._flush()

    def _flush(self) -> None:
        if self.refused:  # sbatch refused this driver's last job: it is not asked again
            self._refuse(self.refused[0].error)
        while self.waiting:
            jobs, self.waiting = self.waiting[:self.pack], self.waiting[self.pack:]
            for _, run_dir in jobs:  # a new attempt: old progress lines are not news
                (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
            task = self.task([(i, str(d)) for i, d in jobs], self.gpus, self.pack,
                             self.threads, self.steps_per_execution)
            try:
                slurm = self.executor.submit(task)
            except Exception as e:  # sbatch refused: a partition, an account, a limit
                # these jobs and those still waiting did not start: the driver stops
                # claiming, collects the Slurm jobs already running, and says why
                self.waiting = jobs + self.waiting
                self._refuse(f"sbatch refused the job: {str(e).strip().splitlines()[-1]}")
                return
            self.batches.append(_Batch(jobs, slurm))
            self.asked = -math.inf  # the next poll asks squeue of the new job

    def _refuse(self, why: str | None) -> None:
        """Every waiting job as not started, for `why` (the next poll reports them)."""
        self.refused += [Outcome(i, JobState.INTERRUPTED, why, machine=True)
                         for i, _ in self.waiting]
        self.waiting = []

    def _follow(self, batch: _Batch) -> None:
        """New progress lines of the batch's jobs, to the driver's sink."""
        for job_id, run_dir in batch.jobs:
            path = run_dir / PROGRESS_FILE
            try:
                with open(path, encoding="utf-8") as f:
                    f.seek(batch.offsets.get(job_id, 0))
                    text = f.read()
            except OSError:
                continue
            done = text[:text.rfind("\n") + 1]  # whole lines only
            batch.offsets[job_id] = batch.offsets.get(job_id, 0) + len(done.encode())
            for line in done.splitlines():
                if line.strip():
                    self.sink(job_id, line[len(PROGRESS_PREFIX):]
                              if line.startswith(PROGRESS_PREFIX) else line)

    def poll(self, timeout: float = 1.0) -> list[Outcome]:
        self._flush()
        if self.refused:
            done, self.refused = self.refused, []
            return done
        deadline = time.monotonic() + timeout
        while True:
            done: list[Outcome] = []
            states = self._squeue()
            for batch in list(self.batches):
                self._follow(batch)
                ended = _ended(batch.slurm, states)
                if ended is None:
                    continue
                self.batches.remove(batch)
                done += self._outcomes(batch, ended)
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _squeue(self) -> dict[str, str]:
        """Slurm's states of the batches, asked of squeue at most every SQUEUE_SECONDS
        (the controller is the cluster's, shared by everyone's drivers) but at once after a
        submission or a cancel; a job that ended with a result is seen by its file."""
        if not self.batches:
            return {}
        if time.monotonic() - self.asked >= SQUEUE_SECONDS:
            self.states = _states([b.slurm.job_id for b in self.batches])
            self.asked = time.monotonic()
        return self.states

    def _outcomes(self, batch: _Batch, state: str) -> list[Outcome]:
        """A finished Slurm job's training jobs, as queue states."""
        result = None
        if batch.slurm.paths.result_pickle.exists():
            with contextlib.suppress(Exception):
                result = batch.slurm.result()
        if result is not None:
            by = {job_id: (code, tail) for job_id, code, tail in result}
            return [outcome_from(job_id, run_dir, *by.get(job_id, (Exit.FAILED, [])))
                    for job_id, run_dir in batch.jobs]
        why = (f"Slurm job {batch.slurm.job_id} ended {state} without a result"
               + ("" if batch.cancelled else f" (log: {batch.slurm.paths.stderr})"))
        status = JobState.FAILED if state in ("OUT_OF_MEMORY", "FAILED") and \
            not batch.cancelled else JobState.INTERRUPTED
        out = []
        for job_id, run_dir in batch.jobs:
            o = outcome_from(job_id, run_dir, Exit.INTERRUPTED if status ==
                             JobState.INTERRUPTED else Exit.FAILED, [why])
            out.append(Outcome(job_id, o.status if o.status == JobState.DONE else status,
                               why if status == JobState.FAILED or not batch.cancelled
                               else "cancelled; resumes from its last epoch"))
        return out

    def cancel(self, grace: float = 120.0) -> list[Outcome]:
        """scancel every Slurm job (their training processes stop at a safe point on
        SIGTERM), then wait for them to end."""
        self.waiting, self.refused = [], []
        for b in self.batches:
            b.cancelled = True
            with contextlib.suppress(Exception):
                b.slurm.cancel(check=False)
        out: list[Outcome] = []
        deadline = time.monotonic() + grace
        while self.batches and time.monotonic() < deadline:
            self.asked = -math.inf  # stopping: each pass asks squeue again
            out += self.poll(timeout=2.0)
        for b in self.batches:
            out += [Outcome(job_id, JobState.INTERRUPTED, "cancelled")
                    for job_id, _ in b.jobs]
        self.batches = []
        return out

    def shutdown(self) -> None:
        pass


def _states(ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job still known to squeue (PENDING, RUNNING, ...)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {i: "UNKNOWN" for i in ids}
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _ended(slurm: Any, states: dict[str, str]) -> str | None:
    """The Slurm job's end state, or None while it is queued, running or requeued."""
    if slurm.paths.result_pickle.exists():  # its task returned: nothing runs any more
        return "COMPLETED"
    state = states.get(str(slurm.job_id))
    if state is not None and state not in ENDED:
        return None  # PENDING, RUNNING, REQUEUED, COMPLETING, squeue unreachable, ...
    if state is None:  # gone from squeue: ask the accounting, if the cluster keeps one
        try:
            out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j",
                                  str(slurm.job_id)], capture_output=True, text=True,
                                 timeout=60)
            found = out.stdout.split()
            state = found[0].split()[0] if out.returncode == 0 and found else "ENDED"
        except (OSError, subprocess.SubprocessError):
            state = "ENDED"
        if state in ("PENDING", "RUNNING", "REQUEUED"):
            return None
    return state
