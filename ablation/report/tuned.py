"""The report's tuned comparisons (a study with `[tune]`): per tuning group, each
variant's chosen setting (replayed from the tuning runs by `ablation.tune.choose`, as
the runner chose it), the tuning figure, where the choice sits at the edge of what was
tried, whether the ranking holds across settings, and the verdicts of the comparison
phase on the test set."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd

from ablation import halving, results, tune
from ablation import study as studies
from ablation.protocol import JobState, RunRecord
from ablation.recipe import Recipe
from ablation.report import figures, latex, markdown, stats
from ablation.runs import Run


def groups(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs of each tuning group (both phases), by group id."""
    out: dict[str, list[Run]] = {}
    for r in runs:
        if r.record.phase in tune.PHASES and r.record.tuning:
            out.setdefault(r.record.tuning.group, []).append(r)
    return out


def rerun_recipe(study: studies.Study, record: RunRecord) -> dict:
    """The recipe a command that reruns a tuned run's study should name: the run's, its
    tuned fields back at the base's values and its validation split back at the study
    recipe's when [tune] set it, since the phases derive both again."""
    recipe = {**record.recipe.to_dict(), **record.tuning.base}
    if study.tune is not None and study.tune.validation is not None:
        recipe["validation"] = study.recipe().validation
    return recipe


def _records(rs: list[Run]) -> list[RunRecord]:
    return [r.record for r in rs]


def _base(rs: list[Run]) -> Recipe:
    """The group's base recipe: any of its runs' recipe, the tuned fields set back to the
    base's values (recorded with every run of the group)."""
    return rs[0].record.recipe.replace(**rs[0].record.tuning.base)


def section(study: studies.Study, runs: list[Run], out_dir: Path, col: dict,
            results_dir: Path, margin: float | None, block, also: tuple[str, ...] = (),
            tex: bool = False) -> tuple[list[str], list[dict]]:
    """The markdown of every tuning group, and its comparisons.csv rows. `block` is the
    report's comparison block (the same tables, figures and verdicts as any recipe's)."""
    t = study.tune
    lines: list[str] = []
    rows: list[dict] = []
    designs = results.read_designs(Path(results_dir))
    for gid, rs in sorted(groups(runs).items()):
        if t is None or set(rs[0].record.tuning.fields) != set(t.fields):
            lines += [f"## Tuning group `{gid}`: tuned {rs[0].record.tuning.fields}, "
                      "which the study's [tune] no longer names; left out", ""]
            continue
        base = _base(rs)
        variants = sorted({r.variant for r in rs}, key=list(study.variant_names).index)
        records = _records(rs)
        choices = tune.choose(records, study.name, t, base, variants)
        chosen = {v: tune.key(c.setting) for v, c in choices.items() if c is not None}
        held = rs[0].record.recipe.validation
        lines += [f"## Tuned comparisons (group `{gid}`)", "",
                  f"- **Tuned**: {', '.join(t.fields)}, for each variant, on {held:,} "
                  f"held-out validation images; {len(t.candidates())} setting(s) x {t.seeds} "
                  "tuning seed(s); chosen by final validation accuracy (mean over the tuning "
                  "seeds), a tie to the setting nearest the base recipe's ("
                  + ", ".join(f"{k} {v}" for k, v in rs[0].record.tuning.base.items())
                  + "). The test set is never read to choose.",
                  f"- **Base recipe**: {base.describe()}",
                  *(f"- **Warning**: {w}" for w in t.warnings()),
                  "- **The verdicts below** are best against best on this grid: each variant "
                  "at its own chosen setting, over the comparison seeds (after the tuning "
                  "seeds), judged on the test set (docs/statistics.md).", ""]
        fig_dir = out_dir / f"tuned-{gid}"
        fig_dir.mkdir(parents=True, exist_ok=True)
        scores = tune.scores(records, gid, t.fields)
        means = {v: {k: sum(a) / len(a) for k, a in scores[v][0].items() if a}
                 for v in variants if v in scores}
        settings = {k: s for v in scores for k, s in scores[v][1].items()}
        table = _choices_frame(choices, scores)
        lines += _choices_table(table, choices)
        if tex:
            latex.write(fig_dir / "tuning-choices.tex", table,
                        f"Each variant's own setting of {', '.join(t.fields)}, chosen on "
                        f"{held:,} held-out validation images (group {gid})",
                        latex.label(f"tuned-{gid}", "choices"))
        figures.plot_tuning(fig_dir / "tuning.png", means, settings, t, col, also, chosen)
        lines += [f"![tuning: validation accuracy against {', '.join(t.fields)}]"
                  f"(tuned-{gid}/tuning.png)", ""]
        lines += _robustness(means, settings, variants)
        cost = costs(rs, variants, t)
        lines += _cost_lines(cost, t)
        lines += _budget_curves(rs, variants, t, fig_dir, gid, col, also)
        compare, judged = _judge(study, gid, rs, choices, designs, margin)
        if not compare:
            cmd = " ".join(["ablation run", *markdown.study_flag(study), "--all",
                            *markdown.results_flag(results_dir)])
            lines += [f"**Comparison phase pending**: no run at the chosen settings yet; "
                      f"`{cmd}` runs it.", ""]
            continue
        lines += [*markdown.verdict_header(judged, stats.resolution(compare)), ""]
        for n, cmp in enumerate(study.comparisons, 1):
            lines += block(study, cmp, n, compare, fig_dir, f"tuned-{gid}", col, results_dir,
                           judged, results.TEST, also, tex)
            rows += tuned_rows(cmp.key, gid, judged.pairs[cmp.key], judged, chosen, cost)
    return lines, rows


