"""Statistics over runs: per-variant summaries (mean ± std over seeds), the verdicts of
each comparison's pairs (ablation.verdict, on finished runs only), the test set's
resolution, and the layer-response trend. ablation.report.markdown formats them."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablation import study as studies
from ablation import verdict
from ablation.protocol import JobState
from ablation.report.load import Run

FLAT = 0.05  # a fitted change below 5 % of the mean response over the network is "flat"


def summarise(runs_by_variant: dict[str, list[Run]], published: dict[str, float]
              ) -> pd.DataFrame:
    """One row per variant: counts, sizes, accuracy over seeds (fractions), error (%)."""
    rows = []
    for v, rs in runs_by_variant.items():
        s = [r.summary for r in rs]

        def col(key: str, ss=s) -> list[float]:
            return [float(x[key]) for x in ss if x.get(key) is not None]

        finals = col("final_val_accuracy")
        h5 = [x for x in col("h5_bytes") if x]
        rows.append({
            "variant": v, "seeds": len(rs),
            "params_total": s[0].get("params_total"),
            "params_trainable": s[0].get("params_trainable"),
            "params_non_trainable": s[0].get("params_non_trainable"),
            "h5_mb": float(np.mean(h5)) / 1e6 if h5 else math.nan,
            "epochs_min": min(x.get("epochs_done", 0) for x in s),
            "epochs_max": max(x.get("epochs_done", 0) for x in s),
            "best_mean": _mean(col("best_val_accuracy")),
            "best_std": _std(col("best_val_accuracy")),
            "final_mean": _mean(finals), "final_std": _std(finals),
            "error_mean": 100 * (1 - _mean(finals)) if finals else math.nan,
            "error_std": 100 * _std(finals) if len(finals) > 1 else math.nan,
            "published_error": published.get(v, math.nan),
            "train_seconds": _mean([x for x in col("train_seconds") if x]),
            "images_per_second": _mean([x for x in col("images_per_second") if x]),
        })
    return pd.DataFrame(rows)


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _std(values: list[float]) -> float:
    """Sample std (ddof 1); NaN below two values."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan


def finished(runs: list[Run]) -> list[Run]:
    """Runs that trained every planned epoch and ended `done`: the only ones a verdict
    pools (partial, running, interrupted and failed runs never are)."""
    return [r for r in runs if r.summary.get("status") == JobState.DONE
            and (r.summary.get("epochs_done") or 0) >= r.summary["recipe"]["epochs"]
            and r.summary.get("final_val_accuracy") is not None]


def finals_by_variant(runs: list[Run]) -> dict[str, dict[int, float]]:
    """variant -> {seed: final test accuracy} over finished runs."""
    out: dict[str, dict[int, float]] = {}
    for r in finished(runs):
        out.setdefault(r.variant, {})[r.seed] = float(r.summary["final_val_accuracy"])
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


@dataclass
class Verdicts:
    """A recipe's verdicts: per comparison key, its pairs; and how they were reached."""

    pairs: dict[str, list[verdict.Pair]]
    settings: verdict.Settings
    spread: verdict.Spread | None
    design: dict | None  # the sequential design, when `--until-decided` recorded one
    looks_done: int = 0


def verdicts(study: studies.Study, runs: list[Run], settings: verdict.Settings,
             design: dict | None = None) -> Verdicts:
    """Every comparison's pairs judged on the recipe's finished runs: at one look of all
    matched seeds, or by replaying the recorded sequential design; seeds needed from the
    spread of the deltas pooled over all of them."""
    finals = finals_by_variant(runs)
    comparisons = {c.key: comparison_pairs(c) for c in study.comparisons}
    done = 0
    pairs = {k: verdict.compare(finals, ps, settings) for k, ps in comparisons.items()}
    if design:  # the design's own pairs by its looks; any others at one look
        chosen = design.get("variants") or study.variant_names
        seq = verdict.sequential(finals, pairs_among(study, chosen), list(design["looks"]),
                                 settings)
        done = seq.looks_done
        for k, judged in seq.pairs.items():
            by_pair = {(p.a, p.b): p for p in judged}
            pairs[k] = [by_pair.get((p.a, p.b), p) for p in pairs[k]]
    spread = verdict.pooled_spread([p for ps in pairs.values() for p in ps])
    for ps in pairs.values():
        verdict.fill_seeds_needed(ps, spread, settings, len(ps))
    return Verdicts(pairs, settings, spread, design, done)


def resolution(runs: list[Run]) -> tuple[float, int, float] | None:
    """The binomial standard error, in points, of one final test accuracy: (SE, test
    images, mean accuracy) over the finished runs."""
    done = finished(runs)
    if not done:
        return None
    n = int(done[0].summary.get("test_images") or 0)
    acc = float(np.mean([r.summary["final_val_accuracy"] for r in done]))
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
