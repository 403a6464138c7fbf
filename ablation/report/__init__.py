"""`ablation report`: rebuild a study's comparisons from the recorded runs.

Layers, each a module: `load` (run folders -> tidy frames), `stats` (mean ± std over
seeds, Welch + Holm, layer-response trends), `figures` (PNGs), `markdown` (text).
This module only walks the study: one block per recipe (runs are pooled over seeds
only within one recipe, the fullest recipe first), one sub-block per comparison.
The markdown is deterministic: the same results give a byte-identical README.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ablation import results
from ablation import study as studies
from ablation.errors import AblationError
from ablation.recipe import Recipe
from ablation.report import figures, markdown, stats
from ablation.report.load import Run, for_study, load_runs, responses_frame, runs_frame

__all__ = ["COMPARISONS_CSV", "Run", "build", "load_runs", "runs_frame"]

COMPARISONS_CSV = "comparisons.csv"  # one row per pair and recipe: docs/statistics.md


def _comparison_block(study: studies.Study, cmp: studies.Comparison, n: int, runs: list[Run],
                      fig_dir: Path, rel: str, col: dict, results_dir: Path,
                      judged: stats.Verdicts) -> list[str]:
    by_variant = {v: sorted([r for r in runs if r.variant == v and len(r.history)],
                            key=lambda r: r.seed) for v in cmp.variants}
    present = {v: rs for v, rs in by_variant.items() if rs}
    recipe = runs[0].summary["recipe"]
    seeds = max((len(rs) for rs in present.values()), default=1)
    out = [f"### {n}. {cmp.title}", ""]
    if cmp.question:
        out += [f"*{cmp.question}*", ""]
    missing = [v for v in cmp.variants if v not in present]
    if not present:
        fill = markdown.command(study, recipe, list(cmp.variants), seeds)
        return [*out, f"**Pending**: no runs yet. Fill it with `{fill}`", ""]
    if missing:
        out += [f"**Missing**: {', '.join(missing)} — run "
                f"`{markdown.command(study, recipe, missing, seeds)}`", ""]

    published = dict(cmp.published_error)
    summary = stats.summarise(present, published)
    label = "blog label" if study.name == studies.DEFAULT else "label"
    out += [markdown.table(markdown.comparison_table(summary, cmp, recipe["epochs"],
                                                     bool(published), label)), "",
            "✓ = equals the reference (published) count. Accuracy: mean ± std over seeds "
            "(sample std). 'Best' is the maximum over epochs of the test accuracy, picked on "
            "the test set as the blog did — optimistic; 'final' is the last epoch.", ""]
    if published:
        out += [f"Published error: {cmp.published_source or 'published'} — set beside ours, "
                "never pooled with it; ours is 100 − final test accuracy.", ""]
    started = sorted({f"{v} from {r.summary['pretrained']!r} weights" for v, rs in present.items()
                      for r in rs if r.summary.get("pretrained")})
    if started:
        out += [f"Pretrained: {'; '.join(started)} (its convolutions); every other run here "
                "trained from scratch.", ""]

    base = f"{n}-{cmp.key}"
    figures.plot_curves(fig_dir / f"{base}-curves.png", present, cmp.title, col)
    out += [f"![{cmp.title}: curves]({rel}/{base}-curves.png)", ""]
    if cmp.zoom:
        drops = Recipe.from_dict(recipe).lr_drops()
        last = max(len(r.history) for rs in present.values() for r in rs)
        start = drops[-1] if drops else last // 2  # after the last lr drop
        start = start if last > start else max(0, last // 2)
        figures.plot_zoom(fig_dir / f"{base}-zoom.png", present, cmp.title, start, col)
        out += [f"![{cmp.title}: zoomed test accuracy]({rel}/{base}-zoom.png)", ""]
    sizes = {s.variant: s.h5_mb for s in summary.itertuples() if not math.isnan(s.h5_mb)}
    if cmp.sizes and sizes:
        figures.plot_sizes(fig_dir / f"{base}-sizes.png", sizes, cmp.title, col)
        out += [f"![{cmp.title}: .h5 sizes]({rel}/{base}-sizes.png)", ""]
    out += _responses_block(study, cmp, present, fig_dir, rel, base, col, results_dir)
    if len(present) > 1:
        pairs = [p for p in judged.pairs[cmp.key] if p.a in present and p.b in present]
        members = [r for rs in present.values() for r in rs]
        left_out = len(members) - len(stats.finished(members))
        out += ["Which differences in final test accuracy are real, which are absent, and "
                "which are still open?", "",
                markdown.table(markdown.verdict_table(pairs, judged.settings.margin)), "",
                *markdown.verdict_notes(study, recipe, pairs, judged.settings.margin,
                                        left_out)]
    return out


def _responses_block(study, cmp, present, fig_dir, rel, base, col, results_dir) -> list[str]:
    resp = responses_frame([r for rs in present.values() for r in rs])
    if not len(resp):
        res = [] if str(results_dir) == "results" else ["--results", str(results_dir)]
        cmd = " ".join(["ablation analyze", *markdown.study_flag(study), *res, *present])
        return [f"Layer responses (He et al. 2015, Fig. 7): not measured yet; `{cmd}` adds "
                "them to this report.", ""]
    figures.plot_responses(fig_dir / f"{base}-responses.png", resp, cmp.title, col)
    trend = stats.response_trend(resp)
    says = []
    for t in trend.itertuples():
        direction = {"flat": "about flat", "falls": "falls", "rises": "rises"}.get(t.trend, "?")
        says.append(f"{t.variant}: {direction} with depth (slope {t.slope:+.3g} per layer, "
                    f"{t.change:+.0%} over {t.layers} layers; first {t.first:.3g}, last "
                    f"{t.last:.3g}; {t.seeds} seed(s))")
    return [f"![{cmp.title}: layer responses]({rel}/{base}-responses.png)", "",
            "Std of each 3x3 layer's response (after its BN, before ReLU or addition; where "
            "the conv feeds anything but a BN, its own output, marked x), by a least-squares "
            "line over layer index (under ±5 % over the network: about flat): "
            + "; ".join(says) + ".", ""]


def _recipe_order(item: tuple[str, list[Run]]) -> tuple:
    rid, runs = item
    r = runs[0].summary["recipe"]
    subset = bool(r.get("train_limit") or r.get("test_limit"))
    return (subset, -r["epochs"], -len(runs), rid)


def build(results_dir: Path, out_dir: Path | None = None, recipe: str | None = None,
          epochs: int | None = None, study: studies.Study | None = None,
          margin: float | None = None) -> Path:
    """Write README.md, runs.csv, comparisons.csv and the figures of a study (default:
    the blog's); return the README's path. `margin` overrides the study's equivalence
    margin (points)."""
    import matplotlib

    matplotlib.use("Agg")
    study = study or studies.load_study()
    out_dir = Path(out_dir or study.default_out)
    if not Path(results_dir).is_dir():
        raise AblationError(f"no results folder {results_dir}; run `ablation run` first")
    every = load_runs(Path(results_dir))
    if not every:
        raise AblationError(f"no readable runs in {results_dir}; run `ablation run` first")
    runs = for_study(every, study)
    if not runs:
        cmd = " ".join(["ablation run", *markdown.study_flag(study), "--all"])
        raise AblationError(f"no runs of study {study.name!r} in {results_dir}; run "
                            f"`{cmd}` first")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.summary["recipe_id"], []).append(r)
    if recipe:
        groups = {k: v for k, v in groups.items() if k.startswith(recipe)}
    if epochs:
        groups = {k: v for k, v in groups.items() if v[0].summary["recipe"]["epochs"] == epochs}
    if not groups:
        raise AblationError("no runs match the --recipe/--epochs filter")

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise results.disk_error(e, out_dir) from None
    col = figures.colours(list(study.variant_names))
    selected = [r for rs in groups.values() for r in rs]
    lines = [f"# {study.title}", ""]
    if study.name != studies.DEFAULT:
        lines += [f"Study `{study.name}`" + (f": {study.description}" if study.description
                                             else ""), ""]
    lines += ["Rebuilt by `ablation report` from the recorded runs alone; every number below "
              "comes from a run folder. Recipes are never pooled: each has its own block, the "
              "fullest first.", "",
              "| recipe | dataset | epochs | runs | variants |", "|---|---|---|---|---|"]
    ordered = sorted(groups.items(), key=_recipe_order)
    for rid, rs in ordered:
        lines.append(f"| `{rid}` | {rs[0].summary['dataset']} | "
                     f"{rs[0].summary['recipe']['epochs']} | {len(rs)} | "
                     f"{len({r.variant for r in rs})} |")
    lines.append("")
    designs = results.read_designs(Path(results_dir))
    verdict_rows = []
    for rid, rs in ordered:
        fig_dir = out_dir / rid
        fig_dir.mkdir(exist_ok=True)
        design = designs.get(results.design_key(study.name, rid))
        settings = study.analysis.replace(margin=margin)
        if design and margin is None:
            settings = settings.replace(margin=design.get("margin"))
        judged = stats.verdicts(study, rs, settings, design)
        lines += markdown.recipe_header(rid, rs)[:-1]
        lines += [*markdown.verdict_header(judged, stats.resolution(rs)), ""]
        for n, cmp in enumerate(study.comparisons, 1):
            lines += _comparison_block(study, cmp, n, rs, fig_dir, rid, col, results_dir,
                                       judged)
            verdict_rows += markdown.verdict_rows(cmp.key, rid, judged.pairs[cmp.key], judged)
    if study.published:
        lines += ["## Published numbers (context, not measured here)", "",
                  markdown.table(pd.DataFrame(
                      [(p.source, p.network, p.metric, p.value) for p in study.published],
                      columns=["source", "network", "metric", "value"])), ""]
    lines += ["`runs.csv` beside this file holds one row per run with every summary field; "
              f"`{COMPARISONS_CSV}` one row per pair of variants and recipe with its verdict "
              "(columns: docs/statistics.md).", ""]
    runs_frame(selected).to_csv(out_dir / "runs.csv", index=False)
    pd.DataFrame(verdict_rows, columns=markdown.COLUMNS).to_csv(
        out_dir / COMPARISONS_CSV, index=False, float_format="%.6g")
    readme = out_dir / "README.md"
    results.atomic_write_text(readme, "\n".join(lines))
    return readme