# --- what tuning cost, and whether the ranking depends on it (Dodge et al. 2019) -------------


def costs(rs: list[Run], variants: list[str], t: tune.Tune) -> dict[str, dict]:
    """Per variant: the epochs its tuning runs trained, the full grid's epochs (every
    setting, every tuning seed, every epoch), the comparison runs' epochs, and the
    device-hours of each at the variant's median measured training speed, each run at
    its own training-set size (tuning holds the validation split out)."""
    out = {}
    for v in variants:
        mine = [r for r in rs if r.variant == v]
        speeds = [float(r.record.images_per_second) for r in mine
                  if r.record.images_per_second]
        speed = statistics.median(speeds) if speeds else None
        spent = {phase: [(r.record.epochs_done, r.record.train_images) for r in mine
                         if r.record.phase == phase] for phase in ("tune", "compare")}
        grid = halving.grid_epochs(len(t.candidates()), mine[0].record.recipe.epochs, t.seeds)
        tune_images = next((images for _, images in spent["tune"] if images), None)
        out[v] = {"tune_epochs": sum(e for e, _ in spent["tune"]), "grid_epochs": grid,
                  "compare_epochs": sum(e for e, _ in spent["compare"]),
                  "tune_hours": _device_hours(spent["tune"], speed),
                  "grid_hours": _device_hours([(grid, tune_images)], speed),
                  "compare_hours": _device_hours(spent["compare"], speed)}
    return out


def _device_hours(epoch_images: list[tuple[int, int | None]], speed: float | None
                  ) -> float | None:
    """Hours to train (epochs, training images) pairs at `speed` images/s; None where the
    speed, or the size of a run that trained an epoch, is unknown (a job that failed
    before its first epoch costs nothing)."""
    if speed is None or any(e and not images for e, images in epoch_images):
        return None
    return sum(e * images for e, images in epoch_images) / speed / 3600


def _hours(h: float | None) -> str:
    return "–" if h is None else f"{h:.3g}"


def _cost_lines(cost: dict[str, dict], t: tune.Tune) -> list[str]:
    rule = ("successive halving (factor " f"{t.halving.factor})" if t.halving
            else "every setting in full")
    rows = [[v, str(c["tune_epochs"]), str(c["grid_epochs"]),
             f"{100 * c['tune_epochs'] / c['grid_epochs']:.0f}", str(c["compare_epochs"]),
             _hours(c["tune_hours"]), _hours(c["grid_hours"]), _hours(c["compare_hours"])]
            for v, c in cost.items()]
    frame = pd.DataFrame(rows, columns=["variant", "tuning epochs", "full grid epochs",
                                        "% of the grid", "comparison epochs",
                                        "tuning device-h", "grid device-h",
                                        "comparison device-h"])
    return [f"**What tuning cost** ({rule}"
            + (f", a budget of {t.budget:,} epochs a variant" if t.budget else "")
            + "; device-hours from each variant's measured images/s on this hardware):", "",
            markdown.table(frame), ""]


