"""airbench's parts (Jordan 2024), each against its definition: the network's counts
against the same network in plain Keras and the original's, whitening from patches,
the Dirac init, the batch-norm offsets' learning-rate factor, reflection translation,
the alternating flip and test-time augmentation. Nothing here trains."""

from __future__ import annotations

import numpy as np
import pytest

from ablation import data, models, registry
from ablation.study import load_study


@pytest.fixture(scope="module")
def study():
    return load_study("airbench2024")


def plain_keras_airbench():
    """airbench94.py's make_net, written directly in Keras (no ablation code): a 2x2
    `valid` conv into 24 channels (bias), three groups of conv-pool-BN-GELU-conv-BN-GELU
    (64, 256, 256; no conv bias, BN without scale), a 3x3 max-pool, a dense layer
    without bias."""
    import keras

    x = inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(24, 2, padding="valid")(x)
    x = keras.layers.Activation("gelu")(x)
    for width in (64, 256, 256):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.BatchNormalization(scale=False)(x)
        x = keras.layers.Activation("gelu")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(scale=False)(x)
        x = keras.layers.Activation("gelu")(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(3)(x))
    return keras.Model(inputs, keras.layers.Dense(10, use_bias=False)(x))


def test_the_network_counts_as_plain_keras_and_as_the_original(study):
    """1,973,944 weights: plain Keras's; without the 2,304 moving statistics of its
    batch norms, 1,971,640, the count the ablation README gives (its PyTorch network
    holds a frozen BN scale instead: 1,972,792 `parameters()`, its code's count)."""
    import keras

    info = models.count_params("airbench")
    ref = plain_keras_airbench()
    total = sum(int(np.prod(w.shape)) for w in ref.weights)
    assert info.params_total == total == 1_973_944
    moving = sum(int(np.prod(w.shape)) for w in ref.weights if "moving" in w.path)
    assert moving == 2_304 and total - moving == 1_971_640
    # airbench94.py's parameters(): convs and the linear layer, BN weight and bias each
    convs = 24 * 3 * 2 * 2 + 24 + 9 * (24 * 64 + 64 * 64 + 64 * 256 + 3 * 256 * 256)
    assert convs + 256 * 10 + 2 * (2 * 64 + 4 * 256) == 1_972_792
    # ours: the whitening filters are not trained (non-trainable, as requires_grad=False)
    assert info.params_non_trainable == 288 + 2_304
    built = models.build_model("airbench")
    assert keras.ops.shape(built.output)[-1] == 10
    assert models.count_params("airbench_0_baseline").params_total == total + 24 * 3


def test_whitening_makes_patches_white_and_dirac_passes_channels_through():
    import keras

    from ablation.layers import Whitening

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(3, 3))
    x = (rng.normal(size=(200, 8, 8, 3)) @ mix).astype(np.float32)  # correlated channels
    layer = Whitening(2, eps=1e-9)
    y = layer(keras.ops.convert_to_tensor(x))
    layer.set_from(x)
    y = keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(x)))
    half = y[..., :12].reshape(-1, 12)  # the filters; the other half are their negatives
    second = half.T @ half / len(half)  # whitened: the identity (second moments)
    assert np.allclose(second, np.eye(12), atol=1e-3)
    # the negated filters' outputs, to float32 rounding (a conv may sum each output
    # channel in its own order: seen with TensorFlow 2.21 on this CPU)
    np.testing.assert_allclose(y[..., 12:], -y[..., :12], rtol=1e-5, atol=1e-5)
    # Dirac: filter o < C_in passes input channel o through (3x3, same padding)
    from ablation.models.graph import Builder
    from ablation.models.ops import _dirac

    conv = keras.layers.Conv2D(5, 3, padding="same", use_bias=False)
    conv(keras.ops.zeros((1, 6, 6, 3)))
    _dirac(conv)
    z = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    out = keras.ops.convert_to_numpy(conv(z))
    assert np.allclose(out[..., :3], z, atol=1e-6)
    assert not np.allclose(out[..., 3:], 0)
    assert Builder  # the builder applies it after the layer is built (ops.conv init="dirac")


