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

from ablation import judge, registry, results
from ablation import study as studies
from ablation.errors import AblationError
from ablation.recipe import Recipe
from ablation.report import figures, markdown, robustness, spaces, stats, tuned
from ablation.report import latex as latex_mod
from ablation.report.frames import responses_frame, runs_frame
from ablation.runs import report_runs
from ablation.store import Run, load_runs

__all__ = ["COMPARISONS_CSV", "Run", "build", "comparison_rows", "load_runs", "runs_frame"]

COMPARISONS_CSV = "comparisons.csv"  # one row per pair and recipe: docs/statistics.md


def _comparison_block(study: studies.Study, cmp: studies.Comparison, n: int, runs: list[Run],
                      fig_dir: Path, rel: str, col: dict, results_dir: Path,
                      judged: judge.Verdicts, split: results.Split,
                      also: tuple[str, ...] = (), latex: bool = False) -> list[str]:
    by_variant = {v: sorted([r for r in runs if r.variant == v and len(r.history)],
                            key=lambda r: r.seed) for v in cmp.variants}
    present = {v: rs for v, rs in by_variant.items() if rs}
    recipe = runs[0].record.recipe.to_dict()
    if runs[0].record.tuning:  # a tuned comparison: its commands rerun the phases
        recipe = tuned.rerun_recipe(study, runs[0].record)
    seeds = max((len(rs) for rs in present.values()), default=1)
    out = [f"### {n}. {cmp.title}", ""]
    if cmp.question:
        out += [f"*{cmp.question}*", ""]
    missing = [v for v in cmp.variants if v not in present]
    if not present:
        fill = markdown.command(study, recipe, list(cmp.variants), seeds, results_dir)
        return [*out, f"**Pending**: no runs yet. Fill it with `{fill}`", ""]
    if missing:
        out += [f"**Missing**: {', '.join(missing)} — run "
                f"`{markdown.command(study, recipe, missing, seeds, results_dir)}`", ""]

    published = cmp.published_error(runs[0].record.recipe.dataset)
    summary = stats.summarise(present, published, split)
    label = "blog label" if study.name == studies.DEFAULT else "label"
    base = f"{n}-{cmp.key}"
    frame = markdown.comparison_table(summary, cmp, recipe["epochs"], bool(published), label,
                                      split)
    out += [markdown.table(frame), "",
            f"✓ = equals the reference (published) count. Accuracy: mean ± std over seeds "
            f"(sample std), on the {split.name} set. 'Best' is the maximum over epochs, "
            f"picked on that same set (as the blog did on the test set) — optimistic; "
            f"'final' is the last epoch."
            + (" 'TTA': the final model on the test set under the recipe's test-time "
               "augmentation (recorded apart; the verdicts read the plain accuracy), its "
               "95 % interval a t interval over seeds (SciPy's)."
               if "final TTA test acc %" in frame else ""), ""]
    if published:
        out += [f"Published error: {cmp.published_source or 'published'} — set beside ours, "
                "never pooled with it; ours is 100 − final test accuracy.", ""]
    started = sorted({f"{v} from {r.record.pretrained!r} weights" for v, rs in present.items()
                      for r in rs if r.record.pretrained})
    if started:
        out += [f"Pretrained: {'; '.join(started)} (its convolutions); every other run here "
                "trained from scratch.", ""]

    if latex:
        marked = any("✓" in str(v) for v in frame.to_numpy().ravel())
        latex_mod.write(fig_dir / f"{base}-table.tex", frame,
                        f"{cmp.title}: final {split.name} accuracy, mean ± std over seeds"
                        + (" (✓ = the published count)" if marked else ""),
                        latex_mod.label(rel, base))
    figures.plot_curves(fig_dir / f"{base}-curves.png", present, cmp.title, col, split, also)
    out += [f"![{cmp.title}: curves]({rel}/{base}-curves.png)", ""]
    trained = {v: rs[0].record.trained for v, rs in present.items()}
    out += _incomparable(trained)
    if cmp.zoom:
        last = max(len(r_.history) for rs in present.values() for r_ in rs)
        drops = {r.lr_drops() if r.schedule == "step" else () for r in trained.values()}
        # one schedule's drops for every variant, or none: a cosine variant beside a step
        # one has no common "after the last drop"
        zoom = figures.zoom_start(drops.pop() if len(drops) == 1 else (), last)
        if zoom is None:
            out += [f"Zoomed {split.name} accuracy: not drawn, {last} epoch(s) leave nothing "
                    "to zoom on.", ""]
        else:
            figures.plot_zoom(fig_dir / f"{base}-zoom.png", present, cmp.title, zoom[0], col,
                              split, also, why=zoom[1])
            out += [f"![{cmp.title}: zoomed test accuracy]({rel}/{base}-zoom.png)", ""]
    out += _pareto_block(summary, cmp, fig_dir, rel, base, col, split, also)
    sizes = {s.variant: s.h5_mb for s in summary.itertuples() if not math.isnan(s.h5_mb)}
    if cmp.sizes and sizes:
        figures.plot_sizes(fig_dir / f"{base}-sizes.png", sizes, cmp.title, col, also)
        out += [f"![{cmp.title}: .h5 sizes]({rel}/{base}-sizes.png)", ""]
        slots = {v: trained[v].state_slots for v in sizes}
        if len(set(slots.values())) > 1:
            out += ["The .h5 sizes hold the optimizer's state beside the weights, which "
                    "differs here: " + "; ".join(
                        f"{v}: {trained[v].optimizer}{' + EMA' if trained[v].ema else ''}, "
                        f"{n} value(s) per weight" for v, n in slots.items())
                    + "; compare the parameter counts for the networks themselves.", ""]
    out += _responses_block(study, cmp, present, fig_dir, rel, base, col, results_dir, also)
    if len(present) > 1:
        pairs = [p for p in judged.pairs[cmp.key] if p.a in present and p.b in present]
        left_out = sum(judged.unfinished.get(v, 0) for v in present)
        verdicts = markdown.verdict_table(pairs, judged.settings.margin, judged.settings.alpha)
        if latex:
            latex_mod.write(fig_dir / f"{base}-verdicts.tex", verdicts,
                            f"{cmp.title}: A against B in final {split.name} accuracy "
                            "(points), paired over seeds", latex_mod.label(rel, base, "verdicts"))
        out += [f"Which differences in final {split.name} accuracy are real, which are "
                "absent, and which are still open?", "",
                markdown.table(verdicts), "",
                *markdown.verdict_notes(study, recipe, pairs, judged.settings, left_out,
                                        {v: k for v, k in judged.beyond.items()
                                         if v in present}, results_dir)]
    out += _robustness_block(study, cmp, present, judged.settings, fig_dir, rel, base, col,
                             results_dir, also)
    return out


