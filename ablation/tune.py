"""Fair comparisons: each variant's nuisance hyperparameters tuned on a held-out
validation split, then the variants compared at their own best settings.

The deep-learning tuning playbook's rule for a scientific comparison: the nuisance
hyperparameters (learning rate, weight decay, warm-up, ...) are tuned *for each value*
of the scientific one (here, the variant), and the comparison is between the best of
each. A study's `[tune]` table names the fields and their candidates:

* a grid (`lr = [0.05, 0.1, 0.2]`), or ranges (`weight_decay = { low = 1e-5, high = 1e-3,
  log = true }`) sampled at `samples` quasi-random points (a scrambled Sobol sequence from
  `scipy.stats.qmc`, seeded by the study file, so the candidates are reproducible);
* `seeds` tuning seeds per candidate, `validation` images held out of the training split.

Two phases, through the same queue, executors and resume as any run:

1. **tune**: every variant x candidate x tuning seed (seeds 0 .. seeds−1), each
   recipe holding out the validation split;
2. **compare**: every variant at *its* chosen setting, over the comparison's seeds,
   which follow the tuning seeds (seeds .. seeds + N − 1), so no run that chose a
   setting is judged again; verdicts on the test set as any comparison's.

Selection is by final validation accuracy, the mean over the tuning seeds; a tie goes
to the setting nearest the study's base recipe. The test set is never read to choose.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any

from ablation.errors import AblationError, did_you_mean
from ablation.halving import Halving
from ablation.protocol import JobState, RunRecord
from ablation.recipe import VARIANT_FIELDS, Recipe, check_field

RECIPE_FIELDS = {f.name for f in fields(Recipe)}
# what [tune] may search: not the data, not epochs, and not `tta` (an evaluation of the
# test set, which tuning never reads)
TUNABLE = tuple(f for f in (*VARIANT_FIELDS, "batch_size") if f != "tta")
# [tune]'s own keys, beside the fields it tunes
SETTINGS = ("samples", "seeds", "validation", "halving", "budget", "test", "space")
PHASES = ("tune", "compare")


@dataclass(frozen=True)
class Axis:
    """One tuned field: a grid of values, or a range (low..high, log-scaled or not)."""

    name: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    times: bool = False  # values (or low, high) multiply the variant's own value

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def resolved(self, own: Any) -> Axis:
        """The axis in the field's own units: multipliers times the variant's own value
        (`own`), rounded to six digits as any tuned value is."""
        if not self.times:
            return self
        if isinstance(own, bool) or not isinstance(own, int | float):
            raise AblationError(f"[tune] {self.name} = {{ times = ... }} multiplies the "
                                f"variant's own {self.name}, which is {own!r}: give the "
                                "values themselves")

        def at(m: float) -> float | int:
            v = float(f"{m * own:.6g}")
            if isinstance(own, int):  # an integer field stays one (batch_size, epochs)
                if v != round(v):
                    raise AblationError(f"[tune] {self.name}: {m:g} x {own} = {v:g} is not "
                                        "a whole number: give multipliers that keep it "
                                        "whole, or the values themselves")
                return round(v)
            return v

        if self.is_range:
            return replace(self, low=at(self.low), high=at(self.high), times=False)
        values = tuple(at(m) for m in self.values)
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise AblationError(f"[tune] {self.name}: the multipliers {list(self.values)} of "
                                f"{own:g} give {twice[0]:g} twice")
        return replace(self, values=values, times=False)

    def words(self) -> str:
        """The axis as the report says it: "lr in [0.01, 0.1]", "lr 1e-4..1e-2 (log)"."""
        what = "x" if self.times else ""
        if self.is_range:
            return (f"{self.name} {what}{self.low:g}..{what}{self.high:g}"
                    + (" (log)" if self.log else ""))
        shown = [f"{what}{v:g}" if isinstance(v, int | float) and not isinstance(v, bool)
                 else str(v) for v in self.values]
        return f"{self.name} in [{', '.join(shown)}]"

    def at(self, u: float) -> Any:
        """The value at quantile u of the axis (a range's point, a grid's value)."""
        if not self.is_range:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return round(v)
        return float(f"{v:.6g}")  # six digits: readable in recipes, reports and run folders


@dataclass(frozen=True)
class Tune:
    """A study's `[tune]` table, checked."""

    axes: tuple[Axis, ...]
    samples: int
    seeds: int
    validation: int | None  # None: the recipe's own `validation` (a study's, a flag's)
    seed: int  # of the quasi-random sampler: from the study's name and its [tune] table
    # successive halving (rungs, promotion: ablation.halving), and the tuning phase's
    # budget in epochs per variant (over all its tuning seeds)
    halving: Halving | None = None
    budget: int | None = None
    # variants with a space of their own: ((variant names), axes), in the file's order
    spaces: tuple[tuple[tuple[str, ...], tuple[Axis, ...]], ...] = ()
    test: bool = False  # tuning runs evaluate the test set too (never read to choose)

    @property
    def fields(self) -> list[str]:
        return [a.name for a in self.axes]

    @property
    def all_fields(self) -> list[str]:
        """Every field any space tunes (the tuning group's): the default space's first."""
        names = [a.name for a in self.axes]
        for _, axes in self.spaces:
            names += [a.name for a in axes if a.name not in names]
        return names

    def axes_for(self, variant: str) -> tuple[Axis, ...]:
        """A variant's space as written: its own, else the default."""
        return next((axes for names, axes in self.spaces if variant in names), self.axes)

    def own_space(self, variant: str) -> bool:
        return any(variant in names for names, _ in self.spaces)

    def for_variant(self, variant: str, own: Recipe) -> Tune:
        """The search over `variant`'s space, in the field's own units: multipliers times
        the variant's own value (`own`: the study's recipe with the variant's own fields
        on top). Its candidates, edges and words are the variant's."""
        axes = tuple(a.resolved(getattr(own, a.name)) for a in self.axes_for(variant))
        if not axes:
            raise AblationError(f"[tune] {variant} has no space to search: [tune] names no "
                                "field for every variant, and no [[tune.space]] names it")
        seed = self.seed
        if self.own_space(variant):  # its own quasi-random points, reproducible as well
            seed = int(hashlib.sha256(f"{self.seed}:{variant}".encode()).hexdigest()[:8], 16)
        return replace(self, axes=axes, spaces=(), seed=seed)

    def candidates(self) -> list[dict]:
        """The settings to try: the grid's product, or `samples` scrambled-Sobol points
        over the axes when any is a range (a grid axis then takes the point's quantile)."""
        if not any(a.is_range for a in self.axes):
            return [dict(zip(self.fields, combo, strict=True))
                    for combo in itertools.product(*(a.values for a in self.axes))]
        import warnings

        from scipy.stats import qmc

        with warnings.catch_warnings():  # a sample count that is not a power of two
            warnings.simplefilter("ignore", UserWarning)  # keeps Sobol's order, not balance
            points = qmc.Sobol(d=len(self.axes), scramble=True, seed=self.seed).random(
                self.samples)
        out: list[dict] = []
        for p in points:
            c = {a.name: a.at(float(u)) for a, u in zip(self.axes, p, strict=True)}
            if c not in out:
                out.append(c)
        return out

    def warnings(self, run: Recipe | None = None) -> list[str]:
        """What the table asks that tunes nothing: an axis of one value; with the `run`'s
        recipe, halving whose only rung is the last epoch (said by `run`, its dry run and
        the report)."""
        spaces = [("", self.axes), *((f" (the space of {', '.join(n)})", a)
                                     for n, a in self.spaces)]
        out = [f"[tune] {a.name}{where} has one candidate ({a.values[0]}): nothing is "
               "tuned on it; list several values or give a range"
               for where, axes in spaces for a in axes
               if not a.is_range and len(a.values) == 1]
        if run is not None and self.halving is not None and len(self.rungs(run)) == 1:
            drops = run.lr_drops() if run.schedule == "step" else ()
            out.append(f"[tune] halving has no rung before the last epoch ({run.epochs}): "
                       "every setting trains in full and none is stopped early; give more "
                       "epochs" + (f" (the default first rung is after the step schedule's "
                                   f"first lr drop, epoch {drops[0]})" if drops else "")
                       + " or a smaller min_epochs")
        return out

    def rungs(self, run: Recipe) -> list[int]:
        """Successive halving's rungs for a run's recipe (its epochs, and for a step
        schedule the first epoch trained after its first lr drop); the last epoch alone
        without halving."""
        if self.halving is None:
            return [run.epochs]
        drops = run.lr_drops() if run.schedule == "step" else ()
        return self.halving.rungs(run.epochs, drops[0] + 1 if drops else None)

    def early_rungs(self, run: Recipe) -> list[int]:
        """Rungs (but the last) before a step schedule's first lr drop: there settings
        are compared before any annealing (the short-horizon bias); the first rung past
        the drop is the default, so only a study's own min_epochs can put them there."""
        drops = run.lr_drops() if run.schedule == "step" else ()
        return [r for r in self.rungs(run)[:-1] if drops and r <= drops[0]]

    def check(self, run: Recipe) -> None:
        """What the search asks of the run it tunes (its epochs after the flags, not the
        study file's): a rung before the last, and a budget that pays for one full run."""
        h = self.halving
        if h is not None and h.min_epochs and h.min_epochs >= run.epochs:
            raise AblationError(f"[tune] halving min_epochs {h.min_epochs} leaves no rung "
                                f"before the last (the run's epochs: {run.epochs})")
        if self.budget is not None and self.budget < run.epochs * self.seeds:
            raise AblationError(
                f"[tune] budget {self.budget:,} epochs is less than one full run ("
                f"{run.epochs} epochs x {self.seeds} tuning seed(s) = "
                f"{run.epochs * self.seeds:,}): the search could not train one setting to "
                "the end; raise the budget or lower the epochs")

    def recipe(self, base: Recipe, setting: dict) -> Recipe:
        """A candidate's recipe: the base with the validation split and the setting."""
        held = self.validation or base.validation
        if not held:
            raise AblationError("[tune] needs validation = N (or the recipe's validation): "
                                "the images held out to choose on; the test set is never "
                                "read to choose")
        try:
            return base.replace(validation=held, **setting)
        except AblationError as e:
            raise AblationError(f"[tune] the candidate {words(setting)}: {e}") from e


