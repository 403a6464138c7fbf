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

import random
import sys
from collections.abc import Callable
from dataclasses import replace

from ablation import halving, registry, results, runs, tune
from ablation import study as studies
from ablation.errors import AblationError
from ablation.plan import Plan
from ablation.policies import Fixed, list_jobs
from ablation.policies.base import Policy, Queue, Stop, View, planned_state, train_images
from ablation.protocol import Exit, JobKey, JobState
from ablation.recipe import Recipe


def phase_plans(plan: Plan, study: studies.Study, t: tune.Tune, seeds: int
                ) -> tuple[Plan, Callable[[dict[str, tune.Choice]], Plan]]:
    """The tuning phase's plan (each variant over its own space), and the comparison
    phase's plan for given choices."""
    base = plan.recipe
    spaces = {v.name: t.for_variant(v.name, v.train_recipe(base)) for v in plan.variants}
    record = {**tune.tuning_record(study.name, base, t),
              "own": {v: s.fields for v, s in spaces.items()}}
    tuning = replace(plan, recipes={v: [s.recipe(base, c) for c in s.candidates()]
                                    for v, s in spaces.items()},
                     seeds=t.seeds, first_seed=0, phase="tune", tuning=record)

    def comparing(choices: dict[str, tune.Choice]) -> Plan:
        return replace(plan, recipes={v: [t.recipe(base, c.setting)]
                                      for v, c in choices.items()},
                       variants=[registry.get(v) for v in choices], seeds=seeds,
                       first_seed=t.seeds, phase="compare", tuning=record)

    return tuning, comparing


def owns(plan: Plan) -> dict[str, Recipe]:
    """Each variant's own recipe: the plan's with the variant's fixed fields on top (its
    space's multipliers, and its ties, are read against it)."""
    return {v.name: v.train_recipe(plan.recipe) for v in plan.variants}


# the comparison phase's policy for its plan: Fixed, or --until-decided's looks
Compare = Callable[[Plan], Policy]


