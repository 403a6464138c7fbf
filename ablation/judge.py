"""Verdicts from run records: a comparison's pairs judged on its finished, converged
runs by the decision rule (`ablation.verdict`), at one look or by replaying a recorded
`--until-decided` design; which runs diverged; the test set's resolution. The report
shows these verdicts and `--until-decided` decides its next look by them: one place, so
the two always agree (docs/statistics.md)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ablation import study as studies
from ablation import verdict
from ablation.protocol import JobState
from ablation.results import TEST, Split
from ablation.store import Run


def finished(runs: list[Run], split: Split = TEST) -> list[Run]:
    """Runs that trained every planned epoch and ended `done` with an accuracy on `split`:
    the only ones a verdict pools (partial, running, interrupted and failed runs never
    are)."""
    return [r for r in runs if r.record.finished and r.record.number(split.final) is not None]


def finals_by_variant(runs: list[Run], split: Split = TEST) -> dict[str, dict[int, float]]:
    """variant -> {seed: final accuracy on `split`} over finished runs."""
    out: dict[str, dict[int, float]] = {}
    for r in finished(runs, split):
        out.setdefault(r.variant, {})[r.seed] = r.record.number(split.final)
    return out


def comparison_pairs(cmp: studies.Comparison) -> list[tuple[str, str]]:
    return list(itertools.combinations(cmp.variants, 2))


def pairs_among(study: studies.Study, names) -> dict[str, list[tuple[str, str]]]:
    """The study's comparison pairs whose two variants are both among `names`, by
    comparison key (comparisons with none left out)."""
    chosen = set(names)
    out = {c.key: [p for p in comparison_pairs(c) if set(p) <= chosen]
           for c in study.comparisons}
    return {k: ps for k, ps in out.items() if ps}


CHANCE_SE = 3  # within 3 binomial SEs of chance: a run that learned nothing
LEARNED_SE = 6  # ... while the recipe's typical run is 6 SEs above chance


def diverged(runs: list[Run], split: Split = TEST) -> set[tuple[str, int]]:
    """(variant, seed) of the runs that diverged: stopped on a NaN loss, or ended with an
    accuracy within 3 binomial standard errors of chance while the recipe's median
    finished run is more than 6 above it (so a short or tiny recipe, where no run learns
    much, never calls its runs diverged). docs/statistics.md."""
    out = {(r.variant, r.seed) for r in runs if r.record.status == JobState.FAILED
           and "NaN" in str(r.record.error or "")}
    done = finished(runs, split)
    if not done:
        return out
    s0 = done[0].record
    chance = 1.0 / float(s0.num_classes or 10)
    n = float(s0.number(split.images) or 0)
    if n <= 0:
        return out
    se = math.sqrt(chance * (1 - chance) / n)
    median = float(np.median([r.record.number(split.final) for r in done]))
    if median > chance + LEARNED_SE * se:
        out |= {(r.variant, r.seed) for r in done
                if r.record.number(split.final) <= chance + CHANCE_SE * se}
    return out


def ended(runs: list[Run]) -> dict[str, set[int]]:
    """variant -> the seeds whose runs ended (done or failed): what a sequential design's
    look waits for (a failed seed is run, and left out)."""
    out: dict[str, set[int]] = {}
    for r in runs:
        if r.record.status in (JobState.DONE, JobState.FAILED):
            out.setdefault(r.variant, set()).add(r.seed)
    return out


@dataclass
class Verdicts:
    """A recipe's verdicts: per comparison key, its pairs; and how they were reached."""

    pairs: dict[str, list[verdict.Pair]]
    settings: verdict.Settings
    spread: verdict.Spread | None
    design: dict | None  # the sequential design, when `--until-decided` recorded one
    looks_done: int = 0
    diverged: dict[str, int] = field(default_factory=dict)  # variant -> diverged seeds
    beyond: dict[str, int] = field(default_factory=dict)  # seeds past a design's last look
    resolution: tuple[float, int, float] | None = None  # `resolution` of these runs
    # variant -> its runs with a history that did not finish (none of them is pooled)
    unfinished: dict[str, int] = field(default_factory=dict)


