"""Features that train end to end, each in one tiny run: mixed precision (bf16, and fp16
with loss scaling) with --no-keep-model, CIFAR-100 (on generated files: no real
CIFAR-100 here), and a model that learns at all (a few hundred images overfit)."""

from __future__ import annotations

import json
import pickle

import numpy as np
from conftest import run_cli, run_dirs

SMALL = ["--train-limit", "128", "--test-limit", "64", "--batch-size", "32"]


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


# tiny8 (conftest.tiny_study: resnet32_e with one unit per stage), as `ablation list
# --study tiny` counts it; test_ops.py holds the same network against plain Keras
TINY8_PARAMS = 78_666


def test_bf16_without_keeping_the_model(tmp_path, cifar_dir, tiny):
    res = tmp_path / "results"
    r = run_cli("run", "tiny8", *tiny, "--precision", "bf16", "--no-keep-model", "--epochs",
                "1", *SMALL, "--data-dir", str(cifar_dir), "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    run = run_dirs(res)[0]
    s = summary(run)
    assert s["recipe"]["precision"] == "bf16" and "-bf16-" in s["recipe_id"]
    assert s["status"] == "done" and s["epochs_done"] == 1
    assert np.isfinite(s["final_loss"]) and s["final_val_accuracy"] is not None
    # saved to be measured, then deleted: float32 weights and momenta (4 + 4 bytes a
    # parameter; the moving statistics have no momenta), plus HDF5's layer metadata
    assert not (run / "model.h5").exists() and s["model_file"] is None
    assert s["params_total"] == TINY8_PARAMS
    assert 8 * s["params_trainable"] < s["h5_bytes"] < 8 * TINY8_PARAMS + 250_000


def _fake_cifar100(root) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 200), ("test", 100)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) % 100 for v in range(n)],  # every class
                 b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar100_in_fp16_trains_and_saves_a_100_class_model(tmp_path, tiny):
    import keras

    _fake_cifar100(tmp_path / "data")
    res = tmp_path / "results"
    r = run_cli("run", "tiny8", *tiny, "--dataset", "cifar100", "--precision", "fp16",
                "--epochs", "1", "--train-limit", "50", "--test-limit", "50",
                "--batch-size", "25", "--data-dir", str(tmp_path / "data"),
                "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    run = run_dirs(res)[0]
    s = summary(run)
    assert s["dataset"] == "cifar100" and s["recipe"]["precision"] == "fp16"
    assert s["params_total"] == TINY8_PARAMS + 64 * 90 + 90  # a 100-way head
    model = keras.models.load_model(str(run / "model.h5"), compile=False)
    assert model.output_shape == (None, 100) and model.count_params() == s["params_total"]


def test_a_few_hundred_images_are_overfit(cifar_dir):
    """The training path `ablation run` uses (fused layers, the recipe's SGD) on 200
    real images without augmentation or weight decay: the loss falls well below its
    start and the training accuracy far above chance. An accuracy key that merely exists
    proves nothing."""
    import keras

    from ablation import data, training
    from ablation.recipe import Recipe
    from ablation.registry import Variant

    keras.utils.set_random_seed(0)
    ds = data.load("cifar10", cifar_dir, train_limit=200, test_limit=10)
    recipe = Recipe(epochs=16, batch_size=32, lr=0.05, weight_decay=0.0)
    # resnet32_e's unit and head, one unit per stage: the same training path, a third
    # of the time (the overfit needs capacity, not depth)
    tiny8 = Variant.from_dict({"name": "tiny8", "label": "tiny8", "unit": "e",
                               "stages": [[1, 16], [1, 32], [1, 64]]})
    model = training.training_model(tiny8, recipe, ds.num_classes)
    stream = data.TrainStream(ds, recipe.batch_size, seed=0, augment="none",
                              epochs=recipe.epochs)
    h = model.fit(iter(stream), steps_per_epoch=stream.steps_per_epoch, epochs=recipe.epochs,
                  verbose=0).history
    print("train loss by epoch:", [round(v, 3) for v in h["loss"]])
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["accuracy"][-1] > 0.5  # chance: 0.1