def parse(table: dict, base: Recipe, study: str) -> Tune | None:
    """`[tune]` of a study file as a Tune (None when the table is empty). Every mistake is
    one line naming the key; every candidate's recipe of the default space is checked
    whole (a variant's own space, whose multipliers need the variant, at `run`)."""
    if not table:
        return None
    def bad(msg: str) -> AblationError:
        return AblationError(f"[tune] {msg}")

    settings = {k: table[k] for k in SETTINGS if k in table}
    halving = _halving(settings.pop("halving", None), bad)
    test = settings.pop("test", False)
    if not isinstance(test, bool):
        raise bad(f"test must be true or false, got {test!r}")
    spaces = _spaces(settings.pop("space", []), bad)
    for k, v in settings.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(f"{k} must be a positive integer, got {v!r}")
    axes = _axes({k: v for k, v in table.items() if k not in SETTINGS}, bad, "")
    if any(a.times for a in axes):
        raise bad("times (multipliers of a variant's own value) belongs in a "
                  "[[tune.space]], which names its variants")
    if not axes and not spaces:
        raise bad("names no field to tune (e.g. lr = [0.05, 0.1, 0.2])")
    if "samples" in settings and not any(a.is_range for sp in (axes, *(a for _, a in spaces))
                                         for a in sp):
        raise bad(f"samples = {settings['samples']} draws points from ranges, and every "
                  "field here is a list (the whole grid is tried): remove samples, or give "
                  "a range { low, high }")
    digest = hashlib.sha256(json.dumps([study, table], sort_keys=True, default=str).encode())
    budget = settings.get("budget")
    samples = settings.get("samples", 64 if budget else 8)  # a budget: draw until spent
    tune = Tune(tuple(axes), samples, settings.get("seeds", 1), settings.get("validation"),
                int(digest.hexdigest()[:8], 16), halving, budget, spaces, test)
    if axes:
        for c in tune.candidates():
            tune.recipe(base, c)  # every candidate's recipe is a valid recipe
    return tune


