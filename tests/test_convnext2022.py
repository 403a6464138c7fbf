"""The built-in ConvNeXt roadmap (convnext2022, and its Imagenette proxy): every step's
count against the same network written independently in plain Keras, the ends against
keras.applications, the multiply-adds against the paper's GFLOPs (Table 10), the
recipes, and `list` where the data is not."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from designs import counts

from ablation import build_model, count_params, load_study, registry

IMAGENET = (224, 224, 3), 1000


@pytest.fixture(scope="module", autouse=True)
def studies():
    load_study("convnext2022")
    load_study("convnext2022_imagenette")


# --- plain Keras: each step written from the paper's text (Section 2, Fig. 3 and 4) -------

R50 = ((3, 256, 64), (4, 512, 128), (6, 1024, 256), (3, 2048, 512))
RATIO = ((3, 256, 64), (3, 512, 128), (9, 1024, 256), (3, 2048, 512))
WIDE = ((3, 384, 96), (3, 768, 192), (9, 1536, 384), (3, 3072, 768))
INVERTED = ((3, 96, 384), (3, 192, 768), (9, 384, 1536), (3, 768, 3072))


def keras_roadmap(stages, stem="resnet", stem_width=64, depthwise=False, moved_up=False,
                  kernel=3, act="relu", one_act=False, one_norm=False, norm="bn",
                  separate=False):
    """A roadmap network in plain Keras: a stem, stages of (blocks, width, inner) with the
    stride on the first block of stages 2-4, global pooling and a dense softmax."""
    import keras

    L = keras.layers
    Norm = L.BatchNormalization if norm == "bn" else L.LayerNormalization
    inp = keras.Input(IMAGENET[0])
    if stem == "resnet":
        x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(64, 7, 2, padding="same")(inp)))
        x = L.MaxPooling2D(3, 2, padding="same")(x)
    else:
        x = L.Conv2D(stem_width, 4, 4)(inp)
        if separate:
            x = L.LayerNormalization()(x)
    width = stem_width
    for i, (blocks, out, inner) in enumerate(stages):
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            change = stride != 1 or width != out
            if separate and change:
                x = L.Conv2D(out, 2, 2)(L.LayerNormalization()(x))
                stride = 1
            if moved_up:
                layers = [L.DepthwiseConv2D(kernel, stride, padding="same"), L.Conv2D(inner, 1),
                          L.Conv2D(out, 1)]
            else:
                spatial = (L.DepthwiseConv2D(kernel, stride, padding="same") if depthwise
                           else L.Conv2D(inner, kernel, stride, padding="same"))
                layers = [L.Conv2D(inner, 1), spatial, L.Conv2D(out, 1)]
            y = x
            for m, layer in enumerate(layers):
                y = layer(y)
                if not one_norm or m == 0:
                    y = Norm()(y)
                if m < 2 and (not one_act or m == 1):
                    y = L.Activation(act)(y)
            if separate:
                y = _layer_scale(keras)(y)
            s = x
            if change and not separate:
                s = Norm()(L.Conv2D(out, 1, stride)(x))
            x = L.Add()([y, s])
            if not one_act:
                x = L.Activation(act)(x)
            width = out
    x = L.GlobalAveragePooling2D()(x)
    if separate:
        x = L.LayerNormalization()(x)
    return keras.Model(inp, L.Dense(IMAGENET[1], activation="softmax")(x))


def _layer_scale(keras):
    class Scale(keras.layers.Layer):  # one learned factor per channel
        def build(self, shape):
            self.gamma = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.gamma

    return Scale()


K7 = dict(stem="patchify", stem_width=96, moved_up=True, kernel=7)
TWINS = {
    "roadmap_r50": lambda: keras_roadmap(R50),
    "roadmap_stage_ratio": lambda: keras_roadmap(RATIO),
    "roadmap_patchify": lambda: keras_roadmap(RATIO, stem="patchify"),
    "roadmap_depthwise": lambda: keras_roadmap(RATIO, stem="patchify", depthwise=True),
    "roadmap_width": lambda: keras_roadmap(WIDE, stem="patchify", stem_width=96,
                                           depthwise=True),
    "roadmap_inverted": lambda: keras_roadmap(INVERTED, stem="patchify", stem_width=96,
                                              depthwise=True),
    "roadmap_dw_up": lambda: keras_roadmap(INVERTED, **{**K7, "kernel": 3}),
    "roadmap_k7": lambda: keras_roadmap(INVERTED, **K7),
    "roadmap_fewer_norms": lambda: keras_roadmap(INVERTED, **K7, act="gelu", one_act=True,
                                                 one_norm=True),
    "roadmap_ln": lambda: keras_roadmap(INVERTED, **K7, act="gelu", one_act=True,
                                        one_norm=True, norm="ln"),
    "convnext_t": lambda: keras_roadmap(INVERTED, **K7, act="gelu", one_act=True,
                                        one_norm=True, norm="ln", separate=True),
}


# the steps without a twin: what they change carries no weight (the activations), or
# only the depthwise kernels, whose weights are counted below by hand
NO_WEIGHTS = ("roadmap_gelu", "roadmap_fewer_acts")
KERNELS = ("roadmap_k5", "roadmap_k9", "roadmap_k11")


def test_every_step_has_its_twin_or_is_counted_apart():
    assert sorted([*TWINS, *NO_WEIGHTS, *KERNELS]) == \
        sorted(load_study("convnext2022").variants())


def test_the_activations_weigh_nothing_and_each_kernel_its_k_squared():
    """GELU and one activation a block leave the counts of the 7x7 step; a k x k
    depthwise conv holds k² weights per channel it reads: 96 x 3 in stage 1 (the first
    block reads the stem), then 96 + 192 x 2, 192 + 384 x 8, 384 + 768 x 2."""
    def total(name):
        return count_params(name, IMAGENET[1], IMAGENET[0]).params_total

    assert total("roadmap_gelu") == total("roadmap_fewer_acts") == total("roadmap_k7")
    channels = 96 * 3 + (96 + 192 * 2) + (192 + 384 * 8) + (384 + 768 * 2)
    for name in KERNELS:
        k = int(name.rsplit("k", 1)[1])
        assert total(name) - total("roadmap_k7") == (k * k - 49) * channels, name


@pytest.mark.parametrize("name", list(TWINS))
def test_counts_equal_the_steps_in_plain_keras(name):
    info = count_params(name, IMAGENET[1], IMAGENET[0])
    assert (info.params_total, info.params_trainable, info.params_non_trainable) == \
        counts(TWINS[name]())


def test_the_ends_are_kerass_resnet50_and_convnext_tiny():
    """Counted at 224 px and 1,000 classes, ResNet-50 is keras.applications.ResNet50 and
    the last step is ConvNeXtTiny (both built without weights); built, ConvNeXt-T has
    its layer scales at 1e-6 and its drop-path rates rising from 0 to 0.1."""
    import keras

    resnet50 = keras.applications.ResNet50(weights=None)
    r50 = count_params("roadmap_r50", IMAGENET[1], IMAGENET[0])
    assert r50.params_total == resnet50.count_params() == 25_636_712
    tiny = keras.applications.ConvNeXtTiny(weights=None, include_preprocessing=False)
    assert count_params("convnext_t", IMAGENET[1], IMAGENET[0]).params_total == \
        tiny.count_params() == 28_589_128
    # the study's reference counts are Keras'
    for name, ref in (("roadmap_r50", resnet50), ("convnext_t", tiny)):
        assert registry.get(name).reference_params == (
            ref.count_params(), *counts(ref)[1:]), name
    model = build_model("convnext_t", num_classes=IMAGENET[1], input_shape=IMAGENET[0])
    scales = [w for w in model.weights if w.path.endswith("gamma") and "_scale" in w.path]
    assert len(scales) == 18 and all(np.allclose(w.numpy(), 1e-6) for w in scales)
    rates = [layer.rate for layer in model.layers if layer.name.endswith("_drop_path")]
    assert len(rates) == 17 and rates[0] == pytest.approx(0.1 / 17)  # block 0 has none
    assert rates[-1] == pytest.approx(0.1)


# Table 10's GFLOPs (fvcore's, a multiply-add each); "BN -> LN" (4.46) is left out: the
# step changes only norms, which count 0 here, and the convs are the step before's (4.15)
TABLE_10_GFLOPS = {
    "roadmap_r50": 4.09, "roadmap_stage_ratio": 4.53, "roadmap_patchify": 4.42,
    "roadmap_depthwise": 2.35, "roadmap_width": 5.27, "roadmap_inverted": 4.64,
    "roadmap_dw_up": 4.07, "roadmap_k5": 4.10, "roadmap_k7": 4.15, "roadmap_k9": 4.21,
    "roadmap_k11": 4.29, "roadmap_gelu": 4.15, "roadmap_fewer_acts": 4.15,
    "roadmap_fewer_norms": 4.15, "convnext_t": 4.49}


def test_multiply_adds_are_the_papers_gflops():
    """Every step's multiply-adds at 224 px within 1 % of Table 10's GFLOPs: the widths,
    strides and kernels are the paper's."""
    for name, gflops in TABLE_10_GFLOPS.items():
        macs = count_params(name, IMAGENET[1], IMAGENET[0]).macs
        assert macs / 1e9 == pytest.approx(gflops, rel=0.01), name
    assert count_params("roadmap_ln", IMAGENET[1], IMAGENET[0]).macs == \
        count_params("roadmap_fewer_norms", IMAGENET[1], IMAGENET[0]).macs


