"""The training callbacks a job adds to Keras' own (`CSVLogger`, `LearningRateScheduler`,
`TerminateOnNaN`, `SwapEMAWeights`, `TensorBoard`): what a run needs that Keras does not
do, each on public Keras calls only.

* `AtomicBackup`: Keras' `BackupAndRestore`, made atomic and checked whole;
* `Lookahead`: airbench's lookahead, its average kept in the snapshots;
* `EpochMeter`: lr, epoch time and images/s into the epoch's logs, and the progress line
  the runner reads (`ablation.protocol.EpochRecord`);
* `HeldOut`: the held-out validation split evaluated every epoch;
* `EpochScalars`: TensorBoard scalars where Keras' callback cannot run (no TensorFlow);
* `SummaryKeeper`: the run record rewritten after every epoch;
* `HoldForTest`: the protocol's test hook (`ablation.protocol.HOLD_ENV`).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from ablation import data, results
from ablation.errors import AblationError
from ablation.protocol import HELD_MARKER, EpochRecord, JobConfig, held_line, number
from ablation.recipe import Recipe


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

    With `every_steps` or `every_seconds`, snapshots are also taken inside an epoch (an
    ImageNet epoch outlasts a preemption): after that many steps of the epoch, or the
    first step after that many seconds since the last one. Such a snapshot also holds
    the epoch's running metrics (Keras' loss and accuracy means), given back to the
    model when the resumed epoch begins, so the epoch's logged loss and accuracy are
    those of an uninterrupted epoch.

    A snapshot is trusted whole or not at all (`resume`): weights, optimizer state and
    epoch must all be there, readable, agree with each other (the optimizer's step
    count is the epoch's and step's), and belong to this job. Anything else — a missing or damaged
    weights file, missing or damaged metadata, a LATEST pointing nowhere, another job's
    snapshot — fails the job in one line and keeps the files for inspection; it never
    trains on. Deleting the run's `backup/` folder starts the job again from epoch 0.
    """

    WEIGHTS, META, METRICS = "latest.weights.h5", "training_metadata.json", "metrics.npz"

    def __init__(self, root: Path, identity: dict | None = None,
                 keeps: tuple[Lookahead, ...] = (), every_steps: int | None = None,
                 every_seconds: float | None = None):
        super().__init__()
        self.root = Path(root)
        self.identity = dict(identity or {})
        self.keeps = keeps  # other callbacks' state that the snapshot holds beside weights
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.resumed: tuple[int, int] = (0, 0)  # (epoch, step) the job went on from
        self.metrics: list | None = None  # the resumed epoch's running metrics
        self.taken: tuple[int, int] | None = None  # the last (epoch, step) snapshotted
        self.epoch, self.offset, self.since, self.last = 0, 0, 0, time.monotonic()

    def _damaged(self, what: str) -> DamagedSnapshot:
        return DamagedSnapshot(
            f"damaged snapshot in {self.root}: {what}; the files are kept for inspection. "
            f"Delete {self.root} to start this job again from epoch 0, then rerun with "
            "--retry-failed")

    def snapshot(self) -> tuple[Path, int, int] | None:
        """The latest snapshot's folder, epoch (finished epochs) and step (steps of the
        next epoch already trained: 0 for a snapshot at an epoch's end), checked; None
        when there is none."""
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        try:
            folder = self.root / pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise self._damaged(f"unreadable LATEST ({e})") from e
        if not folder.name or not folder.is_dir():
            raise self._damaged(f"LATEST points to {folder.name or 'nothing'}, which is "
                                "not there")
        try:
            meta = results.read_json(folder / self.META)
        except FileNotFoundError:
            raise self._damaged(f"no {self.META} in {folder.name}") from None
        except AblationError:
            raise self._damaged(f"unreadable {self.META} in {folder.name}") from None
        epoch, step = meta.get("epoch"), meta.get("step", 0)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (epoch, step)
               ) or epoch + step < 1:
            raise self._damaged(f"no valid epoch in {folder.name}/{self.META}")
        for key, want in self.identity.items():
            if key in meta and meta[key] != want:
                raise self._damaged(f"it belongs to another job ({key} {meta[key]!r}, "
                                    f"this job's is {want!r})")
        for name in [self.WEIGHTS, *(k.FILE for k in self.keeps),
                     *([self.METRICS] if step else [])]:
            if not (folder / name).is_file():
                raise self._damaged(f"no {name} in {folder.name}")
        return folder, epoch, step

    def resume(self, model: Any, steps_per_epoch: int) -> tuple[int, int]:
        """Load the latest snapshot into `model` (built, with its optimizer) and return
        its (epoch, step); (0, 0) when there is none. Raises DamagedSnapshot when it
        cannot be trusted whole."""
        found = self.snapshot()
        if found is None:
            return 0, 0
        folder, epoch, step = found
        if step >= steps_per_epoch:
            raise self._damaged(f"it is at step {step} of an epoch of {steps_per_epoch}")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(str(folder / self.WEIGHTS))
        except Exception as e:  # truncated, not HDF5, another network's weights
            raise self._damaged(f"cannot load {folder.name}/{self.WEIGHTS} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                                ) from e
        steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        want = epoch * steps_per_epoch + step
        # loss scaling (fp16) skips the steps whose gradients overflowed: at most that
        scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        if not (0 < steps <= want if scaled else steps == want):
            raise self._damaged(f"its optimizer state is at step {steps}, not at "
                                + (f"step {step} of epoch {epoch + 1}" if step else
                                   f"the end of epoch {epoch}") + f" (step {want})")
        for keep in self.keeps:
            try:
                keep.restore(folder / keep.FILE, model)
            except (OSError, ValueError, KeyError) as e:
                raise self._damaged(f"cannot load {folder.name}/{keep.FILE} ({e})") from e
        if step:
            import numpy as np

            try:
                with np.load(folder / self.METRICS) as z:
                    self.metrics = [z[f"arr_{i}"] for i in range(len(z.files))]
            except (OSError, ValueError) as e:
                raise self._damaged(f"cannot load {folder.name}/{self.METRICS} ({e})") from e
        self.resumed = (epoch, step)
        return epoch, step

    def on_train_begin(self, logs=None):
        self.last = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        # the resumed epoch starts at its snapshot's step, with the metrics it had then
        self.offset = self.resumed[1] if epoch == self.resumed[0] else 0
        self.since = self.offset  # the epoch's step of the last snapshot
        if self.offset and self.metrics is not None:
            variables = self.model.metrics_variables
            if len(variables) != len(self.metrics):
                raise self._damaged(f"{len(self.metrics)} running metrics for "
                                    f"{len(variables)}")
            for v, value in zip(variables, self.metrics, strict=True):
                v.assign(value)
            self.metrics = None

    def on_train_batch_end(self, batch, logs=None):
        if not (self.every_steps or self.every_seconds) or not _finite(logs):
            return
        step = self.offset + batch + 1  # of this epoch
        if step >= self.params["steps"] + self.offset:  # its end: on_epoch_end's snapshot
            return
        # `batch` is an execution's last step: with several steps per execution (a GPU)
        # a snapshot is due once `every_steps` have passed, at the first step seen
        if (self.every_steps and step - self.since >= self.every_steps) or (
                self.every_seconds and time.monotonic() - self.last >= self.every_seconds):
            self.since = step
            import numpy as np

            def metrics(folder: Path) -> None:
                with open(folder / self.METRICS, "wb") as f:
                    np.savez(f, *[keras.ops.convert_to_numpy(v)
                                  for v in self.model.metrics_variables])

            self._take(f"epoch-{self.epoch:04d}-step-{step:07d}",
                       {"epoch": self.epoch, "step": step}, metrics)

    def on_epoch_end(self, epoch, logs=None):
        if not _finite(logs):
            return
        self._take(f"epoch-{epoch + 1:04d}", {"epoch": epoch + 1})

    def _take(self, name: str, meta: dict, extra: Callable[[Path], None] | None = None
              ) -> None:
        """Write a snapshot folder whole, then point LATEST at it; older ones go."""
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # VGG19's snapshot is ~310 MB (weights and momenta): a full disk is likely
            tmp.mkdir(parents=True)
            self.model.save_weights(str(tmp / self.WEIGHTS))
            for keep in self.keeps:
                keep.save(tmp / keep.FILE)
            if extra is not None:
                extra(tmp)
            for file in tmp.iterdir():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)  # the last good snapshot stays
            raise results.disk_error(e, tmp / self.WEIGHTS) from e
        results.atomic_write_json(tmp / self.META, {**meta, **self.identity})
        self.taken = (meta["epoch"], meta.get("step", 0))
        self.last = time.monotonic()
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        results.atomic_write_text(self.root / "LATEST", name + "\n")
        for old in self.root.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead (Jordan 2024, after hlb-cifar10), as airbench94.py and the
    ablation's main5_lookahead.py run it. From epoch `start_step / steps per epoch` on,
    at every multiple of `every` steps: the first such step takes a copy of the model's
    float variables (its weights and batch-norm statistics) as the average; each later
    one moves the average towards the model, ema <- ema + (1 - d)(w - ema), and the
    model to the average, w <- ema, with d = decay^every · (step / last step)^3 (little
    averaging at first, the most at the end). At the end of every epoch the model takes
    the average (the steps since the last update are dropped), before the epoch's
    evaluations: each epoch's test accuracy, and the final model, are the average's.
    The average lives on the device (Keras ops) and goes into each snapshot
    (`save`/`restore`; an empty file before the first copy), so a resumed run goes on
    exactly.

    With several steps per execution the callback sees every k-th step: it updates when
    a multiple of `every` was passed, so the run is airbench's where k divides `every`
    (steps_per_execution is 1 on the CPU)."""

    FILE = "lookahead.npz"

    def __init__(self, decay: float, every: int, last_step: int, start_step: int = 0):
        super().__init__()
        self.decay, self.every, self.last_step = decay, every, last_step
        self.start_step = start_step  # steps before the lookahead's epochs
        self.ema: list[Any] | None = None  # None: no copy taken yet
        self.done = 0  # the multiple of `every` last passed
        self.epoch_steps = 0  # optimizer steps before the current epoch

    def _floats(self, model: Any) -> list[Any]:
        return [v for v in model.weights if "float" in str(v.dtype)]

    def on_train_begin(self, logs=None):
        # the optimizer's step, read from the device once; counted here from then on (a
        # read per batch would wait for the device at every step)
        self.epoch_steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.done = self.epoch_steps // self.every

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_steps += self.params["steps"]  # the steps before the next epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch_steps + batch + 1  # `batch`: the execution's last step
        # a multiple of `every` passed, in the lookahead's epochs
        if step // self.every > self.done and self.epoch_steps >= self.start_step:
            if self.ema is None:
                self.ema = [keras.ops.copy(v.value) for v in self._floats(self.model)]
            else:
                self._update(self.decay ** self.every
                             * (step // self.every * self.every / self.last_step) ** 3)
        self.done = step // self.every
        # the epoch's last step: the model takes the average before the epoch's
        # evaluations (Keras evaluates before `on_epoch_end`)
        if batch + 1 >= self.params["steps"] and self.ema is not None:
            self._update(1.0)

    def _update(self, d: float) -> None:
        assert self.ema is not None
        for i, v in enumerate(self._floats(self.model)):
            self.ema[i] = self.ema[i] + (1.0 - d) * (keras.ops.cast(v.value, self.ema[i].dtype)
                                                     - self.ema[i])
            v.assign(keras.ops.cast(self.ema[i], v.dtype))

    def save(self, path: Path) -> None:
        import numpy as np

        with open(path, "wb") as f:
            np.savez(f, *[keras.ops.convert_to_numpy(e) for e in self.ema or ()])

    def restore(self, path: Path, model: Any) -> None:
        import numpy as np

        with np.load(path) as z:
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
        shapes = [tuple(v.shape) for v in self._floats(model)]
        if arrays and [a.shape for a in arrays] != shapes:  # none: no copy taken yet
            raise ValueError(f"{len(arrays)} averages for {len(shapes)} variables, or "
                             "other shapes")
        self.ema = [keras.ops.convert_to_tensor(a) for a in arrays] if arrays else None


class FreezeBias(keras.callbacks.Callback):
    """airbench's step 4 (its whitening layer's bias trained for the first `epochs`
    epochs, then frozen: airbench94.py's `whiten_bias_epochs`). From that epoch on, the
    bias is put back after every step to its value at the epoch's start, so each step's
    forward pass sees the frozen value and the model ends with it; what the optimizer
    (its momentum, the weight decay) does to it is undone each time. A snapshot holds
    the frozen value, so a resumed run takes it from there. Exact where one step runs
    per execution (the CPU's); with k steps per execution the bias is put back every k
    steps."""

    def __init__(self, variables: list[Any], epochs: int):
        super().__init__()
        self.variables, self.epochs = variables, epochs
        self.frozen: list[Any] | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.epochs and self.frozen is None:
            self.frozen = [keras.ops.copy(v.value) for v in self.variables]

    def on_train_batch_end(self, batch, logs=None):
        if self.frozen is not None:
            for v, value in zip(self.variables, self.frozen, strict=True):
                v.assign(value)


class EpochMeter(keras.callbacks.Callback):
    """Adds `lr`, `epoch_seconds` and training images/s to the epoch logs (before
    CSVLogger sees them), keeps each epoch's training images/s in `rates` (the run
    record's median) and prints one progress record per epoch."""

    def __init__(self, cfg: JobConfig, recipe: Recipe, stream: data.TrainStream,
                 start_epoch: int, rates: list[float], target: int | None = None):
        super().__init__()
        self.cfg, self.recipe, self.stream, self.start_epoch = cfg, recipe, stream, start_epoch
        self.target = target or recipe.epochs  # the epoch this process trains to
        self.n_train = len(stream.ds.y_train)
        self.train_rates = rates
        self.process_start = process_start()
        self.started: float | None = None  # seconds from the process's start to epoch 1
        self.nan: str | None = None  # what became NaN (the training loss, an evaluation's)

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.t_train = None
        if self.started is None:  # this process's start-up: to its first epoch
            self.started = time.time() - self.process_start

    def on_train_batch_end(self, batch, logs=None):
        # the training steps end at the last batch: evaluations (the test set, the
        # validation split) come after it, and are timed apart
        self.t_train = time.perf_counter() - self.t0
        if logs and "loss" in logs and not math.isfinite(float(logs["loss"])):
            self.nan = "loss"
            self.stream.stop()  # let the generator end, so fit can return cleanly

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        # an evaluation whose loss is not a number diverged as surely as training: the run
        # stops here and fails (a setting that diverged is never promoted nor chosen)
        for split in results.SPLITS.values():
            key, what = split.loss, f"{split.name} loss"
            if key in logs and number(logs[key]) is None and not self.nan:
                self.nan = what
                self.model.stop_training = True
        seconds = time.perf_counter() - self.t0
        train_s = self.t_train or seconds
        logs.pop("learning_rate", None)  # Keras' float32 echo of what we set
        logs["lr"] = self.recipe.learning_rate(epoch, self.stream.steps_per_epoch)
        logs["epoch_seconds"] = round(seconds, 3)
        # an epoch resumed from a snapshot inside it trains only its remaining steps
        images = self.n_train * self.params["steps"] / self.stream.steps_per_epoch
        logs["images_per_second"] = round(images / train_s, 1)
        self.train_rates.append(images / train_s)
        done = epoch + 1
        record = EpochRecord(
            job=self.cfg.index, of=self.cfg.total, variant=self.cfg.variant, seed=self.cfg.seed,
            epoch=done, epochs=self.target, seconds=seconds,
            eta_job=seconds * (self.target - done), first=epoch == self.start_epoch,
            **{k: number(logs.get(k)) for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                              "lr", "validation_accuracy")})
        print(record.line(), flush=True)