def _axes(table: dict, bad, where: str) -> list[Axis]:
    axes = []
    for name, spec in table.items():
        if name not in TUNABLE:
            hint = "" if name in RECIPE_FIELDS else did_you_mean(name, (*TUNABLE, *SETTINGS),
                                                                n=1)
            raise bad(f"{where}cannot tune {name!r}{hint} (tunable: "
                      f"{', '.join(sorted(TUNABLE))})")
        axes.append(_axis(name, spec, bad))
    return axes


def _spaces(spec: Any, bad) -> tuple[tuple[tuple[str, ...], tuple[Axis, ...]], ...]:
    """`[[tune.space]]`: tables of `variants = [...]` and the fields each tunes."""
    if not isinstance(spec, list) or not all(isinstance(t, dict) for t in spec):
        raise bad("space must be tables: [[tune.space]] with variants = [...] and the "
                  "fields to tune")
    out, seen = [], set()
    for k, table in enumerate(spec, 1):
        names = table.get("variants")
        if not isinstance(names, list) or not names or not all(
                isinstance(n, str) for n in names):
            raise bad(f"space {k} needs variants = [\"name\", ...], the variants it is for")
        twice = [n for n in names if n in seen]
        if twice:
            raise bad(f"space {k}: {twice[0]} has a space already")
        seen.update(names)
        axes = _axes({f: v for f, v in table.items() if f != "variants"}, bad,
                     f"space {k}: ")
        if not axes:
            raise bad(f"space {k} names no field to tune")
        out.append((tuple(names), tuple(axes)))
    return tuple(out)


