"""`ablation run` on a study with `[tune]`: the tuning phase, each variant's choice, then
the comparison phase (docs/studies.md, "Tuning"; the rules are `ablation.tune`'s).

Both phases go through the runner (queue, executors, resume), so a Ctrl-C or a crash in
either resumes like any run: the same command skips the finished tuning jobs, replays
the choice from the run folders (the same runs give the same choice) and goes on. The
choice is never stored apart from the runs it is read from.

Every run of a tuned study records its phase and its tuning group (`tuning` in
config.json and summary.json): the tuned fields, the base recipe's values of them, and
a group id over the rest of the recipe, so a report finds a tuning experiment's runs
whatever flags it was run with.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ablation import registry, results, tune
from ablation import study as studies
from ablation.errors import AblationError
from ablation.executors import Executor, LineSink
from ablation.protocol import NEW, Exit, JobState
from ablation.recipe import Recipe
from ablation.report.load import Run, for_study, load_runs
from ablation.runner import Plan, run, states, unfinished


def group_id(study: studies.Study, base: Recipe, t: tune.Tune) -> str:
    """One tuning experiment: the study, and the base recipe without the tuned fields."""
    rest = {k: v for k, v in t.recipe(base, {}).to_dict().items() if k not in t.fields}
    text = json.dumps([study.name, rest], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def tuning_record(study: studies.Study, base: Recipe, t: tune.Tune) -> dict:
    return {"group": group_id(study, base, t), "fields": t.fields,
            "base": {f: getattr(base, f) for f in t.fields}}


def phase_plans(plan: Plan, study: studies.Study, t: tune.Tune, seeds: int
                ) -> tuple[Plan, Callable[[dict[str, tune.Choice]], Plan]]:
    """The tuning phase's plan, and the comparison phase's plan for given choices."""
    base = plan.recipe
    candidates = [t.recipe(base, c) for c in t.candidates()]
    record = tuning_record(study, base, t)
    tuning = replace(plan, recipes={v.name: candidates for v in plan.variants},
                     seeds=t.seeds, first_seed=0, phase="tune", tuning=record)

    def comparing(choices: dict[str, tune.Choice]) -> Plan:
        return replace(plan, recipes={v: [t.recipe(base, c.setting)]
                                      for v, c in choices.items()},
                       variants=[registry.get(v) for v in choices], seeds=seeds,
                       first_seed=t.seeds, phase="compare", tuning=record)

    return tuning, comparing


def scores(runs: list[Run], group: str, fields: list[str]
           ) -> dict[str, tuple[dict[str, list[float]], dict[str, dict]]]:
    """variant -> (setting key -> final validation accuracies of its finished tuning
    runs, setting key -> setting), over the tuning runs of one group. A candidate whose
    runs diverged or failed has an empty list: it cannot be chosen."""
    out: dict[str, tuple[dict, dict]] = {}
    for r in runs:
        rec = r.summary.get("tuning") or {}
        if r.summary.get("phase") != "tune" or rec.get("group") != group:
            continue
        setting = tune.setting_of(r.summary["recipe"], fields)
        k = tune.key(setting)
        accs, settings = out.setdefault(r.variant, ({}, {}))
        settings[k] = setting
        acc = r.summary.get("final_validation_accuracy")
        accs.setdefault(k, [])
        if r.summary.get("status") == JobState.DONE and acc is not None:
            accs[k].append(float(acc))
    return out


def choose(runs: list[Run], study: studies.Study, t: tune.Tune, base: Recipe,
           variants: list[str]) -> dict[str, tune.Choice | None]:
    """Each variant's choice, read from the tuning runs in `runs`."""
    by = scores(runs, group_id(study, base, t), t.fields)
    return {v: tune.select(*by[v], t, base) if v in by else None for v in variants}


def _study_runs(results_dir: Path, study: studies.Study) -> list[Run]:
    return for_study(load_runs(results_dir, warn=lambda _m: None), study,
                     warn=lambda _m: None)


