"""Where jobs run on a machine: which GPUs it has, how jobs are packed onto them, and
the environment each job's process starts with. No Keras here: the driver only
decides; `ablation.backend` is the job's side (what it sees, whether that matches).

A ResNet-32 job at batch 128 uses a small part of a modern GPU, so a lab packs
several jobs on one (`--jobs-per-gpu K`). That works only if no job takes all of the
GPU's memory: TensorFlow is told to grow its memory as needed, and JAX, which
preallocates 75 % by default, gets a fraction of 0.9 / K. Only one of JAX's memory
variables is ever set (newer jaxlib refuses two), and a value the user set is kept.

GPU ids come from CUDA_VISIBLE_DEVICES when it is set (indices, GPU-/MIG- UUIDs, used
as given), else from `nvidia-smi -L` (a GPU split into MIG slices is its slices, by
UUID), else from the driver's /proc listing. `nvidia-smi` numbers GPUs in PCI bus
order and CUDA by default fastest first, so a job pinned by such an index is also
given CUDA_DEVICE_ORDER=PCI_BUS_ID: index 1 is then the GPU `nvidia-smi` calls 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ablation.errors import AblationError
from ablation.protocol import JobEnv

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")  # one folder per GPU, named by PCI bus id

# What a job is started with, recorded under these names in its summary.json.
TF_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
JAX_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
JAX_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
JAX_ALLOCATOR = "XLA_PYTHON_CLIENT_ALLOCATOR"
MEMORY_VARS = (TF_GROWTH, JAX_PREALLOCATE, JAX_FRACTION)
JAX_MEMORY_VARS = (JAX_PREALLOCATE, JAX_FRACTION, JAX_ALLOCATOR)
# TensorFlow's oneDNN CPU kernels: TensorFlow's default policy decides by the CPU (off on
# an AMD EPYC with AVX2 only, where `1` trained airbench 2.6x faster: docs/performance.md)
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
PLACEMENT_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", *MEMORY_VARS, ONEDNN)

MAX_LOADER_THREADS = 8  # numpy batch preparation stops scaling about here


@dataclass(frozen=True)
class GpuListing:
    """The GPU ids jobs may be pinned to, and where they were found."""

    ids: tuple[str, ...]
    source: str  # "CUDA_VISIBLE_DEVICES", "nvidia-smi", "/proc", or "none"

    @property
    def pci_order(self) -> bool:
        """True when the ids are nvidia-smi's (or the driver's) numbering."""
        return self.source in ("nvidia-smi", "/proc")


_GPU_LINE = re.compile(r"^GPU (\d+):")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")


def parse_nvidia_smi(text: str) -> list[str]:
    """Ids from `nvidia-smi -L`: a GPU's index, or its MIG slices' UUIDs when it has any
    (CUDA takes a MIG slice only by UUID)."""
    gpus: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if m := _GPU_LINE.match(line):
            gpus.append((m.group(1), []))
        elif (m := _MIG_LINE.match(line)) and gpus:
            gpus[-1][1].append(m.group(1))
    return [mig for _, migs in gpus for mig in migs] + [g for g, migs in gpus if not migs]


def list_gpus(env: Mapping[str, str] | None = None) -> GpuListing:
    """The GPUs this machine offers to jobs."""
    env = os.environ if env is None else env
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = []
        for g in (part.strip() for part in given.split(",")):
            if not g or g == "-1":
                break  # CUDA stops at the first invalid entry
            ids.append(g)
        return GpuListing(tuple(ids), "CUDA_VISIBLE_DEVICES")
    if shutil.which("nvidia-smi", path=env.get("PATH")) is not None:
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, env=dict(env))
            ids = parse_nvidia_smi(out.stdout) if out.returncode == 0 else []
        except (OSError, subprocess.SubprocessError):
            ids = []
        if ids:
            return GpuListing(tuple(ids), "nvidia-smi")
    try:  # a container with the driver but without nvidia-smi
        n = sum(1 for p in NVIDIA_PROC.iterdir() if p.is_dir())
    except OSError:
        n = 0
    if n:
        return GpuListing(tuple(str(i) for i in range(n)), "/proc")
    return GpuListing((), "none")


@dataclass(frozen=True)
class Slot:
    """One job at a time: pinned to `gpu` (None: no GPU), which `sharing` slots share."""

    gpu: str | None
    sharing: int = 1

    def describe(self) -> str:
        if self.gpu is None:
            return "CPU"
        kind = "GPUs" if "," in self.gpu else "GPU"
        return f"{kind} {self.gpu}" + (f" ({self.sharing} jobs/GPU)" if self.sharing > 1
                                       else "")


def check_packing(per_job: int, jobs_per_gpu: int | None) -> None:
    """A job across several GPUs has them to itself: no packing beside it."""
    if per_job > 1 and jobs_per_gpu is not None and jobs_per_gpu > 1:
        raise AblationError(f"--devices-per-job {per_job} and --jobs-per-gpu {jobs_per_gpu}: "
                            "a job across several GPUs has them to itself; drop one of the "
                            "two flags")


def plan_slots(gpus: GpuListing, workers: int | None, jobs_per_gpu: int | None,
               per_job: int = 1) -> list[Slot]:
    """The local executor's slots: `jobs_per_gpu` per GPU (default 1), at most `workers`
    in all; without a GPU, `workers` (default 1) CPU slots. `per_job` > 1: each slot
    holds that many GPUs (a job across devices), never shared."""
    check_packing(per_job, jobs_per_gpu)
    if per_job > 1 and gpus.ids:
        if len(gpus.ids) < per_job:
            raise AblationError(f"--devices-per-job {per_job}, but this machine offers "
                                f"{len(gpus.ids)} GPU(s) ({', '.join(gpus.ids)}, from "
                                f"{gpus.source})")
        groups = [",".join(gpus.ids[i:i + per_job])
                  for i in range(0, len(gpus.ids) - per_job + 1, per_job)]
        if workers is not None and workers > len(groups):
            raise AblationError(f"--workers {workers} is more than the {len(groups)} job(s) "
                                f"of {per_job} GPUs this machine holds at once")
        return [Slot(g) for g in groups[:workers or len(groups)]]
    if not gpus.ids:
        if jobs_per_gpu is not None:
            raise AblationError(f"--jobs-per-gpu {jobs_per_gpu} given, but no GPU was found "
                                "(CUDA_VISIBLE_DEVICES unset, no nvidia-smi, no NVIDIA "
                                "driver); drop the flag to train on the CPU")
        return [Slot(None) for _ in range(workers or 1)]
    per = jobs_per_gpu or 1
    n = workers or len(gpus.ids) * per
    if jobs_per_gpu is not None and n > len(gpus.ids) * per:
        raise AblationError(f"--workers {n} is more than {len(gpus.ids)} GPU(s) × "
                            f"--jobs-per-gpu {per}; raise --jobs-per-gpu instead")
    ids = [gpus.ids[i % len(gpus.ids)] for i in range(n)]
    count = Counter(ids)
    return [Slot(g, count[g]) for g in ids]


def loader_threads(jobs_on_host: int, cpus: int | None = None) -> int:
    """Input-pipeline threads per job: the host's cores shared by the jobs it runs at
    once, 1 to MAX_LOADER_THREADS."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(MAX_LOADER_THREADS, cpus // max(1, jobs_on_host)))