def _robustness_block(study, cmp, present, settings, fig_dir, rel, base, col, results_dir,
                      also) -> list[str]:
    """Accuracy on corrupted and extra test sets (`ablation evaluate`); where none was
    measured, the command that measures it, if the study asks for it."""
    runs = [r for rs in present.values() for r in rs]
    lines = robustness.block(cmp.title, list(present), runs, study.robustness, settings,
                             fig_dir, rel, base, col, also)
    if lines or study.robustness == type(study.robustness)():
        return lines
    return robustness.pending(study.flag, markdown.results_flag(results_dir), list(present))


def _pareto_block(summary: pd.DataFrame, cmp: studies.Comparison, fig_dir: Path, rel: str,
                  base: str, col: dict, split: results.Split, also: tuple[str, ...]
                  ) -> list[str]:
    """The accuracy-against-cost figure and, per cost, the variants on its frontier;
    nothing below two variants."""
    timed = summary.dropna(subset=["infer_images_per_second"])
    devices = sorted({d for d in timed["infer_device"] if d})
    note = ""
    if len(devices) > 1:  # speeds of different devices are not one axis
        summary = summary.assign(infer_images_per_second=math.nan)
        note = (" Inference speeds were measured on different devices here "
                f"({'; '.join(devices)}), so they are not set against each other.")
    elif len(timed) > 1:
        note = (f" Inference: batch {int(timed['infer_batch'].iloc[0])} on {devices[0]}, "
                "the trained network through Keras' predict_on_batch, the copy to the "
                "device included (docs/performance.md)"
                + ("; some variants were also timed on another device, not shown"
                   if int(timed["infer_devices"].max()) > 1 else "") + ".")
    fronts = figures.plot_pareto(fig_dir / f"{base}-pareto.png", summary, cmp.title, col,
                                 split.name, also)
    if not fronts:
        return []
    ranges = {v: (lo, hi) for v, lo, hi in zip(
        summary["variant"], summary["infer_images_per_second_low"],
        summary["infer_images_per_second_high"], strict=True) if not math.isnan(lo)}
    on = fronts.get("inference images/s", [])
    tied = [(a, b) for i, a in enumerate(on) for b in on[i + 1:]
            if a in ranges and b in ranges and ranges[a][0] <= ranges[b][1]
            and ranges[b][0] <= ranges[a][1]]
    if tied:  # their order by speed is within the timing's noise
        note += (" By inference speed, " + "; ".join(f"{a} and {b}" for a, b in tied)
                 + " overlap in their timing repeats: their order by speed is not "
                 "established.")
    return [f"![{cmp.title}: accuracy against cost]({rel}/{base}-pareto.png)", "",
            "On the Pareto frontier (no other variant here is at least as cheap and as "
            f"accurate, in mean final {split.name} accuracy; the verdicts below say which "
            "differences are real): "
            + "; ".join(f"by {label}, {', '.join(vs)}" for label, vs in fronts.items())
            + "." + note, ""]