def _halving(spec: Any, bad) -> Halving | None:
    """`halving = 3` (the reduction factor) or `halving = { factor = 3, min_epochs = 2 }`."""
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"factor": spec}
    if not isinstance(spec, dict) or set(spec) - {"factor", "min_epochs", "reserve"}:
        raise bad("halving is a reduction factor (halving = 3) or { factor = 3, "
                  "min_epochs = N, reserve = 0.5 }")
    factor, first = spec.get("factor", 3), spec.get("min_epochs")
    reserve = spec.get("reserve", 0.0)
    if isinstance(reserve, bool) or not isinstance(reserve, int | float) \
            or not 0 <= reserve <= 1:
        raise bad(f"halving reserve must be a number from 0 to 1, got {reserve!r}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise bad(f"halving factor must be an integer of at least 2, got {factor!r}")
    if first is not None and (isinstance(first, bool) or not isinstance(first, int)
                              or first < 1):
        raise bad(f"halving min_epochs must be a positive integer, got {first!r}")
    return Halving(factor, first, float(reserve))


def _axis(name: str, spec: Any, bad) -> Axis:
    if isinstance(spec, dict) and "times" in spec:  # multipliers of the variant's own
        if set(spec) != {"times"}:
            raise bad(f"{name}: times is a table of its own: {{ times = [0.3, 1, 3] }} or "
                      "{ times = { low = 0.1, high = 10, log = true } }")
        inner = _plain_axis(name, spec["times"], lambda m: bad(f"times: {m}"), check=False)
        nums = inner.values if not inner.is_range else (inner.low, inner.high)
        if not all(isinstance(m, int | float) and not isinstance(m, bool) and m > 0
                   for m in nums):
            raise bad(f"{name}: multipliers must be positive numbers, got {list(nums)}")
        return replace(inner, times=True)
    return _plain_axis(name, spec, bad)


def _plain_axis(name: str, spec: Any, bad, check: bool = True) -> Axis:
    if isinstance(spec, list):
        if not spec:
            raise bad(f"{name} needs at least one candidate")
        for v in spec:
            if check:
                _value(name, v, bad)
        if len(set(map(json.dumps, spec))) != len(spec):
            raise bad(f"{name} lists a candidate twice")
        return Axis(name, values=tuple(spec))
    if isinstance(spec, dict):
        extra = sorted(set(spec) - {"low", "high", "log"})
        if extra or "low" not in spec or "high" not in spec:
            named = (f"unknown key {extra[0]!r}"
                     f"{did_you_mean(extra[0], ('low', 'high', 'log', 'times'), n=1)}: "
                     if extra else "")
            raise bad(f"{name}: {named}a range is {{ low = X, high = Y, log = true|false }}; "
                      "multipliers of the variant's own value { times = [...] }")
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        for v in (low, high):
            if check:
                _value(name, v, bad)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise bad(f"{name}: a range's ends must be numbers")
        if not isinstance(log, bool):
            raise bad(f"{name}: log must be true or false")
        if not low < high:
            raise bad(f"{name}: low must be below high, got {low} and {high}")
        if log and low <= 0:
            raise bad(f"{name}: a log range needs a positive low, got {low}")
        return Axis(name, low=low, high=high, log=log)
    raise bad(f"{name} must be a list of candidates or a range {{ low, high, log }}")


def _value(name: str, v: Any, bad) -> None:
    try:
        check_field(name, v)
    except AblationError as e:
        raise bad(f"{name} candidate {v!r}: {e}") from e


def words(setting: dict) -> str:
    """A setting as the report, the runner and an export name it: "lr 0.05, wd 0.0001"."""
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in setting.items())


def key(setting: dict) -> str:
    """A setting as a stable text key (comparisons.csv, the report)."""
    return json.dumps(setting, sort_keys=True)


def setting_of(recipe: dict, fields: list[str]) -> dict:
    """The tuned fields' values in a run's recipe."""
    return {f: (list(recipe[f]) if isinstance(recipe[f], tuple) else recipe[f]) for f in fields}


# --- selection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A variant's chosen setting, and how it was chosen."""

    setting: dict
    accuracy: float  # mean final validation accuracy over the tuning seeds (fraction)
    seeds: int
    tied: int  # other candidates with the same accuracy (the tie went to the nearest)
    edges: tuple[str, ...]  # warnings: a choice at the edge of its grid or range


