"""Graph structure: each unit puts BN, ReLU, the addition and the projection's input
where He et al. 2016 (Fig. 4) and the blog put them, checked on one-block-per-stage
builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ablation import build_model, registry
from ablation.models import layer_inputs
from ablation.registry import Stage

FAMILY = ["resnet32", "resnet32_a", "resnet32_b", "resnet32_c", "resnet32_d", "resnet32_e",
          "resnet32_d_v2", "resnet32_e_v2", "resnet34"]


def small(name: str):
    """The variant with one block per stage (same units, same projections)."""
    v = registry.get(name)
    stages = tuple(Stage(1, s.width, s.inner) for s in v.stages)
    return build_model(dataclasses.replace(v, stages=stages))


def parents(model, layer: str) -> list[str]:
    """The layers feeding `layer`, read from the public model config."""
    return layer_inputs(model)[layer]


# For each unit: the layer that is a block's output, and the expected wiring of the
# downsampling block s2b1 (x = s1b1's output) and the identity block s1b1 (x = stem).
def block_out(unit: str, block: str) -> str:
    return f"{block}_out" if unit in ("a", "b") else f"{block}_add"


EXPECT = {
    "a": {"conv1": ["x"], "bn1": ["conv1"], "relu1": ["bn1"], "conv2": ["relu1"],
          "bn2": ["conv2"], "add": ["bn2", "S"], "out": ["add"], "proj": ["x"]},
    "b": {"conv1": ["x"], "conv2": ["relu1"], "add": ["conv2", "S"], "bn2": ["add"],
          "out": ["bn2"], "proj": ["x"]},
    "c": {"conv1": ["x"], "bn2": ["conv2"], "relu2": ["bn2"], "add": ["relu2", "S"],
          "proj": ["x"]},
    "d": {"preact_relu": ["x"], "conv1": ["preact_relu"], "bn2": ["conv2"],
          "add": ["bn2", "S"], "proj": ["preact_relu"]},
    "e": {"preact_bn": ["x"], "preact_relu": ["preact_bn"], "conv1": ["preact_relu"],
          "bn1": ["conv1"], "relu1": ["bn1"], "conv2": ["relu1"], "add": ["conv2", "S"],
          "proj": ["preact_relu"]},
}


@pytest.mark.parametrize("name", [n for n in FAMILY if n != "resnet34"])
def test_unit_wiring(name):
    v = registry.get(name)
    m = small(name)
    names = {layer.name for layer in m.layers}
    for block, x in (("s1b1", "stem_conv"), ("s2b1", block_out(v.unit, "s1b1"))):
        for layer, want in EXPECT[v.unit].items():
            if layer == "proj" and block == "s1b1":
                assert "s1b1_proj" not in names, "stage 1 has no projection"
                continue
            expected = []
            for w in want:
                if w == "x":
                    expected.append(x)
                elif w == "S":  # shortcut: identity (x) or the projection
                    expected.append(x if block == "s1b1" else f"{block}_proj")
                else:
                    expected.append(f"{block}_{w}")
            if layer == "proj" and v.projection_input == "input":
                expected = [x]  # the v2 tweak: P reads the block input
            assert parents(m, f"{block}_{layer}") == expected, (name, block, layer)
    # no BN after the add except in (b); no ReLU after the add except in (a)/(b)
    assert ("s2b1_bn2" in names and parents(m, "s2b1_bn2") == ["s2b1_add"]) == (v.unit == "b")
    assert ("s2b1_out" in names) == (v.unit in ("a", "b"))


def test_projection_settings_and_downsampling():
    m = small("resnet32_e")
    proj = m.get_layer("s2b1_proj")
    assert proj.kernel_size == (1, 1) and proj.strides == (2, 2) and proj.filters == 32
    assert m.get_layer("s2b1_conv1").strides == (2, 2)
    assert m.get_layer("s2b1_conv2").strides == (1, 1)
    assert m.get_layer("s3b1_proj").filters == 64
    # the stem and the projections have no BN of their own ((e)'s first pre-activation
    # BN reads the stem, but belongs to the unit; in (a) nothing normalises the stem)
    bns = [layer.name for layer in m.layers if "bn" in layer.name]
    assert not any(parents(m, b)[0].endswith("_proj") for b in bns)
    a = small("resnet32_a")
    assert parents(a, "s1b1_conv1") == ["stem_conv"]
    assert not any(parents(a, layer.name) == ["stem_conv"]
                   for layer in a.layers if "bn" in layer.name)


def test_resnet34_downsampling_block_is_a_preact_bottleneck():
    m = small("resnet34")
    c1, c2, c3 = (m.get_layer(f"s2b1_conv{i}") for i in (1, 2, 3))
    assert (c1.kernel_size, c1.strides, c1.filters) == ((1, 1), (2, 2), 16)
    assert (c2.kernel_size, c2.strides, c2.filters) == ((3, 3), (1, 1), 16)
    assert (c3.kernel_size, c3.filters) == ((1, 1), 32)
    assert parents(m, "s2b1_conv1") == ["s2b1_preact_relu"]
    assert parents(m, "s2b1_proj") == ["s2b1_preact_relu"]
    assert parents(m, "s2b1_add") == ["s2b1_conv3", "s2b1_proj"]
    assert "s1b1_conv3" not in {layer.name for layer in m.layers}  # ordinary (e) units


def test_bottleneck_halves_every_stage_and_relus_before_add():
    m = small("resnet50")
    for i, (inner, out) in enumerate(((64, 256), (128, 512), (256, 1024), (512, 2048)), 1):
        b = f"s{i}b1"
        assert m.get_layer(f"{b}_conv1").strides == (2, 2)
        assert m.get_layer(f"{b}_conv1").filters == inner
        assert m.get_layer(f"{b}_conv3").filters == out
        assert m.get_layer(f"{b}_proj").strides == (2, 2)
        assert parents(m, f"{b}_add") == [f"{b}_relu3", f"{b}_proj"]
    assert m.get_layer("head_pool").input.shape[1:3] == (2, 2)


@pytest.mark.parametrize("name", FAMILY)
def test_layer_settings_and_forward_pass(name):
    import keras

    m = build_model(name)
    for layer in m.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert layer.padding == "same" and layer.use_bias
            assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
            assert float(layer.kernel_regularizer.l2) == pytest.approx(1e-4)
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == pytest.approx(0.9) and layer.epsilon == pytest.approx(1e-5)
    head = [layer.name for layer in m.layers[-4:]]
    assert head == ["head_bn", "head_relu", "head_pool", "head_dense"]
    dense = m.get_layer("head_dense")
    assert dense.activation.__name__ == "softmax"
    assert float(dense.kernel_regularizer.l2) == pytest.approx(1e-4)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    y = np.asarray(m(x, training=False))
    assert y.shape == (2, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_num_classes_and_input_shape():
    m = build_model("resnet32_a", num_classes=100, input_shape=(32, 32, 3))
    assert m.output_shape == (None, 100)
    assert m.name == "resnet32_a"


def test_weights_are_reproducible_under_a_seed():
    import keras

    keras.utils.set_random_seed(7)
    a = build_model("resnet32").get_weights()
    keras.utils.set_random_seed(7)
    b = build_model("resnet32").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_imagenet_stem_makes_kerass_resnet50():
    """The ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) on Bag of Tricks' ResNet-50
    is keras.applications.ResNet50 at 224x224 and 1,000 classes: the same count, trainable
    and not (every built model is checked against its count: models.check_counts)."""
    import keras

    from ablation import models, registry
    from ablation.study import load_builtins

    load_builtins()
    v = registry.get("tricks_r50").replace(stem="imagenet")
    reference = keras.applications.ResNet50(weights=None)
    info = models.count_params(v, 1000, (224, 224, 3))  # counted as build_model checks it
    assert info.params_total == reference.count_params() == 25_636_712
    assert info.params_non_trainable == sum(
        int(np.prod(w.shape)) for w in reference.non_trainable_weights)
