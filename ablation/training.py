"""Train one job (variant, seed, recipe) into its run folder, resumably.

Run as its own process (`python -m ablation.training RUN_DIR`), one per job, so a
crash or an out-of-memory kill takes down one job, never the queue. The heavy
lifting is Keras': `BackupAndRestore` (made atomic below), `CSVLogger`,
`LearningRateScheduler`, `TerminateOnNaN`, `TensorBoard`.

Exactly-once history: callbacks run in list order at each epoch end, so the CSV row
is flushed before the backup is taken; on resume, rows at or after the restored
epoch are dropped before training goes on. The data stream is a pure function of
(seed, epoch, batch), so a resumed job sees the same batches as an unbroken one.

Exit codes: 0 done, 1 failed (reason in summary.json), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import resource
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

from ablation import results
from ablation.errors import AblationError
from ablation.recipe import Recipe

PROGRESS = "@@epoch "  # prefix of machine-readable progress lines on stdout
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def init_seed(variant: str, seed: int) -> int:
    """Weights depend on (variant, seed); data order and augmentation on seed alone."""
    return zlib.crc32(f"{variant}:{seed}".encode()) & 0x7FFFFFFF


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


# --- callbacks -----------------------------------------------------------------------------


def _make_backup_class(keras):
    class AtomicBackup(keras.callbacks.BackupAndRestore):
        """Keras' BackupAndRestore, each snapshot made atomic.

        Stock BackupAndRestore writes the weights, then the epoch, as two files: a kill
        between them pairs new weights with an old epoch, and one epoch is trained
        twice. Here each snapshot (weights + optimizer + epoch) goes into its own
        folder, renamed into place, then a one-line LATEST pointer is swapped
        atomically. A snapshot of a NaN epoch is never taken.
        """

        def __init__(self, root: Path):
            self.root = Path(root)
            super().__init__(str(self.root / "pending"), delete_checkpoint=False)

        @staticmethod
        def restored_epoch(root: Path) -> int:
            latest = Path(root) / "LATEST"
            try:
                name = latest.read_text().strip()
                meta = results.read_json(Path(root) / name / "training_metadata.json")
                return int(meta["epoch"])
            except (OSError, AblationError, KeyError, ValueError):
                return 0

        def _point_at(self, folder: Path) -> None:
            self.backup_dir = str(folder)
            self._weights_path = str(folder / "latest.weights.h5")
            self._training_metadata_path = str(folder / "training_metadata.json")

        def on_train_begin(self, logs=None):
            latest = self.root / "LATEST"
            if latest.exists():
                self._point_at(self.root / latest.read_text().strip())
                self._load_model()

        def on_epoch_end(self, epoch, logs=None):
            if logs and not all(math.isfinite(float(v)) for v in logs.values()
                                if isinstance(v, int | float)):
                return
            super().on_epoch_end(epoch, logs)

        def _save_model(self):
            name = f"epoch-{self._current_epoch:04d}"
            tmp = self.root / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self._point_at(tmp)
            super()._save_model()
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            final = self.root / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            results.atomic_write_text(self.root / "LATEST", name + "\n")
            for old in self.root.glob("epoch-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)

    return AtomicBackup


def _make_recorder_class(keras):
    class Recorder(keras.callbacks.Callback):
        """Adds `lr`, `epoch_seconds` and training images/s to the epoch logs (before
        CSVLogger sees them), prints one progress line per epoch, and keeps
        summary.json current so reports can show runs still going."""

        def __init__(self, job: Job, stream, start_epoch: int):
            super().__init__()
            self.job, self.stream, self.start_epoch = job, stream, start_epoch
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
            logs["lr"] = self.job.recipe.learning_rate(epoch)
            logs["epoch_seconds"] = round(seconds, 3)
            logs["images_per_second"] = round(self.n_train / train_s, 1)
            self.train_rates.append(self.n_train / train_s)
            done = epoch + 1
            left = self.job.recipe.epochs - done
            record = {"job": self.job.index, "of": self.job.total, "variant": self.job.variant,
                      "seed": self.job.seed, "epoch": done, "epochs": self.job.recipe.epochs,
                      "seconds": seconds, "eta_job": seconds * left,
                      "first": epoch == self.start_epoch,
                      **{k: _num(logs.get(k)) for k in
                         ("loss", "accuracy", "val_loss", "val_accuracy", "lr")}}
            print(PROGRESS + json.dumps(results.clean(record)), flush=True)

    return Recorder


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def training_model(variant: str, recipe: Recipe, num_classes: int):
    """The compiled model `run` and `bench` train: the registry graph on the fused
    layers of ablation.layers (same math, faster on TensorFlow), under the recipe's
    precision."""
    keras = _keras()
    from ablation import models

    keras.mixed_precision.set_global_policy(_POLICIES[recipe.precision])
    model = models.build_model(variant, num_classes=num_classes,
                               weight_decay=recipe.weight_decay, fast=True)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=recipe.lr, momentum=recipe.momentum,
                                       nesterov=recipe.nesterov),
        loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def standard_copy(model, variant: str, recipe: Recipe, num_classes: int):
    """The same trained network as plain Keras layers, optimizer state included, so the
    saved .h5 loads with `keras.models.load_model` and no project code."""
    keras = _keras()
    from ablation import models

    std = models.build_model(variant, num_classes=num_classes,
                             weight_decay=recipe.weight_decay)
    std.compile(optimizer=keras.optimizers.SGD(learning_rate=recipe.lr,
                                               momentum=recipe.momentum,
                                               nesterov=recipe.nesterov),
                loss="categorical_crossentropy", metrics=["accuracy"])
    std.set_weights(model.get_weights())
    std.optimizer.build(std.trainable_variables)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for mine, theirs in zip(std.optimizer.variables, model.optimizer.variables, strict=True):
        mine.assign(theirs)
    return std


# --- job -----------------------------------------------------------------------------------


class Job:
    """What a training process is told, read from the run folder's config.json."""

    def __init__(self, cfg: dict):
        self.variant: str = cfg["variant"]
        self.seed: int = int(cfg["seed"])
        self.recipe = Recipe.from_dict(cfg["recipe"])
        self.data_dir: str | None = cfg.get("data_dir")
        self.keep_model: bool = bool(cfg.get("keep_model", True))
        self.index: int = int(cfg.get("index", 1))
        self.total: int = int(cfg.get("total", 1))

    @staticmethod
    def config(variant: str, seed: int, recipe: Recipe, data_dir: str | None,
               keep_model: bool, index: int = 1, total: int = 1) -> dict:
        return {"variant": variant, "seed": seed, "recipe": recipe.to_dict(),
                "recipe_id": recipe.id, "data_dir": data_dir, "keep_model": keep_model,
                "index": index, "total": total}


