"""The report's tuned comparisons (a study with `[tune]`): per tuning group, each
variant's chosen setting (replayed from the tuning runs by `ablation.tune.choose`, as
the runner chose it), the tuning figure, where the choice sits at the edge of what was
tried, whether the ranking holds across settings, and the verdicts of the comparison
phase on the test set."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ablation import halving, judge, registry, results, tune
from ablation import runs as runs_mod
from ablation import study as studies
from ablation.protocol import JobState, RunRecord
from ablation.recipe import Recipe
from ablation.report import figures, latex, markdown, stats
from ablation.store import Run, curve


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
    base's values (recorded with every run of the group, each its own space's)."""
    base = {k: v for r in rs for k, v in r.record.tuning.base.items()}
    return rs[0].record.recipe.replace(**base)


def _current(rs: list[Run], t: tune.Tune | None) -> bool:
    """Whether a group's runs tuned the fields the study's [tune] names for each variant
    now (a changed [tune] makes another experiment: its old runs are left out)."""
    return t is not None and all(
        set(r.record.tuning.fields) == {a.name for a in t.axes_for(r.variant)} for r in rs)


def _owns(study: studies.Study, base: Recipe, variants: list[str]) -> dict[str, Recipe]:
    return {v: registry.get(v).train_recipe(base) for v in variants}


def _rungs(t: tune.Tune, base: Recipe) -> list[int]:
    """The epochs settings were compared at: the rungs, or the last epoch."""
    return t.rungs(base)


def _points(rs: list[Run], rungs: list[int]) -> dict[str, dict[str, dict[int, float]]]:
    """variant -> setting key -> {rung epoch: validation accuracy, mean over the tuning
    seeds}, at every rung all of a setting's seeds reached."""
    got: dict[tuple[str, str], list[dict[int, float]]] = {}
    for r in rs:
        if r.record.phase == "tune":
            k = tune.key(tune.setting_of(r.record.recipe.to_dict(), r.record.tuning.fields))
            got.setdefault((r.variant, k), []).append(curve(r.history, "validation"))
    out: dict[str, dict[str, dict[int, float]]] = {}
    for (v, k), curves in got.items():
        out.setdefault(v, {})[k] = {e: sum(c[e] for c in curves) / len(curves) for e in rungs
                                    if all(e in c for c in curves)}
    return out


def _figure_axes(t: tune.Tune, owns: dict[str, Recipe]) -> tune.Tune:
    """One set of axes for the tuning figure: each field once, its values every variant's
    resolved values (a grid), log-scaled where any space is."""
    by: dict[str, tune.Axis] = {}
    for v, own in owns.items():
        for a in t.for_variant(v, own).axes:
            b = by.get(a.name)
            if b is None:
                by[a.name] = a
            elif a.is_range or b.is_range or a.values != b.values:
                values = tuple(sorted({*b.values, *a.values}, key=lambda x: (str(type(x)), x)))
                by[a.name] = tune.Axis(a.name, values, log=a.log or b.log,
                                       low=None if not (a.is_range or b.is_range) else min(
                                           x for x in (a.low, b.low) if x is not None),
                                       high=None if not (a.is_range or b.is_range) else max(
                                           x for x in (a.high, b.high) if x is not None))
    return replace(t, axes=tuple(by.values()), spaces=())


