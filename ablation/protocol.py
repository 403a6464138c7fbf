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
import sys
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from ablation.errors import AblationError, validation_line
from ablation.recipe import Recipe


class JobState(StrEnum):
    """A job's state in the queue: queued -> running -> done | failed | interrupted, or
    paused: stopped at a rung of successive halving, its snapshot kept, queued
    again only if the search promotes it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"


NEW = "new"  # `--dry-run`'s word for a job the queue has not seen yet
DIVERGED = "diverged: "  # how a failed job's reason begins when its loss became NaN


def diverged(error: str | None) -> bool:
    """Whether a failed job's reason says it diverged (a NaN training or evaluation
    loss), rather than that something broke."""
    return bool(error) and error.startswith(DIVERGED)


class JobKey(NamedTuple):
    """A job's identity, wherever it is matched: the queue's unique key, a planned job's,
    a dry run's lookup. The definition tag tells two definitions of one user variant apart
    (ablation.study.folder_tag; "" for built-in variants), so a job of an edited unit is
    never taken for the old one's."""

    variant: str
    tag: str
    seed: int
    recipe_id: str


def trains_to(until: int | None, epochs: int) -> int:
    """The epoch a job trains to: its rung of successive halving (`until`, the one name
    of the rung target), else the recipe's last."""
    return min(until or epochs, epochs)


def module_command(module: str, *args: str) -> list[str]:
    """The command that starts one of the package's processes (a job, a bench
    measurement, the baseline): this interpreter, `-P` so that the working folder is not
    put first on sys.path (a folder named like the package beside it, such as a clone
    named `ablation` run from its parent, would shadow the installed package)."""
    return [sys.executable, "-P", "-m", module, *args]


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
PROGRESS_FILE = "progress.jsonl"  # a Slurm job's progress lines, for its driver to follow
SLURM_FILE = "slurm.json"  # which Slurm job ran (runs) a job: for people and tests
SUMMARY = "summary.json"  # the run record, in every run folder

# Test hook: a training process whose environment sets this to N (or N,M,...) stops
# after its N-th finished epoch (its backup and history already written), or to N+S
# after its snapshot at step S of epoch N + 1 (`run --snapshot-every`), writes
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