def test_batch_norm_offsets_step_at_the_learning_rate_factor():
    """ScaledBias stores b / s: SGD's step on it is s² times larger in the offset's units
    (s² = bn_bias_lr), its L2 decays the offset as any weight's."""
    import keras

    from ablation.layers import ScaledBias

    layer = ScaledBias(8.0)
    x = keras.ops.zeros((4, 3))
    layer(x)
    grads = keras.ops.ones((3,)) * 8.0  # d(sum of outputs)/d stored = s
    opt = keras.optimizers.SGD(0.01)
    opt.apply([grads], [layer.bias])
    moved = keras.ops.convert_to_numpy(layer(x))[0]
    assert np.allclose(moved, -0.01 * 64, rtol=1e-5)  # 64x the plain step of 0.01


def test_reflection_translation_the_alternating_flip_and_tta_views():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
    out = data.augment_crop(x, np.random.default_rng(0), pad=2, flip=np.zeros(64, bool),
                            mode="reflect")
    # every image is a shift of -2..2 of its reflection-padded self
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i in range(64):
        assert any(np.array_equal(out[i], padded[i, a:a + 8, b:b + 8])
                   for a in range(5) for b in range(5))
    base = np.random.default_rng(0).random(100) < 0.5
    even, odd = data.augment.flips(0, "alternate", base), data.augment.flips(1, "alternate",
                                                                             base)
    assert np.array_equal(even, ~odd) and np.array_equal(data.augment.flips(2, "alternate",
                                                                            base), even)
    assert 30 < even.sum() < 70  # each image's start: even odds
    views = data.tta_views(x, "flip_translate")
    assert len(views) == 6 and sum(w for w, _ in views) == pytest.approx(1.0)
    up_left = views[2][1]  # translated one pixel: x[i - 1, j - 1], the border reflected
    assert np.array_equal(up_left[:, 1:, 1:], x[:, :-1, :-1])
    assert [w for w, _ in data.tta_views(x, "flip")] == [0.5, 0.5]


def test_the_study_and_its_recipe(study):
    recipe = study.recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.flip, recipe.tta) == (
        10, 1000, "alternate", "flip_translate")
    # lr and L2 from airbench's per-1024, summed-loss form (docs in the study file)
    k = 1024 * (1 + 1 / (1 - 0.85))
    assert recipe.lr == pytest.approx(10 * 1000 / k, rel=1e-6)
    assert recipe.warmup_lr == pytest.approx(0.2 * recipe.lr, rel=1e-6)
    assert 2 * recipe.weight_decay == pytest.approx(0.015 * 1000 / k / (10 / k) / 1000)
    # the lr: 0.2x at step 0, 1x at step 100 (20 % of 500), 0 at the end
    assert recipe.lr_at(0, 50) == pytest.approx(0.2 * recipe.lr)
    assert recipe.lr_at(100, 50) == pytest.approx(recipe.lr)
    assert recipe.lr_at(300, 50) == pytest.approx(0.5 * recipe.lr)
    assert len(study.variant_names) == 9
    # each step on the one before (a variant's recipe replaces its base's: each lists all)
    steps = {n: registry.get(n).train_recipe(recipe) for n in study.variant_names}
    assert [(steps[n].flip, steps[n].tta, steps[n].bn_bias_lr, steps[n].whiten_bias_epochs,
             steps[n].lookahead, steps[n].lookahead_start) for n in (
        "airbench_3_scalebias", "airbench_4_freeze", "airbench_5_lookahead", "airbench_6_tta",
        "airbench_7_flip", "airbench")] == [
            ("random", "flip", 64, None, 0, 0), ("random", "flip", 64, 3, 0, 0),
            ("random", "flip", 64, 3, 0.95, 3), ("random", "flip_translate", 64, 3, 0.95, 3),
            ("alternate", "flip_translate", 64, 3, 0.95, 3),
            ("alternate", "flip_translate", 64, None, 0, 0)]