def _spaces(t: tune.Tune, owns: dict[str, Recipe]) -> list[str]:
    """Which space each variant was tuned over, in words."""
    def said(v: str) -> str:
        axes = t.axes_for(v)
        mine = t.for_variant(v, owns[v]).axes
        parts = []
        for a, b in zip(axes, mine, strict=True):
            own = f" of its own {getattr(owns[v], a.name):g} = {b.words().split(' ', 1)[1]}" \
                if a.times else ""
            parts.append(a.words() + own)
        return "; ".join(parts)

    if not t.spaces:
        return [f"- **Space**: {said(next(iter(owns)))} (every variant)"] if owns else []
    return ["- **Spaces** (each variant's own, where the study gives one):",
            *(f"  - {v}: {said(v)}" + ("" if t.own_space(v) else " (the study's)")
              for v in owns)]


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
        if not _current(rs, t):
            lines += [f"## Tuning group `{gid}`: tuned {rs[0].record.tuning.fields}, "
                      "which the study's [tune] no longer names; left out", ""]
            continue
        base = _base(rs)
        variants = sorted({r.variant for r in rs}, key=list(study.variant_names).index)
        records = _records(rs)
        owns = _owns(study, base, variants)
        choices = tune.choose(records, study.name, t, base, owns)
        chosen = {v: tune.key(c.setting) for v, c in choices.items() if c is not None}
        held = rs[0].record.recipe.validation
        fields = t.all_fields
        tried = {v: len({r.record.recipe_id for r in rs if r.variant == v
                         and r.record.phase == "tune"}) for v in variants}
        lines += [f"## Tuned comparisons (group `{gid}`)", "",
                  f"- **Tuned**: {', '.join(fields)}, for each variant, on {held:,} "
                  f"held-out validation images; "
                  + ", ".join(f"{v} {n} setting(s)" for v, n in tried.items())
                  + f" x {t.seeds} tuning seed(s); chosen by final validation accuracy "
                  "(mean over the tuning seeds), a tie to the setting nearest the variant's "
                  "own recipe. The test set is never read to choose"
                  + (" (the tuning runs evaluated it, as [tune] test asks; its numbers are "
                     "not shown)" if t.test else ", nor evaluated by the tuning runs") + ".",
                  *_spaces(t, owns),
                  f"- **Base recipe**: {base.describe()}",
                  *(f"- **Warning**: {w}" for w in t.warnings()),
                  "- **The verdicts below** are best against best on these spaces: each "
                  "variant at its own chosen setting, over the comparison seeds (after the "
                  "tuning seeds), judged on the test set (docs/statistics.md).", ""]
        fig_dir = out_dir / f"tuned-{gid}"
        fig_dir.mkdir(parents=True, exist_ok=True)
        scores = tune.scores(records, gid)
        means = {v: {k: sum(a) / len(a) for k, a in scores[v][0].items() if a}
                 for v in variants if v in scores}
        settings = {k: s for v in scores for k, s in scores[v][1].items()}
        table = _choices_frame(choices, rs)
        lines += _choices_table(table, choices)
        if tex:
            latex.write(fig_dir / "tuning-choices.tex", table,
                        f"Each variant's own setting of {', '.join(fields)}, chosen on "
                        f"{held:,} held-out validation images (group {gid})",
                        latex.label(f"tuned-{gid}", "choices"))
        rungs = _rungs(t, base)
        figures.plot_tuning(fig_dir / "tuning.png", _points(rs, rungs), settings,
                            _figure_axes(t, owns), col, also, chosen)
        lines += [f"![tuning: validation accuracy against {', '.join(fields)}]"
                  f"(tuned-{gid}/tuning.png)", ""]
        lines += _passed_over(rs, gid, variants, rungs, t)
        lines += _robustness(means, settings, variants)
        cost = costs(rs, variants, t)
        lines += _cost_lines(cost, t)
        lines += _budget_curves(rs, variants, t, fig_dir, gid, col, also)
        compare, judged = _judge(study, gid, rs, choices, designs, margin)
        if not compare:
            cmd = " ".join(["ablation run", *study.flag, "--all",
                            *markdown.results_flag(results_dir)])
            lines += [f"**Comparison phase pending**: no run at the chosen settings yet; "
                      f"`{cmd}` runs it.", ""]
            continue
        lines += [*markdown.verdict_header(judged, judged.resolution), ""]
        for n, cmp in enumerate(study.comparisons, 1):
            lines += block(study, cmp, n, compare, fig_dir, f"tuned-{gid}", col, results_dir,
                           judged, results.TEST, also, tex)
            rows += tuned_rows(cmp.key, gid, judged.pairs[cmp.key], judged, chosen, cost)
    return lines, rows


# --- what tuning cost, and whether the ranking depends on it (Dodge et al. 2019) -------------