def number(v: Any) -> float | None:
    """A finite float, or None (a NaN loss, a missing value, text): what JSON can hold."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class EpochRecord:
    """One finished epoch, as the training process reports it to the runner."""

    __pydantic_config__ = ConfigDict(extra="forbid")

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
        d = {k: (number(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        return PROGRESS_PREFIX + json.dumps(d)

    @classmethod
    def parse(cls, payload: str) -> EpochRecord | None:
        """The record behind a progress line (prefix already removed), or None."""
        try:
            return _EPOCH_RECORD.validate_json(payload)
        except pydantic.ValidationError:
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

    __pydantic_config__ = ConfigDict(extra="forbid")

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
    # stop after this epoch, the backup kept (a rung of successive halving: `trains_to`);
    # the schedule stays the full run's
    until: int | None = None
    # snapshots inside an epoch, besides the one at each epoch's end (`run
    # --snapshot-every`, `--snapshot-minutes`): where a job may go on from, never its numbers
    snapshot_steps: int | None = None
    snapshot_minutes: float | None = None
    # data parallel over this many devices (`run --devices-per-job`; ablation.parallel):
    # the recipe's batch is the global batch
    devices: int = 1
    # time the trained network's inference (ablation.inference; `run --no-inference-timing`)
    inference: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        d["recipe_id"] = self.recipe.id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> JobConfig:
        """A config.json's content (its `recipe_id` is derived, so it is not read back);
        a damaged one raises AblationError."""
        d = {k: v for k, v in d.items() if k != "recipe_id"}
        if "stop_after" in d:  # 0.6's name of `until`
            d["until"] = d.pop("stop_after")
        try:
            return _JOB_CONFIG.validate_python(d)
        except pydantic.ValidationError as e:
            raise AblationError(f"not a job's config: {validation_line(e)}") from e


_EPOCH_RECORD = pydantic.TypeAdapter(EpochRecord)
_JOB_CONFIG = pydantic.TypeAdapter(JobConfig)


# --- the run record ---------------------------------------------------------------------------


def _recipe(value: Any) -> Any:
    """A recorded recipe dict as a Recipe; its AblationError as the ValueError pydantic
    reports (so the record's reader names the damaged file)."""
    try:
        return Recipe.from_dict(value) if isinstance(value, dict) else value
    except AblationError as e:
        raise ValueError(str(e)) from e


RecordedRecipe = Annotated[Recipe, BeforeValidator(_recipe),
                           PlainSerializer(lambda r: r.to_dict(), return_type=dict)]


class Tuning(BaseModel):
    """A tuned study's run: its tuning group (ablation.policies.tuned)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str
    fields: list[str]
    base: dict[str, Any]
    test: bool = False  # the tuning runs evaluate the test set too ([tune] test = true)


class RunRecord(BaseModel):
    """A run, as its training process records it in `summary.json` (rewritten atomically
    after every epoch) and as everything else reads it: the report, the export, the
    analyser, the policies that choose settings and seeds, the runner.

    One typed record instead of a dict, so a renamed key is an error where it is written
    or read, never a silent None. Every key 0.3 to 0.5 wrote is here, so their run
    folders load as they are (tests/test_records.py loads one of each); keys a newer
    version adds are ignored on reading. Optional keys are None where a run has not
    reached them (a job that failed before its first epoch has only its identity, its
    status and the error).
    """

    model_config = ConfigDict(extra="forbid")

    # what it is: the job's identity
    variant: str
    seed: int
    recipe_id: str
    recipe: RecordedRecipe
    status: JobState
    error: str | None = None
    study: str | None = None
    phase: str | None = None  # a tuned study's: "tune" or "compare"
    tuning: Tuning | None = None
    train_recipe: dict[str, Any] | None = None  # the recipe with the variant's own fields
    definition: dict[str, Any] | None = None
    definition_hash: str | None = None
    init_seed: int | None = None
    # the network
    params_total: int | None = None
    params_trainable: int | None = None
    params_non_trainable: int | None = None
    depth: int | None = None
    macs: int | None = None
    pretrained: str | None = None
    pretrained_convs: int | None = None
    # the data
    dataset: str | None = None
    train_images: int | None = None
    test_images: int | None = None
    validation_images: int | None = None
    input_shape: list[int] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    data_mean: list[float] | None = None
    data_std: list[float] | None = None
    data_hash: str | None = None
    data_checksum: str | None = None
    data_source: str | None = None
    # how far, and how well: the history's numbers
    epochs_planned: int | None = None
    epochs_done: int = 0
    final_accuracy: float | None = None
    final_loss: float | None = None
    final_test_accuracy: float | None = None
    best_test_accuracy: float | None = None
    final_test_loss: float | None = None
    best_epoch: int | None = None
    final_validation_accuracy: float | None = None
    best_validation_accuracy: float | None = None
    final_validation_loss: float | None = None
    final_tta_accuracy: float | None = None  # the test set under the recipe's tta
    # the test set under Keras' names for fit's validation data, as 0.5 and earlier wrote
    # them (read as the test_ keys above; still written, for one version: docs/studies.md)
    final_val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    final_val_loss: float | None = None
    # time, speed, size: train_seconds sums the epochs (their steps and evaluations);
    # wall_seconds is every attempt's process time until its last record, start-up (to the
    # first epoch) included, which startup_seconds gives apart
    train_seconds: float | None = None
    wall_seconds: float | None = None
    startup_seconds: float | None = None
    images_per_second: float | None = None
    peak_rss_mb: float | None = None
    h5_bytes: int | None = None
    # inference speed (ablation.inference): once per variant and device kind, so a run
    # whose sibling measured it has none; images/s at infer_batch (median of the repeats,
    # their lowest and highest) and one image's latency, median and 90th percentile
    infer_batch: int | None = None
    infer_images_per_second: float | None = None
    infer_images_per_second_low: float | None = None
    infer_images_per_second_high: float | None = None
    infer_latency_ms: float | None = None
    infer_latency_p90_ms: float | None = None
    model_file: str | None = None
    updated: str | None = None
    # where and with what it ran
    host: str | None = None
    python: str | None = None
    platform: str | None = None
    keras: str | None = None
    backend: str | None = None
    backend_version: str | None = None
    device: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    code_diff: str | None = None
    units_file: str | None = None
    matmul_precision: str | None = None
    jit_compile: bool | None = None
    steps_per_execution: int | None = None
    loader_threads: int | None = None
    augment_ran: str | None = None  # "host" or "device" (the recipe's augment_on, or host)
    devices_per_job: int | None = None  # data parallel (ablation.parallel)
    data_parallel: str | None = None
    bn_statistics: str | None = None  # "synchronised": over the global batch
    jobs_per_gpu: int | None = None
    CUDA_VISIBLE_DEVICES: str | None = None
    CUDA_DEVICE_ORDER: str | None = None
    TF_FORCE_GPU_ALLOW_GROWTH: str | None = None
    XLA_PYTHON_CLIENT_PREALLOCATE: str | None = None
    XLA_PYTHON_CLIENT_MEM_FRACTION: str | None = None
    TF_ENABLE_ONEDNN_OPTS: str | None = None
    note: str | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _earlier_names(cls, d: Any) -> Any:
        """0.5 and earlier named the test set's numbers as Keras does (val_*)."""
        if isinstance(d, dict):
            for new, old in _TEST_ALIASES.items():
                if d.get(new) is None and d.get(old) is not None:
                    d = {**d, new: d[old]}
        return d

    @property
    def trained(self) -> Recipe:
        """The recipe the run trained with: the queued one with the variant's own fields
        on top (`train_recipe`), which is the queued one where the variant has none."""
        if self.train_recipe is None:
            return self.recipe
        try:
            return Recipe.from_dict(self.train_recipe)
        except AblationError:  # a field of a later version: the queued recipe
            return self.recipe

    @property
    def finished(self) -> bool:
        """Done, with every planned epoch trained."""
        return self.status == JobState.DONE and self.epochs_done >= self.recipe.epochs

    def number(self, key: str) -> float | None:
        """A numeric field by name (a `results.Split`'s keys)."""
        v = getattr(self, key)
        return None if v is None else float(v)

    def to_json(self) -> dict:
        """What summary.json holds: the keys the record was given (null where given as
        None: an unset environment variable, multiply-adds not known), no others."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def parse(cls, d: dict, where: str | Path = "") -> RunRecord:
        """A summary.json's content; keys of a later version are ignored. A damaged or
        incomplete one raises AblationError naming `where`."""
        known = {k: v for k, v in d.items() if k in cls.model_fields}
        try:
            return cls.model_validate(known)
        except pydantic.ValidationError as e:
            raise AblationError(f"damaged file {where}: {validation_line(e)}") from e


# the test set's keys, and 0.5's names for them (still written beside, for one version)
_TEST_ALIASES = {"final_test_accuracy": "final_val_accuracy",
                 "best_test_accuracy": "best_val_accuracy",
                 "final_test_loss": "final_val_loss"}
