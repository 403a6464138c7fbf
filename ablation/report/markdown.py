"""The report's text: tables of the statistics layer formatted as markdown, one block
per recipe and comparison. Deterministic: the same results give byte-identical text."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pandas as pd

from ablation import judge, registry, results, verdict
from ablation import study as studies
from ablation.protocol import RunRecord
from ablation.recipe import Recipe
from ablation.results import DEFAULT_RESULTS, TEST, Split
from ablation.store import Run


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


def command(study: studies.Study, recipe: dict, variants: list[str], seeds: int,
            results_dir: Path | str = DEFAULT_RESULTS) -> str:
    """The `ablation run` command that trains `variants` under `recipe` in `study`:
    a flag for each recipe field that differs from the study's defaults (`seeds` 0:
    no --seeds flag), and the results folder the report read, unless it is the default."""
    base, target = study.recipe(), Recipe.from_dict(recipe)
    flags = []
    for f in fields(Recipe):
        value = getattr(target, f.name)
        if value == getattr(base, f.name) or f.metadata["kind"] == "internal":
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple | list):
            flags.append(f"{flag} {','.join(map(str, value))}")
        else:
            flags.append(f"{flag} {value}")
    return " ".join(["ablation run", *study.flag, *variants,
                     *([f"--seeds {seeds}"] if seeds else []), *flags,
                     *results_flag(results_dir)])


def results_flag(results_dir: Path | str) -> list[str]:
    """What a suggested command needs to find the runs the report read: nothing for the
    default folder."""
    return [] if str(results_dir) == DEFAULT_RESULTS else ["--results", str(results_dir)]


VERDICT_TEXT = {
    verdict.BETTER: "**better**", verdict.WORSE: "**worse**",
    verdict.EQUIVALENT: "equivalent: no difference beyond ±{m:g}",
    verdict.UNDECIDED: "undecided",
}


def _pp(x: float, signed: bool = True) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def verdict_table(pairs: list[verdict.Pair], margin: float, alpha: float = 0.05
                  ) -> pd.DataFrame:
    """One row per pair: seeds (and diverged seeds left out), A − B, its interval, Holm p,
    correlation, P(A>B), the verdict and the seeds a decision needs."""
    rows = []
    for p in pairs:
        level = verdict.level_words(p.ci_level)
        interval = ("–" if math.isnan(p.ci_low) else
                    f"[{_pp(p.ci_low)}, {_pp(p.ci_high)}] "
                    + (f"(≥ {level}, repeated)" if p.design == "sequential" else f"({level})"))
        beats = "–" if math.isnan(p.p_a_beats_b) else (
            f"{p.p_a_beats_b:.2f}" + ("*" if p.n < verdict.RELIABLE_N else ""))
        said = VERDICT_TEXT[p.verdict].format(m=margin)
        if p.verdict == verdict.EQUIVALENT:
            said += (f" ([{_pp(p.eq_low)}, {_pp(p.eq_high)}] at "
                     f"{verdict.level_words(p.eq_level)})")
        if p.note and p.verdict == verdict.UNDECIDED:
            said += f" ({p.note})"
        if p.look:
            said += f", look {p.look}"
        if p.verdict == verdict.UNDECIDED and p.p_adjusted < alpha:
            said += " ¹"
        seeds = str(p.n) + (f" (+{p.unmatched} unmatched)" if p.unmatched else "")
        gone = [f"{v}: {k} diverged" for v, k in ((p.a, p.a_diverged), (p.b, p.b_diverged))
                if k]
        if gone:
            seeds += f" ({'; '.join(gone)}, left out)"
        rows.append([p.a, p.b, seeds, _pp(p.delta), interval,
                     "–" if math.isnan(p.p_adjusted) else f"{p.p_adjusted:.3g}",
                     "–" if math.isnan(p.correlation) else f"{p.correlation:+.2f}",
                     beats, said, "" if p.seeds_needed is None else str(p.seeds_needed)])
    return pd.DataFrame(rows, columns=["A", "B", "seeds", "A − B (pp)", "interval",
                                       "p (Holm)", "r", "P(A>B)", "verdict", "seeds needed"])


def verdict_notes(study: studies.Study, recipe: dict, pairs: list[verdict.Pair],
                  settings: verdict.Settings, left_out: int,
                  beyond: dict[str, int] | None = None,
                  results_dir: Path | str = DEFAULT_RESULTS) -> list[str]:
    """What the verdict table means, the A/A pairs, divergence, and the command that
    decides the undecided pairs."""
    margin, m = settings.margin, max(1, len(pairs))
    lines = ["Paired t-test over the seeds both variants have (at one seed every variant "
             "sees the same data order and augmentation). **better**/**worse**: the "
             f"interval at {verdict.level_words(1 - settings.alpha / m)} (1 − α/m) excludes "
             "0 (A against B); **equivalent**: the interval at "
             f"{verdict.level_words(1 - 2 * settings.alpha / m)} (1 − 2α/m, the TOST at α/m) "
             f"lies within ±{margin:g} points, the margin; **undecided**: neither, so far — "
             "not evidence that the two are alike. Each pair errs with probability at most "
             f"α/m, so this comparison's m = {m} verdicts hold together with "
             f"{verdict.level_words(1 - settings.alpha)} confidence. r: correlation of A's "
             "and B's runs over the matched seeds (what pairing removes); P(A>B): share of "
             "matched seeds where A won (* fewer than 10 seeds: unreliable). See "
             "docs/statistics.md.", ""]
    if any(p.verdict == verdict.UNDECIDED and p.p_adjusted < settings.alpha for p in pairs):
        lines += [f"¹ Holm's adjusted p is below α = {settings.alpha:g}, yet the pair is "
                  "undecided: Holm steps down from the smallest p, while the verdict reads "
                  "the interval at 1 − α/m, which still holds 0. The interval rule decides.",
                  ""]
    gone = sorted({(v, k) for p in pairs for v, k in ((p.a, p.a_diverged),
                                                      (p.b, p.b_diverged)) if k})
    if gone:
        lines += [f"Diverged runs ({', '.join(f'{v}: {k}' for v, k in gone)}) are left out: "
                  "a run that stopped on a NaN loss, or ended near chance while this recipe's "
                  "typical run learned. The verdicts hold for the runs that converged; how "
                  "often a design diverges is a finding of its own.", ""]
    if left_out:
        lines += [f"Left out of the verdicts: {left_out} unfinished run(s) (partial, running, "
                  "interrupted or failed); only finished runs are paired.", ""]
    for v, k in sorted((beyond or {}).items()):
        lines += [f"{v} has {k} seed(s) past the design's last look: the sequential verdict "
                  "does not use them (its α was spent at the looks). To use them, judge "
                  "them as a fixed design in a results folder of their own, or extend the "
                  "design with a larger --max-seeds before its last look is analysed.", ""]
    for p in pairs:
        if _same_network(p.a, p.b) and not math.isnan(p.sd):
            lines += [f"A/A pair: {p.a} and {p.b} are one network built twice, so their "
                      f"deltas measure seed-to-seed noise alone: std {p.sd:.2f} points over "
                      f"{p.n} seeds. A better/worse verdict here is a false positive.", ""]
    open_ = [p for p in pairs if p.seeds_needed is not None]
    if open_:
        need = max(p.seeds_needed for p in open_)
        names = list(dict.fromkeys(v for p in open_ for v in (p.a, p.b)))
        power = verdict.level_words(settings.power)
        lines += [f"Seeds needed: the seeds per variant at which both claims are in reach "
                  f"with {power} power — a true difference of {margin:g} points found "
                  f"(better or worse), and a true difference of 0 found equivalent — from the "
                  f"spread of the deltas pooled over the recipe's pairs (diverged runs left "
                  f"out) at its upper 80 % limit. A true difference between 0 and the margin "
                  f"may stay undecided at any count. "
                  f"`{command(study, recipe, names, need, results_dir)}`, or let the seeds "
                  f"grow only where needed: `{command(study, recipe, names, 0, results_dir)} "
                  "--until-decided`.", ""]
    return lines


def _same_network(a: str, b: str) -> bool:
    return studies.definition_hash(registry.get(a)) == studies.definition_hash(registry.get(b))


def verdict_header(v: judge.Verdicts, res: tuple[float, int, float] | None,
                   split: Split = TEST) -> list[str]:
    """The recipe's verdict settings: margin, design, the split's resolution."""
    s = v.settings
    lines = [f"- **Verdicts**: on final {split.name} accuracy; α = {s.alpha:g} per "
             f"comparison, equivalence margin ±{s.margin:g} points"]
    if v.design:
        looks = ", ".join(map(str, v.design["looks"]))
        kind = v.design.get("spending", "pocock")
        spent = ", ".join(f"{a:.4f}" for a in verdict.spending(v.design["looks"], s.alpha,
                                                               kind))
        how = ("O'Brien–Fleming-type spending, boundaries from the looks' joint distribution;"
               " each decided pair's interval is a repeated confidence interval, valid "
               "whatever the stopping, at the design's level" if kind == "obf" else
               "Pocock-type spending, union bound: a design of 0.4, replayed as recorded")
        extended = (f"; extended from looks {v.design['extended_from']}"
                    if v.design.get("extended_from") else "")
        lines.append(f"- **Design**: sequential (`--until-decided`), looks at {looks} seeds, "
                     f"α spent {spent} ({how}){extended}; {v.looks_done} look(s) complete; "
                     "each pair's numbers are from the look that decided it (after an early "
                     "stop its mean difference leans away from 0: read the interval)")
    if v.spread is not None:
        lines.append(f"- **Seed noise**: std of the per-seed deltas {v.spread.sd:.2f} points, "
                     f"pooled over the comparisons (upper 80 % limit {v.spread.upper:.2f}, "
                     f"about {v.spread.df} degrees of freedom)")
    if res is not None:
        se, n, acc = res
        line = (f"- **{split.name.capitalize()}-set resolution**: one accuracy's binomial "
                f"standard error is {se:.2f} points ({n:,} {split.name} images at "
                f"{100 * acc:.1f} %)")
        if s.margin < se:
            line += (f" — **the margin ±{s.margin:g} is below what this {split.name} set "
                     "can resolve**")
        lines.append(line)
    return lines


COLUMNS = ["comparison", "recipe_id", "a", "b", "n", "unmatched", "delta", "sd", "ci_low",
           "ci_high", "ci_level", "eq_low", "eq_high", "eq_level", "p", "p_adjusted",
           "p_equivalence", "margin", "correlation", "p_a_beats_b", "verdict", "seeds_needed",
           "design", "look", "same_network", "a_diverged", "b_diverged", "tuned", "a_setting",
           "b_setting",
           # a tuned comparison's cost per variant: epochs its tuning trained, the full
           # grid's, its comparison runs', and the device-hours of tuning and of the grid
           "a_tune_epochs", "a_grid_epochs", "a_compare_epochs", "a_tune_hours",
           "a_grid_hours", "b_tune_epochs", "b_grid_epochs", "b_compare_epochs",
           "b_tune_hours", "b_grid_hours"]


def verdict_rows(key: str, recipe_id: str, pairs: list[verdict.Pair],
                 v: judge.Verdicts) -> list[dict]:
    """comparisons.csv rows (docs/statistics.md documents the columns)."""
    return [{"comparison": key, "recipe_id": recipe_id, "a": p.a, "b": p.b, "n": p.n,
             "unmatched": p.unmatched, "delta": p.delta, "sd": p.sd, "ci_low": p.ci_low,
             "ci_high": p.ci_high, "ci_level": p.ci_level, "eq_low": p.eq_low,
             "eq_high": p.eq_high, "eq_level": p.eq_level, "p": p.p,
             "p_adjusted": p.p_adjusted, "p_equivalence": p.p_equivalence,
             "margin": v.settings.margin, "correlation": p.correlation,
             "p_a_beats_b": p.p_a_beats_b, "verdict": p.verdict,
             "seeds_needed": p.seeds_needed, "design": p.design,
             "look": p.look, "same_network": _same_network(p.a, p.b),
             "a_diverged": p.a_diverged, "b_diverged": p.b_diverged, "tuned": False,
             "a_setting": "", "b_setting": ""} for p in pairs]


def dataset_name(record: RunRecord) -> str:
    """A run's dataset as a reader knows it: its name, or a path's last part and its
    content hash (what the recipe id holds)."""
    r = record.recipe
    if r.data_hash:
        return f"{Path(r.dataset).name} (sha256 {r.data_hash[:12]})"
    return str(record.dataset or r.dataset)


def recipe_header(recipe_id: str, runs: list[Run]) -> list[str]:
    s0 = runs[0].record
    r = s0.recipe
    shape = s0.input_shape
    held = (f", {s0.validation_images:,} held out for validation"
            if s0.validation_images else "")
    seeds = sorted({x.seed for x in runs})

    def known(v) -> str:
        return "?" if v is None else str(v)

    devices = sorted({known(x.record.device) for x in runs})
    versions = sorted({f"Python {known(x.record.python)}, Keras {known(x.record.keras)}, "
                       f"{known(x.record.backend)} {x.record.backend_version or ''}".strip()
                       for x in runs})
    commits = sorted({(str(x.record.git_commit or "unknown")[:10]
                       + (" (dirty)" if x.record.git_dirty else "")) for x in runs})
    # a variant whose own fields change what it trains with gets its whole recipe said
    own = sorted({f"{x.variant}: {x.record.trained.describe()}" for x in runs
                  if x.record.trained != r})
    lines = [
        f"## Recipe `{recipe_id}`", "",
        f"- **Dataset**: {dataset_name(s0)}, {known(s0.train_images)} train / "
        f"{known(s0.test_images)} test images{held}"
        + (f" ({'x'.join(map(str, shape))}, {s0.num_classes} classes)"
           if shape and (tuple(shape), s0.num_classes) != ((32, 32, 3), 10) else "")
        + (" — **a subset of the data, not comparable with published numbers**"
           if r.train_limit or r.test_limit else ""),
        f"- **Recipe**: {r.describe()}",
        *([f"- **Variants with recipe fields of their own** (what each trained with): "
           f"{'; '.join(own)}"] if own else []),
        f"- **Runs**: {len(runs)} ({len({x.variant for x in runs})} variants, seeds "
        f"{', '.join(map(str, seeds))})",
        f"- **Hardware**: {'; '.join(devices)}",
        f"- **Software**: {'; '.join(versions)}; code {', '.join(commits)}",
    ]
    partial = sorted(f"{x.variant} s{x.seed} "
                     f"({x.record.epochs_done}/{r.epochs} epochs, {x.record.status})"
                     for x in runs if x.record.epochs_done < r.epochs)
    if partial:
        lines.append(f"- **Partial runs** (fewer epochs than planned): {', '.join(partial)}")
    return [*lines, ""]


def comparison_table(summary: pd.DataFrame, cmp: studies.Comparison, epochs: int,
                     published: bool, label: str = "blog label",
                     split: Split = TEST) -> pd.DataFrame:
    """The comparison's table: parameters (✓ = the reference count), multiply-adds per
    image, size, seeds, accuracy, time, speed; the published error beside ours where the
    study has one for the runs' dataset."""
    rows = []
    tta = "tta_mean" in summary and summary["tta_mean"].notna().any()
    timed = "infer_images_per_second" in summary and \
        summary["infer_images_per_second"].notna().any()
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
            f"best {split.name} acc % (picked on {split.name})": mean_std(s.best_mean,
                                                                       s.best_std),
            f"final {split.name} acc %": mean_std(s.final_mean, s.final_std),
            **({} if not tta else {
                "final TTA test acc %": mean_std(s.tta_mean, s.tta_std),
                "TTA 95 % interval": "–" if s.tta_interval is None else
                f"[{100 * s.tta_interval[0]:.2f}, {100 * s.tta_interval[1]:.2f}]"}),
            "train time": "–" if math.isnan(s.train_seconds) else results.duration(
                s.train_seconds),
            "img/s": "–" if math.isnan(s.images_per_second) else f"{s.images_per_second:.0f}",
            **({} if not timed else {
                "inference img/s (lowest–highest)": "–"
                if math.isnan(s.infer_images_per_second) else
                f"{s.infer_images_per_second:,.0f} ({s.infer_images_per_second_low:,.0f}–"
                f"{s.infer_images_per_second_high:,.0f})",
                "latency ms, median (p90)": "–" if math.isnan(s.infer_latency_ms) else
                f"{s.infer_latency_ms:.2f} ({s.infer_latency_p90_ms:.2f})"}),
            "MACs": "unknown" if s.macs is None or (isinstance(s.macs, float)
                                                  and math.isnan(s.macs))
            else f"{s.macs / 1e6:,.1f}M",
        }
        if published:
            row["test error % (final)"] = mean_std(s.error_mean / 100, s.error_std / 100)
            row["published error %"] = ("–" if math.isnan(s.published_error)
                                        else f"{s.published_error:.2f}")
        rows.append(row)
    for ref in cmp.references:
        rows.append({"variant": ref.name, "params": f"{ref.params:,}"})
    return pd.DataFrame(rows).fillna("")