def costs(rs: list[Run], variants: list[str], t: tune.Tune) -> dict[str, dict]:
    """Per variant: the epochs its tuning runs trained, the full grid's epochs (every
    setting it tried, every tuning seed, every epoch), the comparison runs' epochs, and
    the device-hours each phase took as its runs measured them: every attempt's process
    time (start-up, training steps, evaluations, snapshots; `wall_seconds`), the steps,
    evaluations and start-ups apart. The full grid's hours are projected from the tuning
    runs' hours per epoch. Runs of 0.6 and earlier measured their epochs only: their
    hours are those (`train_seconds`), marked."""
    out = {}
    for v in variants:
        mine = [r for r in rs if r.variant == v]
        by = {phase: [r for r in mine if r.record.phase == phase] for phase in ("tune",
                                                                               "compare")}
        settings = len({r.record.recipe_id for r in by["tune"]})
        grid = halving.grid_epochs(settings, mine[0].record.recipe.epochs, t.seeds)
        spent = {p: sum(r.record.epochs_done for r in rs_) for p, rs_ in by.items()}
        time = {p: measured(rs_) for p, rs_ in by.items()}
        per_epoch = (time["tune"]["hours"] / spent["tune"]
                     if time["tune"]["hours"] is not None and spent["tune"] else None)
        out[v] = {"tune_epochs": spent["tune"], "grid_epochs": grid,
                  "compare_epochs": spent["compare"],
                  "tune_hours": time["tune"]["hours"],
                  "tune_steps_hours": time["tune"]["steps"],
                  "tune_eval_hours": time["tune"]["eval"],
                  "tune_startup_hours": time["tune"]["startup"],
                  "grid_hours": None if per_epoch is None else per_epoch * grid,
                  "compare_hours": time["compare"]["hours"],
                  "estimated": time["tune"]["older"] or time["compare"]["older"]}
    return out


def measured(rs: list[Run]) -> dict:
    """The device-hours a set of runs took, as they recorded them: in all (every attempt's
    process), and the training steps, the evaluations and the start-ups apart (from each
    epoch's images/s and seconds). `older`: some run recorded only its epochs' time."""
    hours = steps = evals = startup = 0.0
    older = False
    for r in rs:
        rec = r.record
        if rec.wall_seconds is not None:
            hours += rec.wall_seconds
            startup += rec.startup_seconds or 0.0
        else:  # 0.6 and earlier: the epochs' own time, nothing around them
            hours += rec.train_seconds or 0.0
            older = older or bool(rec.epochs_done)
        h = r.history
        if len(h) and {"epoch_seconds", "images_per_second"} <= set(h.columns) \
                and rec.train_images:
            step = rec.train_images / h["images_per_second"].where(h["images_per_second"] > 0)
            steps += float(step.sum())
            evals += float((h["epoch_seconds"] - step).clip(lower=0).sum())
    if not rs:
        return {"hours": None, "steps": None, "eval": None, "startup": None, "older": False}
    return {"hours": hours / 3600, "steps": steps / 3600, "eval": evals / 3600,
            "startup": None if older else startup / 3600, "older": older}


def _hours(h: float | None) -> str:
    return "–" if h is None else f"{h:.3g}"


def _cost_lines(cost: dict[str, dict], t: tune.Tune) -> list[str]:
    rule = ("successive halving (factor " f"{t.halving.factor})" if t.halving
            else "every setting in full")
    rows = [[v, str(c["tune_epochs"]), str(c["grid_epochs"]),
             f"{100 * c['tune_epochs'] / c['grid_epochs']:.0f}", str(c["compare_epochs"]),
             _hours(c["tune_hours"]) + ("*" if c["estimated"] else ""),
             " / ".join(_hours(c[k]) for k in ("tune_steps_hours", "tune_eval_hours",
                                                "tune_startup_hours")),
             _hours(c["grid_hours"]), _hours(c["compare_hours"])]
            for v, c in cost.items()]
    frame = pd.DataFrame(rows, columns=["variant", "tuning epochs", "full grid epochs",
                                        "% of the grid", "comparison epochs",
                                        "tuning device-h", "steps / eval / start-up h",
                                        "grid device-h (projected)", "comparison device-h"])
    older = any(c["estimated"] for c in cost.values())
    return [f"**What tuning cost** ({rule}"
            + (f", a budget of {t.budget:,} epochs a variant" if t.budget else "")
            + "; device-hours as the runs measured them on this hardware: every attempt's "
            "process time, start-up, evaluation and snapshots included; the full grid's "
            "projected at the tuning runs' hours per epoch):", "",
            markdown.table(frame), "",
            *(["\\* runs of 0.6 or earlier recorded their epochs' time only, without "
               "start-up and snapshots: a lower bound.", ""] if older else [])]


