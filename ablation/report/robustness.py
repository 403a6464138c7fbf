"""A comparison's robustness section, from the runs' robustness.csv (`ablation evaluate`).

Per variant, mean ± std over seeds: the accuracy on the evaluated clean images, on the
corrupted ones (the mean over corruptions and severities), the mean corruption error
(mCE) three ways (docs/robustness.md), and each extra test set's accuracy and its
change from clean. Then the error per corruption, a figure, and verdicts per pair on
the corrupted accuracy, on its change from clean, and on each extra set, by the same
rule as the test accuracy's (`ablation.verdict`): each measure its own family, its α
split over the comparison's pairs.

Rows are pooled only under one corruption source and one number of images (the most
common among the comparison's runs; any others are said and left out).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd

from ablation import judge, results, robustness, verdict
from ablation.data import corruptions as defs
from ablation.report import figures, markdown
from ablation.report.frames import per_run_frame
from ablation.store import Run
from ablation.study.robustness import Settings


def frame(runs: list[Run]) -> pd.DataFrame:
    """One row per (run, test set, corruption, severity) of the runs' robustness.csv."""
    return per_run_frame(runs, "robustness", robustness.COLUMNS)


def _common(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The own-test-set rows (clean, corrupted) on the most common number of images,
    the corrupted ones under the most common source; each extra set's rows on its most
    common size and path; notes on what was left out."""
    notes = []
    own = df["test_set"].isin([robustness.CLEAN, robustness.CORRUPTED])
    parts = []
    for name, g in [("the own test set", df[own]),
                    *((n, e) for n, e in df[~own].groupby("test_set", sort=True))]:
        key = g.groupby(["images", "source"])["variant"].count().idxmax()
        if name == "the own test set":
            kept = g[g["images"] == key[0]]
            corr = kept["test_set"] == robustness.CORRUPTED
            if corr.any():
                source = kept.loc[corr, "source"].value_counts().idxmax()
                others = sorted(set(kept.loc[corr, "source"]) - {source})
                if others:
                    notes.append(f"corruptions from another source ({'; '.join(others)})")
                kept = kept[~corr | (kept["source"] == source)]
        else:
            kept = g[(g["images"] == key[0]) & (g["source"] == key[1])]
        if len(kept) < len(g) and not notes:
            notes.append(f"{name}'s rows on other images or sources")
        parts.append(kept)
    return pd.concat(parts, ignore_index=True), notes


def common_grid(corr: pd.DataFrame, severities: tuple[int, ...] | None = None
                ) -> tuple[set[tuple[str, int]], list[str]]:
    """The (corruption, severity) cells the corrupted numbers pool: among `severities`
    (the study's), those every evaluated run has; where they share none, the cells most
    runs have (the others are then left out). Notes on what is not pooled."""
    if severities:
        corr = corr[corr["severity"].isin(severities)]
    cells = {key: frozenset(zip(g["corruption"], g["severity"], strict=True))
             for key, g in corr.groupby(["variant", "seed"], sort=False)}
    if not cells:
        return set(), []
    grid = frozenset.intersection(*cells.values())
    notes = []
    if not grid:
        grid = pd.Series(list(cells.values())).value_counts().index[0]
        notes.append("the runs were evaluated on different corrupted sets; those most "
                     "runs share are pooled")
    elif any(c != grid for c in cells.values()):
        notes.append(f"corrupted sets beyond the {len(grid)} every run has")
    return set(grid), notes


def per_run(df: pd.DataFrame, reference: str | None,
            severities: tuple[int, ...] | None = None
            ) -> tuple[pd.DataFrame, list[str], set[tuple[str, int]]]:
    """Per (variant, seed): clean and corrupted accuracy, mCE (%) plain, normalised by
    the reference's errors and relative (the error added to the clean error, over the
    reference's), each extra set's accuracy; pooled on `common_grid`'s cells. A run
    lacking some of them gets no corrupted numbers (a partial mean is not comparable).
    Returns the table, notes on what was left out, and the cells pooled."""
    corr = df[df["test_set"] == robustness.CORRUPTED]
    grid, notes = common_grid(corr, severities)
    corr = corr[[cell in grid for cell in zip(corr["corruption"], corr["severity"],
                                              strict=True)]]
    rows = []
    for (v, s), g in df.groupby(["variant", "seed"], sort=False):
        clean = g.loc[g["test_set"] == robustness.CLEAN, "accuracy"]
        row = {"variant": v, "seed": int(s),
               "clean": float(clean.iloc[0]) if len(clean) else math.nan}
        c = corr[(corr["variant"] == v) & (corr["seed"] == s)]
        if grid and set(zip(c["corruption"], c["severity"], strict=True)) == grid:
            row["corrupted"] = float(c["accuracy"].mean())
            err = 1 - c.groupby("corruption")["accuracy"].mean()
            row["mce"] = 100 * float(err.mean())
            row.update({f"err:{k}": 100 * float(e) for k, e in err.items()})
        elif grid:
            notes.append(f"{v} s{s} lacks part of the corruption grid: left out of it")
        for name, e in g[~g["test_set"].isin([robustness.CLEAN, robustness.CORRUPTED])
                         ].groupby("test_set"):
            row[f"set:{name}"] = float(e["accuracy"].iloc[0])
        rows.append(row)
    out = pd.DataFrame(rows)
    if "mce" not in out.columns:
        return out, notes, grid
    pooled = out.dropna(subset=["mce"])
    if not reference or reference not in set(pooled["variant"]):
        if reference:
            notes.append(f"no mCE relative to {reference}: it has no corrupted numbers here")
        return out, notes, grid
    ref_runs = set(zip(pooled.loc[pooled["variant"] == reference, "variant"],
                       pooled.loc[pooled["variant"] == reference, "seed"], strict=True))
    ref = corr[[k in ref_runs for k in zip(corr["variant"], corr["seed"], strict=True)]]
    cells = ref.groupby(["corruption", "severity"])["accuracy"].mean()
    ref_err = (1 - cells).groupby("corruption").sum()
    count = cells.groupby("corruption").count()
    ref_clean = 1 - pooled.loc[pooled["variant"] == reference, "clean"].mean()
    drop_ref = ref_err - count * ref_clean
    rises = drop_ref[drop_ref > 0].index  # the relative mCE divides by the added error
    if len(rises) < len(drop_ref):
        flat = sorted(set(drop_ref.index) - set(rises))
        notes.append(f"the relative mCE leaves out {', '.join(flat)}: {reference}'s error "
                     "does not rise under " + ("it" if len(flat) == 1 else "them"))
    norm, rel = [], []
    for r in out.itertuples():
        mine = corr[(corr["variant"] == r.variant) & (corr["seed"] == r.seed)]
        if math.isnan(getattr(r, "mce", math.nan)):
            norm.append(math.nan)
            rel.append(math.nan)
            continue
        e = (1 - mine.set_index(["corruption", "severity"])["accuracy"]
             ).groupby("corruption").sum()
        norm.append(100 * float((e / ref_err).mean()))
        added = (e - count * (1 - r.clean))[rises] / drop_ref[rises]
        rel.append(100 * float(added.mean()) if len(rises) else math.nan)
    out["mce_norm"], out["rel_mce"] = norm, rel
    return out, notes, grid


def _cell(values: pd.Series, scale: float = 100.0, digits: int = 2) -> str:
    vals = values.dropna()
    if not len(vals):
        return "–"
    m = scale * vals.mean()
    if len(vals) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {scale * vals.std(ddof=1):.{digits}f}"


def block(cmp_title: str, variants: list[str], runs: list[Run], asked: Settings,
          settings: verdict.Settings, fig_dir: Path, rel: str, base: str,
          col: figures.Palette, also: tuple[str, ...] = ()) -> list[str]:
    """The section's markdown lines (and its figure); [] when no run was evaluated."""
    present = [r for r in runs if r.variant in variants]
    df = frame(present)
    if not len(df):
        return []
    df, notes = _common(df)
    ref = asked.reference if asked.reference in variants else variants[0]
    runs_df, more, grid = per_run(df, ref, asked.severities)
    notes += more
    df = df[(df["test_set"] != robustness.CORRUPTED)
            | pd.Series([c in grid for c in zip(df["corruption"], df["severity"],
                                                strict=True)], index=df.index)]
    gone = judge.diverged(present)
    if gone:
        def kept(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[[(v, s) not in gone for v, s in zip(frame["variant"], frame["seed"],
                                                             strict=True)]]

        runs_df, df = kept(runs_df), kept(df)
        notes.append(f"{len(gone)} diverged run(s) left out, as in the verdicts above")
    order = [v for v in variants if v in set(runs_df["variant"])]
    extras = sorted(c[4:] for c in runs_df.columns if c.startswith("set:"))
    own = df[df["test_set"].isin([robustness.CLEAN, robustness.CORRUPTED])]
    images = int(own["images"].iloc[0]) if len(own) else 0
    sizes = {n: int(g["images"].iloc[0]) for n, g in df.groupby("test_set")}
    cols = ["variant", "seeds", "clean acc %"]
    has_corr = "corrupted" in runs_df.columns
    if has_corr:
        cols += ["corrupted acc %", "mCE %"]
        if "mce_norm" in runs_df.columns:
            cols += [f"mCE vs {ref} %", f"relative mCE vs {ref} %"]
    for e in extras:
        cols += [f"{e} acc %", f"{e} − clean (pp)"]
    rows = []
    for v in order:
        g = runs_df[runs_df["variant"] == v]
        row = [v, str(len(g)), _cell(g["clean"])]
        if has_corr:
            row += [_cell(g["corrupted"]), _cell(g["mce"], 1.0)]
            if "mce_norm" in runs_df.columns:
                row += [_cell(g["mce_norm"], 1.0, 1), _cell(g["rel_mce"], 1.0, 1)]
        for e in extras:
            row += [_cell(g[f"set:{e}"]), _cell(g[f"set:{e}"] - g["clean"])]
        rows.append(row)
    out = ["#### Robustness", "",
           markdown.table(pd.DataFrame(rows, columns=cols)), ""]
    detail = (df.groupby(["variant", "test_set", "corruption", "severity"], sort=False)
              ["accuracy"].agg(seeds="count", accuracy="mean", std="std").reset_index())
    results.atomic_write_text(fig_dir / f"{base}-robustness.csv",
                              detail.to_csv(index=False, float_format="%.6g"))
    corr = df[df["test_set"] == robustness.CORRUPTED]
    said = [f"On {images:,} test images per run (the first of each class)"
            + "".join(f"; {e}: {sizes[e]:,} images" for e in extras)
            + ". Mean ± std over seeds, plain accuracy (no test-time augmentation)."]
    if has_corr:
        source = corr["source"].iloc[0]
        severities = sorted(set(corr["severity"]))
        said.append(
            f"Corrupted: the {corr['corruption'].nunique()} corruptions of CIFAR-10-C "
            f"(Hendrycks & Dietterich 2019) at severities "
            f"{', '.join(map(str, severities))}, {source}"
            + (" (its frost is not the paper's: docs/robustness.md)"
               if "procedural frost" in source else "")
            + ". mCE: the mean over corruptions of the error averaged over severities; "
            f"'vs {ref}': each corruption's summed error divided by {ref}'s (mean over its "
            "seeds), the ImageNet-C definition with it in AlexNet's place; 'relative': the "
            f"same for the error added to the clean error. Lower is better.")
    said.append(f"Accuracy per variant, corruption and severity (mean and std over seeds): "
                f"[{base}-robustness.csv]({rel}/{base}-robustness.csv).")
    out += [" ".join(said), ""]
    if has_corr:
        errs = sorted(c for c in runs_df.columns if c.startswith("err:"))
        per = pd.DataFrame({v: [runs_df.loc[runs_df["variant"] == v, c].mean()
                                for c in errs] for v in order},
                           index=[c[4:] for c in errs])
        per = per.reindex([n for n in defs.NAMES if n in per.index])
        figures.plot_robustness(fig_dir / f"{base}-robustness.png", df, per, cmp_title, col,
                                also)
        out += [f"![{cmp_title}: robustness]({rel}/{base}-robustness.png)", ""]
        table = per.map(lambda e: f"{e:.1f}")
        table.insert(0, "family", [next(f for f, ns in defs.FAMILIES.items() if n in ns)
                                   for n in per.index])
        out += ["Error % per corruption (mean over severities and seeds):", "",
                markdown.table(table.reset_index(names="corruption")), ""]
    cells = max(1, corr.groupby(["corruption", "severity"]).ngroups)
    out += _verdicts(runs_df, variants, order, extras,
                     {**sizes, "corrupted": images * cells}, settings, has_corr)
    if len(extras) and len(order) >= 3:
        out += _order_kept(runs_df, order, extras)
    if notes:
        out += ["Left out: " + "; ".join(notes) + ".", ""]
    return out


def _verdicts(runs_df: pd.DataFrame, variants: list[str], order: list[str],
              extras: list[str], sizes: dict[str, int], settings: verdict.Settings,
              has_corr: bool) -> list[str]:
    """Verdict tables per measure, of the pairs among `order` (the variants evaluated);
    α is split over all of the comparison's pairs (`variants`), as the main verdicts'
    is, so a pair's interval does not move when another variant is evaluated.
    `sizes`: the images behind each measure (its resolution)."""
    if len(order) < 2:
        return []
    pairs = list(itertools.combinations(variants, 2))
    shown = set(itertools.combinations(order, 2))
    measures = []
    if has_corr:
        runs_df = runs_df.assign(change=runs_df["corrupted"] - runs_df["clean"])
        measures += [("corrupted accuracy", "corrupted", sizes["corrupted"]),
                     ("corrupted minus clean accuracy", "change", sizes["corrupted"])]
    measures += [(f"{e} accuracy", f"set:{e}", sizes[e]) for e in extras]
    out = []
    for what, col_, n in measures:
        finals = {v: {int(s): float(a) for s, a in zip(g["seed"], g[col_], strict=True)
                      if a == a} for v, g in runs_df.groupby("variant")}
        judged = [p for p in verdict.compare(finals, pairs, settings, resolution=100.0 / n)
                  if (p.a, p.b) in shown]
        table = markdown.verdict_table(judged, settings.margin, settings.alpha)
        out += [f"Verdicts on the {what} (A − B in points; margin ±{settings.margin:g}):", "",
                markdown.table(table.drop(columns=["seeds needed"])), ""]
    return out


def _order_kept(runs_df: pd.DataFrame, order: list[str], extras: list[str]) -> list[str]:
    """Recht et al. 2018's question: do the variants keep their order on the new test
    set? Spearman's rank correlation of the variants' mean accuracies, its p-value from
    SciPy's permutation test (exact over every ordering up to 8 variants; the t
    approximation says p = 0 for three variants in the same order, where it is 1/3)."""
    from scipy import stats

    means = runs_df.groupby("variant").mean(numeric_only=True).loc[order]
    said = []
    for e in extras:
        m = means[["clean", f"set:{e}"]].dropna()
        if len(m) < 3:
            continue
        test = stats.permutation_test(
            (m["clean"].to_numpy(), m[f"set:{e}"].to_numpy()),
            lambda x, y: stats.spearmanr(x, y).statistic, permutation_type="pairings",
            n_resamples=40_320, rng=0)
        said.append(f"{e}: Spearman ρ = {test.statistic:+.2f} over {len(m)} variants "
                    f"(p = {test.pvalue:.2g}, two-sided, by permutation)")
    if not said:
        return []
    return ["Do the variants keep their clean order? " + "; ".join(said) + ".", ""]


def pending(study_flag: list[str], results_flag: list[str], variants: list[str]) -> list[str]:
    cmd = " ".join(["ablation evaluate", *study_flag, *results_flag, *variants])
    return [f"Robustness (corrupted and extra test sets): not evaluated yet; `{cmd}` adds it "
            "to this report.", ""]

