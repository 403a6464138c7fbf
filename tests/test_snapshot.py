"""A resume brings back exactly the state that was saved, or refuses: the snapshot
(weights, optimizer step and momenta, epoch, job identity) restored into a freshly built
model bit for bit, and every kind of damage ending the job in one line, files kept.
No CIFAR-10 needed: a one-block-per-stage ResNet on generated images."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

from ablation import callbacks, data, registry, training
from ablation.recipe import Recipe
from ablation.registry import Variant

TINY_NET = Variant.from_dict({**registry.get("resnet32_e").to_dict(), "name": "snap_e",
                              "stages": [[1, 16], [1, 32], [1, 64]]})
RECIPE = Recipe(epochs=3, batch_size=8, train_limit=16, test_limit=8)
# a modern recipe: AdamW (moments), a cosine schedule after a linear warm-up (evaluated
# at the optimizer's step), EMA (averaged weights in the optimizer), mixup, smoothing
MODERN = RECIPE.replace(optimizer="adamw", lr=0.002, weight_decay=0.05, schedule="cosine",
                        warmup="linear", warmup_epochs=1, warmup_lr=1e-4,
                        label_smoothing=0.1, mixup=0.2, ema=0.999)
STEPS = 2  # 16 images, batch 8
IDENTITY = {"variant": "snap_e", "seed": 0, "recipe_id": RECIPE.id, "definition_hash": "x"}


def fresh(seed: int, recipe: Recipe = RECIPE):
    keras.utils.set_random_seed(seed)
    return training.training_model(TINY_NET, recipe, 10, steps_per_epoch=STEPS)


def state(model) -> list[np.ndarray]:
    return ([np.asarray(w) for w in model.get_weights()]
            + [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])


def _snapshot(root, recipe: Recipe):
    """One epoch of training (two steps), snapshotted."""
    model = fresh(0, recipe)
    stream = data.TrainStream(data.synthetic(16, 8), 8, seed=0, epochs=1,
                              mixup=recipe.mixup, cutmix=recipe.cutmix)
    model.fit(iter(stream), steps_per_epoch=STEPS, epochs=1, verbose=0)
    backup = callbacks.AtomicBackup(root, IDENTITY)
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 1.0})
    return root, state(model)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """The blog's recipe: two SGD steps with momentum, snapshotted."""
    return _snapshot(tmp_path_factory.mktemp("snap") / "backup", RECIPE)