def _budget_curves(rs: list[Run], variants: list[str], t: tune.Tune, fig_dir: Path,
                   gid: str, col: dict, also: tuple[str, ...]) -> list[str]:
    """Dodge et al.'s expected best validation accuracy against the number of settings
    tried, per variant, at the epoch every setting that ran as planned reached (the
    first rung under successive halving, the last epoch otherwise; a setting that failed
    or diverged before it is left out); and whether the leader changes."""
    per: dict[str, list[float]] = {}
    epoch = None
    warm: dict[str, int] = {}
    for v in variants:
        by_setting: dict[str, list] = {}
        for r in rs:
            if r.variant == v and r.record.phase == "tune" and len(r.history) \
                    and results.VALIDATION.curve in r.history.columns:
                by_setting.setdefault(r.record.recipe_id, []).append(r)
        # the epoch is one every setting that ran as planned reached: a run that failed
        # or diverged early does not pull the whole figure back to its last epoch
        reached = min((min(len(x.history) for x in runs_) for runs_ in by_setting.values()
                       if all(x.record.status in (JobState.DONE, JobState.PAUSED)
                              for x in runs_)), default=0)
        if len(by_setting) < 2 or not reached:
            continue
        # inside a warm-up every setting trains alike (at the warm-up's lr): the curve
        # would read noise there
        w = max(x.record.trained.warmup_epochs for xs in by_setting.values() for x in xs)
        if reached <= w:
            warm[v] = w
            continue
        epoch = reached if epoch is None else min(epoch, reached)
        per[v] = by_setting
    why = [f"Expected best validation accuracy of k settings tried: not drawn for "
           f"{', '.join(warm)}: the last epoch every setting reached is within the warm-up "
           f"({', '.join(f'{v}: {w} epoch(s)' for v, w in warm.items())}), where every "
           "setting trains alike; successive halving stopped the rest there. A first rung "
           "past the warm-up (halving min_epochs) draws it.", ""] if warm else []
    if len(per) < 1 or epoch is None:
        return why
    curves = {}
    for v, by_setting in per.items():
        vals = []
        for runs_ in by_setting.values():  # a setting without a number there is left out
            accs = [curve(x.history, "validation").get(epoch, math.nan) for x in runs_]
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
    return [*lines, "", *why]


def _judge(study: studies.Study, gid: str, rs: list[Run], choices: dict, designs: dict,
           margin: float | None) -> tuple[list[Run], judge.Verdicts | None]:
    """A tuning group's comparison runs at the chosen settings, and their verdicts (the
    group's recorded --until-decided design replayed, if any)."""
    t = study.tune
    compare = [r for r in rs if r.record.phase == "compare"
               and choices.get(r.variant) is not None
               and tune.setting_of(r.record.recipe.to_dict(), r.record.tuning.fields)
               == choices[r.variant].setting]
    if not compare:
        return [], None
    design = designs.get(results.design_key(study.name, f"tuned-{gid}"))
    settings = judge.design_settings(study, design, margin)
    # the comparison seeds count from 0 for the verdicts (they follow the tuning seeds)
    return compare, judge.verdicts(study, compare, settings, design, first_seed=t.seeds)