def process_start() -> float:
    """When this process started (wall clock): its start-up is counted from there."""
    import psutil

    return psutil.Process().create_time()


class EpochScalars(keras.callbacks.Callback):
    """Per-epoch TensorBoard scalars where Keras' TensorBoard callback cannot run: it
    needs TensorFlow, which a JAX machine may not have (and which a JAX job keeps off
    the GPU: `backend.keep_tensorflow_off_gpu`). Written with tensorboard's own writer,
    into the same train/ and validation/ runs and `epoch_*` tags as Keras' callback."""

    def __init__(self, logdir: Path):
        super().__init__()
        self.logdir, self.writers = logdir, {}

    def on_train_begin(self, logs=None):  # each `fit` (a job resumed inside an epoch: two)
        from tensorboard.summary import Writer

        self.writers = {run: Writer(str(self.logdir / run)) for run in ("train", "validation")}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            v = number(value)
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
        logs[results.VALIDATION.curve] = out.get("accuracy")
        logs[results.VALIDATION.loss] = out.get("loss")




class SummaryKeeper(keras.callbacks.Callback):
    """Keeps the run record (summary.json) current after every epoch, so reports show
    runs still going. `write()` rewrites it."""

    def __init__(self, write: Callable[[], Any]):
        super().__init__()
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        self.write()


class HoldForTest(keras.callbacks.Callback):
    """The protocol's test hook (HOLD_ENV): after each listed finished epoch ("2"), or
    each listed snapshot inside an epoch ("1+3": 1 epoch and 3 steps trained), whose
    backup is already taken, write the marker (`protocol.held_line`: the epoch, this
    process and its parent, so a test signals only its own job) and wait until a signal
    ends it."""

    def __init__(self, run_dir: Path, spec: str, backup: AtomicBackup):
        super().__init__()
        self.marker, self.backup = Path(run_dir) / HELD_MARKER, backup
        points = [tuple(int(v) for v in p.split("+")) for p in spec.split(",") if p]
        self.after = {p[0] for p in points if len(p) == 1}
        self.steps = {(p[0], p[1]) for p in points if len(p) == 2}

    def _hold(self, epoch: int) -> None:
        results.atomic_write_text(self.marker, held_line(epoch))
        while True:
            time.sleep(3600)

    def on_train_batch_end(self, batch, logs=None):
        if self.backup.taken in self.steps:
            self._hold(self.backup.taken[0])

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.after:
            self._hold(epoch + 1)
