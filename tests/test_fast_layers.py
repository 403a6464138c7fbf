"""The training path's fused layers compute what Keras' own layers compute: outputs in
training and inference, moving statistics, gradients, and a whole training step."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ablation import build_model  # noqa: E402
from ablation.layers import BiasAddConv2D, FusedBatchNormalization  # noqa: E402
from ablation.training import standard_copy, training_model  # noqa: E402


def _pair(fast_cls, std_cls, shape, **kw):
    a, b = fast_cls(**kw), std_cls(**kw)
    a.build(shape)
    b.build(shape)
    b.set_weights(a.get_weights())
    return a, b


def test_fused_batchnorm_matches_keras_batchnorm():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 5, 5, 6)) * 3 + 1).astype("float32")
    fast, std = _pair(FusedBatchNormalization, keras.layers.BatchNormalization, x.shape,
                      momentum=0.9, epsilon=1e-5)
    gamma, beta, mean = (rng.normal(size=6).astype("float32") for _ in range(3))
    fast.set_weights([gamma, beta, mean, rng.uniform(0.5, 2, size=6).astype("float32")])
    std.set_weights(fast.get_weights())
    for _ in range(3):  # training: batch statistics, and the moving averages move alike
        np.testing.assert_allclose(np.asarray(fast(x, training=True)),
                                   np.asarray(std(x, training=True)), rtol=1e-4, atol=1e-4)
    for wf, ws in zip(fast.get_weights(), std.get_weights(), strict=True):
        np.testing.assert_allclose(wf, ws, rtol=1e-5, atol=1e-6)  # biased variance used
    np.testing.assert_allclose(np.asarray(fast(x, training=False)),
                               np.asarray(std(x, training=False)), rtol=1e-4, atol=1e-4)


def test_biasadd_conv_matches_keras_conv_and_its_gradient():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 9, 9, 3)).astype("float32"))
    for stride in (1, 2):
        fast, std = _pair(BiasAddConv2D, keras.layers.Conv2D, x.shape, filters=5,
                          kernel_size=3, strides=stride, padding="same",
                          bias_initializer="random_normal")
        with tf.GradientTape(persistent=True) as tape:
            yf, ys = fast(x), std(x)
            lf, ls = tf.reduce_sum(yf ** 2), tf.reduce_sum(ys ** 2)
        np.testing.assert_allclose(yf.numpy(), ys.numpy(), rtol=1e-5, atol=1e-5)
        for gf, gs in zip(tape.gradient(lf, fast.trainable_weights),
                          tape.gradient(ls, std.trainable_weights), strict=True):
            np.testing.assert_allclose(np.asarray(gf), np.asarray(gs), rtol=1e-4, atol=1e-4)


def test_a_training_step_on_the_fast_model_equals_the_standard_one():
    """On resnet32_a's units at one block per stage (every layer kind the fused path
    swaps, a third of the tracing): the same loss, the same update, the same predictions."""
    import dataclasses

    from ablation import count_params, registry
    from ablation.recipe import Recipe
    from ablation.registry import Stage

    v = registry.get("resnet32_a")
    small = dataclasses.replace(v, stages=tuple(Stage(1, s.width) for s in v.stages))
    recipe = Recipe(epochs=2)
    keras.utils.set_random_seed(3)
    fast = training_model(small, recipe, 10)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in fast.layers)
    std = standard_copy(fast, small, recipe, 10)
    assert not any(isinstance(layer, (FusedBatchNormalization, BiasAddConv2D))
                   for layer in std.layers)
    assert std.count_params() == fast.count_params() == count_params(small).params_total
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 16)]
    before = np.concatenate([w.ravel() for w in fast.get_weights()])
    lf = fast.train_on_batch(x, y, return_dict=True)
    ls = std.train_on_batch(x, y, return_dict=True)
    assert lf["loss"] == pytest.approx(ls["loss"], rel=1e-5)
    after_f = np.concatenate([w.ravel() for w in fast.get_weights()])
    after_s = np.concatenate([w.ravel() for w in std.get_weights()])
    # float round-off only: op order differs, so compare the updates as vectors, and
    # bound the worst element against the largest update, not against a constant: how
    # far round-off gets through the layers depends on the CPU's thread count (measured
    # 4e-5 of it with two threads, 9e-5 with one on ResNet-32, where a fixed 1e-4 had
    # failed)
    uf, us = after_f - before, after_s - before
    assert np.dot(uf, us) / (np.linalg.norm(uf) * np.linalg.norm(us)) > 0.9999
    assert np.abs(uf - us).max() < 1e-3 * np.abs(us).max()
    np.testing.assert_allclose(fast.predict(x, verbose=0), std.predict(x, verbose=0),
                               rtol=1e-3, atol=1e-5)


def test_training_state_is_built_before_fit_and_starts_as_a_plain_builds():
    """training_model creates the optimizer's and the metrics' variables eagerly, so
    TensorFlow traces the train step once, not twice; the weights are a plain build's,
    the optimizer has taken no step and the metrics hold nothing."""
    from ablation.recipe import Recipe

    if keras.backend.backend() != "tensorflow":
        pytest.skip("only TensorFlow traces the train step twice without it")
    recipe = Recipe(epochs=2)
    keras.utils.set_random_seed(3)
    model = training_model("resnet32_e", recipe, 10)
    keras.utils.set_random_seed(3)
    plain = build_model("resnet32_e", fast=True, weight_decay=recipe.weight_decay)
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the zero image in inference moved nothing
    assert model.optimizer.built and int(model.optimizer.iterations) == 0
    momenta = [v for v in model.optimizer.variables if v.name.endswith("_momentum")]
    assert len(momenta) == len(model.trainable_variables)
    assert not any(np.any(np.asarray(v)) for v in momenta)
    metric_vars = model.metrics_variables
    assert len(metric_vars) >= 4  # loss (total, count) and accuracy (total, count)
    assert not any(np.any(np.asarray(v)) for v in metric_vars)


def test_the_registry_model_is_unchanged_by_the_fast_path():
    plain = build_model("resnet34")
    fast = build_model("resnet34", fast=True)
    assert [layer.name for layer in plain.layers] == [layer.name for layer in fast.layers]
    assert plain.count_params() == fast.count_params() == 416_458
    assert type(plain.get_layer("s2b1_bn1")) is keras.layers.BatchNormalization