def verdict_groups(study: studies.Study, runs: list[Run], results_dir: Path,
                   margin: float | None = None):
    """Per tuning group the study's [tune] still names: (group id, its comparison runs,
    their verdicts, each variant's chosen setting as JSON, what its tuning cost). What
    `section` reports, for other readers of the verdicts (an export)."""
    designs = results.read_designs(Path(results_dir))
    for gid, rs in sorted(groups(runs).items()):
        t = study.tune
        if not _current(rs, t):
            continue
        variants = sorted({r.variant for r in rs}, key=list(study.variant_names).index)
        base = _base(rs)
        choices = tune.choose(_records(rs), study.name, t, base, _owns(study, base, variants))
        compare, judged = _judge(study, gid, rs, choices, designs, margin)
        if compare:
            yield gid, compare, judged, {v: tune.key(c.setting) for v, c in choices.items()
                                         if c is not None}, costs(rs, variants, t)


def tuned_rows(key: str, gid: str, pairs, judged: judge.Verdicts, chosen: dict,
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


def _choices_frame(choices: dict[str, tune.Choice | None], rs: list[Run]) -> pd.DataFrame:
    """Each variant's choice as a table (the markdown's, and the LaTeX's), with what
    became of the settings it tried: finished, stopped at a rung by successive halving,
    failed or diverged."""
    rows = []
    for v, c in choices.items():
        ended: dict[str, set[str]] = {}
        for r in rs:
            if r.variant == v and r.record.phase == "tune":
                ended.setdefault(r.record.recipe_id, set()).add(r.record.status)
        failed = sum(JobState.FAILED in e for e in ended.values())
        stopped = sum(JobState.PAUSED in e and JobState.FAILED not in e for e in ended.values())
        notes = [f"{stopped} stopped at a rung" if stopped else "",
                 f"{failed} failed or diverged" if failed else ""]
        if c is None:
            rows.append([v, "–", "–", "–", "; ".join(n for n in notes if n) or "none finished"])
            continue
        notes.insert(0, f"{c.tied} tie(s), nearest the variant's own taken" if c.tied else "")
        rows.append([v, tune.words(c.setting), f"{100 * c.accuracy:.2f}", str(c.seeds),
                     "; ".join(n for n in notes if n)])
    return pd.DataFrame(rows, columns=["variant", "chosen setting",
                                       "validation acc % (tuning mean)", "tuning seeds",
                                       "notes"])


def _passed_over(rs: list[Run], gid: str, variants: list[str], rungs: list[int],
                 t: tune.Tune) -> list[str]:
    """A warning where successive halving did not follow its own ranking: the leader of
    an earlier rung never trained further while other settings did (asynchronous
    promotion gave the rung's places to those that finished first)."""
    if not t.halving:
        return []
    said = []
    for v in variants:
        by = {r.record.recipe_id: r.record.recipe for r in rs
              if r.variant == v and r.record.phase == "tune"}
        found, _ = runs_mod.halving_trials(rs, gid, v, list(by), rungs, t.seeds)
        for epoch, trial in halving.passed_over(found, rungs):
            setting = tune.setting_of(by[trial.key].to_dict(),
                                      [a.name for a in t.axes_for(v)])
            said.append(f"- **{v}**: at epoch {epoch}, {tune.words(setting)} led "
                        f"({100 * trial.at(epoch):.2f} %) but was never trained further, "
                        "while other settings were: the choice may owe something to run "
                        "order; rerun the tuning with fewer workers than settings (or "
                        "halving reserve = 1) to promote by rank alone")
    return ["**Successive halving passed over a leader**:", "", *said, ""] if said else []


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
        if len(variants) < 2:
            return []
        return ["Does the ranking hold across settings? Not answered here: no setting was "
                "trained (to the end) by two variants or more (each searched a space of its "
                "own, or halving stopped the shared settings at different rungs).", ""]
    table = pd.DataFrame(rows, columns=["setting", *(f"{v} val %" for v in variants),
                                        "leads", "by (points)"])
    holds = ("the same variant leads at every setting" if len(leaders) == 1 else
             f"the lead changes hands across settings ({', '.join(sorted(leaders))})")
    return ["Does the ranking hold across settings? Validation accuracy at each setting "
            f"tried (mean over the tuning seeds): {holds}.", "", markdown.table(table), ""]
