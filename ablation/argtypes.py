"""argparse types shared by the CLI and the executors' own options: each rejects a bad
value with a message argparse turns into one line (`--epochs: must be at least 1`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _convert(s: str, kind: type, what: str):
    try:
        return kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None


def integer(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = _convert(s, int, "an integer")
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v
    return parse


def number(kind: str) -> Callable[[str], float]:
    """kind: 'pos' (> 0), 'nonneg' (>= 0) or 'unit' (0 <= x < 1); finite."""
    def parse(s: str) -> float:
        v = _convert(s, float, "a number")
        if not math.isfinite(v) or (kind == "pos" and not v > 0):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
        if kind in ("nonneg", "unit") and v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
        if kind == "unit" and v >= 1:
            raise argparse.ArgumentTypeError(f"must be below 1, got {s}")
        return v
    return parse


def milestones(s: str) -> tuple[float, ...]:
    """'82,123' (epochs) or '0.5,0.75' (fractions of the run)."""
    try:
        vals = tuple(float(x) if "." in x else int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not vals or not all(v > 0 and (v < 1 or float(v).is_integer()) for v in vals):
        raise argparse.ArgumentTypeError(
            f"expected epochs (integers >= 1) or fractions (0 < x < 1), got {s!r}")
    return tuple(int(v) if v >= 1 else v for v in vals)


_READ = {"int": (int, "an integer"), "number": (float, "a number"),
         "milestones": (lambda s: milestones(s), "comma-separated numbers")}


def recipe_value(name: str, kind: str) -> Callable[[str], object]:
    """The parser of recipe field `name`'s flag: the text read by the field's kind, then
    checked by the recipe's schema (ablation.recipe.check_field), so a flag and a study
    file's value meet one rule."""
    from ablation.errors import AblationError
    from ablation.recipe import check_field

    read, what = _READ[kind]

    def parse(s: str):
        value = _convert(s, read, what) if kind != "milestones" else read(s)
        try:
            return check_field(name, value)
        except AblationError as e:
            raise argparse.ArgumentTypeError(f"{e}, got {s}") from None
    return parse