def _truncate_history(path: Path, epochs: int) -> list[dict]:
    """Keep only rows of epochs < `epochs` (the ones the restored backup includes)."""
    rows = _read_history(path)
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
    return {
        "epochs_done": len(rows),
        "best_val_accuracy": best[0],
        "best_epoch": best[1],
        "final_val_accuracy": scored[-1][0] if scored else None,
        "final_accuracy": _num(rows[-1].get("accuracy")) if rows else None,
        "final_loss": _num(rows[-1].get("loss")) if rows else None,
        "final_val_loss": _num(rows[-1].get("val_loss")) if rows else None,
        "train_seconds": round(sum(float(r.get("epoch_seconds") or 0) for r in rows), 2),
    }


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _watch_parent() -> None:
    """Exit if the runner that started us dies (SIGKILL leaves no chance to tell us),
    so an orphan never trains on while another runner reclaims the job."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, daemon=True).start()


def train(run_dir: Path) -> int:
    """Train the job described by run_dir/config.json. Returns the exit code."""
    run_dir = Path(run_dir)
    job = Job(results.read_json(run_dir / "config.json"))
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            if results.read_json(summary_path).get("status") == "done":
                print(f"{job.variant} seed {job.seed}: already done", flush=True)
                return 0
        except AblationError:
            pass  # a damaged summary is rewritten below

    keras = _keras()
    from ablation import data, environment, models

    recipe = job.recipe
    ds = data.load(recipe.dataset, job.data_dir, recipe.train_limit, recipe.test_limit)
    keras.utils.set_random_seed(init_seed(job.variant, job.seed))
    model = training_model(job.variant, recipe, ds.num_classes)

    backup_root = run_dir / "backup"
    Backup = _make_backup_class(keras)
    start = Backup.restored_epoch(backup_root)
    history_path = run_dir / "history.csv"
    _truncate_history(history_path, start)
    stream = data.TrainStream(ds, recipe.batch_size, job.seed, recipe.augment, start_epoch=start,
                              epochs=recipe.epochs)
    recorder = _make_recorder_class(keras)(job, stream, start)
    callbacks = [
        keras.callbacks.LearningRateScheduler(recipe.learning_rate),
        recorder,
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.TerminateOnNaN(),
        Backup(backup_root),
    ]
    env = environment.describe()
    tb_note = None
    try:
        import tensorboard  # noqa: F401  (TF 2.20+ no longer brings it along)
        import tensorflow  # noqa: F401

        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"),
                                                     write_graph=False, profile_batch=0))
    except ImportError:
        tb_note = "TensorBoard logs skipped: TensorFlow/TensorBoard is not installed"
        print(tb_note, flush=True)

    info = models.count_params(job.variant, ds.num_classes)
    base = {
        "variant": job.variant, "seed": job.seed, "dataset": recipe.dataset,
        "recipe": recipe.to_dict(), "recipe_id": recipe.id,
        "epochs_planned": recipe.epochs, "params_total": info.params_total,
        "params_trainable": info.params_trainable,
        "params_non_trainable": info.params_non_trainable, "depth": info.depth,
        "train_images": len(ds.y_train), "test_images": len(ds.y_test),
        "data_checksum": ds.checksum(), "data_source": ds.source,
        "init_seed": init_seed(job.variant, job.seed), **env,
    }
    if tb_note:
        base["note"] = tb_note

    def write_summary(status: str, **extra) -> dict:
        rows = _read_history(history_path)
        rates = recorder.train_rates[1:] or recorder.train_rates  # skip tracing epoch
        s = {**base, **_history_stats(rows), "status": status,
             "images_per_second": round(statistics.median(rates), 1) if rates else None,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        results.atomic_write_json(summary_path, s)
        return s

    # keep the summary current after every epoch (reports show runs still going)
    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            write_summary("running")

    callbacks.append(_Progress())
    print(f"job {job.index}/{job.total}: {job.variant} seed {job.seed}, recipe {recipe.id}, "
          f"{'resuming after epoch ' + str(start) if start else 'starting'}; "
          f"{len(ds.y_train)} train / {len(ds.y_test)} test images; {env['device']}",
          flush=True)
    if start < recipe.epochs:
        model.fit(iter(stream), steps_per_epoch=stream.steps_per_epoch, epochs=recipe.epochs,
                  initial_epoch=start, validation_data=data.test_batches(ds, recipe.batch_size),
                  callbacks=callbacks, verbose=0, shuffle=False)
    else:  # trained to the end, then killed before saving: restore, then only save
        restore = Backup(backup_root)
        restore.set_model(model)
        restore.on_train_begin()

    rows = _read_history(history_path)
    if recorder.nan or len(rows) < recipe.epochs:
        why = (f"loss became NaN in epoch {len(rows)}/{recipe.epochs} (TerminateOnNaN stopped it)"
               if recorder.nan else f"training stopped after {len(rows)} of {recipe.epochs} epochs")
        write_summary("failed", error=why)
        print(f"FAILED: {why}", flush=True)
        return EXIT_FAILED

    h5 = run_dir / "model.h5"
    tmp = run_dir / ".model.tmp.h5"
    try:
        # legacy HDF5, optimizer included, as the blog saved it
        standard_copy(model, job.variant, recipe, ds.num_classes).save(str(tmp))
        os.replace(tmp, h5)
    except OSError as e:
        raise results.disk_error(e, h5) from None
    h5_bytes = h5.stat().st_size
    if not job.keep_model:
        h5.unlink()
    write_summary("done", h5_bytes=h5_bytes, model_file=h5.name if job.keep_model else None)
    shutil.rmtree(backup_root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ablation.training RUN_DIR", file=sys.stderr)
        return 2
    _watch_parent()
    # SIGTERM (from the runner on Ctrl-C, or Ray cancelling) unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run_dir = Path(argv[0])
    try:
        return train(run_dir)
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is backed up", flush=True)
        return EXIT_INTERRUPTED
    except AblationError as e:
        return _fail(run_dir, str(e))
    except Exception as e:  # OOM, a bug, a bad variant: the queue goes on
        traceback.print_exc()
        return _fail(run_dir, f"{type(e).__name__}: {e}".splitlines()[0][:500])


def _fail(run_dir: Path, reason: str) -> int:
    print(f"FAILED: {reason}", flush=True)
    path = run_dir / "summary.json"
    try:
        s = results.read_json(path) if path.exists() else {}
    except AblationError:
        s = {}
    s.update(status="failed", error=reason)
    with contextlib.suppress(AblationError):
        results.atomic_write_json(path, s)
    return EXIT_FAILED


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TF's data threads can stall it
