"""Executors: where a job's process runs.

`EXECUTORS` maps `--executor NAME` to a class. Each class adds its own command-line
options and builds itself from them, so a new executor (Slurm, Kubernetes) is one
module and one map entry here, never a CLI edit. Imports point one way: this map ->
each executor -> `base` (the protocol and what they share).

- `local`: subprocesses on this machine, K per GPU (`--jobs-per-gpu`), or on the CPU;
- `ray`: Ray tasks across a cluster (`ray_cluster`, loaded only when chosen);
- `slurm`: Slurm jobs through submitit, from the login node (`slurm`).
"""

from __future__ import annotations

from collections.abc import Callable

from ablation.executors.base import Executor, LineSink


def _local() -> type:
    from ablation.executors.local import LocalExecutor

    return LocalExecutor


def _ray() -> type:
    from ablation.executors.ray_cluster import RayExecutor

    return RayExecutor


def _slurm() -> type:
    from ablation.executors.slurm import SlurmExecutor

    return SlurmExecutor


# --executor NAME -> the class (a callable, so heavy modules load only when chosen)
EXECUTORS: dict[str, Callable[[], type]] = {"local": _local, "ray": _ray, "slurm": _slurm}

__all__ = ["EXECUTORS", "Executor", "LineSink"]
