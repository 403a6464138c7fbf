"""The built-in studies of 0.6: Wide Residual Networks (wrn2016) and Bag of Tricks
(tricks2019). Their counts against the same networks written independently in plain
Keras (the papers' own structures), their layouts, recipes and published numbers."""

from __future__ import annotations

import math

import pytest
from designs import counts

from ablation import build_model, count_params, load_study, registry
from ablation.models import layer_inputs
from ablation.recipe import Recipe


@pytest.fixture(scope="module", autouse=True)
def studies():
    load_study("wrn2016")
    load_study("tricks2019")


# --- plain Keras: the papers' networks, written from their texts -----------------------------


def keras_wrn(n: int, k: int, kernels=(3, 3), dropout: float = 0.0):
    """WRN-(6n+4)-k as the official code builds it: conv3x3 16; per stage, n blocks of
    BN-ReLU-conv (kernels...) with dropout before the last conv, a 1x1 projection from
    the pre-activated input where the width changes; BN-ReLU, pooling, dense."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, padding="same")(inp)
    width = 16
    for i, w in enumerate((16 * k, 32 * k, 64 * k)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            h = L.Activation("relu")(L.BatchNormalization()(x))
            y = h
            for m, kk in enumerate(kernels):
                if m:
                    y = L.Activation("relu")(L.BatchNormalization()(y))
                    if m == len(kernels) - 1 and dropout:
                        y = L.Dropout(dropout)(y)
                y = L.Conv2D(w, kk, strides=stride if m == 0 else 1, padding="same")(y)
            s = L.Conv2D(w, 1, strides=stride)(h) if (stride != 1 or width != w) else x
            x, width = L.Add()([y, s]), w
    x = L.GlobalAveragePooling2D()(L.Activation("relu")(L.BatchNormalization()(x)))
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


def keras_resnet50(tweak: str):
    """torchvision's ResNet-50 at 32x32 (a 3x3 stem, no max-pool), with Bag of Tricks'
    tweaks: B moves the stride to the 3x3, C makes the stem three 3x3 convs, D
    average-pools the projection's input."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3))
    x = inp
    for w in ((32, 32, 64) if tweak in "CD" else (64,)):
        x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(w, 3, padding="same")(x)))
    width = 64
    for i, (blocks, inner) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
        out = 4 * inner
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            s1, s3 = (1, stride) if tweak in "BCD" else (stride, 1)
            y = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(inner, 1, strides=s1)(x)))
            y = L.Activation("relu")(L.BatchNormalization()(
                L.Conv2D(inner, 3, strides=s3, padding="same")(y)))
            y = L.BatchNormalization()(L.Conv2D(out, 1)(y))
            s = x
            if stride != 1 or width != out:
                if tweak == "D" and stride == 2:
                    s = L.Conv2D(out, 1)(L.AveragePooling2D(2)(x))
                else:
                    s = L.Conv2D(out, 1, strides=stride)(x)
                s = L.BatchNormalization()(s)
            x, width = L.Activation("relu")(L.Add()([y, s])), out
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x))


TWINS = {
    "wrn16_4": lambda: keras_wrn(2, 4),
    "wrn28_10": lambda: keras_wrn(4, 10),
    "wrn28_10_dropout": lambda: keras_wrn(4, 10, dropout=0.3),
    "wrn22_2_b313": lambda: keras_wrn(3, 2, (3, 1, 3)),
    "wrn40_2_b131": lambda: keras_wrn(6, 2, (1, 3, 1)),
    "tricks_r50": lambda: keras_resnet50("A"),
    "tricks_r50_b": lambda: keras_resnet50("B"),
    "tricks_r50_c": lambda: keras_resnet50("C"),
    "tricks_r50_d": lambda: keras_resnet50("D"),
}


@pytest.mark.parametrize("name", list(TWINS))
def test_counts_equal_the_papers_networks_in_plain_keras(name):
    info = count_params(name)
    assert (info.params_total, info.params_trainable, info.params_non_trainable) == \
        counts(TWINS[name]())


