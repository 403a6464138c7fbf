"""Train one job (variant, seed, recipe) into its run folder, resumably.

Runs in the job's own process (`python -m ablation.job RUN_DIR`, which picks the
backend and checks the device first). What it is told and what it answers are
`ablation.protocol` (config.json, progress lines, exit code).
The heavy lifting is Keras': `CSVLogger`, `LearningRateScheduler` (or a schedule in the
optimizer, where the lr changes within an epoch), `TerminateOnNaN`, `SwapEMAWeights`,
`TensorBoard`, and an atomic version of `BackupAndRestore` written on public calls.

Exactly-once history: callbacks run in list order at each epoch end, so the CSV row
is flushed before the backup is taken; on resume, rows at or after the restored
epoch are dropped before training goes on. The data stream is a pure function of
(seed, epoch, batch), so a resumed job sees the same batches as an unbroken one.
"""

from __future__ import annotations

import csv
import io
import math
import os
import resource
import shutil
import statistics
import time
import zlib
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from ablation import backend, data, devices, environment, models, registry, results, study
from ablation.errors import AblationError
from ablation.protocol import (
    HELD_MARKER,
    HOLD_ENV,
    EpochRecord,
    Exit,
    JobConfig,
    JobState,
    held_line,
)
from ablation.recipe import PRECISION_POLICIES, Recipe
from ablation.recipe.optimizer import compile_model, l2
from ablation.recipe.schedule import RecipeSchedule
from ablation.registry import Variant


def init_seed(variant: str, seed: int) -> int:
    """Weights depend on (variant, seed); data order and augmentation on seed alone."""
    return zlib.crc32(f"{variant}:{seed}".encode()) & 0x7FFFFFFF


def per_step(recipe: Recipe) -> bool:
    """Whether the lr changes within an epoch (a cosine or linear schedule, a linear
    warm-up): then the optimizer carries the schedule (`RecipeSchedule`), evaluated at
    every step; otherwise Keras' `LearningRateScheduler` sets each epoch's lr, as in 0.4
    (so a snapshot of 0.4 still resumes)."""
    return recipe.schedule in ("cosine", "linear") or recipe.warmup == "linear"


def training_model(variant: str | Variant, recipe: Recipe, num_classes: int,
                   jit_compile: bool = False, steps_per_execution: int = 1,
                   steps_per_epoch: int | None = None,
                   input_shape: tuple[int, int, int] = (32, 32, 3)) -> Any:
    """The compiled model `run` and `bench` train: the registry graph on the fused
    layers of ablation.layers (same math, faster on TensorFlow), under the recipe's
    precision, optimizer, loss and schedule, compiled as `ablation.backend` chose for
    the device. A per-step schedule needs `steps_per_epoch`."""
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[recipe.precision])
    schedule = None
    if per_step(recipe):
        if not steps_per_epoch:
            raise ValueError("a per-step schedule needs steps_per_epoch")
        schedule = RecipeSchedule(recipe, steps_per_epoch)
    model = compile_model(models.build_model(variant, num_classes=num_classes,
                                             input_shape=input_shape,
                                             weight_decay=l2(recipe), fast=True),
                          recipe, keras, schedule, jit_compile=jit_compile,
                          steps_per_execution=steps_per_execution)
    _build_training_state(model, num_classes)
    return model


def _build_training_state(model: Any, num_classes: int) -> None:
    """Create the optimizer's and the metrics' variables now, eagerly.

    Keras on TensorFlow otherwise creates them inside the first trace of the train step,
    and TensorFlow then traces the whole step a second time without them: about 4 s of
    every job's first epoch on a 2-core CPU (ResNet-32). One zero image through the
    metrics, then a reset, leaves no trace in the numbers (tested). JAX builds its state
    before its one trace anyway, and an eager pass there costs more than it saves."""
    if keras.backend.backend() != "tensorflow":
        return
    model.optimizer.build(model.trainable_variables)
    x = keras.ops.zeros((1, *model.input_shape[1:]))
    y = keras.ops.zeros((1, num_classes))
    model.compute_metrics(x, y, model(x, training=False), sample_weight=None)
    model.reset_metrics()


