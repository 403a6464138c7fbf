"""Statistics over runs for the report: per-variant summaries (mean ± std over seeds),
the layer-response trend and the expected best of k settings. The verdicts of each
comparison's pairs are `ablation.judge`'s (the policies replay them too);
ablation.report.markdown formats both."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablation import inference
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
            # the test set under the recipe's test-time augmentation (airbench's headline)
            **({"tta_mean": _mean(tta), "tta_std": _std(tta),
                "tta_interval": t_interval(tta) if len(tta) > 1 else None}
               if (tta := col("final_tta_accuracy")) and split == TEST else
               {"tta_mean": math.nan, "tta_std": math.nan, "tta_interval": None}),
            "error_mean": 100 * (1 - _mean(finals)) if finals else math.nan,
            "error_std": 100 * _std(finals) if len(finals) > 1 else math.nan,
            "published_error": published.get(v, math.nan),
            "train_seconds": _mean([x for x in col("train_seconds") if x]),
            # the median: one seed that ran alone on the machine does not move it
            "images_per_second": _median([x for x in col("images_per_second") if x]),
            **inference_summary(s),
        })
    return pd.DataFrame(rows)


def inference_summary(records: list) -> dict:
    """A variant's inference timing: from the runs that measured it (one per device
    kind, `ablation.inference`) on the device most of them ran on, the median of each
    figure; its device and how many devices measured it."""
    timed = [r for r in records if r.infer_images_per_second is not None]
    if not timed:
        return {**dict.fromkeys(inference.FIELDS, math.nan), "infer_device": None,
                "infer_devices": 0}
    devices = pd.Series([r.device or "?" for r in timed])
    device = devices.value_counts().index[0]  # the most common; ties: the first seen
    on = [r for r in timed if (r.device or "?") == device]
    return {**{k: _median([float(getattr(r, k)) for r in on]) for k in inference.FIELDS},
            "infer_device": device, "infer_devices": devices.nunique()}


def frontier(costs: list[float], accuracies: list[float], lower_is_better: bool = True
             ) -> list[bool]:
    """Which points are on the Pareto frontier of cost against accuracy: no other
    point is at least as cheap and as accurate and better in one (NaN: never on it).
    `lower_is_better=False` for a cost that is a speed (images/s)."""
    c = np.asarray(costs, dtype=float) * (1 if lower_is_better else -1)
    a = np.asarray(accuracies, dtype=float)
    ok = ~(np.isnan(c) | np.isnan(a))
    on = []
    for i in range(len(c)):
        dominated = ok & (c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))
        on.append(bool(ok[i] and not dominated.any()))
    return on


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The t interval of the values' mean (SciPy's), in their units; two values or more."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return float(low), float(high)


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


# --- design spaces (Radosavovic et al. 2019) ---------------------------------------------

COMPLEXITY_BINS = 8  # log-complexity bins of the normalised EDF


def complexity_weights(complexity: dict[str, list[float]], bins: int = COMPLEXITY_BINS
                       ) -> dict[str, np.ndarray]:
    """Per space, a weight for each model such that every complexity bin (equal widths
    in log complexity over all spaces' models) that all spaces reach weighs the same,
    and a model in a bin some space does not reach weighs 0; each space's weights sum to
    1 (all 0 when no bin is shared). Radosavovic et al. 2019's normalised comparison:
    spaces of different typical sizes are compared as if their sizes were distributed
    alike."""
    logs = {s: np.log10(np.asarray(c, dtype=float)) for s, c in complexity.items()}
    every = np.concatenate(list(logs.values()))
    lo, hi = every.min(), every.max()
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    where = {s: np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
             for s, v in logs.items()}
    shared = set(range(bins))
    for b in where.values():
        shared &= set(b.tolist())
    out = {}
    for s, b in where.items():
        counts = np.bincount(b, minlength=bins)
        w = np.array([1.0 / counts[i] if i in shared else 0.0 for i in b])
        out[s] = w / w.sum() if w.sum() else w
    return out


def edf(values, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """The (weighted) empirical distribution function: sorted values and the share of
    weight at or below each."""
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) / len(v) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(v, kind="stable")
    return v[order], np.cumsum(w[order])


def best_of(errors, n: int, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The best (lowest) error of `n` models drawn from a space, from the N trained:
    its expected value over every subset of n (exact, `expected_best` without
    replacement) and the middle 95 % of it over `draws` random subsets (without
    replacement: a subset's minimum, unlike a bootstrap resample's, is a minimum of n
    distinct models)."""
    e = np.asarray(errors, dtype=float)
    mean = -expected_best(-e, n)
    rng = np.random.default_rng(seed)
    mins = np.array([e[rng.choice(len(e), n, replace=False)].min() for _ in range(draws)])
    lo, hi = np.percentile(mins, [2.5, 97.5])
    return float(mean), float(lo), float(hi)