def test_the_wide_counts_are_the_papers():
    """The paper's rounded counts are the conv and dense weights (as the He papers'):
    ours, which add BN and the convs' biases, round to them without those."""
    published = {"wrn16_8": 11.0, "wrn28_10": 36.5, "wrn40_4": 8.9, "wrn28_2_b33": 1.5,
                 "wrn22_2_b313": 1.1, "wrn40_2_b131": 1.4, "wrn40_2_b31": 1.2,
                 "wrn40_2_b13": 1.3, "wrn40_2_b311": 1.3}
    for name, millions in published.items():
        model = build_model(name)
        kernels = sum(math.prod(w.shape) for w in model.weights if w.path.endswith("kernel"))
        assert round(kernels / 1e6, 1) == millions, name
        assert 0 < count_params(name).params_total - kernels < 0.02 * kernels  # BN, biases


def test_dropout_sits_between_the_convs_and_the_stride_on_the_first():
    m = build_model("wrn16_4_dropout")
    assert layer_inputs(m)["s2b1_conv2"] == ["s2b1_dropout"]
    assert layer_inputs(m)["s2b1_dropout"] == ["s2b1_relu1"]
    assert m.get_layer("s2b1_dropout").rate == 0.3
    assert m.get_layer("s2b1_conv1").strides == (2, 2)
    assert "s1b1_proj" in [layer.name for layer in m.layers]  # 16 -> 64: a projection
    assert "wrn16_4" != "wrn16_4_dropout" and "s1b1_dropout" not in [
        layer.name for layer in build_model("wrn16_4").layers]


def test_the_tweaks_move_the_stride_pool_the_projection_and_deepen_the_stem():
    a, b, d = (build_model(n) for n in ("tricks_r50", "tricks_r50_b", "tricks_r50_d"))
    assert a.get_layer("s2b1_conv1").strides == (2, 2) and \
        a.get_layer("s2b1_conv2").strides == (1, 1)
    assert b.get_layer("s2b1_conv1").strides == (1, 1) and \
        b.get_layer("s2b1_conv2").strides == (2, 2)
    assert layer_inputs(d)["s2b1_proj"] == ["s2b1_proj_pool"]
    assert d.get_layer("s2b1_proj").strides == (1, 1)
    assert [layer.name for layer in d.layers if layer.name.startswith("stem_conv")] == [
        "stem_conv1", "stem_conv2", "stem_conv3"]


def test_the_papers_recipes():
    wrn = load_study("wrn2016").recipe()
    assert [wrn.learning_rate(e) for e in (0, 59, 60, 120, 160)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.004, 0.0008])
    assert (wrn.weight_decay, wrn.nesterov, wrn.augment, wrn.epochs) == (5e-4, True, "crop",
                                                                          200)
    assert "lr ×0.2 from epochs 60 and 120 and 160" in wrn.describe()
    tricks = load_study("tricks2019").recipe()
    assert tricks.learning_rate(0, 100) == pytest.approx(0.0005)  # the linear warm-up
    assert tricks.learning_rate(5) == pytest.approx(0.05) and tricks.lr_drops() == (30, 60, 90)
    mixup = registry.get("tricks_r50_d_mixup").train_recipe(tricks)
    assert (mixup.schedule, mixup.label_smoothing, mixup.mixup) == ("cosine", 0.1, 0.2)
    # the blog's and the papers' recipe ids never change with the fields 0.6 added
    assert Recipe().id == "cifar10-e200-b128-blog-fp32-41614e"


def test_bias_decay_puts_the_l2_on_biases_and_normalisation_too():
    v = registry.get("wrn16_4")
    kernels = len(build_model(v, weight_decay=1e-4).losses)
    everything = len(build_model(v, weight_decay=1e-4, bias_decay=True).losses)
    convs = sum(1 for layer in build_model(v).layers if layer.__class__.__name__ == "Conv2D")
    bns = sum(1 for layer in build_model(v).layers
              if layer.__class__.__name__ == "BatchNormalization")
    assert everything == kernels + convs + 1 + 2 * bns  # + each bias (convs, dense), γ, β


def test_published_numbers_are_per_dataset():
    cmp = next(c for c in load_study("wrn2016").comparisons if c.key == "depth-width")
    assert cmp.published_error("cifar10")["wrn28_10"] == 4.00
    assert cmp.published_error("cifar100")["wrn28_10"] == 19.25
    assert cmp.published_error("svhn") == {}
    he = next(iter(load_study("he2015").comparisons))  # a plain table: the study's dataset
    assert he.published_error("cifar10")["he_resnet110"] == 6.43
    assert he.published_error("cifar100") == {}
