"""What to train: a plan's jobs (variant, seed, recipe, run folder and, for a rung of
successive halving, the epoch to stop after), and what each job's process is told. The
policies make plans (ablation.policies), the driver loop runs them (ablation.runner).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ablation import results, study, tune
from ablation.protocol import JobConfig, JobKey, trains_to
from ablation.recipe import Recipe
from ablation.registry import Variant


@dataclass(frozen=True)
class PlannedJob:
    variant: Variant
    seed: int
    tag: str  # definition tag in the run folder's name ("" for built-in variants)
    run_dir: Path
    recipe: Recipe
    until: int | None = None  # stop after this epoch (a rung of successive halving)

    @property
    def target(self) -> int:
        """The epoch the job trains to (`protocol.trains_to`)."""
        return trains_to(self.until, self.recipe.epochs)

    @property
    def key(self) -> JobKey:
        return JobKey(self.variant.name, self.tag, self.seed, self.recipe.id)


@dataclass
class Plan:
    """What to train: each variant under its recipes (the plan's `recipe`, or per variant
    `recipes`: a tuning phase's candidates, or each variant's chosen setting), at seeds
    first_seed .. first_seed + seeds − 1."""

    variants: list[Variant]
    seeds: int
    recipe: Recipe
    results: Path
    data_dir: str | None
    keep_model: bool = True
    retry_failed: bool = False
    study: str | None = None
    data: dict | None = None  # a path dataset as `ablation.data.prepare` made it ready
    recipes: dict[str, list[Recipe]] | None = None  # variant -> its recipes
    first_seed: int = 0
    phase: str | None = None  # "tune" or "compare" for a study with [tune]
    tuning: dict | None = None  # its tuning group (ablation.tune.tuning_record)
    # (variant, recipe id) -> the epoch to stop after (a rung of successive halving)
    until: dict[tuple[str, str], int] | None = None
    snapshot_steps: int | None = None  # snapshots inside an epoch (JobConfig's)
    snapshot_minutes: float | None = None
    devices: int = 1  # data parallel over this many devices per job (JobConfig's)
    slots: int = 1  # jobs that run at once here (a dry run's count; a run's executor's)
    inference: bool = True  # time each variant's trained network (JobConfig's)

    def recipes_of(self, variant: str) -> list[Recipe]:
        return (self.recipes or {}).get(variant, [self.recipe])

    def jobs(self) -> list[PlannedJob]:
        out = []
        for v in self.variants:
            tag = study.folder_tag(v)
            for r in self.recipes_of(v.name):
                stop = (self.until or {}).get((v.name, r.id))
                for s in range(self.first_seed, self.first_seed + self.seeds):
                    out.append(PlannedJob(v, s, tag, results.run_dir(
                        self.results, r.id, v.name, s, tag), r,
                        stop if stop and stop < r.epochs else None))
        return out

    def tuning_of(self, variant: str) -> dict | None:
        """What a job of `variant` records of its tuning group: the group, the fields its
        own space tunes (its job keeps them over the variant's fixed fields) and the
        base's values of them."""
        if not self.tuning:
            return None
        names = self.tuning.get("own", {}).get(variant, self.tuning["fields"])
        return {"group": self.tuning["group"], "fields": list(names),
                "base": {f: self.tuning["base"][f] for f in names},
                **({"test": True} if self.tuning.get("test") else {})}

    def setting(self, job: PlannedJob) -> str:
        """What sets the job apart in a progress line: a tuning candidate's setting, as
        " (lr 0.1)"; "" otherwise."""
        tuning = self.tuning_of(job.variant.name)
        if not tuning:
            return ""
        return f" ({tune.words(tune.setting_of(job.recipe.to_dict(), tuning['fields']))})"

    def config(self, job: PlannedJob, index: int, total: int) -> JobConfig:
        """What the training process of `job` is told (its config.json)."""
        return JobConfig(variant=job.variant.name, seed=job.seed, recipe=job.recipe,
                         data_dir=self.data_dir, keep_model=self.keep_model, index=index,
                         total=total, definition=job.variant.to_dict(),
                         definition_hash=study.definition_hash(job.variant),
                         units=study.unit_records(job.variant), study=self.study,
                         data=self.data, phase=self.phase,
                         tuning=self.tuning_of(job.variant.name), until=job.until,
                         snapshot_steps=self.snapshot_steps,
                         snapshot_minutes=self.snapshot_minutes, devices=self.devices,
                         inference=self.inference)