class Tuned(Policy):
    """Tune, choose, compare: the comparison phase is `compare(plan)`'s policy (the plan
    at `seeds` seeds, or --until-decided's looks, which choose the seeds themselves).
    With `halving`, the tuning phase is successive halving (`ablation.halving`), decided
    as slots free up (asynchronous: the driver asks `extend` after every job)."""

    def __init__(self, plan: Plan, study: studies.Study, t: tune.Tune, seeds: int,
                 compare: Compare | None = None):
        self.plan, self.study, self.t, self.seeds = plan, study, t, seeds
        self.compare = compare or Fixed
        self.tuning, self.comparing = phase_plans(plan, study, t, seeds)
        self.then: Policy | None = None  # the comparison phase's policy, once chosen
        self.queued = False
        self.halving = Search(self.tuning, t) if t.halving or t.budget else None

    @property
    def asynchronous(self) -> bool:
        return self.halving is not None and self.then is None

    @property
    def needs_history(self) -> bool:  # the search ranks each rung's validation accuracy
        return self.asynchronous

    def extend(self, view: View) -> Queue | None:
        """More tuning jobs for the free slots (promotions first), while the phase runs."""
        plan = self.halving.next_jobs(view, view.free) if self.halving else None
        return Queue(plan, self.halving.describe(plan)) if plan is not None else None

    def remaining(self, view: View) -> int:
        """Epochs the tuning search still plans (every rung sending on its share, within
        a budget), those in flight included: what the queue's ETA adds under halving."""
        if self.halving is None or self.then is not None:
            return 0
        return self.halving.remaining(view)

    def _settings(self) -> str:
        """How many settings each variant tries, in words: "7 setting(s) of lr", or per
        variant where their spaces differ."""
        counts = {v.name: len(self.tuning.recipes_of(v.name)) for v in self.plan.variants}
        fields = {v: ", ".join(f) for v, f in self.tuning.tuning["own"].items()}
        if not self.t.spaces:
            n, f = next(iter(counts.values())), next(iter(fields.values()))
            return f"{len(counts)} variant(s) x {n} setting(s) of {f}"
        return "; ".join(f"{v} {n} setting(s) of {fields[v]}"
                         + (" (its own space)" if self.t.own_space(v) else "")
                         for v, n in counts.items())

    def _header(self, jobs: int, slots: int) -> str:
        t = self.t
        held = self.tuning.recipes_of(self.plan.variants[0].name)[0].validation
        search = f" = {jobs} job(s)"
        if self.halving is not None:
            n = max(len(self.tuning.recipes_of(v.name)) for v in self.plan.variants)
            search = (f"; {self.halving.words(slots, n)}; {jobs} job(s) to start")
        return (f"phase 1/2, tune: {self._settings()}, x {t.seeds} seed(s){search}, choosing "
                f"on {held:,} held-out validation images")

    def next(self, view: View) -> Queue | Stop:
        if self.then is not None:
            return self.then.next(view)
        t = self.t
        if not self.queued:
            self.queued = True
            warn = tuple(t.warnings(self.tuning.recipe))
            if self.halving is not None:
                first = self.halving.next_jobs(view, view.slots)
                if first is not None:
                    return Queue(first, self._header(len(first.jobs()), view.slots),
                                 warnings=warn)
            else:
                return Queue(self.tuning, self._header(len(self.tuning.jobs()), view.slots),
                             warnings=warn)
        left = view.unfinished(self.tuning)
        if left and self.halving is None:
            return Stop(f"the tuning phase did not finish ({left} job(s) left); rerun the "
                        "same command to go on", view.failed)
        if self.halving is not None:
            if view.step_code != Exit.DONE and self.halving.stuck(view):
                return Stop("the tuning phase did not finish; rerun the same command to go "
                            "on", view.failed)
            more = self.halving.next_jobs(view, view.slots)
            if more is not None:  # promotions that became possible as the step ended
                return Queue(more, self.halving.describe(more))
        notes = [f"  {self.halving.spent_words(view)}"] if self.halving is not None else []
        choices = tune.choose(view.records(), self.study.name, t, self.plan.recipe,
                              owns(self.plan))
        lost = [v for v, c in choices.items() if c is None]
        if lost:
            raise AblationError(f"no tuning run of {', '.join(lost)} finished (every candidate "
                                "failed or diverged): widen or move the [tune] candidates")
        for v, c in choices.items():
            ties = f"; {c.tied} tie(s), the nearest to the base recipe taken" if c.tied else ""
            notes.append(f"  {v}: {tune.words(c.setting)} (validation {100 * c.accuracy:.2f} "
                         f"% over {c.seeds} seed(s){ties})"
                         + "".join(f"; {e}" for e in c.edges))
        self.then = self.compare(self.comparing(choices))
        notes.append(f"phase 2/2, compare: each variant at its own setting, {self._seeds()} "
                     "(after the tuning seeds), judged on the test set")
        return self.then.next(view).after(notes)

    def _seeds(self) -> str:
        """The comparison phase's seeds, in words."""
        first = self.t.seeds
        return (self.then.seeds_words() if self.then is not None else None) or \
            f"seeds {first}..{first + self.seeds - 1}"

    def dry_run(self, view: View, out=sys.stdout) -> int:
        """What the two phases would run: job counts, and the projected time from the speed
        of earlier runs in the results folder where there are some."""
        t, plan = self.t, self.plan
        for w in t.warnings(self.tuning.recipe):
            print(f"warning: {w}", file=sys.stderr, flush=True)
        known = view.states()
        speed = runs.speeds(plan.results, plan.recipe.precision, plan.recipe.image_hw)
        jobs = self.tuning.jobs()
        planned = [planned_state(j, known) for j in jobs]
        left = sum(s != JobState.DONE for s in planned)
        if self.halving is not None:  # the search decides as it goes: its rule and cost
            settings = {len(self.tuning.recipes_of(v.name)) for v in plan.variants}
            n = max(settings)
            grid = halving.grid_epochs(n, plan.recipe.epochs, t.seeds)
            rungs = self.halving.rungs
            if t.halving:
                planned = halving.planned_epochs(n, rungs, self.halving.factor, t.seeds)
                print(f"phase tune: {self.halving.words(view.slots, n)}; each setting starts "
                      f"at epoch {rungs[0]} (the jobs below, stopped there), the best 1/"
                      f"{self.halving.factor} go on; {planned:,} of the full grid's "
                      f"{grid:,} epochs a variant ({100 * planned / grid:.0f} %) when every "
                      "rung sends on its share"
                      + ("" if len(settings) == 1 else f" (at {n} settings, the most a "
                                                       "variant has)"), file=out)
            else:  # a budget alone: settings in full, new ones while the budget lasts
                print(f"phase tune: {self.halving.words()} (the full grid: {grid:,} epochs "
                      "a variant)", file=out)
        # under halving the jobs listed are the first rung's: the projection is the
        # search's planned epochs (each variant's settings, as every rung sends on its share)
        cost = _eta(speed, plan, left) if self.halving is None or not t.halving else _eta(
            speed, plan, 1, sum(halving.planned_epochs(len(self.tuning.recipes_of(v.name)),
                                                       self.halving.rungs,
                                                       self.halving.factor, t.seeds)
                                for v in plan.variants))
        print(f"phase tune: {len(jobs)} job(s), {left} to run ({self._settings()}, x "
              f"{t.seeds} seed(s)){cost}", file=out)
        list_jobs(jobs, known, out, lambda j: self.tuning.setting(j).strip(" ()"))
        # the comparison phase's first step: its seeds, or --until-decided's first look
        probe = self.compare(replace(plan, first_seed=t.seeds, seeds=self.seeds))
        first = probe.first_look() or self.seeds
        self.then = probe
        n = len(plan.variants) * first
        print(f"phase compare: {n} job(s) (each variant at the setting the tuning chooses; "
              f"{self._seeds()}{' (the first look)' if first != self.seeds else ''})"
              f"{_eta(speed, plan, n)}", file=out)
        self.then = None
        print("nothing was run (--dry-run)", file=out)
        return Exit.DONE