def distance(setting: dict, base: Recipe) -> float:
    """How far a setting is from the base recipe: on a log scale for positive numbers,
    plain for others, 1 for a different choice of a word."""
    total = 0.0
    for k, v in setting.items():
        b = getattr(base, k)
        if isinstance(v, int | float) and isinstance(b, int | float) and not isinstance(
                v, bool):
            total += abs(math.log(v / b)) if v > 0 and b > 0 else abs(v - b)
        else:
            total += float(v != b)
    return total


def select(scores: dict[str, list[float]], settings: dict[str, dict], tune: Tune,
           base: Recipe) -> Choice | None:
    """A variant's choice among its candidates (`scores`: setting key -> the final
    validation accuracies of its finished tuning runs; a candidate without one, diverged
    or failed, cannot be chosen). None when no candidate finished."""
    means = {k: sum(v) / len(v) for k, v in scores.items() if v}
    if not means:
        return None
    best = max(means.values())
    tied = [k for k, m in means.items() if m == best]
    chosen = min(tied, key=lambda k: (distance(settings[k], base), k))
    setting = settings[chosen]
    return Choice(setting, best, len(scores[chosen]), len(tied) - 1,
                  edges(setting, list(settings.values()), tune))


def edges(setting: dict, tried: list[dict], tune: Tune) -> tuple[str, ...]:
    """Where a choice lies at the edge of everything tried (every setting started,
    whatever became of it: finished, stopped at a rung, failed): the smallest or the
    largest value of a field tried, of at least two; the best may lie beyond it."""
    out = []
    for axis in tune.axes:
        v = setting.get(axis.name)
        values = sorted({s[axis.name] for s in tried if isinstance(s.get(axis.name), int | float)
                         and not isinstance(s.get(axis.name), bool)})
        if len(values) < 2 or not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if v == values[0]:
            out.append(f"{axis.name}: best at the low edge of what was tried ({v:g}): widen "
                       f"below {v:g}")
        elif v == values[-1]:
            out.append(f"{axis.name}: best at the high edge of what was tried ({v:g}): widen "
                       f"above {v:g}")
    return tuple(out)


# --- the tuning runs: a group, its scores, each variant's choice ---------------------------


def group_id(study: str, base: Recipe, t: Tune) -> str:
    """One tuning experiment: the study, and the base recipe without the tuned fields."""
    rest = {k: v for k, v in t.recipe(base, {}).to_dict().items() if k not in t.all_fields}
    text = json.dumps([study, rest], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def tuning_record(study: str, base: Recipe, t: Tune, variant: str | None = None) -> dict:
    """What every run of a tuning experiment records (`tuning` in config.json and the
    run record): the group, the fields tuned (for `variant`: its space's, which its job
    keeps over the variant's own fixed fields) and the base recipe's values of them, so
    a report finds the experiment's runs whatever flags it was run with."""
    names = t.all_fields if variant is None else [a.name for a in t.axes_for(variant)]
    return {"group": group_id(study, base, t), "fields": names,
            "base": {f: getattr(base, f) for f in names}, **({"test": True} if t.test else {})}


def scores(records: list[RunRecord], group: str
           ) -> dict[str, tuple[dict[str, list[float]], dict[str, dict]]]:
    """variant -> (setting key -> final validation accuracies of its finished tuning
    runs, setting key -> setting), over the tuning runs of one group, each over the
    fields its run tuned. A candidate whose runs diverged, failed or stopped at a rung
    has an empty list: it cannot be chosen."""
    out: dict[str, tuple[dict, dict]] = {}
    for r in records:
        if r.phase != "tune" or r.tuning is None or r.tuning.group != group:
            continue
        setting = setting_of(r.recipe.to_dict(), r.tuning.fields)
        k = key(setting)
        accs, settings = out.setdefault(r.variant, ({}, {}))
        settings[k] = setting
        accs.setdefault(k, [])
        if r.status == JobState.DONE and r.final_validation_accuracy is not None:
            accs[k].append(float(r.final_validation_accuracy))
    return out


def choose(records: list[RunRecord], study: str, t: Tune, base: Recipe,
           owns: dict[str, Recipe]) -> dict[str, Choice | None]:
    """Each variant's choice, read from the tuning runs among `records`: `owns` maps the
    variants to their own recipes (the base with their fixed fields), against which
    their spaces are resolved and their ties broken."""
    by = scores(records, group_id(study, base, t))
    return {v: select(*by[v], t.for_variant(v, own), own) if v in by else None
            for v, own in owns.items()}
