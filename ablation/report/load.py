"""Load recorded runs into tidy frames: one row per run, one row per (run, epoch),
one row per (run, layer) of layer responses.

Nothing here is typed in by hand: every number comes from a run folder's
summary.json, history.csv and responses.csv (timm's results/*.csv lesson). Damaged
or half-written runs are skipped with a warning naming the file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablation import registry, results
from ablation import study as studies
from ablation.errors import AblationError

RESPONSES = "responses.csv"


@dataclass
class Run:
    summary: dict
    history: pd.DataFrame
    folder: Path
    responses: pd.DataFrame | None = None

    @property
    def variant(self) -> str:
        return self.summary["variant"]

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])


def _history(path: Path, warn: Callable[[str], None]) -> pd.DataFrame:
    rows = results.read_history(path)
    df = pd.DataFrame(rows)
    if len(df):
        if "val_accuracy" not in df.columns:
            raise AblationError(f"damaged file {path}: missing columns")
        numbers = df.apply(pd.to_numeric, errors="coerce")
        # CSVLogger writes "NA" (or nan) for a gap; any other text is damage, read as a gap
        text = df.notna() & numbers.isna() & ~df.isin(["", "NA", "nan", "NaN", "inf", "-inf"])
        if text.to_numpy().any():
            cols = [c for c in df.columns if text[c].any()]
            warn(f"{path}: {int(text.to_numpy().sum())} value(s) that are not numbers in "
                 f"{', '.join(cols)}, read as missing")
        df = numbers
    return df


def _responses(path: Path, warn: Callable[[str], None]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
        if not {"index", "layer", "std"} <= set(df.columns):
            raise ValueError("missing columns")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        warn(f"ignoring damaged {path}: {e}")
        return None
    return df


def load_runs(results_dir: Path, warn: Callable[[str], None] | None = None) -> list[Run]:
    """Every readable run; damaged or half-written ones are skipped with a warning."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs = []
    for path in results.iter_summaries(results_dir):
        try:
            s = results.read_json(path)
            for key in ("variant", "seed", "recipe_id", "recipe"):
                if key not in s:
                    raise AblationError(f"damaged file {path}: no {key!r}")
            hist = _history(path.parent / "history.csv", warn)
        except AblationError as e:
            warn(f"skipping run: {e}")
            continue
        runs.append(Run(s, hist, path.parent, _responses(path.parent / RESPONSES, warn)))
    return runs


def for_study(runs: list[Run], study: studies.Study,
              warn: Callable[[str], None] | None = None) -> list[Run]:
    """The runs of the study's variants, as the study defines them now. Runs of an
    earlier definition of a variant are left out (and counted in a warning): they
    trained a different network."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    current = {n: studies.definition_hash(registry.get(n)) for n in study.variant_names}
    keep, stale = [], {}
    for r in runs:
        if r.variant not in current:
            continue
        recorded = r.summary.get("definition_hash")
        # runs recorded before definitions were hashed: built-in variants only
        if recorded == current[r.variant] or (recorded is None and studies.builtin_home(
                r.variant)):
            keep.append(r)
        else:
            stale[r.variant] = stale.get(r.variant, 0) + 1
    for v, n in sorted(stale.items()):
        warn(f"{n} run(s) of an earlier definition of {v} left out of the report")
    return keep


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run with its summary fields (recipe flattened), for runs.csv."""
    rows = []
    for r in runs:
        s = {k: v for k, v in r.summary.items() if k not in ("recipe", "definition",
                                                           "train_recipe")}
        s.update({f"recipe_{k}": v for k, v in r.summary["recipe"].items()})
        s["run_dir"] = str(r.folder)
        rows.append(s)
    df = pd.DataFrame(rows)
    first = ["recipe_id", "variant", "seed", "status", "epochs_done", "epochs_planned",
             "best_val_accuracy", "final_val_accuracy"]
    cols = [c for c in first if c in df.columns] + sorted(c for c in df.columns
                                                          if c not in first)
    return df[cols].sort_values(["recipe_id", "variant", "seed"], kind="stable")


def history_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per (run, epoch): variant, seed, epoch and the recorded metrics."""
    parts = [r.history.assign(variant=r.variant, seed=r.seed) for r in runs if len(r.history)]
    if not parts:
        return pd.DataFrame(columns=["variant", "seed", "epoch"])
    return pd.concat(parts, ignore_index=True)


def responses_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per (run, 3x3 layer): variant, seed, index, layer, std."""
    parts = [r.responses.assign(variant=r.variant, seed=r.seed) for r in runs
             if r.responses is not None and len(r.responses)]
    if not parts:
        return pd.DataFrame(columns=["variant", "seed", "index", "layer", "std"])
    return pd.concat(parts, ignore_index=True)
