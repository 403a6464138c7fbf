"""From a study, its selected variants and the command's flags to what `ablation run`
drives: the plan of jobs (its recipe checked whole, the data prepared once) and the
policy that decides what to queue (a plain run, the tuning phases, --until-decided).

The domain rules a run must pass before anything is queued live here, not in the
command line: every pretrained weights file is there, every variant's own recipe fields
make a valid recipe with the run's, the subsets and the validation split fit the data.
"""

from __future__ import annotations

from pathlib import Path

from ablation import data, devices, models, parallel, registry, verdict
from ablation import study as studies
from ablation.errors import AblationError
from ablation.plan import Plan
from ablation.policies import Fixed
from ablation.policies.base import Policy


def check_flags(seeds: int | None, until_decided: bool, max_seeds: int | None) -> None:
    """The seed flags that cannot go together: refused before any data is read."""
    if until_decided and seeds is not None:
        raise AblationError("--until-decided chooses the seeds itself (in looks, up to "
                            "--max-seeds); drop --seeds")
    if max_seeds is not None and not until_decided:
        raise AblationError("--max-seeds only goes with --until-decided")


def plan(study: studies.Study, names: list[str], overrides: dict, results: Path,
         data_dir: str | None = None, seeds: int = 1, keep_model: bool = True,
         retry_failed: bool = False, dry_run: bool = False,
         snapshot_steps: int | None = None, snapshot_minutes: float | None = None,
         local: tuple[int | None, int | None] | None = None, devices_per_job: int = 1,
         inference: bool = True) -> Plan:
    """The jobs of `names` under the study's recipe with `overrides` (the flags given),
    checked: one AblationError naming the problem before anything is queued. `local`:
    the local executor's (workers, jobs per GPU), for how many jobs run at once here
    (the plan's `slots`, what a dry run's halving rule reads)."""
    slots = len(devices.plan_slots(devices.list_gpus(), *local, devices_per_job)) \
        if local else 1
    try:
        recipe = study.recipe(overrides)
    except AblationError as e:
        raise AblationError(f"{e} (the recipe: study {study.name}'s [recipe], then the "
                            "flags)") from e
    variants = [registry.get(n) for n in names]
    for v in variants:  # a local weights file a job would start from must be there now
        w = v.pretrained
        if w and w != "imagenet" and not Path(w).is_file():
            raise AblationError(f"{v.name} starts from the pretrained weights {w}, which do "
                                "not exist; fix the path in the study file, or leave the "
                                "variant out")
    for v in variants:  # what each job trains with: the variant's own fields on top
        try:
            v.train_recipe(recipe)
        except AblationError as e:
            raise AblationError(f"{v.name} (its recipe sets {dict(v.recipe)}): {e}") from e
    parallel.check_batch_size(devices_per_job, recipe.batch_size)  # a run field: one for all
    shape, classes = data.shape_of(recipe.dataset, recipe.image_hw)
    for v in variants:  # each network fits the data: its head, its strides (counted, fast)
        info = models.count_params(v, classes, shape)
        models.check_whitening(v.name, info.whitening, v.train_recipe(recipe).whiten_bias_epochs)
    folder = data.resolve_data_dir(recipe.dataset, data_dir)
    # a dataset by path: hashed (its content names the recipe id), its statistics taken,
    # a folder decoded once into the results folder (not for a dry run: it writes nothing)
    record = data.prepare(recipe.dataset, recipe.image_hw, Path(results), decode=not dry_run)
    if record is not None:
        recipe = recipe.replace(dataset=record["path"], data_hash=record["content_hash"])
    data.check_recipe_sizes(recipe, record)
    if study.tune is not None:  # every candidate's recipe is a valid one with the flags
        t = study.tune
        t.check(recipe)
        for v in variants:
            try:
                space = t.for_variant(v.name, v.train_recipe(recipe))
                for c in space.candidates():
                    data.check_recipe_sizes(space.recipe(recipe, c), record)
            except AblationError as e:
                raise AblationError(f"{v.name}: {e}") from e
    if folder is not None and not dry_run:
        data.check(recipe.dataset, folder)
    return Plan(variants, seeds, recipe, Path(results),
                str(folder.resolve()) if folder else None, keep_model=keep_model,
                retry_failed=retry_failed,
                study=study.name if study.builtin else str(study.path), data=record,
                snapshot_steps=snapshot_steps, snapshot_minutes=snapshot_minutes,
                devices=devices_per_job, slots=slots, inference=inference)


def policy(plan: Plan, study: studies.Study, seeds: int | None = None,
           until_decided: bool = False, max_seeds: int | None = None,
           margin: float | None = None) -> Policy:
    """What decides the jobs: the plan once, or --until-decided's looks; for a study with
    [tune], the tuning phase first, then either for the comparison (`check_flags` has
    passed)."""
    def compare(p: Plan) -> Policy:
        if until_decided:
            from ablation.policies.looks import UntilDecided

            return UntilDecided(p, study, max_seeds or verdict.LOOKS[-1],
                                study.analysis.replace(margin=margin))
        return Fixed(p)

    if study.tune is not None:
        from ablation.policies.tuned import Tuned

        return Tuned(plan, study, study.tune, seeds or 1, compare)
    return compare(plan)
