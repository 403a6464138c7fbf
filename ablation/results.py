"""The results folder: where each run's artefacts live, how they are written safely,
and how they are read back for reports.

    results/
      queue.sqlite                      job states (ablation.jobqueue)
      designs.json                      sequential designs of `run --until-decided`
      runs/<recipe id>/<variant>[-<definition tag>]-s<seed>/
        config.json   summary.json   history.csv   model.h5   train.log
        responses.csv (ablation analyze)   code.diff (dirty checkout)   units.py
        backup/ (while training)      tensorboard/

Files the harness writes itself are written atomically (temp file, fsync, rename):
a crash leaves the old version or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation.errors import AblationError

DEFAULT_RESULTS = "results"  # the results folder when --results is not given
RUNS = "runs"
DESIGNS = "designs.json"


@dataclass(frozen=True)
class Split:
    """An evaluated split and where a run records it: summary keys, history columns."""

    name: str  # as a report says it: "test", "validation"
    final: str  # the run record (summary.json): the last epoch's accuracy
    best: str  # the record: the best epoch's
    curve: str  # history.csv: accuracy per epoch
    loss: str  # history.csv: loss per epoch
    images: str  # the record: how many images


# the record names the test set `test_*` (0.6; `val_*` before, still written beside for
# one version), the held-out validation split (`validation` in the recipe)
# `validation_*`; history.csv keeps Keras' `val_*` for fit's validation data, the test
# set (the blog's logs had them)
SPLITS = {
    "test": Split("test", "final_test_accuracy", "best_test_accuracy", "val_accuracy",
                  "val_loss", "test_images"),
    "validation": Split("validation", "final_validation_accuracy",
                        "best_validation_accuracy", "validation_accuracy", "validation_loss",
                        "validation_images"),
}
TEST, VALIDATION = SPLITS["test"], SPLITS["validation"]



def run_dir(results: Path, recipe_id: str, variant: str, seed: int, tag: str = "") -> Path:
    """One folder per (recipe, variant definition, seed), named so a person can find
    it; `tag` is a user variant's definition hash (ablation.study.folder_tag)."""
    return Path(results) / RUNS / recipe_id / f"{variant}{'-' + tag if tag else ''}-s{seed}"


def duration(seconds: float | None) -> str:
    """A duration for people: '45 s', '3.5 min', '1.2 h'; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null rather than writing invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename; a full disk becomes a one-line AblationError. The file gets
    the permissions any new file gets here (mkstemp's own are owner-only)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~UMASK)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as e:
        raise disk_error(e, path) from e


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(clean(obj), indent=2, sort_keys=True) + "\n")


def disk_error(e: OSError, path: Path) -> AblationError:
    """Turn an OSError into the one line a user needs."""
    if e.errno == errno.ENOSPC:
        return AblationError(f"disk full while writing {path}; free space and rerun "
                             "(finished runs are kept)")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return AblationError(f"cannot write {path}: {e.strerror}")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return AblationError(f"cannot create {path}: a file is in the way of a folder")
    return AblationError(f"cannot write {path}: {e.strerror or e}")


def read_json(path: Path) -> dict:
    """Read a JSON object; a damaged file raises AblationError naming it."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise AblationError(f"damaged file {path}: {e}") from e
    if not isinstance(obj, dict):
        raise AblationError(f"damaged file {path}: not a JSON object")
    return obj


def prepare_results(results: Path) -> Path:
    """Create the results folder or explain in one line why it cannot be used."""
    results = Path(results)
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        if results.exists() and not results.is_dir():
            raise AblationError(f"results path {results} is a file, not a folder") from e
        raise disk_error(e, results) from e
    return results


def existing(results: Path, what: str = "a results folder") -> Path:
    """A results folder that must be there to be read (status, report, analyze, export):
    one line when it is missing or a file."""
    results = Path(results)
    if results.exists() and not results.is_dir():
        raise AblationError(f"{results} is a file, not {what}; give --results the folder "
                            "`ablation run` wrote")
    if not results.is_dir():
        raise AblationError(f"no results folder {results}; run `ablation run` first")
    return results


SPEEDS = "speeds.json"  # `ablation bench`'s measurements, for the dry run's projections


def read_speeds(results: Path) -> list[dict]:
    """The speeds `ablation bench` measured and kept here ([] when none)."""
    try:
        got = read_json(Path(results) / SPEEDS).get("measured", [])
    except FileNotFoundError:
        return []
    return [m for m in got if isinstance(m, dict)]


def record_speed(results: Path, measured: dict) -> None:
    """Keep one bench measurement (atomically, after the ones before)."""
    prepare_results(results)
    atomic_write_json(Path(results) / SPEEDS,
                      {"measured": [*read_speeds(results), measured]})


def design_key(study: str, recipe_id: str) -> str:
    return f"{study}|{recipe_id}"


def read_designs(results: Path) -> dict:
    """The sequential designs recorded by `ablation run --until-decided`, by
    design_key; {} when there are none. A damaged file raises AblationError."""
    try:
        return read_json(Path(results) / DESIGNS)
    except FileNotFoundError:
        return {}


def record_design(results: Path, key: str, design: dict) -> None:
    """Record (or replace) one study's design under one recipe, atomically."""
    designs = read_designs(results)
    designs[key] = design
    atomic_write_json(Path(results) / DESIGNS, designs)
