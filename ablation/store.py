"""A run folder and its files: the one module that reads and writes them.

    runs/<recipe id>/<variant>[-<definition tag>]-s<seed>/
      config.json    what the job was told (`protocol.JobConfig`)
      summary.json   the run record (`protocol.RunRecord`), rewritten after every epoch
      history.csv    one row per finished epoch (Keras' CSVLogger)
      responses.csv  layer responses (`ablation analyze`)
      robustness.csv accuracy on corrupted and extra test sets (`ablation evaluate`)
      model.h5  train.log  backup/  tensorboard/  code.diff  units.py

`RunFolder` answers every question about one folder that another part asks: its
config, its record (or why it cannot be read), its history, whether it has reached
epoch N, and the outcome a job's process leaves in it. `load_runs` reads a results
folder's runs for the report, the export, the analyser and the policies. Files the
harness writes are written atomically (`ablation.results`): a crash leaves the old
version or the new one, never half of one. Damaged or half-written folders are skipped
with a warning naming the file; a job that failed before it trained is said to have
failed. Nothing is typed in by hand (timm's results/*.csv lesson): every number comes
from a run folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ablation import results
from ablation.errors import AblationError
from ablation.protocol import SUMMARY, JobConfig, JobState, RunRecord

CONFIG, HISTORY, RESPONSES, MODEL, LOG, BACKUP = (
    "config.json", "history.csv", "responses.csv", "model.h5", "train.log", "backup")
ROBUSTNESS = "robustness.csv"

Warn = Callable[[str], None]


def to_stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def quiet(_msg: str) -> None:
    """A `warn` that says nothing (a policy reads the runs again after every step)."""


class RunFolder:
    """One run folder's files, read and written here only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # --- the job's config

    def config(self) -> JobConfig:
        """What the job was told; FileNotFoundError when there is none yet, AblationError
        when it is damaged."""
        return JobConfig.from_dict(results.read_json(self.file(CONFIG)))

    def write_config(self, cfg: JobConfig) -> None:
        results.atomic_write_json(self.file(CONFIG), cfg.to_dict())

    def phase(self) -> str:
        """A tuned study's phase of the job ("tune", "compare"), "" otherwise or unknown."""
        try:
            return results.read_json(self.file(CONFIG)).get("phase") or ""
        except (FileNotFoundError, AblationError):
            return ""

    # --- the run record

    def record(self) -> RunRecord:
        """The run record: FileNotFoundError when there is none; AblationError when it is
        damaged, or when the job failed before it recorded which run it is (0.5 and
        earlier: then the error says so, and why)."""
        path = self.file(SUMMARY)
        d = results.read_json(path)
        if d.get("status") == JobState.FAILED and "recipe_id" not in d:
            raise AblationError(f"{self.path} failed before its first epoch: "
                                f"{d.get('error') or 'no reason recorded'}")
        return RunRecord.parse(d, path)

    def record_or_none(self) -> RunRecord | None:
        """The run record, or None where there is none or it cannot be read."""
        try:
            return self.record()
        except (FileNotFoundError, AblationError):
            return None

    def write_record(self, record: RunRecord) -> None:
        results.atomic_write_json(self.file(SUMMARY), record.to_json())

    def damaged(self) -> str | None:
        """Why the record cannot be read, where it is there but damaged; None where it
        reads, or where there is none yet."""
        try:
            self.record()
        except FileNotFoundError:
            return None
        except AblationError as e:
            return str(e)
        return None

    def finished(self) -> bool:
        """The record says done (whatever else the folder holds)."""
        r = self.record_or_none()
        return r is not None and r.status == JobState.DONE

    def reached(self, epoch: int) -> JobState | None:
        """Whether the run has reached epoch `epoch` by its own files: DONE (or PAUSED, at
        a rung of successive halving) with that many epochs trained; None otherwise."""
        r = self.record_or_none()
        if r is not None and r.status in (JobState.DONE, JobState.PAUSED) \
                and r.epochs_done >= epoch:
            return r.status
        return None

    def record_outcome(self, status: JobState, reason: str, **extra: Any) -> None:
        """Merge a job's end into its record: into the one training wrote, else into the
        job's identity from its config (a job that fails before its first epoch is then
        still a run that failed, with its reason); left as it was where neither can be
        read, or the disk refuses."""
        path = self.file(SUMMARY)
        try:
            s = results.read_json(path) if path.exists() else {}
        except AblationError:
            s = {}
        if "recipe_id" not in s:
            try:
                cfg = self.config()
            except (FileNotFoundError, AblationError):
                cfg = None
            if cfg is not None:
                s = {**s, "variant": cfg.variant, "seed": cfg.seed,
                     "recipe": cfg.recipe.to_dict(), "recipe_id": cfg.recipe.id,
                     "study": cfg.study, "phase": cfg.phase, "tuning": cfg.tuning,
                     "definition_hash": cfg.definition_hash, "definition": cfg.definition,
                     "epochs_planned": cfg.recipe.epochs}
        s.update(status=status, error=reason, **extra)
        with contextlib.suppress(AblationError):
            results.atomic_write_json(path, s)

    # --- the history

    def history_rows(self) -> list[dict]:
        """history.csv as rows of strings (CSVLogger's file); [] if it does not exist yet.
        A damaged file raises AblationError naming it."""
        path = self.file(HISTORY)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise AblationError(f"damaged file {path}: {e}") from e
        if rows and "epoch" not in rows[0]:
            raise AblationError(f"damaged file {path}: no epoch column")
        return rows

    def epochs(self) -> int | None:
        """Epochs the history holds; None where it is damaged."""
        try:
            return len(self.history_rows())
        except AblationError:
            return None

    def keep_epochs(self, epochs: int) -> list[dict]:
        """Keep only the history's rows of epochs < `epochs` (the ones a restored
        snapshot includes); the rows kept."""
        rows = self.history_rows()
        kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < epochs]
        if len(kept) != len(rows):
            if kept:
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
                w.writeheader()
                w.writerows(kept)
                results.atomic_write_text(self.file(HISTORY), buf.getvalue())
            else:
                self.file(HISTORY).unlink()
        return kept

    def history(self, warn: Warn = quiet) -> pd.DataFrame:
        """The history as numbers, one row per epoch: a gap ("NA", nan) is missing, text
        that is not a number is read as missing with a warning, an epoch recorded twice
        is read once (its last record) with a warning."""
        path = self.file(HISTORY)
        df = pd.DataFrame(self.history_rows())
        if not len(df):
            return df
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

    def responses(self, warn: Warn = quiet) -> pd.DataFrame | None:
        """The layer responses `ablation analyze` measured; None before (or damaged)."""
        path = self.file(RESPONSES)
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

    def write_responses(self, frame: pd.DataFrame) -> None:
        results.atomic_write_text(self.file(RESPONSES), frame.to_csv(index=False))

    def robustness(self, warn: Warn = quiet) -> pd.DataFrame | None:
        """The accuracies `ablation evaluate` measured; None before (or damaged)."""
        path = self.file(ROBUSTNESS)
        if not path.is_file():
            return None
        try:
            df = pd.read_csv(path, keep_default_na=False)
            need = {"test_set", "corruption", "severity", "images", "accuracy", "source"}
            if not need <= set(df.columns):
                raise ValueError(f"missing columns {', '.join(sorted(need - set(df.columns)))}")
            df["accuracy"] = pd.to_numeric(df["accuracy"], errors="raise")
            df["severity"] = df["severity"].astype(int)
            df["images"] = df["images"].astype(int)
        except (ValueError, TypeError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
            warn(f"ignoring damaged {path}: {e}")
            return None
        return df

    def write_robustness(self, frame: pd.DataFrame) -> None:
        results.atomic_write_text(self.file(ROBUSTNESS), frame.to_csv(index=False))


def curve(history: pd.DataFrame, split: str = "test") -> dict[int, float]:
    """A split's accuracy after each epoch (1-based) of a run's history, where it is a
    number: a run that diverged has NaN there, or (its first epoch diverged) no such
    column at all."""
    col = results.SPLITS[split].curve
    if col not in history.columns or "epoch" not in history.columns:
        return {}
    return {int(e) + 1: float(v) for e, v in zip(history["epoch"], history[col], strict=True)
            if e == e and v == v and abs(v) != float("inf")}


@dataclass
class Run:
    """One run folder, read: its record, its history (one row per finished epoch), its
    layer responses (None until `ablation analyze`) and its accuracies on corrupted and
    extra test sets (None until `ablation evaluate`)."""

    record: RunRecord
    history: pd.DataFrame
    folder: Path
    responses: pd.DataFrame | None = None
    robustness: pd.DataFrame | None = None

    @property
    def variant(self) -> str:
        return self.record.variant

    @property
    def seed(self) -> int:
        return self.record.seed


def folders(results_dir: Path) -> list[RunFolder]:
    """Every run folder with a record under a results folder, in a stable order."""
    return [RunFolder(p.parent) for p in
            sorted((Path(results_dir) / results.RUNS).glob(f"*/*/{SUMMARY}"))]


def load_runs(results_dir: Path, warn: Warn | None = None, history: bool = True) -> list[Run]:
    """Every readable run; damaged or half-written ones are skipped with a warning.
    `history=False` reads the records alone (what a policy needs: faster)."""
    warn = warn or to_stderr
    runs = []
    for folder in folders(results_dir):
        try:
            record = folder.record()
            hist = folder.history(warn) if history else pd.DataFrame()
        except FileNotFoundError:
            continue  # removed since the folder was listed
        except AblationError as e:
            warn(f"skipping run: {e}")
            continue
        runs.append(Run(record, hist, folder.path, folder.responses(warn) if history else None,
                        folder.robustness(warn) if history else None))
    return runs