def _incomparable(trained: dict[str, Recipe]) -> list[str]:
    """A sentence where the loss panels set unlike losses side by side: Keras' loss (train
    and test alike) includes label smoothing, mixup's soft targets and an L2 penalty, so
    variants that differ in them differ in loss for that reason alone."""
    def terms(r: Recipe) -> str:
        parts = [f"label smoothing {r.label_smoothing:g}" if r.label_smoothing else "",
                 "mixup/CutMix targets" if r.mixup or r.cutmix else "",
                 f"L2 {r.weight_decay:g} in the loss" if r.weight_decay and not r.decoupled
                 else "no weight penalty in the loss"]
        return ", ".join(p for p in parts if p)

    said = {v: terms(r) for v, r in trained.items()}
    if len(set(said.values())) < 2:
        return []
    return ["The loss panels compare unlike losses: " + "; ".join(
        f"{v}'s includes {t}" for v, t in said.items()) + ". Compare accuracies.", ""]


def _responses_block(study, cmp, present, fig_dir, rel, base, col, results_dir,
                     also=()) -> list[str]:
    resp = responses_frame([r for rs in present.values() for r in rs])
    if not len(resp):
        cmd = " ".join(["ablation analyze", *study.flag,
                        *markdown.results_flag(results_dir), *present])
        return [f"Layer responses (He et al. 2015, Fig. 7): not measured yet; `{cmd}` adds "
                "them to this report.", ""]
    figures.plot_responses(fig_dir / f"{base}-responses.png", resp, cmp.title, col, also)
    trend = stats.response_trend(resp)
    says = []
    for t in trend.itertuples():
        if t.layers < 2:
            says.append(f"{t.variant}: one 3x3 layer ({t.first:.3g}), no trend to fit; "
                        f"{t.seeds} seed(s)")
            continue
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
    r = runs[0].record.recipe
    subset = bool(r.train_limit or r.test_limit)
    return (subset, -r.epochs, -len(runs), rid)


def _plain_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs of each plain recipe, by recipe id: a tuned study's runs (either phase)
    span many recipes and are grouped by tuning group instead (`tuned.groups`)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if not r.record.phase:
            groups.setdefault(r.record.recipe_id, []).append(r)
    return groups


def _judge(study: studies.Study, rid: str, rs: list[Run], designs: dict,
           margin: float | None, split: results.Split = results.TEST) -> judge.Verdicts:
    """A recipe's verdicts: its recorded --until-decided design replayed, if any (and its
    margin, unless `margin` overrides it)."""
    design = designs.get(results.design_key(study.name, rid))
    return judge.verdicts(study, rs, judge.design_settings(study, design, margin), design, split)


def comparison_rows(results_dir: Path, study: studies.Study, runs: list[Run],
                    margin: float | None = None) -> list[tuple[str, str, list[dict], list[Run]]]:
    """Every comparison of every recipe (and tuning group) with runs, as the report
    judges it on the test set: (a key naming it, its title, its comparisons.csv rows, the
    runs of its variants). For readers of the verdicts other than the report."""
    designs = results.read_designs(Path(results_dir))
    out = []
    for rid, rs in sorted(_plain_groups(runs).items()):
        judged = _judge(study, rid, rs, designs, margin)
        for cmp in study.comparisons:
            members = [r for r in rs if r.variant in cmp.variants]
            if members:
                out.append((f"comparison:{study.name}/{rid}/{cmp.key}", f"{cmp.title} ({rid})",
                            markdown.verdict_rows(cmp.key, rid, judged.pairs[cmp.key], judged),
                            members))
    for gid, compare, judged, chosen, cost in tuned.verdict_groups(study, runs, results_dir,
                                                                  margin):
        for cmp in study.comparisons:
            members = [r for r in compare if r.variant in cmp.variants]
            if members:  # the rows comparisons.csv has, what tuning cost included
                out.append((f"comparison:{study.name}/tuned-{gid}/{cmp.key}",
                            f"{cmp.title} (tuned, group {gid})",
                            tuned.tuned_rows(cmp.key, gid, judged.pairs[cmp.key], judged,
                                             chosen, cost), members))
    return out


