"""`ablation run --until-decided`: more seeds only where a comparison is still undecided.

Seeds are run in looks fixed in advance (ablation.verdict.LOOKS, up to --max-seeds).
After each look the verdicts are replayed from the run folders (ablation.verdict.
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
from collections.abc import Callable
from dataclasses import asdict, replace

from ablation import registry, results, verdict
from ablation import study as studies
from ablation.errors import AblationError
from ablation.executors import Executor, LineSink
from ablation.protocol import Exit
from ablation.report import stats
from ablation.report.load import for_study, load_runs
from ablation.runner import Plan, run, unfinished


def replay(plan: Plan, study: studies.Study, comparisons: dict[str, list[tuple[str, str]]],
           design: dict, settings: verdict.Settings) -> verdict.Sequential:
    """The design's verdicts on what the results folder holds now: each variant's runs
    under its recipe (a tuned comparison's variants each have their own), from the plan's
    first seed (a tuned comparison's seeds follow the tuning seeds: they count from 0
    here); diverged runs left out, failed seeds not waited for."""
    runs = [r for r in for_study(load_runs(plan.results, warn=lambda _msg: None), study)
            if r.summary.get("recipe_id") in {x.id for x in plan.recipes_of(r.variant)}
            and r.seed >= plan.first_seed and r.summary.get("phase") == plan.phase]
    return stats.replay(runs, comparisons, design, settings, plan.first_seed)


SPENT = {"obf": "O'Brien-Fleming-type, boundaries from the looks' joint distribution",
         "pocock": "Pocock-type, union bound: a design of 0.4, replayed as recorded"}


def _design(plan: Plan, study: studies.Study, comparisons: dict, looks: list[int],
            settings: verdict.Settings, key: str, out) -> dict:
    """The design to run: a new one (O'Brien-Fleming-type), the recorded one, or the
    recorded one extended to a raised --max-seeds while α is left to spend."""
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
    done = replay(plan, study, comparisons, known, settings).looks_done
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
    print(f"extending the design: looks {old} -> {new}; the {done} look(s) analysed keep "
          "their boundaries, the α left is spent over the new looks", file=out, flush=True)
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


def run_until_decided(plan: Plan, study: studies.Study, max_seeds: int,
                      settings: verdict.Settings,
                      executor_factory: Callable[[LineSink], Executor],
                      out=sys.stdout) -> int:
    """Run the looks until every pair among the plan's variants is decided, or the
    last look is done. Returns the exit code (a look that fails or is interrupted
    returns the runner's code; rerun the same command to go on)."""
    looks = verdict.looks_for(max_seeds)
    comparisons = stats.pairs_among(study, [v.name for v in plan.variants])
    if not comparisons:
        raise AblationError("--until-decided needs two variants of one of the study's "
                            "comparisons among those selected")
    results.prepare_results(plan.results)
    key = design_key(plan, study)
    design = _design(plan, study, comparisons, looks, settings, key, out)
    results.record_design(plan.results, key, design)
    looks = list(design["looks"])
    n_pairs = sum(len(ps) for ps in comparisons.values())
    todo = sorted({v for ps in comparisons.values() for p in ps for v in p})
    kind = design.get("spending", "pocock")
    print(f"--until-decided: {n_pairs} pair(s) of {len(todo)} variant(s); looks at "
          f"{', '.join(map(str, looks))} seeds; α {settings.alpha:g} spent as "
          f"{', '.join(f'{a:.4f}' for a in verdict.spending(looks, settings.alpha, kind))} "
          f"({SPENT[kind]}); margin ±{settings.margin:g} points", file=out, flush=True)
    for k, n in enumerate(looks, 1):
        print(f"look {k}/{len(looks)}: {n} seeds of {', '.join(todo)}", file=out, flush=True)
        look = replace(plan, variants=[registry.get(v) for v in todo], seeds=n)
        code = run(look, executor_factory, out)
        if code != Exit.DONE and unfinished(look):  # a failed seed is run: the look goes on
            print(f"look {k} did not finish; rerun the same command to go on from it",
                  file=out, flush=True)
            return code
        seq = replay(plan, study, comparisons, design, settings)
        pairs = [p for ps in seq.pairs.values() for p in ps]
        now = [p for p in pairs if p.look == k and p.verdict != verdict.UNDECIDED]
        still = [p for p in pairs if p.verdict == verdict.UNDECIDED]
        print(f"look {k}/{len(looks)} ({n} seeds): {len(pairs) - len(still)} of {len(pairs)} "
              f"pair(s) decided" + (f", {len(now)} now: " + "; ".join(
                  f"{p.a} {p.verdict} than {p.b}" if p.verdict != verdict.EQUIVALENT
                  else f"{p.a} equivalent to {p.b}" for p in now) if now else ""),
              file=out, flush=True)
        if not still:
            print("every pair is decided; `ablation report` shows the verdicts", file=out,
                  flush=True)
            return Exit.DONE
        print(f"  open: {'; '.join(_describe(p) for p in still)}", file=out, flush=True)
        todo = seq.open_variants
    print(f"stopped at --max-seeds {max_seeds}: {len(still)} pair(s) still undecided; "
          "`ablation report` shows them with the seeds a decision would need", file=out,
          flush=True)
    return Exit.DONE