def test_every_step_stands_once_beside_the_papers_number():
    study = load_study("convnext2022")
    rows = [p for p in study.published if p.network.startswith("roadmap_")]
    named = [n.strip() for p in rows for n in p.network.split("/")]
    values = [v.strip() for p in rows for v in p.value.split("/")]
    assert sorted(named) == sorted(study.variants())
    assert len(values) == len(named) and all("±" in v and "(" in v for v in values)


def test_the_papers_recipe_and_the_proxys():
    paper = load_study("convnext2022").recipe()
    assert (paper.optimizer, paper.lr, paper.batch_size, paper.weight_decay, paper.epochs,
            paper.warmup_epochs, paper.schedule) == ("adamw", 0.004, 4096, 0.05, 300, 20,
                                                     "cosine")
    assert (paper.mixup, paper.cutmix, paper.label_smoothing, paper.ema) == (0.8, 1.0, 0.1, 0)
    assert (paper.image_hw, paper.augment, paper.crop_pct) == ((224, 224), "rrc", 0.875)
    assert all(registry.get(n).drop_path == 0.1
               for n in load_study("convnext2022").variants())
    proxy = load_study("convnext2022_imagenette").recipe()
    assert proxy.lr == pytest.approx(paper.lr * proxy.batch_size / paper.batch_size)
    assert proxy.warmup_epochs / proxy.epochs == pytest.approx(20 / 300, abs=0.005)
    assert proxy.image_hw == (160, 160)
    assert load_study("convnext2022_imagenette").variant_names == \
        tuple(load_study("convnext2022").variants())


def test_list_where_the_data_is_not(tmp_path):
    """A built-in study's relative dataset is read from the working folder; where it is
    not, `list` says so in one line and how to count without it."""
    assert load_study("convnext2022").recipe().dataset.endswith("/imagenet")
    r = run_cli("list", "--study", "convnext2022", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{tmp_path}/imagenet does not exist" in r.stderr and "--classes N" in r.stderr
    r = run_cli("list", "--study", "convnext2022", "--classes", "1000", "convnext_t",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "28,589,128" in r.stdout and "224x224x3 images of 1000 classes (--classes" in r.stdout
    r = run_cli("list", "--study", "convnext2022_imagenette", "--classes", "10", cwd=tmp_path)
    assert r.returncode == 0 and "convnext_t" in r.stdout, r.stderr  # the other's variants
