"""A study's runs in a results folder: the runs of its variants as it defines them now,
what a policy reads of them (successive halving's trials, the speeds measured here), and
a run's trained model. The files themselves are `ablation.store`'s.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ablation import halving, registry, results
from ablation import study as studies
from ablation.errors import AblationError
from ablation.protocol import JobState
from ablation.store import Run, Warn, curve, load_runs, quiet, to_stderr


def for_study(runs: list[Run], study: studies.Study, warn: Warn | None = None) -> list[Run]:
    """The runs of the study's variants, as the study defines them now. Runs of an
    earlier definition of a variant are left out (and counted in a warning): they
    trained a different network."""
    warn = warn or to_stderr
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


def report_runs(results_dir: Path, study: studies.Study) -> tuple[list[Run], dict]:
    """The study's runs in a results folder as the report reads them (damaged records and
    earlier definitions said on stderr), and the `--until-decided` designs recorded
    there; one line naming what to run where there is none."""
    results.existing(results_dir)
    every = load_runs(Path(results_dir))
    if not every:
        raise AblationError(f"no readable runs in {results_dir}; run `ablation run` first")
    runs = for_study(every, study)
    if not runs:
        cmd = " ".join(["ablation run", *study.flag, "--all", "--results", str(results_dir)])
        raise AblationError(f"no runs of study {study.name!r} in {results_dir}; run "
                            f"`{cmd}` first")
    return runs, results.read_designs(Path(results_dir))


def halving_trials(found: list[Run], group: str, variant: str, recipe_ids: list[str],
                   rungs: list[int], seeds: int, running=lambda recipe_id, seed: False,
                   distance=lambda recipe_id: 0.0) -> tuple[list[halving.Trial], int]:
    """A variant's settings (their recipe ids, in the order the search starts them) as
    successive halving's rule sees them, from its tuning runs among `found`, and the
    epochs those runs trained. A setting whose run failed, or that has no validation
    accuracy at a rung it reached (it diverged: its history has NaN there, or no such
    column), has failed: it is never promoted. `running(recipe id, seed)`: whether that
    job trains now; `distance(recipe id)`: how far the setting is from the variant's own
    recipe (a tie at a rung goes to the nearest, as the final choice's does)."""
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
        out.append(halving.Trial(rid, done, busy, at, failed, target, distance(rid)))
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


def load_data(run: Run, data_dir: str | None = None, **kw):
    """The data a run trained on, read as its job read it: from `data_dir` (else where
    the run found it), its content hash checked, the decoded cache and the statistics
    its job used; `kw` go on to `data.load` (limits, image size, crop)."""
    from ablation import data
    from ablation.store import RunFolder

    recipe = run.record.recipe
    source = data_dir or run.record.data_source
    if source == "generated" or not source or data.is_path(recipe.dataset):
        source = None
    try:
        record = RunFolder(run.folder).config().data
    except (FileNotFoundError, AblationError):
        record = None
    return data.load(recipe.dataset, source, data_hash=recipe.data_hash,
                     cache=Path(record["cache"]) if record and record.get("cache") else None,
                     stats=(record["mean"], record["std"]) if record else None, **kw)


@dataclass(frozen=True)
class Speed:
    """What a projection of a variant's runs here reads: its training images/s, where it
    was measured (`runs`, or `bench`), and how much longer a whole run took than its
    training steps alone (start-up, evaluation, snapshots; 1.0 where unknown)."""

    images_per_second: float
    source: str
    overhead: float = 1.0


ANY_SIZE = "any"  # speeds(image_hw=...): runs at every image size


def speeds(results_dir: Path, precision: str | None = None,
           image_hw: tuple[int, int] | str | None = ANY_SIZE) -> dict[str, Speed]:
    """Each variant's median training images/s in a results folder: its finished runs'
    (at `precision`, and at the image size `image_hw` (None: the dataset's own), where
    given), else `ablation bench`'s measurements kept there (taken at the dataset's own
    size); with the runs' median overhead of a whole run over its training steps."""
    seen: dict[str, list[float]] = {}
    over: list[float] = []
    for r in load_runs(results_dir, quiet, history=False):
        rec = r.record
        if rec.status != JobState.DONE or not rec.images_per_second:
            continue
        if image_hw != ANY_SIZE and rec.recipe.image_hw != image_hw:
            continue  # 224 px is not 32 px: another size's speed says nothing here
        if precision is None or rec.recipe.precision == precision:
            seen.setdefault(r.variant, []).append(float(rec.images_per_second))
        steps = rec.epochs_done * (rec.train_images or 0) / float(rec.images_per_second)
        if rec.wall_seconds and steps:
            over.append(rec.wall_seconds / steps)
    overhead = statistics.median(over) if over else 1.0
    out = {v: Speed(statistics.median(x), "runs", overhead) for v, x in seen.items()}
    benched: dict[str, list[float]] = {}
    for m in results.read_speeds(results_dir) if image_hw in (ANY_SIZE, None) else ():
        if precision is None or m.get("precision") == precision:
            benched.setdefault(str(m.get("variant")), []).append(
                float(m.get("images_per_second") or 0))
    for v, x in benched.items():
        if v not in out and max(x) > 0:
            out[v] = Speed(statistics.median(x), "bench", overhead)
    return out
