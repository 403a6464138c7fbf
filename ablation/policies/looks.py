"""`ablation run --until-decided` as a policy: more seeds only where a comparison is
still undecided.

Seeds are run in looks fixed in advance (ablation.verdict.LOOKS, up to --max-seeds).
After each look the verdicts are replayed from the run records (ablation.verdict.
sequential, the rule the report applies too); only the variants of pairs still
undecided get the next look's seeds. α is spent over the looks, so looking after each
does not inflate false positives (docs/statistics.md). The design is recorded in the
results folder, so `ablation report` judges these runs by the same looks, and a
Ctrl-C or a crash resumes like any run: rerunning the command replays the finished
looks (same data, same decisions) and goes on where it stopped.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, replace

from ablation import judge, registry, results, verdict
from ablation import study as studies
from ablation.errors import AblationError
from ablation.plan import Plan
from ablation.policies import list_jobs
from ablation.policies.base import Policy, Queue, Stop, View
from ablation.protocol import Exit
from ablation.store import Run


def replay(plan: Plan, runs: list[Run], comparisons: dict[str, list[tuple[str, str]]],
           design: dict, settings: verdict.Settings) -> verdict.Sequential:
    """The design's verdicts on the study's runs as they are now: each variant's runs
    under its recipe (a tuned comparison's variants each have their own), from the plan's
    first seed (a tuned comparison's seeds follow the tuning seeds: they count from 0
    here); diverged runs left out, failed seeds not waited for."""
    mine = [r for r in runs
            if r.record.recipe_id in {x.id for x in plan.recipes_of(r.variant)}
            and r.seed >= plan.first_seed and r.record.phase == plan.phase]
    return judge.replay(mine, comparisons, design, settings, plan.first_seed)


SPENT = {"obf": "O'Brien-Fleming-type, boundaries from the looks' joint distribution",
         "pocock": "Pocock-type, union bound: a design of 0.4, replayed as recorded"}


def _design(plan: Plan, study: studies.Study, comparisons: dict, looks: list[int],
            settings: verdict.Settings, key: str, notes: list[str], runs=None) -> dict:
    """The design to run: a new one (O'Brien-Fleming-type), the recorded one, or the
    recorded one extended to a raised --max-seeds while α is left to spend (said in
    `notes`). `runs`: the study's runs (a callable, read only when the recorded design
    is to be extended)."""
    base = {"study": study.name, "recipe_id": plan.recipe.id,
            "variants": sorted(v.name for v in plan.variants), **asdict(settings)}
    known = results.read_designs(plan.results).get(key)
    if known is None:
        return {**base, "looks": looks, "spending": "obf"}
    if {k: known.get(k) for k in base} != base:
        raise AblationError(
            f"{plan.results} already holds a different --until-decided design for study "
            f"{study.name!r} under this recipe (margin {known.get('margin')}, alpha "
            f"{known.get('alpha')}, variants {known.get('variants')}): a design is fixed "
            "before the first look; rerun with the same --margin and variants, or use "
            "another --results folder")
    old = list(known["looks"])
    if looks == old:
        return known
    if runs is None:
        from ablation.runs import study_runs

        runs = lambda: study_runs(plan.results, study)  # noqa: E731
    done = replay(plan, runs(), comparisons, known, settings).looks_done
    why = None
    if known.get("spending", "pocock") != "obf":
        why = "a design of 0.4 (union bound) cannot be extended"
    elif done >= len(old):
        why = f"its last look ({old[-1]} seeds) is analysed: its α is spent"
    elif looks[-1] <= (old[done - 1] if done else 0):
        why = f"--max-seeds {looks[-1]} is not beyond the looks already analysed"
    if why:
        raise AblationError(
            f"{plan.results} holds this study's --until-decided design with looks "
            f"{old}; --max-seeds {looks[-1]} would change it, and {why}: rerun with "
            f"--max-seeds {old[-1]}, or use another --results folder")
    kept = old[:done]
    new = kept + [n for n in looks if n > (kept[-1] if kept else 0)]
    fixed = {str(m): {"dir": list(verdict.boundaries(tuple(old), settings.alpha / m)[:done]),
                      "eq": list(verdict.boundaries(tuple(old), min(
                          2 * settings.alpha / m, 0.999))[:done])}
             for m in {len(ps) for ps in comparisons.values()}} if done else {}
    notes.append(f"extending the design: looks {old} -> {new}; the {done} look(s) analysed "
                 "keep their boundaries, the α left is spent over the new looks")
    return {**base, "looks": new, "spending": "obf",
            **({"fixed": fixed} if fixed else {}), "extended_from": old}


def design_key(plan: Plan, study: studies.Study) -> str:
    """Where a design is recorded: by study and recipe id, or for a tuned comparison (its
    variants under recipes of their own) by study and tuning group."""
    if plan.phase == "compare" and plan.tuning:
        return results.design_key(study.name, f"tuned-{plan.tuning['group']}")
    return results.design_key(study.name, plan.recipe.id)


def _describe(p: verdict.Pair) -> str:
    if math.isnan(p.ci_low):  # no interval yet
        return f"{p.a} vs {p.b}"
    return f"{p.a} vs {p.b} ({p.delta:+.2f}, [{p.ci_low:+.2f}, {p.ci_high:+.2f}])"


class UntilDecided(Policy):
    """Run the looks until every pair among the plan's variants is decided, or the last
    look is done. A look that does not finish (failed to start, interrupted, another
    runner's jobs) stops the command; rerun it to go on from that look."""

    def __init__(self, plan: Plan, study: studies.Study, max_seeds: int,
                 settings: verdict.Settings):
        self.plan, self.study, self.settings = plan, study, settings
        self.comparisons = judge.pairs_among(study, [v.name for v in plan.variants])
        if not self.comparisons:
            raise AblationError("--until-decided needs two variants of one of the study's "
                                "comparisons among those selected")
        self.looks = verdict.looks_for(max_seeds)
        self.max_seeds = max_seeds
        self.k = 0  # looks queued so far
        self.todo = sorted({v for ps in self.comparisons.values() for p in ps for v in p})
        self.design: dict | None = None
        self.look: Plan | None = None

    def _start(self, view: View) -> list[str]:
        settings, notes = self.settings, []
        results.prepare_results(self.plan.results)
        key = design_key(self.plan, self.study)
        self.design = _design(self.plan, self.study, self.comparisons, self.looks, settings,
                              key, notes, view.runs)
        results.record_design(self.plan.results, key, self.design)
        self.looks = list(self.design["looks"])
        n_pairs = sum(len(ps) for ps in self.comparisons.values())
        kind = self.design.get("spending", "pocock")
        spent = verdict.spending(self.looks, settings.alpha, kind)
        notes.append(f"--until-decided: {n_pairs} pair(s) of {len(self.todo)} variant(s); "
                     f"looks at {', '.join(map(str, self.looks))} seeds; α "
                     f"{settings.alpha:g} spent as {', '.join(f'{a:.4f}' for a in spent)} "
                     f"({SPENT[kind]}); margin ±{settings.margin:g} points")
        return notes

    def _queue(self) -> Queue:
        n = self.looks[self.k]
        self.k += 1
        self.look = replace(self.plan, variants=[registry.get(v) for v in self.todo], seeds=n)
        return Queue(self.look, f"look {self.k}/{len(self.looks)}: {n} seeds of "
                                f"{', '.join(self.todo)}")

    def next(self, view: View) -> Queue | Stop:
        if self.design is None:
            return self._queue().after(self._start(view))
        k = self.k
        # a failed seed is run: the look goes on
        if view.step_code != Exit.DONE and view.unfinished(self.look):
            return Stop(f"look {k} did not finish; rerun the same command to go on from it",
                        view.step_code)
        seq = replay(self.plan, view.runs(), self.comparisons, self.design, self.settings)
        pairs = [p for ps in seq.pairs.values() for p in ps]
        now = [p for p in pairs if p.look == k and p.verdict != verdict.UNDECIDED]
        still = [p for p in pairs if p.verdict == verdict.UNDECIDED]
        notes = [f"look {k}/{len(self.looks)} ({self.looks[k - 1]} seeds): "
                 f"{len(pairs) - len(still)} of {len(pairs)} pair(s) decided" + (
                     f", {len(now)} now: " + "; ".join(
                         f"{p.a} {p.verdict} than {p.b}" if p.verdict != verdict.EQUIVALENT
                         else f"{p.a} equivalent to {p.b}" for p in now) if now else "")]
        if not still:
            return Stop("every pair is decided; `ablation report` shows the verdicts",
                        Exit.DONE, notes=tuple(notes))
        notes.append(f"  open: {'; '.join(_describe(p) for p in still)}")
        if self.k >= len(self.looks):
            return Stop(f"stopped at --max-seeds {self.max_seeds}: {len(still)} pair(s) still "
                        "undecided; `ablation report` shows them with the seeds a decision "
                        "would need", Exit.DONE, notes=tuple(notes))
        self.todo = seq.open_variants
        return self._queue().after(notes)

    def first_look(self) -> int:
        return self.looks[0]

    def seeds_words(self) -> str:
        first = self.plan.first_seed
        return (f"seeds from {first} in looks of {', '.join(map(str, self.looks))} (more "
                "only where a pair is undecided)")

    def dry_run(self, view: View, out=sys.stdout) -> int:
        """The design and the first look's jobs (later looks depend on its verdicts)."""
        n = self.first_look()
        look = replace(self.plan, variants=[registry.get(v) for v in self.todo], seeds=n)
        jobs = look.jobs()
        print(f"recipe {self.plan.recipe.id}; --until-decided: looks at "
              f"{', '.join(map(str, self.looks))} seeds", file=out)
        print(f"look 1: {len(jobs)} job(s), {n} seeds of {', '.join(self.todo)}; later looks "
              "add seeds only to the variants of pairs still undecided", file=out)
        list_jobs(jobs, view.states(), out)
        print("nothing was run (--dry-run)", file=out)
        return Exit.DONE