@pytest.mark.parametrize("recipe", [RECIPE, MODERN], ids=["blog", "adamw-cosine-ema"])
def test_resume_restores_weights_optimizer_step_and_momenta_bit_for_bit(
        recipe, snapshot, tmp_path):
    root, saved = snapshot if recipe is RECIPE else _snapshot(tmp_path / "backup", recipe)
    model = fresh(1, recipe)  # other initial weights, an untouched optimizer
    before = state(model)
    assert not all(np.array_equal(a, b) for a, b in zip(before, saved, strict=True))
    assert callbacks.AtomicBackup(root, IDENTITY).resume(model, STEPS) == (1, 0)
    after = state(model)
    assert len(after) == len(saved)
    for a, b in zip(after, saved, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == STEPS
    slots = ("momentum", "velocity", "average") if recipe.ema else ("momentum",)
    for slot in slots:  # every kind of optimizer state came back, and is not all zeros
        held = [v for v in model.optimizer.variables if v.path.endswith(slot)]
        assert held and any(np.abs(keras.ops.convert_to_numpy(m)).sum() > 0 for m in held)
    # the schedule resumes where it stopped: it reads the restored step
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert lr == pytest.approx(recipe.lr_at(STEPS, STEPS), rel=1e-6)


def test_a_load_that_silently_does_nothing_is_caught(snapshot, monkeypatch):
    root, _ = snapshot
    model = fresh(1)
    monkeypatch.setattr(type(model), "load_weights", lambda self, path: None)
    with pytest.raises(callbacks.DamagedSnapshot, match="optimizer state is at step 0"):
        callbacks.AtomicBackup(root, IDENTITY).resume(model, STEPS)


def test_no_snapshot_means_epoch_zero(tmp_path):
    backup = callbacks.AtomicBackup(tmp_path / "backup", IDENTITY)
    assert backup.resume(fresh(1), STEPS) == (0, 0)


def _latest(root):
    return root / (root / "LATEST").read_text().strip()


DAMAGE = {
    "missing weights": (lambda root: (_latest(root) / "latest.weights.h5").unlink(),
                        "no latest.weights.h5"),
    "damaged weights": (lambda root: (_latest(root) / "latest.weights.h5").write_bytes(
        b"\x89HDF\r\n\x1a\n truncated"), "cannot load"),
    "missing metadata": (lambda root: (_latest(root) / "training_metadata.json").unlink(),
                         "no training_metadata.json"),
    "damaged metadata": (lambda root: (_latest(root) / "training_metadata.json").write_text(
        '{"epoch": '), "unreadable training_metadata.json"),
    "metadata without an epoch": (lambda root: (
        _latest(root) / "training_metadata.json").write_text('{"epoch": "one"}'),
        "no valid epoch"),
    "LATEST pointing nowhere": (lambda root: (root / "LATEST").write_text("epoch-0099\n"),
                                "LATEST points to epoch-0099, which is not there"),
    "another job's snapshot": (lambda root: (_latest(root) / "training_metadata.json")
                               .write_text('{"epoch": 1, "variant": "resnet50"}'),
                               "belongs to another job (variant 'resnet50'"),
    "a later epoch's label on these weights": (lambda root: (
        _latest(root) / "training_metadata.json").write_text('{"epoch": 2}'),
        "optimizer state is at step 2, not at the end of epoch 2"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_kind_of_damage_fails_in_one_line_and_keeps_the_files(snapshot, tmp_path,
                                                                     kind):
    root = tmp_path / "backup"
    shutil.copytree(snapshot[0], root)
    damage, says = DAMAGE[kind]
    damage(root)
    files = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(callbacks.DamagedSnapshot) as err:
        callbacks.AtomicBackup(root, IDENTITY).resume(fresh(1), STEPS)
    message = str(err.value)
    assert says in message and "\n" not in message
    assert "Delete" in message and "--retry-failed" in message
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == files


LOOKAHEAD = RECIPE.replace(lookahead=0.95, lookahead_every=3)


def _train(model, epochs, root, start=0, every=3, last=3 * STEPS, start_step=0):
    """Train (epochs start..epochs) with the lookahead, snapshotting each epoch."""
    look = callbacks.Lookahead(0.95, every, last, start_step)
    backup = callbacks.AtomicBackup(root, IDENTITY, keeps=(look,))
    if start:
        assert backup.resume(model, STEPS) == (start, 0)
    stream = data.TrainStream(data.synthetic(16, 8), 8, seed=0, epochs=epochs)
    stream.start_epoch = start
    model.fit(iter(stream), steps_per_epoch=STEPS, epochs=epochs, initial_epoch=start,
              verbose=0, callbacks=[look, backup])
    return look


@pytest.mark.parametrize("start_epochs", [0, 1])
def test_the_lookahead_follows_airbenchs_rule(tmp_path, start_epochs):
    """airbench94.py's rule, replayed in numpy from the weights the training steps
    produced: from epoch `start` on, at every 3rd step the first takes a copy, each later
    one moves ema <- ema + (1 - d)(w - ema), w <- ema, d = decay^every · (step / last)^3;
    at each epoch's last step, before the test set sees it, the model takes the average."""
    model = fresh(0, LOOKAHEAD)
    floats = [v for v in model.weights if "float" in str(v.dtype)]

    def now():
        return [np.array(keras.ops.convert_to_numpy(v.value)) for v in floats]

    seen, tested = [], []  # each step's weights before the lookahead; each epoch's tested

    class Before(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(now())

    class Tested(keras.callbacks.Callback):  # what Keras evaluates: after the last batch
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == STEPS:
                tested.append(now())

    look = callbacks.Lookahead(0.95, 3, 3 * STEPS, start_step=start_epochs * STEPS)
    stream = data.TrainStream(data.synthetic(16, 8), 8, seed=0, epochs=3)
    model.fit(iter(stream), steps_per_epoch=STEPS, epochs=3, verbose=0,
              callbacks=[Before(), look, Tested()])
    assert len(seen) == 6 and len(tested) == 3
    ema, want = None, []
    for step in range(1, 7):  # seen[step - 1]: the weights the optimizer left at that step
        if step % 3 == 0 and step > start_epochs * STEPS:
            d = 0.95 ** 3 * (step / 6) ** 3
            ema = seen[step - 1] if ema is None else [
                e + (1 - d) * (w - e) for e, w in zip(ema, seen[step - 1], strict=True)]
        if step % STEPS == 0:
            want.append(seen[step - 1] if ema is None else ema)
    for got, w in zip(tested, want, strict=True):
        for a, b in zip(got, w, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(now(), want[-1], strict=True):  # the model ends as the average
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # epoch 2 tested the copy taken at step 3, not its own last step's weights
    assert any(not np.allclose(w, e) for w, e in zip(seen[3], tested[1], strict=True))
    if start_epochs:  # nothing averaged in the epochs before the start
        for a, b in zip(tested[0], seen[1], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("start_step", [0, 2])
def test_a_resumed_lookahead_goes_on_as_if_never_stopped(tmp_path, start_step):
    """Killed after epoch 1 (mid-cycle: 2 steps of every 3; the average taken at the
    start, or not yet), resumed from the snapshot: the same weights as the run that
    never stopped; a snapshot without its average's file is damaged."""
    whole = fresh(0, LOOKAHEAD)
    _train(whole, 3, tmp_path / "whole", start_step=start_step)
    part = fresh(0, LOOKAHEAD)
    _train(part, 1, tmp_path / "part", start_step=start_step)
    resumed = fresh(1, LOOKAHEAD)
    _train(resumed, 3, tmp_path / "part", start=1, start_step=start_step)
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    (_latest(tmp_path / "part") / callbacks.Lookahead.FILE).unlink()
    with pytest.raises(callbacks.DamagedSnapshot, match=r"no lookahead\.npz"):
        callbacks.AtomicBackup(tmp_path / "part", IDENTITY,
                               keeps=(callbacks.Lookahead(0.95, 3, 6),)).resume(fresh(1), STEPS)


def test_the_whitening_bias_trains_then_stays_frozen():
    """airbench's step 4: the whitening bias moves in the epochs before the freeze; from
    then on every step's forward pass, and the model at the end, hold its value at that
    epoch's start (SGD's momentum would otherwise carry it on). A network without a
    whitening layer cannot freeze one: one line."""
    from ablation.errors import AblationError
    from ablation.layers import Whitening

    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((32, 32, 3))  # data.synthetic's images
    white = Whitening(2)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("gelu")(white(x)))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(keras.optimizers.SGD(0.5, momentum=0.85, nesterov=True),
                  "categorical_crossentropy")
    white.set_from(np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype("float32"))
    recipe = RECIPE.replace(whiten_bias_epochs=1)
    (freeze,) = training.freeze_whitening_bias(model, recipe, "w")
    biases = []

    class Spy(keras.callbacks.Callback):  # after the freeze: what the next step sees
        def on_train_batch_end(self, batch, logs=None):
            biases.append(np.array(keras.ops.convert_to_numpy(white.bias.value)))

    stream = data.TrainStream(data.synthetic(16, 8), 8, seed=0, epochs=3)
    model.fit(iter(stream), steps_per_epoch=STEPS, epochs=3, verbose=0,
              callbacks=[freeze, Spy()])
    assert not np.allclose(biases[0], biases[1])  # it trained in epoch 1
    for b in biases[2:]:  # and held epoch 1's last value through epochs 2 and 3
        np.testing.assert_array_equal(b, biases[1])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(white.bias.value), biases[1])
    assert "the whitening bias frozen after 1 epoch(s)" in recipe.describe()
    with pytest.raises(AblationError, match="whiten-bias-epochs: snap_e has no whitening "):
        training.freeze_whitening_bias(fresh(0), recipe, "snap_e")
    with pytest.raises(AblationError, match="whiten-bias-epochs 3 freezes nothing"):
        RECIPE.replace(whiten_bias_epochs=3)


def test_lookahead_and_ema_are_one_or_the_other():
    from ablation.errors import AblationError

    with pytest.raises(AblationError, match="ema and lookahead both average the weights"):
        RECIPE.replace(lookahead=0.95, ema=0.99)
    assert LOOKAHEAD.id != RECIPE.id and "lookahead 0.95 every 3 steps" in LOOKAHEAD.describe()
    later = LOOKAHEAD.replace(lookahead_start=1)
    assert later.id != LOOKAHEAD.id and "every 3 steps from epoch 2" in later.describe()
    with pytest.raises(AblationError, match="lookahead-start is when the lookahead starts"):
        RECIPE.replace(lookahead_start=1)
    with pytest.raises(AblationError, match="lookahead-start 3 leaves no epoch of lookahead"):
        LOOKAHEAD.replace(lookahead_start=3)


def test_tensorboard_scalars_without_tensorflow_survive_a_second_fit(tmp_path):
    """A job resumed inside an epoch trains in two `fit` calls: the TensorBoard writer
    of a JAX job (EpochScalars) opens again for the second."""
    cb = callbacks.EpochScalars(tmp_path)
    for epoch in (0, 1):
        cb.on_train_begin()
        cb.on_epoch_end(epoch, {"loss": 1.0 - epoch / 4, "val_loss": 2.0})
        cb.on_train_end()
    assert {e.parent.name for e in tmp_path.rglob("events.out.tfevents.*")} == {
        "train", "validation"}


def test_a_snapshot_every_few_minutes_is_taken_inside_the_epoch(tmp_path, monkeypatch):
    """--snapshot-minutes: the first step after that long since the last snapshot takes
    one inside the epoch (its step and running metrics with it); the epoch's own end
    still takes its own. A clock moved by hand, a minute per step: no real waiting."""
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock[0] += 60.0

    model = fresh(0)
    stream = data.TrainStream(data.synthetic(32, 8), 8, seed=0, epochs=1)  # 4 steps
    backup = callbacks.AtomicBackup(tmp_path / "backup", IDENTITY, every_seconds=150)
    taken = []

    class Seen(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            taken.append(backup.taken)

    model.fit(iter(stream), steps_per_epoch=4, epochs=1, verbose=0,
              callbacks=[Tick(), backup, Seen()])
    # 60 s a step: due after step 3 (180 s since the start), not at step 4 (the end's)
    assert taken == [None, None, (0, 3), (0, 3)] and backup.taken == (1, 0)
    folder, epoch, step = callbacks.AtomicBackup(tmp_path / "backup", IDENTITY).snapshot()
    assert (folder.name, epoch, step) == ("epoch-0001", 1, 0)
