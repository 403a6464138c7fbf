"""The runs a results folder holds, read back: one typed record per run folder
(`ablation.protocol.RunRecord`, its summary.json), its per-epoch history and, once
analysed, its layer responses.

The one reader of run folders: the report, the export, the analyser and the policies
that choose settings and seeds (ablation.policies) all read runs here. Nothing is typed
in by hand (timm's results/*.csv lesson): every number comes from a run folder. Damaged
or half-written folders are skipped with a warning naming the file; a job that failed
before it trained is said to have failed.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablation import halving, registry, results
from ablation import study as studies
from ablation.errors import AblationError
from ablation.protocol import JobState, RunRecord

RESPONSES = "responses.csv"

Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def quiet(_msg: str) -> None:
    """A `warn` that says nothing (a policy reads the runs again after every step)."""


@dataclass
class Run:
    """One run folder: its record, its history (one row per finished epoch) and its
    layer responses (None until `ablation analyze`)."""

    record: RunRecord
    history: pd.DataFrame
    folder: Path
    responses: pd.DataFrame | None = None

    @property
    def variant(self) -> str:
        return self.record.variant

    @property
    def seed(self) -> int:
        return self.record.seed


def _history(path: Path, warn: Warn) -> pd.DataFrame:
    rows = results.read_history(path)
    df = pd.DataFrame(rows)
    if len(df):
        if "loss" not in df.columns:
            raise AblationError(f"damaged file {path}: missing columns")
        numbers = df.apply(pd.to_numeric, errors="coerce")
        # CSVLogger writes "NA" (or nan) for a gap; any other text is damage, read as a gap
        text = df.notna() & numbers.isna() & ~df.isin(["", "NA", "nan", "NaN", "inf", "-inf"])
        if text.to_numpy().any():
            cols = [c for c in df.columns if text[c].any()]
            warn(f"{path}: {int(text.to_numpy().sum())} value(s) that are not numbers in "
                 f"{', '.join(cols)}, read as missing")
        df = numbers
        if "epoch" in df.columns and df["epoch"].duplicated().any():
            twice = sorted({int(e) for e in df.loc[df["epoch"].duplicated(), "epoch"]
                            if e == e})
            warn(f"{path}: epoch(s) {', '.join(map(str, twice))} recorded more than once; "
                 "the last record of each is read")
            df = df.drop_duplicates("epoch", keep="last").sort_values("epoch")
            df = df.reset_index(drop=True)
    return df


def curve(history: pd.DataFrame, split: str = "test") -> dict[int, float]:
    """A split's accuracy after each epoch (1-based) of a run's history, where it is a
    number: a run that diverged has NaN there, or (its first epoch diverged) no such
    column at all."""
    col = results.SPLITS[split].curve
    if col not in history.columns or "epoch" not in history.columns:
        return {}
    return {int(e) + 1: float(v) for e, v in zip(history["epoch"], history[col], strict=True)
            if e == e and v == v and abs(v) != float("inf")}


def _responses(path: Path, warn: Warn) -> pd.DataFrame | None:
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


def load_runs(results_dir: Path, warn: Warn | None = None, history: bool = True) -> list[Run]:
    """Every readable run; damaged or half-written ones are skipped with a warning.
    `history=False` reads the records alone (what a policy needs: faster)."""
    warn = warn or _stderr
    runs = []
    for path in results.iter_summaries(results_dir):
        try:
            record = RunRecord.read(path.parent)
            hist = _history(path.parent / "history.csv", warn) if history else pd.DataFrame()
        except FileNotFoundError:
            continue  # removed since the folder was listed
        except AblationError as e:
            warn(f"skipping run: {e}")
            continue
        runs.append(Run(record, hist, path.parent,
                        _responses(path.parent / RESPONSES, warn) if history else None))
    return runs


def for_study(runs: list[Run], study: studies.Study, warn: Warn | None = None) -> list[Run]:
    """The runs of the study's variants, as the study defines them now. Runs of an
    earlier definition of a variant are left out (and counted in a warning): they
    trained a different network."""
    warn = warn or _stderr
    current = {n: studies.definition_hash(registry.get(n)) for n in study.variant_names}
    keep, stale = [], {}
    for r in runs:
        if r.variant not in current:
            continue
        recorded = r.record.definition_hash
        # runs recorded before definitions were hashed: built-in variants only
        if recorded == current[r.variant] or (recorded is None and studies.builtin_home(
                r.variant)):
            keep.append(r)
        else:
            stale[r.variant] = stale.get(r.variant, 0) + 1
    for v, n in sorted(stale.items()):
        warn(f"{n} run(s) of an earlier definition of {v} left out of the report")
    return keep


def study_runs(results_dir: Path, study: studies.Study, history: bool = False) -> list[Run]:
    """The study's runs in a results folder, read without a word (a policy's view)."""
    return for_study(load_runs(results_dir, quiet, history), study, quiet)


def damaged(run_dir: Path) -> str | None:
    """Why a run folder's record cannot be read, where it is there but damaged; None
    where it reads, or where there is none yet."""
    try:
        RunRecord.read(Path(run_dir))
    except FileNotFoundError:
        return None
    except AblationError as e:
        return str(e)
    return None


def halving_trials(found: list[Run], group: str, variant: str, recipe_ids: list[str],
                   rungs: list[int], seeds: int, running=lambda recipe_id, seed: False
                   ) -> tuple[list[halving.Trial], int]:
    """A variant's settings (their recipe ids, in the order the search starts them) as
    successive halving's rule sees them, from its tuning runs among `found`, and the
    epochs those runs trained. A setting whose run failed, or that has no validation
    accuracy at a rung it reached (it diverged: its history has NaN there, or no such
    column), has failed: it is never promoted. `running(recipe id, seed)`: whether that
    job trains now."""
    mine = {(r.record.recipe_id, r.seed): r for r in found
            if r.variant == variant and r.record.phase == "tune" and r.record.tuning
            and r.record.tuning.group == group}
    out, spent = [], 0
    for rid in recipe_ids:
        got = [mine.get((rid, s)) for s in range(seeds)]
        done = min(r.record.epochs_done if r else 0 for r in got)
        spent += sum(r.record.epochs_done for r in got if r)
        busy = any(running(rid, s) for s in range(seeds))
        failed = any(r is not None and r.record.status == JobState.FAILED for r in got)
        at: dict[int, float] = {}
        if done:
            cols = [curve(r.history, "validation") for r in got]
            for e in (e for e in rungs if e <= done):
                vals = [c.get(e) for c in cols]
                if all(v is not None for v in vals):
                    at[e] = sum(vals) / len(vals)
                else:
                    failed = True
        # a running setting is on its way to the next rung above what it trained
        target = next((e for e in rungs if e > done), done) if busy else done
        out.append(halving.Trial(rid, done, busy, at, failed, target))
    return out, spent


def load_model(path: str | Path, compile: bool = False):
    """A run's trained model (public API): `path` is its run folder or its `model.h5`.
    What its layers need is imported first: ablation's own layers (the token models'
    position embedding and class token) and the run's copy of its study's units file
    (`units.py`), whose Keras layers it registers. A study's layer class that the units
    file registers itself (`@keras.saving.register_keras_serializable`) loads in plain
    Keras once that file is imported; ablation registers the others under the package
    `ablation_units` (docs/studies.md)."""
    import keras

    from ablation import layers  # noqa: F401  (registers ablation's own layers)

    path = Path(path)
    h5 = path / "model.h5" if path.is_dir() else path
    if not h5.is_file():
        raise AblationError(f"no saved model {h5} (a run trained with --no-keep-model keeps "
                            "none)")
    units = h5.parent / "units.py"
    if units.is_file():  # the run's copy of its units: it registers their Keras layers
        studies.import_units(str(units), f"layers of {h5}")
    try:
        return keras.models.load_model(str(h5), compile=compile)
    except Exception as e:  # truncated, not HDF5, not a Keras model, an unknown layer
        raise AblationError(f"cannot load {h5}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}") from e


@dataclass(frozen=True)
class Speed:
    """What a projection of a variant's runs here reads: its training images/s, where it
    was measured (`runs`, or `bench`), and how much longer a whole run took than its
    training steps alone (start-up, evaluation, snapshots; 1.0 where unknown)."""

    images_per_second: float
    source: str
    overhead: float = 1.0


def speeds(results_dir: Path, precision: str | None = None) -> dict[str, Speed]:
    """Each variant's median training images/s in a results folder: its finished runs'
    (at `precision`, where given), else `ablation bench`'s measurements kept there; with
    the runs' median overhead of a whole run over its training steps."""
    seen: dict[str, list[float]] = {}
    over: list[float] = []
    for r in load_runs(results_dir, quiet, history=False):
        rec = r.record
        if rec.status != JobState.DONE or not rec.images_per_second:
            continue
        if precision is None or rec.recipe.precision == precision:
            seen.setdefault(r.variant, []).append(float(rec.images_per_second))
        steps = rec.epochs_done * (rec.train_images or 0) / float(rec.images_per_second)
        if rec.wall_seconds and steps:
            over.append(rec.wall_seconds / steps)
    overhead = statistics.median(over) if over else 1.0
    out = {v: Speed(statistics.median(x), "runs", overhead) for v, x in seen.items()}
    benched: dict[str, list[float]] = {}
    for m in results.read_speeds(results_dir):
        if precision is None or m.get("precision") == precision:
            benched.setdefault(str(m.get("variant")), []).append(
                float(m.get("images_per_second") or 0))
    for v, x in benched.items():
        if v not in out and max(x) > 0:
            out[v] = Speed(statistics.median(x), "bench", overhead)
    return out