def standard_copy(model: Any, variant: str | Variant, recipe: Recipe, num_classes: int,
                  input_shape: tuple[int, int, int] = (32, 32, 3)) -> Any:
    """The same trained network as plain Keras layers, optimizer state included (its lr a
    number: the last one trained with), so the saved .h5 loads with
    `keras.models.load_model` and no project code."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    last = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    std = compile_model(models.build_model(variant, num_classes=num_classes,
                                           input_shape=input_shape, weight_decay=l2(recipe)),
                        recipe, keras, last)
    std.set_weights(model.get_weights())
    std.optimizer.build(std.trainable_variables)
    theirs = {_slot(v): v for v in model.optimizer.variables}
    for mine in std.optimizer.variables:
        if _slot(mine) in theirs:
            mine.assign(theirs[_slot(mine)])
    return std


def _slot(v: Any) -> str:
    """An optimizer variable's name without its optimizer's (`sgd_1/x_momentum` -> x_...)."""
    return v.path.split("/", 1)[-1]


# --- callbacks -----------------------------------------------------------------------------


def _finite(logs: dict | None) -> bool:
    return not logs or all(math.isfinite(float(v)) for v in logs.values()
                           if isinstance(v, int | float))


class DamagedSnapshot(AblationError):
    """A snapshot that cannot be trusted whole: the job fails, the files stay."""


class AtomicBackup(keras.callbacks.Callback):
    """Keras' BackupAndRestore, made atomic and checked, on public calls only.

    Stock BackupAndRestore writes the weights, then the epoch, as two files: a kill
    between them pairs new weights with an old epoch, and one epoch is trained twice.
    Here each snapshot (`model.save_weights`, which holds the optimizer's variables,
    plus a metadata file: epoch, variant, recipe, definition) goes into its own folder,
    renamed into place, then a one-line LATEST pointer is swapped atomically. A snapshot
    of a NaN epoch is never taken.

    A snapshot is trusted whole or not at all (`resume`): weights, optimizer state and
    epoch must all be there, readable, agree with each other (the optimizer's step
    count is the epoch's), and belong to this job. Anything else — a missing or damaged
    weights file, missing or damaged metadata, a LATEST pointing nowhere, another job's
    snapshot — fails the job in one line and keeps the files for inspection; it never
    trains on. Deleting the run's `backup/` folder starts the job again from epoch 0.
    """

    WEIGHTS, META = "latest.weights.h5", "training_metadata.json"

    def __init__(self, root: Path, identity: dict | None = None):
        super().__init__()
        self.root = Path(root)
        self.identity = dict(identity or {})

    def _damaged(self, what: str) -> DamagedSnapshot:
        return DamagedSnapshot(
            f"damaged snapshot in {self.root}: {what}; the files are kept for inspection. "
            f"Delete {self.root} to start this job again from epoch 0, then rerun with "
            "--retry-failed")

    def snapshot(self) -> tuple[Path, int] | None:
        """The latest snapshot's folder and epoch, checked; None when there is none."""
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        try:
            folder = self.root / pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise self._damaged(f"unreadable LATEST ({e})") from None
        if not folder.name or not folder.is_dir():
            raise self._damaged(f"LATEST points to {folder.name or 'nothing'}, which is "
                                "not there")
        try:
            meta = results.read_json(folder / self.META)
        except FileNotFoundError:
            raise self._damaged(f"no {self.META} in {folder.name}") from None
        except AblationError:
            raise self._damaged(f"unreadable {self.META} in {folder.name}") from None
        epoch = meta.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise self._damaged(f"no valid epoch in {folder.name}/{self.META}")
        for key, want in self.identity.items():
            if key in meta and meta[key] != want:
                raise self._damaged(f"it belongs to another job ({key} {meta[key]!r}, "
                                    f"this job's is {want!r})")
        if not (folder / self.WEIGHTS).is_file():
            raise self._damaged(f"no {self.WEIGHTS} in {folder.name}")
        return folder, epoch

    def resume(self, model: Any, steps_per_epoch: int) -> int:
        """Load the latest snapshot into `model` (built, with its optimizer) and return
        its epoch; 0 when there is none. Raises DamagedSnapshot when it cannot be
        trusted whole."""
        found = self.snapshot()
        if found is None:
            return 0
        folder, epoch = found
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(str(folder / self.WEIGHTS))
        except Exception as e:  # truncated, not HDF5, another network's weights
            raise self._damaged(f"cannot load {folder.name}/{self.WEIGHTS} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                                ) from None
        steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        # loss scaling (fp16) skips the steps whose gradients overflowed: at most that
        scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        if not (0 < steps <= epoch * steps_per_epoch if scaled
                else steps == epoch * steps_per_epoch):
            raise self._damaged(f"its optimizer state is at step {steps}, not at the end of "
                                f"epoch {epoch} (step {epoch * steps_per_epoch})")
        return epoch

    def on_epoch_end(self, epoch, logs=None):
        if not _finite(logs):
            return
        name = f"epoch-{epoch + 1:04d}"
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # VGG19's snapshot is ~310 MB (weights and momenta): a full disk is likely
            tmp.mkdir(parents=True)
            self.model.save_weights(str(tmp / self.WEIGHTS))
            with open(tmp / self.WEIGHTS, "rb") as fh:
                os.fsync(fh.fileno())
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)  # the last good snapshot stays
            raise results.disk_error(e, tmp / self.WEIGHTS) from None
        results.atomic_write_json(tmp / self.META, {"epoch": epoch + 1, **self.identity})
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        results.atomic_write_text(self.root / "LATEST", name + "\n")
        for old in self.root.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


class Recorder(keras.callbacks.Callback):
    """Adds `lr`, `epoch_seconds` and training images/s to the epoch logs (before
    CSVLogger sees them) and prints one progress record per epoch."""

    def __init__(self, cfg: JobConfig, recipe: Recipe, stream: data.TrainStream,
                 start_epoch: int):
        super().__init__()
        self.cfg, self.recipe, self.stream, self.start_epoch = cfg, recipe, stream, start_epoch
        self.n_train = len(stream.ds.y_train)
        self.train_rates: list[float] = []
        self.nan = False

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.t_train = None

    def on_test_begin(self, logs=None):
        self.t_train = time.perf_counter() - self.t0

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.nan = True
            self.stream.stop()  # let the generator end, so fit can return cleanly

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self.t0
        train_s = self.t_train or seconds
        logs.pop("learning_rate", None)  # Keras' float32 echo of what we set
        logs["lr"] = self.recipe.learning_rate(epoch, self.stream.steps_per_epoch)
        logs["epoch_seconds"] = round(seconds, 3)
        logs["images_per_second"] = round(self.n_train / train_s, 1)
        self.train_rates.append(self.n_train / train_s)
        done = epoch + 1
        record = EpochRecord(
            job=self.cfg.index, of=self.cfg.total, variant=self.cfg.variant, seed=self.cfg.seed,
            epoch=done, epochs=self.recipe.epochs, seconds=seconds,
            eta_job=seconds * (self.recipe.epochs - done), first=epoch == self.start_epoch,
            **{k: _num(logs.get(k)) for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                              "lr", "validation_accuracy")})
        print(record.line(), flush=True)


