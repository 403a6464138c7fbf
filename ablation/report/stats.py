"""Statistics over runs: per-variant summaries (mean ± std over seeds), Welch's t-test
between variants with Holm's correction, and the layer-response trend. Everything
returns numbers in DataFrames; ablation.report.markdown formats them."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd

from ablation.report.load import Run

ALPHA = 0.05
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


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def welch(finals: dict[str, list[float]]) -> pd.DataFrame:
    """Welch's t-test on final test accuracy for each pair, Holm-corrected.

    Columns: a, b, diff_pp (A − B in points), p, p_holm (NaN where either side has
    fewer than two seeds), real (p_holm < 0.05, or None when untestable).
    """
    from scipy import stats

    rows = []
    for a, b in itertools.combinations(finals, 2):
        xa, xb = finals[a], finals[b]
        diff = (np.mean(xa) - np.mean(xb)) * 100 if xa and xb else math.nan
        p = math.nan
        if len(xa) >= 2 and len(xb) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
            if math.isnan(p):  # zero spread on both sides
                p = 0.0 if diff != 0 else 1.0
        rows.append({"a": a, "b": b, "diff_pp": diff, "p": p})
    df = pd.DataFrame(rows, columns=["a", "b", "diff_pp", "p"])
    tested = df["p"].notna()
    df["p_holm"] = math.nan
    if tested.any():
        df.loc[tested, "p_holm"] = holm(df.loc[tested, "p"].tolist())
    df["real"] = [None if math.isnan(q) else bool(q < ALPHA) for q in df["p_holm"]]
    return df


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