def _prepared(runs: list[Run], split: Split, first_seed: int):
    """What the verdicts are judged on: the converged runs' final accuracies by variant
    and seed (seeds counted from `first_seed`), the seeds whose runs ended, one test image
    in points (the resolution), and the diverged (variant, seed)s left out."""
    gone = diverged(runs, split)
    kept = [r for r in runs if (r.variant, r.seed) not in gone]
    finals = {v: {s - first_seed: a for s, a in f.items()}
              for v, f in finals_by_variant(kept, split).items()}
    stopped = {v: {s - first_seed for s in seeds} for v, seeds in ended(runs).items()}
    res = resolution(runs, split)
    step = 100.0 / res[1] if res and res[1] else 0.0
    return finals, stopped, step, gone, res


def replay(runs: list[Run], comparisons: dict[str, list[tuple[str, str]]], design: dict,
           settings: verdict.Settings, first_seed: int = 0, split: Split = TEST
           ) -> verdict.Sequential:
    """A recorded --until-decided design replayed on `runs`: what the runner decides
    between looks and what the report shows, from one place (diverged runs left out,
    failed seeds not waited for)."""
    finals, stopped, step, _, _ = _prepared(runs, split, first_seed)
    return verdict.sequential(finals, comparisons, list(design["looks"]), settings,
                              design.get("spending", "pocock"), stopped, design.get("fixed"),
                              step)


def design_settings(study: studies.Study, design: dict | None,
                    margin: float | None) -> verdict.Settings:
    """The study's analysis settings for a recipe or tuning group: `margin` if given, else
    the recorded design's margin (a design is judged as it was run), else the study's."""
    settings = study.analysis.replace(margin=margin)
    if design and margin is None:
        settings = settings.replace(margin=design.get("margin"))
    return settings


def verdicts(study: studies.Study, runs: list[Run], settings: verdict.Settings,
             design: dict | None = None, split: Split = TEST, first_seed: int = 0
             ) -> Verdicts:
    """Every comparison's pairs judged on the recipe's finished, converged runs (diverged
    ones left out and counted): at one look of all matched seeds, or by replaying the
    recorded sequential design; seeds needed from the spread of the deltas pooled over all
    of them. `first_seed`: the runs' seeds start there (a tuned comparison's follow the
    tuning seeds); the looks count from it."""
    finals, _, step, gone, res = _prepared(runs, split, first_seed)
    pooled = set(map(id, finished(runs, split)))
    unfinished: dict[str, int] = {}
    for r in runs:
        if r.history is not None and len(r.history) and id(r) not in pooled:
            unfinished[r.variant] = unfinished.get(r.variant, 0) + 1
    seq = None
    if design:  # the design's own pairs by its looks; any others at one look
        chosen = design.get("variants") or study.variant_names
        seq = replay(runs, pairs_among(study, chosen), design, settings, first_seed, split)
    comparisons = {c.key: comparison_pairs(c) for c in study.comparisons}
    done, beyond = 0, {}
    pairs = {k: verdict.compare(finals, ps, settings, resolution=step)
             for k, ps in comparisons.items()}
    if seq:
        done, beyond = seq.looks_done, seq.beyond
        for k, judged in seq.pairs.items():
            by_pair = {(p.a, p.b): p for p in judged}
            pairs[k] = [by_pair.get((p.a, p.b), p) for p in pairs[k]]
    counts: dict[str, int] = {}
    for v, _ in gone:
        counts[v] = counts.get(v, 0) + 1
    for ps in pairs.values():
        for p in ps:
            p.a_diverged, p.b_diverged = counts.get(p.a, 0), counts.get(p.b, 0)
    spread = verdict.pooled_spread([p for ps in pairs.values() for p in ps])
    for ps in pairs.values():
        verdict.fill_seeds_needed(ps, spread, settings, len(ps))
    return Verdicts(pairs, settings, spread, design, done, counts, beyond, res, unfinished)


def resolution(runs: list[Run], split: Split = TEST) -> tuple[float, int, float] | None:
    """The binomial standard error, in points, of one final accuracy on `split`: (SE,
    images, mean accuracy) over the finished runs."""
    done = finished(runs, split)
    if not done:
        return None
    n = int(done[0].record.number(split.images) or 0)
    acc = float(np.mean([r.record.number(split.final) for r in done]))
    if n <= 0:
        return None
    return 100 * math.sqrt(acc * (1 - acc) / n), n, acc
