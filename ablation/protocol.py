"""What the runner and a training process tell each other, in one place.

The runner (and its executors) and `python -m ablation.training RUN_DIR` share only
files and a pipe: the job's `config.json` (a `JobConfig`), one progress line per
epoch on stdout (an `EpochRecord` behind `PROGRESS_PREFIX`), the exit code (`Exit`),
and the state the runner then records in the queue (`JobState`). Ray Tune keeps its
trial states the same way: as named constants in one small module, never as strings
repeated across files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablation.recipe import Recipe


class JobState(StrEnum):
    """A job's state in the queue: queued -> running -> done | failed | interrupted."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


NEW = "new"  # `--dry-run`'s word for a job the queue has not seen yet


class Exit(IntEnum):
    """Exit codes of a training process (and of `ablation run` itself)."""

    DONE = 0
    FAILED = 1
    USAGE = 2  # bad input: one line on stderr, nothing run
    NOT_VISIBLE = 3  # a Ray worker cannot see the results folder
    NO_DEVICE = 4  # given a GPU, the job sees none: the machine's fault, not the job's
    INTERRUPTED = 130  # Ctrl-C (and a job's SIGTERM): the last finished epoch is kept
    TERMINATED = 143  # `ablation` itself stopped by SIGTERM (a scheduler's preemption)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: stop at a safe point, mark the jobs interrupted."""


class JobEnv(StrEnum):
    """What an executor tells a training process about where it runs, besides CUDA's own
    CUDA_VISIBLE_DEVICES and the memory variables (ablation.devices)."""

    GPU = "ABLATION_GPU"  # the GPU(s) it was given: it must see one, or it stops
    JOBS_PER_GPU = "ABLATION_JOBS_PER_GPU"  # jobs placed on that GPU at once
    LOADER_THREADS = "ABLATION_LOADER_THREADS"  # input-pipeline threads
    STEPS_PER_EXECUTION = "ABLATION_STEPS_PER_EXECUTION"  # steps per host-device sync


PROGRESS_PREFIX = "@@epoch "  # machine-readable progress lines on a job's stdout

# Test hook: a training process whose environment sets this to N (or N,M,...) stops
# after its N-th finished epoch (its backup and history already written), writes
# HELD_MARKER in its run folder (`held_line`), and waits there until a signal ends it.
# Tests that interrupt or kill a job wait for the marker, so the job always has work
# left when the signal lands, and read from it which processes are the job's own.
HOLD_ENV = "ABLATION_HOLD_AFTER_EPOCH"
HELD_MARKER = "HELD"


def held_line(epoch: int) -> str:
    """The marker's text: the epoch held after, this process's pid and its parent's
    (the runner, or the Ray worker that started it)."""
    return f"{epoch} {os.getpid()} {os.getppid()}\n"


def read_held(text: str) -> tuple[int, int, int]:
    """(epoch, pid, parent pid) from a marker's text."""
    epoch, pid, parent = (int(v) for v in text.split())
    return epoch, pid, parent


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class EpochRecord:
    """One finished epoch, as the training process reports it to the runner."""

    job: int
    of: int
    variant: str
    seed: int
    epoch: int  # epochs finished so far (1-based)
    epochs: int
    seconds: float
    eta_job: float
    first: bool  # the first epoch of this process (includes graph tracing)
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None  # the test set (Keras' name for fit's validation data)
    lr: float | None = None
    validation_accuracy: float | None = None  # the held-out split, when the recipe has one

    def line(self) -> str:
        d = {k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        return PROGRESS_PREFIX + json.dumps(d)

    @classmethod
    def parse(cls, payload: str) -> EpochRecord | None:
        """The record behind a progress line (prefix already removed), or None."""
        try:
            d = json.loads(payload)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        except (ValueError, TypeError):
            return None


@dataclass
class Outcome:
    """How a job ended, as an executor reports it to the runner."""

    job_id: int
    status: JobState
    error: str | None = None
    # the machine, not the job, is at fault (Exit.NO_DEVICE): every other job would fail
    # the same way, so the runner claims no more; the job stays interrupted for a rerun
    machine: bool = False


@dataclass
class JobConfig:
    """What a training process is told: the run folder's config.json.

    `definition` is the variant's full, resolved definition (a `Variant` as a dict) and
    `units` the user units it needs, each with the hash of its source, so a job trains
    exactly what was queued even after the study file changed.
    """

    variant: str
    seed: int
    recipe: Recipe
    data_dir: str | None = None
    keep_model: bool = True
    index: int = 1
    total: int = 1
    definition: dict | None = None
    definition_hash: str | None = None
    units: list[dict] = field(default_factory=list)
    study: str | None = None
    # a dataset given by path, as the runner prepared it (ablation.data.prepare): its
    # path, content hash, shape, classes, statistics and decoded cache
    data: dict | None = None
    # the phase of a study with [tune]: "tune" (a candidate setting, judged on the
    # validation split) or "compare" (a variant at its chosen setting); None otherwise
    phase: str | None = None
    tuning: dict | None = None  # the tuning group: fields, the base's values, group id

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        d["recipe_id"] = self.recipe.id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> JobConfig:
        from ablation.recipe import Recipe

        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["recipe"] = Recipe.from_dict(d["recipe"])
        kw["seed"] = int(d["seed"])
        return cls(**kw)