def _eta(speed: dict[str, runs.Speed], plan: Plan, jobs: int, epochs: int | None = None
         ) -> str:
    """A projection of `jobs` jobs (of `epochs` epochs each: the recipe's where None) at the
    slowest measured variant's speed here (its runs', or `ablation bench`'s), scaled by
    what whole runs here took beyond their training steps."""
    known = [speed[v.name] for v in plan.variants if v.name in speed]
    if not known or not jobs:
        return (f"; no speed measured in {plan.results} yet (`ablation bench --results "
                f"{plan.results}` measures one)") if jobs else ""
    slow = min(known, key=lambda s: s.images_per_second)
    per_job = (epochs or plan.recipe.epochs) * train_images(plan) / slow.images_per_second
    where = "earlier runs here" if slow.source == "runs" else "`ablation bench` here"
    over = (f", x{slow.overhead:.2f} for start-up, evaluation and snapshots as runs here "
            "took" if slow.overhead != 1.0 else ", training steps only")
    return (f"; about {results.duration(per_job * jobs * slow.overhead)} at the slowest "
            f"measured variant's {slow.images_per_second:.0f} img/s ({where}{over})")


# --- successive halving over the tuning phase ------------------------------------------------


class Search:
    """The tuning phase as successive halving (and/or a budget in epochs), per variant:
    the run records (and their histories) as `halving.Trial`s, the rule's decisions as
    plans of jobs that stop at their rungs."""

    def __init__(self, tuning: Plan, t: tune.Tune):
        self.tuning, self.t = tuning, t
        self.epochs = tuning.recipe.epochs
        self.halving = t.halving or halving.Halving(factor=10 ** 9)  # a budget alone: none
        self.rungs = t.rungs(tuning.recipe)
        self.factor = self.halving.factor

    def words(self, slots: int | None = None, settings: int | None = None) -> str:
        """The search in words; with the executor's `slots` and a variant's `settings`,
        when each rung promotes."""
        rule = (f"successive halving, rungs at epochs {', '.join(map(str, self.rungs))}, "
                f"factor {self.factor}" if self.t.halving else "every setting in full")
        early = self.t.early_rungs(self.tuning.recipe)
        if early:
            rule += (f"; warning: rung(s) {', '.join(map(str, early))} come before the step "
                     f"schedule's first lr drop (epoch {self.tuning.recipe.lr_drops()[0]}): "
                     "settings compared there have not been annealed, which favours small "
                     "learning rates (the default first rung is past the drop)")
        if self.t.halving and slots and settings:
            sync = halving.synchronous(settings, self.rungs, self.factor, slots)
            at = [str(r) for r, s in zip(self.rungs, sync, strict=False) if s]
            rule += (f"; promotion synchronous at rung(s) {', '.join(at)} ({slots} slot(s), "
                     "fewer than those rungs' settings: every setting reaches a rung before "
                     "any goes on)" if at else "")
            if len(at) < len(sync):
                rule += (f"; asynchronous (ASHA, reserve {self.halving.reserve:g}) where the "
                         "slots are as many as a rung's settings")
        return rule + (f", at most {self.t.budget:,} epochs a variant" if self.t.budget
                       else "")

    def order(self, variant: str) -> list:
        """The variant's settings in the order the search starts them: a random order
        seeded by the study's [tune] table and the variant (the same on every rerun), never
        the grid's, whose order would otherwise favour the settings listed first."""
        recipes = list(self.tuning.recipes_of(variant))
        random.Random(f"{self.t.seed}:{variant}").shuffle(recipes)
        return recipes

    def _trials(self, view: View, variant: str) -> tuple[list[halving.Trial], int]:
        """Each setting of `variant` as a Trial (in `order`), and the epochs its runs
        trained (`trials`)."""
        tag = studies.folder_tag(registry.get(variant))
        active = view.active()
        order = self.order(variant)
        own = registry.get(variant).train_recipe(self.tuning.recipe)
        fields = self.tuning.tuning["fields"]
        far = {r.id: tune.distance(tune.setting_of(r.to_dict(), fields), own) for r in order}
        return runs.halving_trials(view.runs(), self.tuning.tuning["group"], variant,
                                   [r.id for r in order], self.rungs, self.t.seeds,
                                   lambda rid, seed: JobKey(variant, tag, seed, rid) in active,
                                   far.__getitem__)

    def next_jobs(self, view: View, free: int) -> Plan | None:
        """The next jobs for `free` slots, one variant after the other; None when none."""
        picks: dict[str, list[tuple[str, int]]] = {}
        states = {v.name: self._trials(view, v.name) for v in self.tuning.variants}
        left = free
        while left > 0:
            took = False
            for v in self.tuning.variants:
                if left <= 0:
                    break
                trials, spent = states[v.name]
                got = halving.decide(trials, self.rungs, self.factor, 1, self.t.budget,
                                     spent + sum((t - _done(trials, k)) * self.t.seeds
                                                 for k, t in picks.get(v.name, [])),
                                     self.t.seeds, self.halving.reserve, view.slots)
                for key, target in got:
                    next(tr for tr in trials if tr.key == key).running = True
                    picks.setdefault(v.name, []).append((key, target))
                    left -= 1
                    took = True
            if not took:
                break
        if not picks:
            return None
        by_id = {r.id: r for v in self.tuning.variants for r in self.tuning.recipes_of(v.name)}
        return replace(self.tuning, variants=[v for v in self.tuning.variants if v.name in picks],
                       recipes={v: [by_id[k] for k, _ in ks] for v, ks in picks.items()},
                       until={(v, k): target for v, ks in picks.items() for k, target in ks})

    def remaining(self, view: View) -> int:
        """The search's planned epochs (all seeds) not trained yet."""
        left = 0
        for v in self.tuning.variants:
            n = len(self.tuning.recipes_of(v.name))
            planned = (halving.planned_epochs(n, self.rungs, self.factor, self.t.seeds)
                       if self.t.halving else halving.grid_epochs(n, self.epochs, self.t.seeds))
            if self.t.budget:
                planned = min(planned, self.t.budget)
            left += max(0, planned - self._trials(view, v.name)[1])
        return left

    def stuck(self, view: View) -> bool:
        """Jobs of the phase left undone that this command cannot run (another runner's,
        a machine's fault): the phase waits for a rerun."""
        return view.unfinished(self.tuning) > 0 and self.next_jobs(view, view.slots) is None

    def describe(self, plan: Plan) -> str:
        parts = []
        for j in plan.jobs():
            parts.append(f"{j.variant.name}{plan.setting(j)} to epoch {j.target}")
        return "  halving: " + "; ".join(dict.fromkeys(parts))

    def spent_words(self, view: View) -> str:
        total = sum(self._trials(view, v.name)[1] for v in self.tuning.variants)
        grid = sum(halving.grid_epochs(len(self.tuning.recipes_of(v.name)), self.epochs,
                                       self.t.seeds) for v in self.tuning.variants)
        return (f"tuning spent {total:,} epochs of the full grid's {grid:,} "
                f"({100 * total / grid:.0f} %)")


def _done(trials: list[halving.Trial], key: str) -> int:
    return next(t.done for t in trials if t.key == key)
