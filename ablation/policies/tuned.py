"""`ablation run` on a study with `[tune]`, as a policy: the tuning phase, each variant's
choice, then the comparison phase (docs/studies.md, "Tuning"; the rules are
`ablation.tune`'s).

Both phases go through the one driver loop (queue, executors, resume), so a Ctrl-C or a
crash in either resumes like any run: the same command skips the finished tuning jobs,
replays the choice from the run records (the same runs give the same choice) and goes
on. The choice is never stored apart from the runs it is read from.

Every run of a tuned study records its phase and its tuning group (`tuning` in
config.json and the run record: `ablation.tune.tuning_record`), so a report finds a
tuning experiment's runs whatever flags it was run with.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace

from ablation import registry, results, runs, tune
from ablation import study as studies
from ablation.errors import AblationError
from ablation.policies import Fixed, list_jobs
from ablation.protocol import NEW, Exit, JobState
from ablation.runner import Plan, Policy, Queue, Stop, View


def phase_plans(plan: Plan, study: studies.Study, t: tune.Tune, seeds: int
                ) -> tuple[Plan, Callable[[dict[str, tune.Choice]], Plan]]:
    """The tuning phase's plan, and the comparison phase's plan for given choices."""
    base = plan.recipe
    candidates = [t.recipe(base, c) for c in t.candidates()]
    record = tune.tuning_record(study.name, base, t)
    tuning = replace(plan, recipes={v.name: candidates for v in plan.variants},
                     seeds=t.seeds, first_seed=0, phase="tune", tuning=record)

    def comparing(choices: dict[str, tune.Choice]) -> Plan:
        return replace(plan, recipes={v: [t.recipe(base, c.setting)]
                                      for v, c in choices.items()},
                       variants=[registry.get(v) for v in choices], seeds=seeds,
                       first_seed=t.seeds, phase="compare", tuning=record)

    return tuning, comparing


# the comparison phase's policy for its plan: Fixed, or --until-decided's looks
Compare = Callable[[Plan], Policy]


class Tuned:
    """Tune, choose, compare: the comparison phase is `compare(plan)`'s policy (the plan
    at `seeds` seeds, or --until-decided's looks, which choose the seeds themselves)."""

    def __init__(self, plan: Plan, study: studies.Study, t: tune.Tune, seeds: int,
                 compare: Compare | None = None, out=sys.stdout):
        self.plan, self.study, self.t, self.seeds, self.out = plan, study, t, seeds, out
        self.compare = compare or Fixed
        self.tuning, self.comparing = phase_plans(plan, study, t, seeds)
        self.then: Policy | None = None  # the comparison phase's policy, once chosen
        self.queued = False

    def next(self, view: View) -> Queue | Stop:
        if self.then is not None:
            return self.then.next(view)
        t, out = self.t, self.out
        if not self.queued:
            self.queued = True
            n = len(self.tuning.jobs())
            return Queue(self.tuning, f"phase 1/2, tune: {len(self.plan.variants)} variant(s) "
                         f"x {len(t.candidates())} setting(s) of {', '.join(t.fields)} x "
                         f"{t.seeds} seed(s) = {n} job(s), choosing on "
                         f"{self.tuning.recipes_of(self.plan.variants[0].name)[0].validation:,}"
                         " held-out validation images")
        left = view.unfinished(self.tuning)
        if left:
            return Stop(f"the tuning phase did not finish ({left} job(s) left); rerun the "
                        "same command to go on", view.failed)
        choices = tune.choose(view.records(), self.study.name, t, self.plan.recipe,
                              [v.name for v in self.plan.variants])
        lost = [v for v, c in choices.items() if c is None]
        if lost:
            raise AblationError(f"no tuning run of {', '.join(lost)} finished (every candidate "
                                "failed or diverged): widen or move the [tune] candidates")
        for v, c in choices.items():
            ties = f"; {c.tied} tie(s), the nearest to the base recipe taken" if c.tied else ""
            print(f"  {v}: {tune.words(c.setting)} (validation {100 * c.accuracy:.2f} % over "
                  f"{c.seeds} seed(s){ties})" + "".join(f"; {e}" for e in c.edges), file=out,
                  flush=True)
        self.then = self.compare(self.comparing(choices))
        print(f"phase 2/2, compare: each variant at its own setting, {self._seeds()} (after "
              "the tuning seeds), judged on the test set", file=out, flush=True)
        return self.then.next(view)

    def _seeds(self) -> str:
        """The comparison phase's seeds, in words."""
        first = self.t.seeds
        looks = getattr(self.then, "looks", None)
        if looks:  # --until-decided: looks of seeds, more only where undecided
            return (f"seeds from {first} in looks of {', '.join(map(str, looks))} (more only "
                    "where a pair is undecided)")
        return f"seeds {first}..{first + self.seeds - 1}"

    def dry_run(self, view: View, out=sys.stdout) -> int:
        """What the two phases would run: job counts, and the projected time from the speed
        of earlier runs in the results folder where there are some."""
        t, plan = self.t, self.plan
        known = view.states()
        speed = runs.speeds(plan.results)
        jobs = self.tuning.jobs()
        planned = [known.get((j.variant.name, j.tag, j.seed, j.recipe.id), NEW) for j in jobs]
        left = sum(s != JobState.DONE for s in planned)
        print(f"phase tune: {len(jobs)} job(s), {left} to run ({', '.join(t.fields)}: "
              f"{len(t.candidates())} setting(s) x {t.seeds} seed(s) x {len(plan.variants)} "
              f"variant(s)){_eta(speed, plan, left)}", file=out)
        list_jobs(jobs, known, out,
                  lambda j: tune.words(tune.setting_of(j.recipe.to_dict(), t.fields)))
        # the comparison phase's first step: its seeds, or --until-decided's first look
        probe = self.compare(replace(plan, first_seed=t.seeds, seeds=self.seeds))
        first = probe.first_look() if hasattr(probe, "first_look") else self.seeds
        self.then = probe
        n = len(plan.variants) * first
        print(f"phase compare: {n} job(s) (each variant at the setting the tuning chooses; "
              f"{self._seeds()}{' (the first look)' if first != self.seeds else ''})"
              f"{_eta(speed, plan, n)}", file=out)
        self.then = None
        print("nothing was run (--dry-run)", file=out)
        return Exit.DONE


def _eta(speed: dict[str, float], plan: Plan, jobs: int) -> str:
    known = [speed[v.name] for v in plan.variants if v.name in speed]
    if not known or not jobs:
        return "; no speed measured here yet (`ablation bench` tells it)" if jobs else ""
    images = plan.recipe.train_limit or (plan.data or {}).get("train_images") or 50_000
    per_job = plan.recipe.epochs * images / min(known)
    return (f"; about {results.duration(per_job * jobs)} at the slowest measured variant's "
            f"{min(known):.0f} img/s (earlier runs here)")
