"""The report's design-space section (a study's `[[space]]`, ablation.study.spaces):
each space's models' errors as an empirical distribution function, plain and normalised
for complexity (multiply-adds), a two-sample Kolmogorov-Smirnov test between every two
spaces (SciPy's), and the best of n models, as Radosavovic et al. 2019 compare spaces
rather than single models."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from ablation import study as studies
from ablation.report import figures, markdown, stats
from ablation.results import Split
from ablation.store import Run


def _errors(space, runs: list[Run], split: Split) -> pd.DataFrame:
    """One row per trained model of the space: its error % (100 − final accuracy, the
    mean over its seeds), multiply-adds and parameters."""
    rows = []
    for model in space.models:
        done = [r for r in runs if r.variant == model and r.record.finished
                and r.record.number(split.final) is not None]
        if done:
            rows.append({"model": model,
                         "error": 100 * (1 - float(np.mean([r.record.number(split.final)
                                                            for r in done]))),
                         "macs": done[0].record.macs, "params": done[0].record.params_total,
                         "seeds": len(done), **space.drawn(model)})
    return pd.DataFrame(rows)


def best_of_n(trained: int) -> int:
    """The n of the best-of-n column: a quarter of the models trained (at least 1), so
    the subsets differ."""
    return max(1, trained // 4)


def section(study: studies.Study, runs: list[Run], fig_dir: Path, rel: str, split: Split,
            also: tuple[str, ...] = ()) -> list[str]:
    """The spaces' block of one recipe's report; nothing without `[[space]]`."""
    if not study.spaces:
        return []
    frames = {sp.name: _errors(sp, runs, split) for sp in study.spaces}
    out = ["### Design spaces", "",
           f"Each space's models, sampled from its ranges (docs/studies.md), trained once "
           f"each under this recipe: final {split.name} error, 100 − final accuracy.", ""]
    table = []
    for sp in study.spaces:
        f = frames[sp.name]
        row = {"space": sp.name, "base": sp.base,
               "fields": ", ".join(f"{k} {_spec(dict(v))}" for k, v in sp.fields),
               "trained": f"{len(f)}/{sp.samples}"}
        if len(f):
            e = f["error"].to_numpy()
            best = f.loc[f["error"].idxmin()]
            n = best_of_n(len(f))
            mean, lo, hi = stats.best_of(e, n, seed=stats_seed(sp.name))
            row.update({"median error %": f"{np.median(e):.2f}",
                        "best error % (model)": f"{best['error']:.2f} ({best['model']})",
                        "best of n: n": str(n),
                        "best of n: expected (middle 95 %)": f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"})
        table.append(row)
    out += [markdown.table(pd.DataFrame(table).fillna("–")), "",
            "'Best of n': the lowest error among n models drawn from the space, expected "
            "over every subset of n of the models trained, and the middle 95 % of it over "
            "2,000 random subsets; n is a quarter of the models trained, so below 8 it is "
            "1: the mean error, and the range of the models' errors.", ""]
    trained = {s: f for s, f in frames.items() if len(f) >= 2}
    if len(trained) < 1:
        return [*out, "No space has two trained models yet: no distributions.", ""]
    known = {s: f for s, f in trained.items() if f["macs"].notna().all()}
    weights = stats.complexity_weights({s: f["macs"].tolist() for s, f in known.items()}) \
        if len(known) == len(trained) and len(known) > 1 else {}
    unshared = bool(weights) and not all(w.sum() > 0 for w in weights.values())
    if unshared:  # no complexity all spaces reach: nothing to normalise over
        weights = {}
    path = fig_dir / "spaces-edf.png"
    figures.plot_spaces(path, {s: f["error"].to_numpy() for s, f in trained.items()},
                        weights, study.title, split.name, also)
    out += [f"![design spaces: error distributions]({rel}/{path.name})", ""]
    if unshared:
        out += [f"Not normalised for complexity: no one of {stats.COMPLEXITY_BINS} "
                "log-multiply-add bins holds models of every space.", ""]
    if weights:
        shared = {s: int((w > 0).sum()) for s, w in weights.items()}
        out += ["Right: normalised for complexity (Radosavovic et al. 2019): models "
                f"weighted so that each of {stats.COMPLEXITY_BINS} log-multiply-add bins "
                "that every space reaches weighs the same, the others 0 (models counted: "
                + ", ".join(f"{s} {k}" for s, k in shared.items()) + ").", ""]
    pairs = list(itertools.combinations(trained, 2))
    if pairs:
        from scipy.stats import ks_2samp

        rows = []
        for a, b in pairs:
            test = ks_2samp(trained[a]["error"], trained[b]["error"])
            gap = np.median(trained[a]["error"]) - np.median(trained[b]["error"])
            rows.append({"A": a, "B": b, "models": f"{len(trained[a])}, {len(trained[b])}",
                         "median error A − B, points": f"{gap:+.2f}",
                         "KS statistic": f"{test.statistic:.3f}",
                         "p (two-sided)": f"{test.pvalue:.3g}"})
        out += ["Do two spaces' error distributions differ? A two-sample Kolmogorov-Smirnov "
                "test (SciPy's `ks_2samp`, exact where it can be) on the plain errors; a small "
                "p says they differ somewhere, not where, and few models make a large p "
                "weak evidence of sameness.", "", markdown.table(pd.DataFrame(rows)), ""]
    return out


def stats_seed(name: str) -> int:
    return sum(map(ord, name))


def _spec(spec: dict) -> str:
    if "choices" in spec:
        return "{" + ", ".join(map(str, spec["choices"])) + "}"
    text = f"{spec['min']}–{spec['max']}"
    if spec.get("log"):
        text += " (log)"
    if spec.get("step"):
        text += f" (step {spec['step']})"
    return text

