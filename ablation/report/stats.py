"""Statistics over runs: per-variant summaries (mean ± std over seeds), the verdicts of
each comparison's pairs (ablation.verdict, on finished runs only), the test set's
resolution, and the layer-response trend. ablation.report.markdown formats them."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablation import study as studies
from ablation import verdict
from ablation.protocol import JobState
from ablation.results import TEST, Split
from ablation.store import Run

FLAT = 0.05  # a fitted change below 5 % of the mean response over the network is "flat"


def summarise(runs_by_variant: dict[str, list[Run]], published: dict[str, float],
              split: Split = TEST) -> pd.DataFrame:
    """One row per variant: counts, sizes, accuracy on `split` over seeds (fractions),
    error (%)."""
    rows = []
    for v, rs in runs_by_variant.items():
        s = [r.record for r in rs]

        def col(key: str, ss=s) -> list[float]:
            return [v for x in ss if (v := x.number(key)) is not None]

        finals = col(split.final)
        h5 = [x for x in col("h5_bytes") if x]
        rows.append({
            "variant": v, "seeds": len(rs),
            "params_total": s[0].params_total,
            "params_trainable": s[0].params_trainable,
            "params_non_trainable": s[0].params_non_trainable,
            "macs": s[0].macs,
            "h5_mb": float(np.mean(h5)) / 1e6 if h5 else math.nan,
            "epochs_min": min(x.epochs_done for x in s),
            "epochs_max": max(x.epochs_done for x in s),
            "best_mean": _mean(col(split.best)),
            "best_std": _std(col(split.best)),
            "final_mean": _mean(finals), "final_std": _std(finals),
            "error_mean": 100 * (1 - _mean(finals)) if finals else math.nan,
            "error_std": 100 * _std(finals) if len(finals) > 1 else math.nan,
            "published_error": published.get(v, math.nan),
            "train_seconds": _mean([x for x in col("train_seconds") if x]),
            # the median: one seed that ran alone on the machine does not move it
            "images_per_second": _median([x for x in col("images_per_second") if x]),
        })
    return pd.DataFrame(rows)


def _median(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.median(vals)) if vals else math.nan


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _std(values: list[float]) -> float:
    """Sample std (ddof 1); NaN below two values."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan


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
    return finals, stopped, step, gone


def replay(runs: list[Run], comparisons: dict[str, list[tuple[str, str]]], design: dict,
           settings: verdict.Settings, first_seed: int = 0, split: Split = TEST
           ) -> verdict.Sequential:
    """A recorded --until-decided design replayed on `runs`: what the runner decides
    between looks and what the report shows, from one place (diverged runs left out,
    failed seeds not waited for)."""
    finals, stopped, step, _ = _prepared(runs, split, first_seed)
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
    finals, _, step, gone = _prepared(runs, split, first_seed)
    comparisons = {c.key: comparison_pairs(c) for c in study.comparisons}
    done, beyond = 0, {}
    pairs = {k: verdict.compare(finals, ps, settings, resolution=step)
             for k, ps in comparisons.items()}
    if design:  # the design's own pairs by its looks; any others at one look
        chosen = design.get("variants") or study.variant_names
        seq = replay(runs, pairs_among(study, chosen), design, settings, first_seed, split)
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
    return Verdicts(pairs, settings, spread, design, done, counts, beyond)


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


def response_trend(responses: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the slope of a least-squares line of the layer-response std (mean
    over seeds) on layer index, the change it fits over the whole network relative to
    the mean response, and the trend that says: falls, rises, or flat (under 5 %)."""
    rows = []
    for v, g in responses.groupby("variant", sort=False):
        by_layer = g.groupby("index")["std"]
        mean = by_layer.mean()
        slope = float(np.polyfit(mean.index.to_numpy(float), mean.to_numpy(float), 1)[0]) \
            if len(mean) > 1 else math.nan
        # the fitted change over the whole network, relative to the mean response
        change = slope * (len(mean) - 1) / float(mean.mean()) if len(mean) > 1 else math.nan
        trend = ("flat" if abs(change) < FLAT else "falls" if change < 0 else "rises") \
            if not math.isnan(change) else "?"
        rows.append({"variant": v, "layers": len(mean), "seeds": g["seed"].nunique(),
                     "first": float(mean.iloc[0]), "last": float(mean.iloc[-1]),
                     "slope": slope, "change": change, "trend": trend})
    return pd.DataFrame(rows, columns=["variant", "layers", "seeds", "first", "last", "slope",
                                       "change", "trend"])


def expected_best(values, k: int, replace: bool = False) -> float:
    """The expected best of `k` settings tried, from the N observed (Dodge et al. 2019,
    "Show Your Work"): drawn without replacement, Tang et al. 2020's unbiased estimator
    sum_i v(i)·C(i−1, k−1)/C(N, k) over the sorted values; with `replace`, Dodge et al.'s
    sum_i v(i)·[(i/N)^k − ((i−1)/N)^k]."""
    from scipy.special import comb

    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if not 1 <= k <= (10 ** 9 if replace else n):
        raise ValueError(f"k must be 1..{n}, got {k}")
    i = np.arange(1, n + 1)
    if replace:
        w = (i / n) ** k - ((i - 1) / n) ** k
    else:
        w = comb(i - 1, k - 1, exact=False) / comb(n, k, exact=False)
    return float(np.sum(w * v))
