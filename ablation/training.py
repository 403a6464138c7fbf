"""Train one job (variant, seed, recipe) into its run folder, resumably: build, fit,
record.

Runs in the job's own process (`python -m ablation.job RUN_DIR`, which picks the
backend and checks the device first). What it is told and what it answers are
`ablation.protocol` (config.json, progress lines, the run record, the exit code).
The heavy lifting is Keras': `CSVLogger`, `LearningRateScheduler` (or a schedule in the
optimizer, where the lr changes within an epoch), `TerminateOnNaN`, `SwapEMAWeights`,
`TensorBoard`, and the callbacks of `ablation.callbacks` (an atomic `BackupAndRestore`,
progress, the validation split, the record after every epoch).

Exactly-once history: callbacks run in list order at each epoch end, so the CSV row
is flushed before the backup is taken; on resume, rows at or after the restored
epoch are dropped before training goes on. The data stream is a pure function of
(seed, epoch, batch), so a resumed job sees the same batches as an unbroken one.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from ablation import (
    backend,
    data,
    devices,
    environment,
    inference,
    models,
    parallel,
    registry,
    results,
    store,
    study,
)
from ablation.callbacks import (
    AtomicBackup,
    EpochMeter,
    FreezeBias,
    HeldOut,
    HoldForTest,
    Lookahead,
    SummaryKeeper,
    process_start,
    tensorboard_callback,
)
from ablation.protocol import (
    DIVERGED,
    HELD_MARKER,
    HOLD_ENV,
    Exit,
    JobConfig,
    JobState,
    RunRecord,
    number,
    trains_to,
)
from ablation.recipe import PRECISION_POLICIES, Recipe
from ablation.recipe.optimizer import compile_model, l2
from ablation.recipe.schedule import RecipeSchedule
from ablation.registry import Variant

WHITEN_IMAGES = 5000  # the training images a whitening layer is set from (airbench's)


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
                   input_shape: tuple[int, int, int] = (32, 32, 3),
                   on_device: tuple[Sequence[float], Sequence[float]] | None = None) -> Any:
    """The compiled model `run` and `bench` train: the registry graph on the fused
    layers of ablation.layers (same math, faster on TensorFlow), under the recipe's
    precision, optimizer, loss and schedule, compiled as `ablation.backend` chose for
    the device. A per-step schedule needs `steps_per_epoch`. `on_device` (the data's
    mean and std): the network behind `ondevice.DeviceAugment`, taking uint8 images
    and keys (`network` gives the network back)."""
    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[recipe.precision])
    schedule = None
    if per_step(recipe):
        if not steps_per_epoch:
            raise ValueError("a per-step schedule needs steps_per_epoch")
        schedule = RecipeSchedule(recipe, steps_per_epoch)
    model = models.build_model(variant, num_classes=num_classes, input_shape=input_shape,
                               weight_decay=l2(recipe), fast=True,
                               bias_decay=recipe.bias_decay, bn_bias_lr=recipe.bn_bias_lr)
    if on_device is not None:
        from ablation.data import ondevice

        model = ondevice.training_graph(model, *on_device, recipe.batch_size, recipe.augment,
                                        recipe.pad, recipe.mixup, recipe.cutmix)
    model = compile_model(model, recipe, keras, schedule, jit_compile=jit_compile,
                          steps_per_execution=steps_per_execution)
    _build_training_state(model, num_classes)
    return model


def network(model: Any) -> Any:
    """The network a training model trains (itself, unless augmentation runs on the
    device: then the model behind `DeviceAugment`)."""
    from ablation.data import ondevice

    return model.layers[-1] if isinstance(model, ondevice.AugmentedModel) else model


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
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    x = [keras.ops.zeros((1, *shape[1:]), dtype=i.dtype)
         for shape, i in zip(shapes, model.inputs, strict=True)]
    x = x[0] if len(x) == 1 else x
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
                                           input_shape=input_shape, weight_decay=l2(recipe),
                                           bias_decay=recipe.bias_decay,
                                           bn_bias_lr=recipe.bn_bias_lr),
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


def load_data(recipe: Recipe, data_dir: str | None, record: dict | None) -> data.Dataset:
    """The job's data as its recipe, and the runner's record of a path dataset, say."""
    return data.load(recipe.dataset, data_dir, recipe.train_limit, recipe.test_limit,
                     recipe.validation, recipe.image_hw, recipe.data_hash,
                     cache=Path(record["cache"]) if record and record.get("cache") else None,
                     stats=(record["mean"], record["std"]) if record else None,
                     crop_pct=recipe.crop_pct)


# --- the job: build, fit, record --------------------------------------------------------


def _split_stats(rows: list[dict], split: results.Split) -> tuple[dict, int | None]:
    """A split's numbers from history.csv rows (its final and best accuracy, its final
    loss, under the record's names) and the best epoch."""
    scored = [(v, int(r["epoch"])) for r in rows
              if (v := number(r.get(split.curve))) is not None]
    best = max(scored, default=(None, None))
    return {split.final: scored[-1][0] if scored else None, split.best: best[0],
            f"final_{split.name}_loss": number(rows[-1].get(split.loss)) if rows else None
            }, best[1]


