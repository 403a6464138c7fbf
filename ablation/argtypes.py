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


def integer(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = _convert(s, int, "an integer")
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}, got {v}")
        return v
    return parse


def path(s: str) -> str:
    """A file or folder argument: never empty (an empty --results would be the working
    folder, silently)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return s


class Switch(argparse.BooleanOptionalAction):
    """--flag / --no-flag, each at most once: both in one command is a mistake, not 'the
    last one wins'."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = not option_string.startswith("--no-")
        old = getattr(namespace, self.dest, None)
        if old is not None and old != new:
            raise argparse.ArgumentError(self, f"give {self.option_strings[0]} or "
                                               f"{self.option_strings[1]}, not both")
        super().__call__(parser, namespace, values, option_string)


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


def _size(s: str) -> int | list[int]:
    """'32' (square) or '32,48' (H, W)."""
    parts = [int(p) for p in s.split(",")]
    if len(parts) not in (1, 2):
        raise ValueError(s)
    return parts[0] if len(parts) == 1 else parts


_READ = {"int": (int, "an integer"), "number": (float, "a number"), "text": (str, "text"),
         "size": (_size, "N or H,W"),
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
            raise argparse.ArgumentTypeError(f"{e}, got {s}") from e
    return parse


def folder(s: str) -> str:
    """An existing folder."""
    from pathlib import Path

    if not Path(path(s)).is_dir():
        raise argparse.ArgumentTypeError(f"no folder {s}")
    return s


def corruptions(s: str) -> str:
    """`generated`, `none`, or the folder of the released CIFAR-10-C files (absolute)."""
    from pathlib import Path

    if s in ("generated", "none"):
        return s
    return str(Path(folder(s)).resolve())


def severities(s: str) -> tuple[int, ...]:
    """A comma-separated list of severities 1-5, e.g. `1,3,5`."""
    parse = integer(1, 5)
    out = sorted({parse(p.strip()) for p in s.split(",") if p.strip()})
    if not out:
        raise argparse.ArgumentTypeError("expected severities 1 to 5, e.g. 1,3,5")
    return tuple(out)


def named_path(s: str) -> tuple[str, str]:
    """NAME=PATH (an extra test set), the path absolute."""
    import re
    from pathlib import Path

    name, sep, where = s.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name) or not where.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (a name of letters, digits, "
                                         f"'.', '_', '-'), got {s!r}")
    if name in ("clean", "corrupted"):
        raise argparse.ArgumentTypeError(f"{name!r} names the run's own test sets; pick "
                                         "another name")
    return name, str(Path(where).resolve())