def run_phases(plan: Plan, study: studies.Study, t: tune.Tune, seeds: int,
               executor_factory: Callable[[LineSink], Executor], until_decided=None,
               out=sys.stdout) -> int:
    """Tune, choose, compare. `until_decided(plan)` runs the comparison phase in looks
    instead of at `seeds` seeds. Returns the exit code."""
    tuning, comparing = phase_plans(plan, study, t, seeds)
    n = len(tuning.jobs())
    print(f"phase 1/2, tune: {len(plan.variants)} variant(s) x {len(t.candidates())} "
          f"setting(s) of {', '.join(t.fields)} x {t.seeds} seed(s) = {n} job(s), choosing on "
          f"{tuning.recipes_of(plan.variants[0].name)[0].validation:,} held-out validation "
          "images", file=out, flush=True)
    code = run(tuning, executor_factory, out)
    left = unfinished(tuning)
    if left:
        print(f"the tuning phase did not finish ({left} job(s) left); rerun the same "
              "command to go on", file=out, flush=True)
        return code if code != Exit.DONE else Exit.FAILED
    choices = choose(_study_runs(plan.results, study), study, t, plan.recipe,
                     [v.name for v in plan.variants])
    lost = [v for v, c in choices.items() if c is None]
    if lost:
        raise AblationError(f"no tuning run of {', '.join(lost)} finished (every candidate "
                            "failed or diverged): widen or move the [tune] candidates")
    for v, c in choices.items():
        ties = f"; {c.tied} tie(s), the nearest to the base recipe taken" if c.tied else ""
        print(f"  {v}: {tune.words(c.setting)} (validation {100 * c.accuracy:.2f} % over "
              f"{c.seeds} seed(s){ties})" + "".join(f"; {e}" for e in c.edges), file=out,
              flush=True)
    compare = comparing(choices)
    print(f"phase 2/2, compare: each variant at its own setting, seeds {t.seeds}.."
          f"{t.seeds + seeds - 1} (after the tuning seeds), judged on the test set",
          file=out, flush=True)
    if until_decided is not None:
        return until_decided(compare)
    code2 = run(compare, executor_factory, out)
    return code2 if code2 != Exit.DONE else code


def dry_run(plan: Plan, study: studies.Study, t: tune.Tune, seeds: int, out=sys.stdout) -> int:
    """What the two phases would run: job counts, and the projected time from the speed
    of earlier runs in the results folder where there are some."""
    tuning, _ = phase_plans(plan, study, t, seeds)
    known = states(plan.results)
    speed = _speeds(plan.results)
    jobs = tuning.jobs()
    planned = [known.get((j.variant.name, j.tag, j.seed, j.recipe.id), NEW) for j in jobs]
    left = sum(s != JobState.DONE for s in planned)
    print(f"phase tune: {len(jobs)} job(s), {left} to run ({', '.join(t.fields)}: "
          f"{len(t.candidates())} setting(s) x {t.seeds} seed(s) x {len(plan.variants)} "
          f"variant(s)){_eta(speed, plan, left)}", file=out)
    for k, (j, state) in enumerate(zip(jobs, planned, strict=True), 1):
        print(f"{k:4d}  {j.variant.name:<14} seed {j.seed}  "
              f"{tune.words(tune.setting_of(j.recipe.to_dict(), t.fields))}  [{state}]  "
              f"{j.run_dir}", file=out)
    n = len(plan.variants) * seeds
    print(f"phase compare: {n} job(s) (each variant at the setting the tuning chooses; seeds "
          f"{t.seeds}..{t.seeds + seeds - 1}){_eta(speed, plan, n)}", file=out)
    print("nothing was run (--dry-run)", file=out)
    return Exit.DONE


def _speeds(results_dir: Path) -> dict[str, float]:
    """Median training images/s of each variant's finished runs in the results folder."""
    import statistics

    seen: dict[str, list[float]] = {}
    for path in results.iter_summaries(results_dir):
        try:
            s = results.read_json(path)
        except (AblationError, FileNotFoundError):
            continue
        if s.get("status") == JobState.DONE and s.get("images_per_second"):
            seen.setdefault(s["variant"], []).append(float(s["images_per_second"]))
    return {v: statistics.median(x) for v, x in seen.items()}


def _eta(speed: dict[str, float], plan: Plan, jobs: int) -> str:
    known = [speed[v.name] for v in plan.variants if v.name in speed]
    if not known or not jobs:
        return "; no speed measured here yet (`ablation bench` tells it)" if jobs else ""
    images = plan.recipe.train_limit or (plan.data or {}).get("train_images") or 50_000
    per_job = plan.recipe.epochs * images / min(known)
    return (f"; about {results.duration(per_job * jobs)} at the slowest measured variant's "
            f"{min(known):.0f} img/s (earlier runs here)")