def _history_stats(rows: list[dict]) -> dict:
    """The record's numbers from history.csv: how far, and how well (the test set's under
    0.5's `val_*` names too, for one version)."""
    test, best_epoch = _split_stats(rows, results.TEST)
    held = {}
    if rows and results.VALIDATION.curve in rows[0]:  # the held-out split, when there is one
        held, _ = _split_stats(rows, results.VALIDATION)
    return {
        **held, **test,
        "final_val_accuracy": test["final_test_accuracy"],
        "best_val_accuracy": test["best_test_accuracy"],
        "final_val_loss": test["final_test_loss"],
        "epochs_done": len(rows),
        "best_epoch": best_epoch,
        "final_accuracy": number(rows[-1].get("accuracy")) if rows else None,
        "final_loss": number(rows[-1].get("loss")) if rows else None,
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


@dataclass
class Job:
    """What `build` makes of a job's config: the network and what trains it."""

    cfg: JobConfig
    run_dir: Path
    variant: Variant
    recipe: Recipe  # the variant's own fields on top of the queued recipe
    ds: data.Dataset
    model: Any
    info: models.ModelInfo
    stream: data.TrainStream
    backup: AtomicBackup
    start: int  # epochs already trained (restored from the backup)
    start_step: int  # steps of the next epoch already trained (a snapshot inside it)
    execution: dict  # compile and loader settings, as the record keeps them
    pretrained: dict
    spread: parallel.Spread  # the devices it trains on

    @property
    def folder(self) -> store.RunFolder:
        return store.RunFolder(self.run_dir)

    @property
    def history_path(self) -> Path:
        return self.folder.file(store.HISTORY)

    @property
    def on_device(self) -> bool:
        """Whether the training step augments (`ablation.data.ondevice`)."""
        return self.execution["augment_ran"] == "device"

    @property
    def tests(self) -> bool:
        """Whether the test set is evaluated after each epoch: not in a tuning run, which
        chooses on its validation split and never reads the test set (unless its study
        asks: [tune] test = true)."""
        return self.cfg.phase != "tune" or bool((self.cfg.tuning or {}).get("test"))

    @property
    def target(self) -> int:
        """The epoch this process trains to (a rung of successive halving: the backup is
        kept, the schedule is the full run's; `protocol.trains_to`)."""
        return trains_to(self.cfg.until, self.recipe.epochs)


def build(cfg: JobConfig, run_dir: Path, on_gpu: bool = False) -> Job:
    """The job's variant, recipe and data; its compiled model (counts checked against the
    counting pass), restored from its backup when there is one (trusted whole, or the
    job fails), else from pretrained weights where the variant says so."""
    variant = _variant(cfg)
    # the variant's own fixed fields on top, but not over the fields its tuning sets
    recipe = variant.train_recipe(cfg.recipe, keep=(cfg.tuning or {}).get("fields", ()))
    ds = load_data(recipe, cfg.data_dir, cfg.data)
    steps = -(-len(ds.y_train) // recipe.batch_size)
    execution = {**backend.compile_settings(keras.backend.backend(), recipe.precision, on_gpu,
                                            steps),
                 "loader_threads": backend.loader_threads()}
    # an encoded pack's random-resized crop is cut from each file as it is decoded: on
    # the host, whatever the recipe says (the record says where it ran)
    on_device = recipe.augment_on == "device" and not (
        recipe.augment == "rrc" and getattr(ds.x_train, "crops_when_read", False))
    execution["augment_ran"] = "device" if on_device else "host"
    name = keras.backend.backend()
    parallel.check_batches(cfg.devices, recipe.batch_size, {
        "train": len(ds.y_train), "test": len(ds.y_test),
        **({"validation": len(ds.y_val)} if ds.y_val is not None else {})})
    spread = parallel.setup(cfg.devices, name, on_gpu)
    execution.update(spread.record)
    keras.utils.set_random_seed(init_seed(cfg.variant, cfg.seed))
    with spread.scope():
        model = spread.adopt(training_model(
            variant, recipe, ds.num_classes, execution["jit_compile"],
            execution["steps_per_execution"], steps, ds.input_shape,
            on_device=(ds.mean, ds.std)
            if on_device else None))
    info = models.count_params(variant, ds.num_classes, ds.input_shape)
    models.check_counts(model, info, cfg.variant)  # what the record says is the model's
    stream = data.TrainStream(ds, recipe.batch_size, cfg.seed, recipe.augment,
                              epochs=trains_to(cfg.until, recipe.epochs),
                              threads=execution["loader_threads"],
                              mixup=recipe.mixup, cutmix=recipe.cutmix, pad=recipe.pad,
                              flip=recipe.flip, on_device=on_device)
    lookahead = (Lookahead(recipe.lookahead, recipe.lookahead_every,
                           stream.steps_per_epoch * recipe.epochs,
                           stream.steps_per_epoch * recipe.lookahead_start),
                 ) if recipe.lookahead else ()
    backup = AtomicBackup(run_dir / "backup", {
        "variant": cfg.variant, "seed": cfg.seed, "recipe_id": cfg.recipe.id,
        "definition_hash": study.definition_hash(variant)}, keeps=lookahead,
        every_steps=cfg.snapshot_steps,
        every_seconds=cfg.snapshot_minutes * 60 if cfg.snapshot_minutes else None)
    # checked whole, or it fails
    start, start_step = backup.resume(model, stream.steps_per_epoch)
    pretrained = {}
    if start == start_step == 0 and variant.pretrained:
        pretrained = {"pretrained": variant.pretrained,
                      "pretrained_convs": models.load_pretrained(network(model),
                                                                 variant.pretrained)}
    if start == start_step == 0:  # airbench's whitening: from the first 5,000 training
        models.set_from_data(network(model), data.normalise(  # images, as seen
            ds.x_train[:WHITEN_IMAGES], ds.mean, ds.std))
    stream.start_epoch, stream.start_step = start, start_step
    return Job(cfg, run_dir, variant, recipe, ds, model, info, stream, backup, start,
               start_step, execution, pretrained, spread)


class RecordWriter:
    """The job's run record (summary.json): what does not change while it trains, and
    the numbers of the history so far, rewritten atomically after every epoch."""

    def __init__(self, job: Job, notes: list[str]):
        cfg, info, ds, recipe = job.cfg, job.info, job.ds, job.recipe
        self.job, self.folder = job, job.folder
        self.rates: list[float] = []  # training images/s per epoch (set by the EpochMeter)
        self.meter: EpochMeter | None = None  # its start-up, once it has begun an epoch
        self.process_start = process_start()
        # earlier attempts' time (a resumed run): device time spent is never forgotten
        earlier = self.folder.record_or_none()
        self.earlier = (earlier.wall_seconds or 0.0, earlier.startup_seconds or 0.0) \
            if earlier else (0.0, 0.0)
        self.fixed = {
            "variant": cfg.variant, "seed": cfg.seed, "dataset": recipe.dataset,
            "recipe": cfg.recipe, "recipe_id": cfg.recipe.id,
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
            "definition": study.definition(job.variant),
            "definition_hash": study.definition_hash(job.variant), "study": cfg.study,
            **({"phase": cfg.phase, "tuning": cfg.tuning} if cfg.phase else {}),
            **({"train_recipe": recipe.to_dict()} if recipe != cfg.recipe else {}),
            **_provenance(job.run_dir, cfg), **environment.describe(), **devices.recorded(),
            **job.execution, **job.pretrained, **({"note": "; ".join(notes)} if notes else {}),
        }

    def write(self, status: JobState = JobState.RUNNING, **extra: Any) -> RunRecord:
        rows = self.folder.history_rows()
        rates = self.rates[1:] or self.rates  # the first epoch traces the graph
        started = self.meter.started if self.meter is not None else None
        record = RunRecord(
            **self.fixed, **_history_stats(rows), status=status,
            wall_seconds=round(self.earlier[0] + time.time() - self.process_start, 2),
            startup_seconds=round(self.earlier[1] + (started or 0.0), 2),
            images_per_second=round(statistics.median(rates), 1) if rates else None,
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
        self.folder.write_record(record)
        return record


def evaluation(job: Job, split: str = "test") -> Any:
    """A split's evaluation batches for this job (`data.test_batches`), as its devices
    take them."""
    batches = data.test_batches(job.ds, job.recipe.batch_size, split=split,
                                on_device=job.on_device)
    return job.spread.feed(batches, lambda: (batches[i] for i in range(len(batches))),
                           batches[0])


def freeze_whitening_bias(model: Any, recipe: Recipe, name: str) -> list[FreezeBias]:
    """The recipe's `whiten_bias_epochs` for this network: its whitening layers' biases
    frozen after that many epochs; a network without one cannot honour it."""
    if recipe.whiten_bias_epochs is None:
        return []
    from ablation.layers import Whitening

    biases = [layer.bias for layer in network(model).layers if isinstance(layer, Whitening)]
    models.check_whitening(name, len(biases), recipe.whiten_bias_epochs)
    return [FreezeBias(biases, recipe.whiten_bias_epochs)]


def callbacks(job: Job, record: RecordWriter) -> tuple[list, EpochMeter]:
    """Keras' callbacks and ours, in the order the exactly-once history needs: the CSV
    row is flushed before the backup is taken."""
    recipe = job.recipe
    meter = EpochMeter(job.cfg, recipe, job.stream, job.start, record.rates, job.target)
    record.meter = meter
    # the test set (and the validation split) see the averaged weights; training, and
    # the backup, the raw ones
    swap = [keras.callbacks.SwapEMAWeights()] if recipe.ema else []
    out = [
        # Keras calls a schedule as (epoch, current lr): only the epoch is ours
        *([] if per_step(recipe) else [keras.callbacks.LearningRateScheduler(
            lambda epoch, _lr: recipe.learning_rate(epoch))]),
        *swap,
        *([HeldOut(evaluation(job, "validation"), swap)]
          if recipe.validation else []),
        # before the lookahead, which then averages the frozen value
        *freeze_whitening_bias(job.model, recipe, job.cfg.variant),
        *job.backup.keeps,  # the lookahead (its average is in the snapshots)
        meter,
        keras.callbacks.CSVLogger(str(job.history_path), append=True),
        keras.callbacks.TerminateOnNaN(),
        job.backup,
    ]
    return out, meter


def _resuming(job: Job) -> str:
    if job.start_step:
        return (f"resuming inside epoch {job.start + 1} after step {job.start_step} of "
                f"{job.stream.steps_per_epoch}")
    return f"resuming after epoch {job.start}" if job.start else "starting"


class _RawWeights(keras.callbacks.Callback):
    """The trained (not averaged) weights at the last epoch's end, put back after `fit`
    gave the model the average."""

    def on_epoch_end(self, epoch, logs=None):
        self.values = [keras.ops.copy(v.value) for v in self.model.trainable_variables]

    def restore(self) -> None:
        for v, value in zip(self.model.trainable_variables, self.values, strict=True):
            v.assign(value)


def fit(job: Job, extra: list) -> None:
    """Train from the restored epoch to the job's stop (a job killed after its last epoch
    but before saving trains nothing more). Resumed inside an epoch, the rest of that
    epoch is one `fit` (its steps only), the epochs after it another: Keras' `fit`
    starts epochs at their first step."""
    recipe, stream, spe = job.recipe, job.stream, job.stream.steps_per_epoch
    parts = [(job.start, job.start + 1, job.start_step), (job.start + 1, job.target, 0)] \
        if job.start_step else [(job.start, job.target, 0)]
    for first, last, step in parts:
        if first >= last or job.model.stop_training:
            continue
        # `fit` ends by giving the model an EMA's average: not between the two parts
        keep = [_RawWeights()] if recipe.ema and last < job.target else []
        stream.start_epoch, stream.epochs, stream.start_step = first, last, step
        job.model.fit(job.spread.feed(iter(stream), lambda: iter(stream),
                                      stream.batch(first, step)),
                      steps_per_epoch=spe - step, epochs=last, initial_epoch=first,
                      validation_data=evaluation(job) if job.tests else None,
                      callbacks=extra + keep, verbose=0, shuffle=False)
        for k in keep:
            k.restore()
    if job.start < job.target:
        return
    if recipe.ema and job.target == recipe.epochs:  # what fit does at its end: the
        job.model.optimizer.finalize_variable_values(  # averaged weights become the model's
            job.model.trainable_variables)


def tta_accuracy(job: Job) -> float:
    """The test set's accuracy under the recipe's test-time augmentation: each view's
    log-probabilities weighted and summed (the argmax of averaged logits, as airbench
    averages them: a view's log-softmax is its logits less one number per image)."""
    import numpy as np

    ds, batch, net = job.ds, max(job.recipe.batch_size, 500), network(job.model)
    score = np.zeros((len(ds.y_test), ds.num_classes))
    for start in range(0, len(ds.y_test), batch):
        x = data.normalise(ds.x_test[start:start + batch], ds.mean, ds.std)
        for weight, view in data.tta_views(x, job.recipe.tta):
            p = net.predict_on_batch(np.ascontiguousarray(view))
            score[start:start + len(x)] += weight * np.log(np.maximum(
                keras.ops.convert_to_numpy(p).astype(np.float64), 1e-30))
    return float(np.mean(score.argmax(1) == ds.y_test))


def save(job: Job) -> int:
    """The trained model as plain Keras layers in legacy HDF5, optimizer included, as
    the blog saved it (deleted again with --no-keep-model, once measured). Its bytes."""
    h5, tmp = job.run_dir / "model.h5", job.run_dir / ".model.tmp.h5"
    try:
        standard_copy(job.model, job.variant, job.recipe, job.ds.num_classes,
                      job.ds.input_shape).save(str(tmp))
        os.replace(tmp, h5)
    except OSError as e:
        raise results.disk_error(e, h5) from e
    size = h5.stat().st_size
    if not job.cfg.keep_model:
        h5.unlink()
    return size


def train(run_dir: Path, on_gpu: bool = False) -> int:
    """Train the job described by run_dir/config.json (on a GPU when `on_gpu`: the job's
    process checked that it sees the one it was given): build, fit, record. Returns the
    exit code."""
    folder = store.RunFolder(run_dir)
    cfg = folder.config()
    if folder.finished():
        print(f"{cfg.variant} seed {cfg.seed}: already done", flush=True)
        return Exit.DONE
    folder.file(HELD_MARKER).unlink(missing_ok=True)

    damaged = folder.damaged()
    job = build(cfg, folder.path, on_gpu)
    if damaged and job.start == 0 and _recorded(job):
        return _rebuild(job, damaged)
    folder.keep_epochs(job.start)
    board, tb_note = tensorboard_callback(run_dir)
    notes = [n for n in (backend.note, tb_note) if n]
    for n in notes:
        print(n, flush=True)
    record = RecordWriter(job, notes)
    extra, meter = callbacks(job, record)
    extra += [*([board] if board is not None else []), SummaryKeeper(record.write)]
    hold = os.environ.get(HOLD_ENV)
    if hold:
        extra.append(HoldForTest(run_dir, hold, job.backup))
    print(f"job {cfg.index}/{cfg.total}: {cfg.variant} seed {cfg.seed}, recipe {cfg.recipe.id}, "
          f"{_resuming(job)}; "
          f"{len(job.ds.y_train)} train / {len(job.ds.y_test)} test images; "
          f"{record.fixed['device']}; {keras.backend.backend()}, matmul "
          f"{job.execution['matmul_precision']}, {job.execution['steps_per_execution']} "
          "step(s) per execution", flush=True)
    fit(job, extra)

    epochs = len(folder.history_rows())
    if meter.nan or epochs < job.target:
        why = (f"{DIVERGED}the {meter.nan} became NaN in epoch {epochs}/"
               f"{job.recipe.epochs}" + (" (TerminateOnNaN stopped it)"
                                         if meter.nan == "loss" else "")
               if meter.nan
               else f"training stopped after {epochs} of {job.recipe.epochs} epochs")
        record.write(JobState.FAILED, error=why)
        print(f"FAILED: {why}", flush=True)
        return Exit.FAILED
    if job.target < job.recipe.epochs:  # a rung: the snapshot stays, to go on if promoted
        record.write(JobState.PAUSED)
        print(f"paused after epoch {job.target} of {job.recipe.epochs} (a rung of successive "
              "halving)", flush=True)
        return Exit.DONE
    extra = {}
    if job.recipe.tta != "none" and job.tests:  # a tuning run never reads the test set
        extra["final_tta_accuracy"] = tta_accuracy(job)
        print(f"test accuracy with test-time augmentation ({job.recipe.tta}): "
              f"{extra['final_tta_accuracy']:.4f}", flush=True)
    size = save(job)
    done = record.write(JobState.DONE, h5_bytes=size,
                        model_file="model.h5" if cfg.keep_model else None, **extra)
    shutil.rmtree(job.backup.root, ignore_errors=True)
    if cfg.inference and job.tests:  # a tuning run's network is timed in the comparison
        try:
            time_inference(job, done)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the run is recorded done already
            print("inference: not timed (interrupted); the run is done", flush=True)
    return Exit.DONE


def time_inference(job: Job, done: RunRecord) -> None:
    """The trained network's inference speed (`ablation.inference`), added to the
    finished run's record; skipped where a run of the same network, precision and device
    has it. The run is done before this starts: a failure here costs only the timing."""
    before = inference.measured_before(job.run_dir, done)
    if before is not None:
        print(f"inference: timed by {before.name} (the same network, precision and "
              "device)", flush=True)
        return
    images = data.normalise(job.ds.x_test[:inference.BATCH], job.ds.mean, job.ds.std)
    print(f"inference: timing {job.cfg.variant} at batch {inference.BATCH} and 1 ...",
          flush=True)
    try:
        got = inference.measure(network(job.model).predict_on_batch, images)
    except Exception as e:  # the run is recorded; its timing is not worth failing it
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"inference: not timed ({type(e).__name__}: {first})", flush=True)
        return
    job.folder.write_record(done.model_copy(update=got))
    print(f"inference: {got['infer_images_per_second']:,.0f} images/s at batch "
          f"{got['infer_batch']} (repeats {got['infer_images_per_second_low']:,.0f}-"
          f"{got['infer_images_per_second_high']:,.0f}); one image "
          f"{got['infer_latency_ms']:.2f} ms median, {got['infer_latency_p90_ms']:.2f} ms "
          "90th percentile", flush=True)


def _recorded(job: Job) -> bool:
    """Whether the run folder holds a finished run's files without its record: every
    epoch in history.csv, the model saved (or not kept by choice) and no snapshot."""
    rows = job.folder.history_rows()
    return len(rows) >= job.target == job.recipe.epochs and (
        (job.run_dir / "model.h5").is_file() or not job.cfg.keep_model)


def _rebuild(job: Job, why: str) -> int:
    """A finished run whose summary.json was damaged: its record written again from its
    history, its model file and its config (nothing is trained)."""
    rows = job.folder.history_rows()
    note = f"summary.json rebuilt from history.csv and the saved model ({why})"
    record = RecordWriter(job, [note])
    record.rates.extend(v for r in rows if (v := number(r.get("images_per_second"))))
    h5 = job.run_dir / "model.h5"
    record.write(JobState.DONE, h5_bytes=h5.stat().st_size if h5.is_file() else None,
                 model_file="model.h5" if h5.is_file() else None)
    print(note, flush=True)
    return Exit.DONE