def memory_settings(sharing: int, env: Mapping[str, str]) -> dict[str, str]:
    """The memory variables a GPU job sharing its GPU with `sharing - 1` others needs,
    leaving any the user set: TensorFlow grows on demand; JAX gets 0.9 / sharing of the
    memory when shared (one variable only), else its own default."""
    out = {}
    if TF_GROWTH not in env:
        out[TF_GROWTH] = "true"
    if sharing > 1 and not any(v in env for v in JAX_MEMORY_VARS):
        out[JAX_FRACTION] = f"{0.9 / sharing:.3f}"
    return out


def job_env(base: Mapping[str, str], gpu: str | None, sharing: int = 1,
            pci_order: bool = False, threads: int | None = None,
            steps_per_execution: int | None = None) -> dict[str, str]:
    """The environment of a job's training process.

    `gpu` None on a machine without GPUs leaves the environment as it is; the empty
    string hides every GPU (a CPU task on a GPU node), for TensorFlow and for JAX."""
    env = dict(base, PYTHONUNBUFFERED="1")
    for name in JobEnv:  # never inherit the runner's own placement
        env.pop(name, None)
    if gpu == "":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    elif gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
        if pci_order:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env[JobEnv.GPU] = gpu
        env[JobEnv.JOBS_PER_GPU] = str(sharing)
        env.update(memory_settings(sharing, base))
    if threads is not None:
        env[JobEnv.LOADER_THREADS] = str(threads)
    if steps_per_execution is not None:
        env[JobEnv.STEPS_PER_EXECUTION] = str(steps_per_execution)
    return env


def shared_process_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a process that may run beside training jobs on their GPUs (`ablation
    analyze`, the `bench` children) adds to its environment: one GPU (the first, unless
    CUDA_VISIBLE_DEVICES says), and memory taken as needed, never most of every GPU."""
    env = os.environ if env is None else env
    out = {}
    if TF_GROWTH not in env:
        out[TF_GROWTH] = "true"
    if not any(v in env for v in JAX_MEMORY_VARS):
        out[JAX_PREALLOCATE] = "false"
    gpus = list_gpus(env)
    if gpus.ids and "CUDA_VISIBLE_DEVICES" not in env:
        out["CUDA_VISIBLE_DEVICES"] = gpus.ids[0]
        if gpus.pci_order:
            out["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return out


def recorded(env: Mapping[str, str] | None = None) -> dict:
    """What a job records of how it was placed: the variables above as it was started
    with them (None: unset), and how many jobs shared its GPU."""
    env = os.environ if env is None else env
    per = env.get(JobEnv.JOBS_PER_GPU)
    return {**{name: env.get(name) for name in PLACEMENT_VARS},
            "jobs_per_gpu": int(per) if per and per.isdigit() else None}