def _validation_at(run: Run, epoch: int) -> float:
    """A run's validation accuracy after `epoch` (1-based); NaN where it has none."""
    h = run.history["validation_accuracy"]
    return float(h.iloc[epoch - 1]) if len(h) >= epoch else math.nan


def _budget_curves(rs: list[Run], variants: list[str], t: tune.Tune, fig_dir: Path,
                   gid: str, col: dict, also: tuple[str, ...]) -> list[str]:
    """Dodge et al.'s expected best validation accuracy against the number of settings
    tried, per variant, at the epoch every setting that ran as planned reached (the
    first rung under successive halving, the last epoch otherwise; a setting that failed
    or diverged before it is left out); and whether the leader changes."""
    per: dict[str, list[float]] = {}
    epoch = None
    for v in variants:
        by_setting: dict[str, list] = {}
        for r in rs:
            if r.variant == v and r.record.phase == "tune" and len(r.history) \
                    and "validation_accuracy" in r.history.columns:
                by_setting.setdefault(r.record.recipe_id, []).append(r)
        # the epoch is one every setting that ran as planned reached: a run that failed
        # or diverged early does not pull the whole figure back to its last epoch
        reached = min((min(len(x.history) for x in runs_) for runs_ in by_setting.values()
                       if all(x.record.status in (JobState.DONE, JobState.PAUSED)
                              for x in runs_)), default=0)
        if len(by_setting) < 2 or not reached:
            continue
        epoch = reached if epoch is None else min(epoch, reached)
        per[v] = by_setting
    if len(per) < 1 or epoch is None:
        return []
    curves = {}
    for v, by_setting in per.items():
        vals = []
        for runs_ in by_setting.values():  # a setting without a number there is left out
            accs = [_validation_at(x, epoch) for x in runs_]
            if all(a == a for a in accs):
                vals.append(sum(accs) / len(accs))
        if len(vals) >= 2:
            curves[v] = [stats.expected_best(vals, k) for k in range(1, len(vals) + 1)]
    if not curves:
        return []
    figures.plot_budget(fig_dir / "expected-best.png", curves, epoch, col, also)
    lines = [f"![expected best validation accuracy against settings tried](tuned-{gid}/"
             "expected-best.png)", "",
             f"Expected best validation accuracy of k settings tried (Tang et al. 2020's "
             f"unbiased estimator of Dodge et al. 2019's curve, at epoch {epoch}, which every "
             "setting that ran as planned reached): how the verdict would read at a smaller "
             "tuning budget."]
    common = min(len(c) for c in curves.values())
    leaders = [max(curves, key=lambda v, k=k: curves[v][k]) for k in range(common)]
    changes = [k + 1 for k in range(1, common) if leaders[k] != leaders[k - 1]]
    if len(curves) > 1 and changes:
        lines += ["", f"**The order changes along the budget**: {leaders[0]} leads at 1 "
                  f"setting tried, {leaders[-1]} at {common}; it changes at "
                  f"{', '.join(map(str, changes))}: the verdict depends on how much tuning "
                  "each variant gets."]
    elif len(curves) > 1:
        lines += ["", f"The order holds along the budget: {leaders[0]} leads at every number "
                  f"of settings tried (1 to {common})."]
    return [*lines, ""]


def _judge(study: studies.Study, gid: str, rs: list[Run], choices: dict, designs: dict,
           margin: float | None) -> tuple[list[Run], stats.Verdicts | None]:
    """A tuning group's comparison runs at the chosen settings, and their verdicts (the
    group's recorded --until-decided design replayed, if any)."""
    t = study.tune
    compare = [r for r in rs if r.record.phase == "compare"
               and choices.get(r.variant) is not None
               and tune.setting_of(r.record.recipe.to_dict(), t.fields)
               == choices[r.variant].setting]
    if not compare:
        return [], None
    design = designs.get(results.design_key(study.name, f"tuned-{gid}"))
    settings = stats.design_settings(study, design, margin)
    # the comparison seeds count from 0 for the verdicts (they follow the tuning seeds)
    return compare, stats.verdicts(study, compare, settings, design, first_seed=t.seeds)


