"""The report's text: tables of the statistics layer formatted as markdown, one block
per recipe and comparison. Deterministic: the same results give byte-identical text."""

from __future__ import annotations

import math
from dataclasses import fields

import pandas as pd

from ablation import registry, results
from ablation import study as studies
from ablation.recipe import Recipe
from ablation.report import stats
from ablation.report.load import Run


def table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def mean_std(mean: float, std: float, scale: float = 100.0) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    if std is None or math.isnan(std):
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def _mark(value, reference) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{int(value):,}" + (" ✓" if reference is not None and value == reference else "")


def command(study: studies.Study, recipe: dict, variants: list[str], seeds: int) -> str:
    """The `ablation run` command that trains `variants` under `recipe` in `study`:
    a flag for each recipe field that differs from the study's defaults."""
    base, target = study.recipe(), Recipe.from_dict(recipe)
    flags = []
    for f in fields(Recipe):
        value = getattr(target, f.name)
        if value == getattr(base, f.name):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            flags.append(f"{flag} {','.join(map(str, value))}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(["ablation run", *study_flag(study), *variants,
                     f"--seeds {max(1, seeds)}", *flags])


def study_flag(study: studies.Study) -> list[str]:
    """What a command needs to name this study: nothing for the default one."""
    if study.name == studies.DEFAULT:
        return []
    return ["--study", study.name if study.builtin else str(study.path)]


def pairwise_tests(finals: dict[str, list[float]]) -> list[list[str]]:
    """The Welch table as text rows: A, B, A − B, p, p (Holm), verdict."""
    rows = []
    for r in stats.welch(finals).itertuples():
        diff = "–" if math.isnan(r.diff_pp) else f"{r.diff_pp:+.2f} pp"
        if r.real is None:
            rows.append([r.a, r.b, diff, "–", "–", "needs ≥ 2 seeds each"])
        else:
            rows.append([r.a, r.b, diff, f"{r.p:.3g}", f"{r.p_holm:.3g}",
                         "**yes**, beyond seed spread" if r.real
                         else "no: within seed-to-seed noise"])
    return rows


def recipe_header(recipe_id: str, runs: list[Run]) -> list[str]:
    r = runs[0].summary["recipe"]
    seeds = sorted({x.seed for x in runs})
    devices = sorted({str(x.summary.get("device", "?")) for x in runs})
    versions = sorted({f"Python {x.summary.get('python', '?')}, Keras "
                       f"{x.summary.get('keras', '?')}, {x.summary.get('backend', '?')} "
                       f"{x.summary.get('backend_version', '')}".strip() for x in runs})
    commits = sorted({(str(x.summary.get("git_commit") or "unknown")[:10]
                       + (" (dirty)" if x.summary.get("git_dirty") else "")) for x in runs})
    own = sorted({f"{x.variant}: " + ", ".join(f"{k} {v}" for k, v in sorted(
        x.summary["definition"].get("recipe", {}).items()))
        for x in runs if (x.summary.get("definition") or {}).get("recipe")})
    lines = [
        f"## Recipe `{recipe_id}`", "",
        f"- **Dataset**: {r['dataset']}, {runs[0].summary.get('train_images', '?')} train / "
        f"{runs[0].summary.get('test_images', '?')} test images"
        + (" — **a subset of the data, not comparable with the blog**"
           if r.get("train_limit") or r.get("test_limit") else ""),
        f"- **Recipe**: {Recipe.from_dict(r).describe()}",
        *([f"- **Variants with recipe fields of their own**: {'; '.join(own)}"] if own else []),
        f"- **Runs**: {len(runs)} ({len({x.variant for x in runs})} variants, seeds "
        f"{', '.join(map(str, seeds))})",
        f"- **Hardware**: {'; '.join(devices)}",
        f"- **Software**: {'; '.join(versions)}; code {', '.join(commits)}",
    ]
    partial = sorted(f"{x.variant} s{x.seed} "
                     f"({x.summary.get('epochs_done', 0)}/{r['epochs']} epochs, "
                     f"{x.summary.get('status', '?')})"
                     for x in runs if (x.summary.get("epochs_done") or 0) < r["epochs"])
    if partial:
        lines.append(f"- **Partial runs** (fewer epochs than planned): {', '.join(partial)}")
    return [*lines, ""]


def comparison_table(summary: pd.DataFrame, cmp: studies.Comparison, epochs: int,
                     published: bool, label: str = "blog label") -> pd.DataFrame:
    """The comparison's table: parameters (✓ = the reference count), size, seeds,
    accuracy, time; the published error beside ours where the study has one."""
    rows = []
    for s in summary.itertuples():
        v = registry.get(s.variant)
        ref = v.reference_params or (None, None, None)
        row = {
            "variant": s.variant,
            label: v.label if v.label != v.name else "",
            "params": _mark(s.params_total, ref[0]),
            "trainable": _mark(s.params_trainable, ref[1]),
            "non-trainable": _mark(s.params_non_trainable, ref[2]),
            ".h5 MB": "–" if math.isnan(s.h5_mb) else f"{s.h5_mb:.3f}",
            "seeds": str(s.seeds),
            "epochs": f"{s.epochs_min}/{epochs}" if s.epochs_min == s.epochs_max
            else f"{s.epochs_min}–{s.epochs_max}/{epochs}",
            "best test acc % (picked on test)": mean_std(s.best_mean, s.best_std),
            "final test acc %": mean_std(s.final_mean, s.final_std),
            "train time": "–" if math.isnan(s.train_seconds) else results.duration(
                s.train_seconds),
            "img/s": "–" if math.isnan(s.images_per_second) else f"{s.images_per_second:.0f}",
        }
        if published:
            row["test error % (final)"] = mean_std(s.error_mean / 100, s.error_std / 100)
            row["published error %"] = ("–" if math.isnan(s.published_error)
                                        else f"{s.published_error:.2f}")
        rows.append(row)
    for ref in cmp.references:
        rows.append({"variant": ref.name, "params": f"{ref.params:,}"})
    return pd.DataFrame(rows).fillna("")