def build(results_dir: Path, out_dir: Path | None = None, recipe: str | None = None,
          epochs: int | None = None, study: studies.Study | None = None,
          margin: float | None = None, on: str = "test", latex: bool = False,
          figure_format: str = "png") -> Path:
    """Write README.md, runs.csv, comparisons.csv and the figures of a study (default:
    the blog's); return the README's path. `margin` overrides the study's equivalence
    margin (points); `on` is the split the tables, curves and verdicts read (the test
    set, or the held-out validation split of recipes that have one). `latex` adds each
    comparison's tables as booktabs `.tex` beside its figures; `figure_format` pdf or svg
    adds each figure in that format beside its PNG (for a paper)."""
    if figure_format not in figures.FORMATS:
        raise AblationError(f"figure format {figure_format!r}: one of "
                            f"{', '.join(figures.FORMATS)}")
    also = () if figure_format == "png" else (figure_format,)
    split = results.SPLITS[on]
    import matplotlib

    matplotlib.use("Agg")
    study = study or studies.load_study()
    out_dir = Path(out_dir or study.default_out)
    runs, designs = report_runs(Path(results_dir), study)
    # a tuned study's runs (both phases) have their own section: they span many recipes
    phased = [r for r in runs if r.record.phase]
    groups = _plain_groups(runs)
    if recipe:
        groups = {k: v for k, v in groups.items() if k.startswith(recipe)}
    if epochs:
        groups = {k: v for k, v in groups.items() if v[0].record.recipe.epochs == epochs}
    if on == "validation":
        groups = {k: v for k, v in groups.items() if v[0].record.recipe.validation}
        if not groups and not phased:
            raise AblationError("--on validation: no recipe here holds out a validation "
                                "split (set validation = N in the recipe)")
    if not groups and not (phased and not (recipe or epochs)):
        raise AblationError("no runs match the --recipe/--epochs filter")

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise results.disk_error(e, out_dir) from e
    col = figures.colours(list(study.variant_names),
                          {n: registry.get(n).label for n in study.variant_names})
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
    tuned_groups = tuned.groups(phased) if phased and not (recipe or epochs) else {}
    listed = [(f"`{rid}`", rs) for rid, rs in ordered] + [
        (f"tuning group `{gid}` (both phases)", rs) for gid, rs in sorted(tuned_groups.items())]
    for name, rs in listed:
        lines.append(f"| {name} | {markdown.dataset_name(rs[0].record)} | "
                     f"{rs[0].record.recipe.epochs} | {len(rs)} | "
                     f"{len({r.variant for r in rs})} |")
    lines.append("")
    verdict_rows = []
    for rid, rs in ordered:
        fig_dir = out_dir / rid
        fig_dir.mkdir(exist_ok=True)
        judged = _judge(study, rid, rs, designs, margin, split)
        lines += markdown.recipe_header(rid, rs)[:-1]
        lines += [*markdown.verdict_header(judged, judged.resolution, split), ""]
        for n, cmp in enumerate(study.comparisons, 1):
            lines += _comparison_block(study, cmp, n, rs, fig_dir, rid, col, results_dir,
                                       judged, split, also, latex)
            verdict_rows += markdown.verdict_rows(cmp.key, rid, judged.pairs[cmp.key], judged)
        lines += spaces.section(study, rs, fig_dir, rid, split, also)
    if tuned_groups and on == "validation":
        lines += ["*`--on validation` leaves the tuned comparisons below on the test set: their "
                  "validation split chose each variant's setting, so judging on it again "
                  "would grade the choice by itself.*", ""]
    if tuned_groups:
        more, rows = tuned.section(study, phased, out_dir, col, results_dir, margin,
                                   _comparison_block, also, latex)
        lines += more
        verdict_rows += rows
    if study.published:
        lines += ["## Published numbers (context, not measured here)", "",
                  markdown.table(pd.DataFrame(
                      [(p.source, p.network, p.metric, p.value) for p in study.published],
                      columns=["source", "network", "metric", "value"])), ""]
    lines += ["`runs.csv` beside this file holds one row per run with every summary field; "
              f"`{COMPARISONS_CSV}` one row per pair of variants and recipe with its verdict "
              "(columns: docs/statistics.md).", ""]
    runs_frame(selected + phased).to_csv(out_dir / "runs.csv", index=False)
    pd.DataFrame(verdict_rows, columns=markdown.COLUMNS).to_csv(
        out_dir / COMPARISONS_CSV, index=False, float_format="%.6g")
    readme = out_dir / "README.md"
    results.atomic_write_text(readme, "\n".join(lines))
    return readme