def verdict_groups(study: studies.Study, runs: list[Run], results_dir: Path,
                   margin: float | None = None):
    """Per tuning group the study's [tune] still names: (group id, its comparison runs,
    their verdicts, each variant's chosen setting as JSON, what its tuning cost). What
    `section` reports, for other readers of the verdicts (an export)."""
    designs = results.read_designs(Path(results_dir))
    for gid, rs in sorted(groups(runs).items()):
        t = study.tune
        if t is None or set(rs[0].record.tuning.fields) != set(t.fields):
            continue
        variants = sorted({r.variant for r in rs}, key=list(study.variant_names).index)
        choices = tune.choose(_records(rs), study.name, t, _base(rs), variants)
        compare, judged = _judge(study, gid, rs, choices, designs, margin)
        if compare:
            yield gid, compare, judged, {v: tune.key(c.setting) for v, c in choices.items()
                                         if c is not None}, costs(rs, variants, t)


def tuned_rows(key: str, gid: str, pairs, judged: stats.Verdicts, chosen: dict,
               cost: dict | None = None) -> list[dict]:
    """comparisons.csv rows of a tuned comparison: each variant's chosen setting beside,
    and what its tuning cost (epochs and device-hours, the full grid's beside)."""
    cost = cost or {}

    def spent(v: str) -> dict:
        c = cost.get(v, {})
        return {k: c.get(k) for k in ("tune_epochs", "grid_epochs", "compare_epochs",
                                      "tune_hours", "grid_hours")}

    return [{**row, "tuned": True, "a_setting": chosen.get(row["a"], ""),
             "b_setting": chosen.get(row["b"], ""),
             **{f"a_{k}": x for k, x in spent(row["a"]).items()},
             **{f"b_{k}": x for k, x in spent(row["b"]).items()}}
            for row in markdown.verdict_rows(key, f"tuned-{gid}", pairs, judged)]


def _choices_frame(choices: dict[str, tune.Choice | None], scores) -> pd.DataFrame:
    """Each variant's choice as a table: the markdown's, and the LaTeX's."""
    rows = []
    for v, c in choices.items():
        failed = sum(1 for a in scores.get(v, ({}, {}))[0].values() if not a)
        if c is None:
            rows.append([v, "–", "–", "–", f"{failed} failed"])
            continue
        rows.append([v, tune.words(c.setting), f"{100 * c.accuracy:.2f}", str(c.seeds),
                     (f"{c.tied} tie(s), nearest the base taken" if c.tied else "")
                     + (f"; {failed} setting(s) failed or diverged" if failed else "")])
    return pd.DataFrame(rows, columns=["variant", "chosen setting",
                                       "validation acc % (tuning mean)", "tuning seeds",
                                       "notes"])


def _choices_table(table: pd.DataFrame, choices: dict[str, tune.Choice | None]) -> list[str]:
    notes = [f"- **{v}** — {e}" for v, c in choices.items() if c is not None for e in c.edges]
    out = ["Each variant's own setting:", "", markdown.table(table), ""]
    if notes:
        out += ["**At the edge of what was tried** (the best may lie beyond it):", "",
                *notes, ""]
    return out


def _robustness(means: dict[str, dict[str, float]], settings: dict[str, dict],
                variants: list[str]) -> list[str]:
    """At each setting tried, each variant's validation accuracy, the leader and its lead:
    does the ranking hold across settings, or flip?"""
    rows, leaders = [], set()
    for k in sorted(settings, key=lambda k: [str(v) for v in settings[k].values()]):
        accs = {v: means.get(v, {}).get(k) for v in variants}
        have = {v: a for v, a in accs.items() if a is not None}
        if len(have) < 2:
            continue
        ranked = sorted(have.items(), key=lambda kv: -kv[1])
        lead = 100 * (ranked[0][1] - ranked[1][1])
        leaders.add(ranked[0][0] if lead > 0 else "(tie)")
        rows.append([tune.words(settings[k]),
                     *("–" if a is None else f"{100 * a:.2f}" for a in accs.values()),
                     ranked[0][0] if lead > 0 else "(tie)", f"{lead:.2f}"])
    if not rows:
        return []
    table = pd.DataFrame(rows, columns=["setting", *(f"{v} val %" for v in variants),
                                        "leads", "by (points)"])
    holds = ("the same variant leads at every setting" if len(leaders) == 1 else
             f"the lead changes hands across settings ({', '.join(sorted(leaders))})")
    return ["Does the ranking hold across settings? Validation accuracy at each setting "
            f"tried (mean over the tuning seeds): {holds}.", "", markdown.table(table), ""]
