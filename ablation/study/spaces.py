"""Design spaces (Radosavovic et al. 2019, "On Network Design Spaces for Visual
Recognition"): a study's `[[space]]` is a base variant and ranges or choices over its
fields; the loader samples `samples` models from it, quasi-randomly (a scrambled Halton
sequence seeded by the space's name, base and ranges, so the same space gives the same
models everywhere, and more samples keep the first), and registers each as an ordinary
variant, `<space>_<i>`, with its
own definition hash and exact counts. Everything downstream (queue, executors, resume,
halving, the report) sees variants; the report's spaces section reads them back by
space (`ablation.report.spaces`).

A field is any `[[variant]]` key, or one of two knobs over the base's stages:
`blocks` (every stage's number of units) and `width` (the first stage's width, every
stage's widths, bottleneck inner widths and the stem's width included, scaled with it,
rounded). A range is
`{ min = A, max = B }` (integers when both are; `log = true` draws log-uniformly,
`step = K` keeps integers on A, A + K, ...), a choice `{ choices = [...] }`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from ablation.errors import AblationError

KNOBS = ("blocks", "width")  # fields over the base's stages, not [[variant]] keys


@dataclass(frozen=True)
class Space:
    """A design space as the study declares it, and the models sampled from it."""

    name: str
    base: str
    samples: int
    fields: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # field -> its spec
    models: tuple[str, ...] = ()  # the variants sampled, in order
    values: tuple[tuple[tuple[str, Any], ...], ...] = ()  # each model's drawn values

    def drawn(self, model: str) -> dict[str, Any]:
        """The values drawn for one of the space's models."""
        return dict(self.values[self.models.index(model)])


def check_field(name: str, spec: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """A field's spec, checked: a range or a choice, as the module says."""
    if not isinstance(spec, dict):
        raise AblationError(f"{where}field {name!r} must be a table: {{ min = A, max = B }} "
                            "or { choices = [...] }")
    keys = set(spec)
    if keys == {"choices"}:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise AblationError(f"{where}field {name!r}: choices must be a non-empty list")
        return (("choices", tuple(_frozen(c) for c in spec["choices"])),)
    if not {"min", "max"} <= keys or keys - {"min", "max", "log", "step"}:
        raise AblationError(f"{where}field {name!r} must be {{ min = A, max = B }} (with "
                            "log = true or step = K) or { choices = [...] }")
    lo, hi = spec["min"], spec["max"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
        raise AblationError(f"{where}field {name!r}: min and max must be numbers")
    if not lo <= hi:
        raise AblationError(f"{where}field {name!r}: min {lo} is above max {hi}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise AblationError(f"{where}field {name!r}: log must be true or false")
    if log and lo <= 0:
        raise AblationError(f"{where}field {name!r}: a log range needs min above 0")
    integer = isinstance(lo, int) and isinstance(hi, int)
    if step is not None and (not integer or not isinstance(step, int) or step < 1):
        raise AblationError(f"{where}field {name!r}: step must be a positive integer, on "
                            "an integer range")
    return (("min", lo), ("max", hi), ("log", log), ("step", step), ("int", integer))


def _frozen(v: Any) -> Any:
    return tuple(_frozen(x) for x in v) if isinstance(v, list) else v


def _thawed(v: Any) -> Any:
    return [_thawed(x) for x in v] if isinstance(v, tuple) else v


def draw(spec: dict[str, Any], u: float) -> Any:
    """The value at quantile `u` in [0, 1) of a field's spec."""
    if "choices" in spec:
        choices = spec["choices"]
        return _thawed(choices[min(int(u * len(choices)), len(choices) - 1)])
    lo, hi, log, step = spec["min"], spec["max"], spec["log"], spec["step"]
    if not spec["int"]:
        return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if log \
            else lo + u * (hi - lo)
    if step:  # the grid lo, lo + step, ... up to hi, drawn uniformly
        values = list(range(lo, hi + 1, step))
        return values[min(int(u * len(values)), len(values) - 1)]
    if log:  # log-uniform over [lo, hi + 1), floored
        v = int(math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo))))
    else:
        v = lo + int(u * (hi - lo + 1))
    return max(lo, min(hi, v))


def seed_of(space: Space) -> int:
    """The draws' seed: the space's name, base and ranges (not the study's name, so a
    study copied under another name keeps its models)."""
    key = repr((space.name, space.base, space.fields))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def sample(space: Space) -> list[dict[str, Any]]:
    """The space's `samples` draws: one dict of field values each (knobs included),
    quasi-random and fixed by the space (`seed_of`); more samples keep the first ones."""
    from scipy.stats import qmc

    names = [f for f, _ in space.fields]
    points = qmc.Halton(d=max(1, len(names)), scramble=True,
                        seed=seed_of(space)).random(space.samples)
    return [{f: draw(dict(spec), float(u)) for (f, spec), u in zip(space.fields, p,
                                                                   strict=False)}
            for p in points]


def apply_knobs(values: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A draw as `[[variant]]` keys: `blocks` and `width` turned into the base's
    (`base`: its plain form) stages changed, `width` scaling its stem's width too (unless
    the space draws `stem_filters` itself)."""
    out = {k: v for k, v in values.items() if k not in KNOBS}
    stages = base["stages"]
    if "blocks" in values or "width" in values:
        scale = values["width"] / stages[0][1] if "width" in values else 1.0
        out["stages"] = [[values.get("blocks", s[0]), *(max(1, round(w * scale))
                                                         for w in s[1:])] for s in stages]
        if "width" in values and "stem_filters" not in values:
            out["stem_filters"] = max(1, round(base["stem_filters"] * scale))
    return out


def model_names(space: str, n: int) -> list[str]:
    """`<space>_<i>`, unpadded: raising `samples` keeps the earlier models' names (and
    so their runs)."""
    return [f"{space}_{i}" for i in range(n)]