class EpochScalars(keras.callbacks.Callback):
    """Per-epoch TensorBoard scalars where Keras' TensorBoard callback cannot run: it
    needs TensorFlow, which a JAX machine may not have (and which a JAX job keeps off
    the GPU: `backend.keep_tensorflow_off_gpu`). Written with tensorboard's own writer,
    into the same train/ and validation/ runs and `epoch_*` tags as Keras' callback."""

    def __init__(self, logdir: Path):
        super().__init__()
        from tensorboard.summary import Writer

        self.writers = {"train": Writer(str(logdir / "train")),
                        "validation": Writer(str(logdir / "validation"))}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            v = _num(value)
            if v is None:
                continue
            run, tag = (("validation", key[4:]) if key.startswith("val_") else ("train", key))
            self.writers[run].add_scalar(f"epoch_{tag}", v, step=epoch)
        for w in self.writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self.writers.values():
            w.close()


def tensorboard_callback(run_dir: Path) -> tuple[Any | None, str | None]:
    """Keras' TensorBoard callback on TensorFlow, EpochScalars on other backends, or
    (None, a note) when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401  (TF 2.20+ no longer brings it along)
    except ImportError:
        return None, "TensorBoard logs skipped: the tensorboard package is not installed"
    if keras.backend.backend() == "tensorflow":
        return keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False,
                                           profile_batch=0), None
    return EpochScalars(run_dir / "tensorboard"), None


class HeldOut(keras.callbacks.Callback):
    """Evaluates the held-out validation split after every epoch, into the epoch's logs as
    `validation_accuracy` and `validation_loss` (the test set's stay `val_*`, Keras'
    names for fit's validation data, as the blog's logs had them)."""

    def __init__(self, batches: Any, swap: list):
        super().__init__()
        self.batches, self.swap = batches, swap

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not _finite(logs):
            return
        out = self.model.evaluate(self.batches, verbose=0, return_dict=True,
                                  callbacks=self.swap)
        logs["validation_accuracy"] = out.get("accuracy")
        logs["validation_loss"] = out.get("loss")


def load_data(recipe: Recipe, data_dir: str | None, record: dict | None) -> data.Dataset:
    """The job's data as its recipe, and the runner's record of a path dataset, say."""
    return data.load(recipe.dataset, data_dir, recipe.train_limit, recipe.test_limit,
                     recipe.validation, recipe.image_hw, recipe.data_hash,
                     cache=Path(record["cache"]) if record and record.get("cache") else None,
                     stats=(record["mean"], record["std"]) if record else None)


class SummaryKeeper(keras.callbacks.Callback):
    """Keeps summary.json current after every epoch, so reports show runs still going."""

    def __init__(self, write):
        super().__init__()
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        self.write(JobState.RUNNING)


class HoldForTest(keras.callbacks.Callback):
    """The protocol's test hook (HOLD_ENV): after each listed finished epoch, whose backup
    is already taken, write the marker (`protocol.held_line`: the epoch, this process and
    its parent, so a test signals only its own job) and wait until a signal ends it."""

    def __init__(self, run_dir: Path, after: set[int]):
        super().__init__()
        self.marker, self.after = Path(run_dir) / HELD_MARKER, after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.after:
            results.atomic_write_text(self.marker, held_line(epoch + 1))
            while True:
                time.sleep(3600)


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --- job -----------------------------------------------------------------------------------


def _truncate_history(path: Path, epochs: int) -> list[dict]:
    """Keep only rows of epochs < `epochs` (the ones the restored backup includes)."""
    rows = results.read_history(path)
    kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < epochs]
    if len(kept) != len(rows):
        if kept:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(kept)
            results.atomic_write_text(path, buf.getvalue())
        else:
            path.unlink()
    return kept


def _history_stats(rows: list[dict]) -> dict:
    scored = [(v, int(r["epoch"])) for r in rows
              if (v := _num(r.get("val_accuracy"))) is not None and math.isfinite(v)]
    best = max(scored, default=(None, None))
    held = {}
    if rows and "validation_accuracy" in rows[0]:  # the held-out split, when there is one
        vals = [v for r in rows if (v := _num(r.get("validation_accuracy"))) is not None
                and math.isfinite(v)]
        held = {"final_validation_accuracy": vals[-1] if vals else None,
                "best_validation_accuracy": max(vals, default=None),
                "final_validation_loss": _num(rows[-1].get("validation_loss"))}
    return {
        **held,
        "epochs_done": len(rows),
        "best_val_accuracy": best[0],
        "best_epoch": best[1],
        "final_val_accuracy": scored[-1][0] if scored else None,
        "final_accuracy": _num(rows[-1].get("accuracy")) if rows else None,
        "final_loss": _num(rows[-1].get("loss")) if rows else None,
        "final_val_loss": _num(rows[-1].get("val_loss")) if rows else None,
        "train_seconds": round(sum(float(r.get("epoch_seconds") or 0) for r in rows), 2),
    }


def _variant(cfg: JobConfig) -> Variant:
    """The definition the job was queued with (older configs: the registry's)."""
    module = study.check_units(cfg.units)
    if cfg.definition:
        v = Variant.from_dict(cfg.definition)
        # a config of 0.4 names no unit module: its units are the ones just imported
        return v if v.unit_module or not module else v.replace(unit_module=module)
    return registry.get(cfg.variant)


def _provenance(run_dir: Path, cfg: JobConfig) -> dict:
    """airbench's lesson: keep the code beside the numbers. A dirty checkout's diff and
    the user units' source go into the run folder."""
    out = {}
    diff = environment.git_diff()
    if diff:
        results.atomic_write_text(run_dir / "code.diff", diff)
        out["code_diff"] = "code.diff"
    sources = sorted({u["source"] for u in cfg.units if u.get("source", "").endswith(".py")})
    if sources:
        results.atomic_write_text(run_dir / "units.py", "\n".join(
            f"# --- {s}\n{Path(s).read_text(encoding='utf-8')}" for s in sources))
        out["units_file"] = "units.py"
    return out


def train(run_dir: Path, on_gpu: bool = False) -> int:
    """Train the job described by run_dir/config.json (on a GPU when `on_gpu`: the job's
    process checked that it sees the one it was given). Returns the exit code."""
    run_dir = Path(run_dir)
    cfg = JobConfig.from_dict(results.read_json(run_dir / "config.json"))
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            if results.read_json(summary_path).get("status") == JobState.DONE:
                print(f"{cfg.variant} seed {cfg.seed}: already done", flush=True)
                return Exit.DONE
        except AblationError:
            pass  # a damaged summary is rewritten below
    (run_dir / HELD_MARKER).unlink(missing_ok=True)

    variant = _variant(cfg)
    recipe = variant.train_recipe(cfg.recipe)  # the variant's own fixed fields on top
    ds = load_data(recipe, cfg.data_dir, cfg.data)
    name = keras.backend.backend()
    steps = -(-len(ds.y_train) // recipe.batch_size)
    execution = {**backend.compile_settings(name, recipe.precision, on_gpu, steps),
                 "loader_threads": backend.loader_threads()}
    keras.utils.set_random_seed(init_seed(cfg.variant, cfg.seed))
    model = training_model(variant, recipe, ds.num_classes, execution["jit_compile"],
                           execution["steps_per_execution"], steps, ds.input_shape)
    info = models.count_params(variant, ds.num_classes, ds.input_shape)
    models.check_counts(model, info, cfg.variant)  # what summary.json records is the model's

    backup = AtomicBackup(run_dir / "backup", {
        "variant": cfg.variant, "seed": cfg.seed, "recipe_id": cfg.recipe.id,
        "definition_hash": study.definition_hash(variant)})
    stream = data.TrainStream(ds, recipe.batch_size, cfg.seed, recipe.augment,
                              epochs=recipe.epochs, threads=execution["loader_threads"],
                              mixup=recipe.mixup, cutmix=recipe.cutmix)
    start = backup.resume(model, stream.steps_per_epoch)  # checked whole, or it fails
    pretrained = {}
    if start == 0 and variant.pretrained:
        pretrained = {"pretrained": variant.pretrained,
                      "pretrained_convs": models.load_pretrained(model, variant.pretrained)}
    stream.start_epoch = start
    history_path = run_dir / "history.csv"
    _truncate_history(history_path, start)
    recorder = Recorder(cfg, recipe, stream, start)
    # the test set (and the validation split) see the averaged weights; training, and
    # the backup, the raw ones
    swap = [keras.callbacks.SwapEMAWeights()] if recipe.ema else []
    callbacks = [
        # Keras calls a schedule as (epoch, current lr): only the epoch is ours
        *([] if per_step(recipe) else [keras.callbacks.LearningRateScheduler(
            lambda epoch, _lr: recipe.learning_rate(epoch))]),
        *swap,
        *([HeldOut(data.test_batches(ds, recipe.batch_size, split="validation"), swap)]
          if recipe.validation else []),
        recorder,
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.TerminateOnNaN(),
        backup,
    ]
    env = environment.describe()
    board, tb_note = tensorboard_callback(run_dir)
    if board is not None:
        callbacks.append(board)
    notes = [n for n in (backend.note, tb_note) if n]
    for n in notes:
        print(n, flush=True)

    base = {
        "variant": cfg.variant, "seed": cfg.seed, "dataset": recipe.dataset,
        "recipe": cfg.recipe.to_dict(), "recipe_id": cfg.recipe.id,
        "epochs_planned": recipe.epochs, "params_total": info.params_total,
        "params_trainable": info.params_trainable,
        "params_non_trainable": info.params_non_trainable, "depth": info.depth,
        "macs": info.macs, "train_images": len(ds.y_train), "test_images": len(ds.y_test),
        "validation_images": 0 if ds.y_val is None else len(ds.y_val),
        "input_shape": list(ds.input_shape), "num_classes": ds.num_classes,
        "class_names": list(ds.class_names), "data_mean": list(ds.mean),
        "data_std": list(ds.std), "data_hash": ds.content_hash,
        "data_checksum": ds.checksum(), "data_source": ds.source,
        "init_seed": init_seed(cfg.variant, cfg.seed),
        "definition": study.definition(variant),
        "definition_hash": study.definition_hash(variant), "study": cfg.study,
        **({"phase": cfg.phase, "tuning": cfg.tuning} if cfg.phase else {}),
        **({"train_recipe": recipe.to_dict()} if recipe != cfg.recipe else {}),
        **_provenance(run_dir, cfg), **env, **devices.recorded(), **execution, **pretrained,
    }
    if notes:
        base["note"] = "; ".join(notes)

    def write_summary(status: JobState, **extra) -> dict:
        rows = results.read_history(history_path)
        rates = recorder.train_rates[1:] or recorder.train_rates  # skip tracing epoch
        s = {**base, **_history_stats(rows), "status": status,
             "images_per_second": round(statistics.median(rates), 1) if rates else None,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        results.atomic_write_json(summary_path, s)
        return s

    callbacks.append(SummaryKeeper(write_summary))
    hold = os.environ.get(HOLD_ENV)
    if hold:
        callbacks.append(HoldForTest(run_dir, {int(e) for e in hold.split(",")}))
    print(f"job {cfg.index}/{cfg.total}: {cfg.variant} seed {cfg.seed}, recipe {cfg.recipe.id}, "
          f"{'resuming after epoch ' + str(start) if start else 'starting'}; "
          f"{len(ds.y_train)} train / {len(ds.y_test)} test images; {env['device']}; "
          f"{name}, matmul {execution['matmul_precision']}, "
          f"{execution['steps_per_execution']} step(s) per execution", flush=True)
    if start < recipe.epochs:  # (else: trained to the end, killed before saving: save)
        model.fit(iter(stream), steps_per_epoch=stream.steps_per_epoch, epochs=recipe.epochs,
                  initial_epoch=start, validation_data=data.test_batches(ds, recipe.batch_size),
                  callbacks=callbacks, verbose=0, shuffle=False)
    elif recipe.ema:  # what fit does at its end: the averaged weights become the model's
        model.optimizer.finalize_variable_values(model.trainable_variables)

    rows = results.read_history(history_path)
    if recorder.nan or len(rows) < recipe.epochs:
        why = (f"loss became NaN in epoch {len(rows)}/{recipe.epochs} (TerminateOnNaN stopped it)"
               if recorder.nan else f"training stopped after {len(rows)} of {recipe.epochs} epochs")
        write_summary(JobState.FAILED, error=why)
        print(f"FAILED: {why}", flush=True)
        return Exit.FAILED

    h5 = run_dir / "model.h5"
    tmp = run_dir / ".model.tmp.h5"
    try:
        # legacy HDF5, optimizer included, as the blog saved it
        standard_copy(model, variant, recipe, ds.num_classes, ds.input_shape).save(str(tmp))
        os.replace(tmp, h5)
    except OSError as e:
        raise results.disk_error(e, h5) from None
    h5_bytes = h5.stat().st_size
    if not cfg.keep_model:
        h5.unlink()
    write_summary(JobState.DONE, h5_bytes=h5_bytes,
                  model_file=h5.name if cfg.keep_model else None)
    shutil.rmtree(backup.root, ignore_errors=True)
    return Exit.DONE
