"""The papers' tables as built-in studies: He et al. 2015 (Table 6, option A shortcuts)
and He et al. 2016 (Table 2, units a-e at 110 and 164 layers): structure, counts
against built models, recipes, a real run and its report beside the published error."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import run_cli, run_dirs

from ablation import build_model, count_params, load_study, registry
from ablation.models import layer_inputs
from ablation.registry import Stage

HE = ["he_resnet20", "he_resnet32", "he_resnet44", "he_resnet56", "he_resnet110"]
IM = [f"im_resnet{d}_{u}" for d in (110, 164) for u in "abcde"]
DEPTH = {**dict(zip(HE, (20, 32, 44, 56, 110), strict=True)),
         **{n: int(n.split("_")[1][6:]) for n in IM}}


@pytest.fixture(scope="module", autouse=True)
def studies():
    load_study("he2015")
    load_study("identity2016")


def small(name: str):
    """The variant with one block per stage (same units, stem, head and shortcuts)."""
    v = registry.get(name)
    return build_model(dataclasses.replace(v, stages=tuple(
        Stage(1, s.width, s.inner) for s in v.stages)))


def parents(model, layer: str) -> list[str]:
    return layer_inputs(model)[layer]


def test_option_a_has_no_parameters_and_pads_with_zeros():
    import keras

    m = small("he_resnet20")
    names = [layer.name for layer in m.layers]
    assert not any("_proj" in n for n in names), "option A has no 1x1 convolution"
    assert not any(isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1)
                   for layer in m.layers)
    short = [layer for layer in m.layers if layer.name.startswith("s2b1_short")]
    assert sum(layer.count_params() for layer in short) == 0
    assert parents(m, "s2b1_add") == ["s2b1_bn2", "s2b1_short_squeeze"]
    assert parents(m, "s2b1_short_subsample") == ["s1b1_out"]
    assert parents(m, "s1b1_add") == ["s1b1_bn2", "stem_relu"]  # identity: no shortcut layer
    assert m.get_layer("s2b1_conv1").strides == (2, 2)  # the stride on the first 3x3
    # numerically: x[:, ::2, ::2, :] and then zeros in the new channels
    sub = keras.Model(m.get_layer("s1b1_out").output, m.get_layer("s2b1_short_squeeze").output)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 16)).astype("float32")
    y = np.asarray(sub(x))
    assert y.shape == (2, 16, 16, 32)
    np.testing.assert_array_equal(y[..., :16], x[:, ::2, ::2, :])
    assert not y[..., 16:].any()


def test_he2015_stem_and_head():
    m = small("he_resnet32")
    assert parents(m, "stem_bn") == ["stem_conv"] and parents(m, "stem_relu") == ["stem_bn"]
    assert parents(m, "s1b1_conv1") == ["stem_relu"]
    assert parents(m, "head_pool") == ["s3b1_out"]  # no extra BN-ReLU: (a) ends in ReLU
    assert "head_bn" not in [layer.name for layer in m.layers]


@pytest.mark.parametrize("unit", "abcde")
def test_identity2016_units_stem_head_and_projections(unit):
    for depth in (110, 164):
        m = small(f"im_resnet{depth}_{unit}")
        names = {layer.name for layer in m.layers}
        k = 2 if depth == 110 else 3  # convs per residual branch
        # stem conv-BN-ReLU; pre-activation units take it as their first activation
        assert parents(m, "stem_relu") == ["stem_bn"]
        if unit in "de":
            assert "s1b1_preact_relu" not in names and "s2b1_preact_relu" in names
            assert parents(m, "s1b1_conv1") == ["stem_relu"]
            assert parents(m, "head_bn") == ["s3b1_add"]  # the extra activation at the end
        else:
            assert "head_bn" not in names and parents(m, "s1b1_conv1") == ["stem_relu"]
        # projections where the shape changes: 1x1 conv, no BN, stride on the first conv
        assert ("s1b1_proj" in names) == (depth == 164)  # 16 -> 64 in stage 1 of 164
        proj = m.get_layer("s2b1_proj")
        assert proj.kernel_size == (1, 1) and proj.strides == (2, 2)
        pre = "s2b1_preact_relu" if unit in "de" else f"s1b1_{'out' if unit in 'ab' else 'add'}"
        assert parents(m, "s2b1_proj") == [pre]
        assert m.get_layer("s2b1_conv1").strides == (2, 2)
        assert m.get_layer("s2b1_conv1").kernel_size == ((1, 1) if depth == 164 else (3, 3))
        assert f"s2b1_conv{k}" in names and f"s2b1_conv{k + 1}" not in names
        if unit == "b":
            assert parents(m, f"s2b1_bn{k}") == ["s2b1_add"]


@pytest.mark.parametrize("name", HE + IM)
def test_counts_and_depth_equal_the_built_models(name):
    info = count_params(name)
    m = build_model(name)
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert (info.params_total, info.params_trainable) == (m.count_params(), trainable)
    assert info.depth == DEPTH[name]


def test_cli_list_json_for_both_studies():
    for study, names in (("he2015", HE), ("identity2016", IM)):
        r = run_cli("list", "--study", study, "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        assert [row["name"] for row in rows] == names
        for row in rows:
            info = count_params(row["name"])
            assert (row["params_total"], row["params_trainable"], row["params_non_trainable"],
                    row["depth"]) == (info.params_total, info.params_trainable,
                                      info.params_non_trainable, DEPTH[row["name"]])
    # the paper's rounded counts leave BN out; ours are exact (docs/studies.md)
    assert count_params("he_resnet32").params_total == 467_562
    assert 1.70e6 < count_params("im_resnet164_e").params_total < 1.75e6


def test_paper_recipes():
    he = load_study("he2015").recipe()
    assert (he.epochs, he.nesterov, he.augment, he.lr_drops()) == (164, False, "crop", (82, 123))
    r110 = he.replace(**dict(registry.get("he_resnet110").recipe))
    assert [r110.learning_rate(e) for e in (0, 1, 81, 82, 123)] == [0.01, 0.1, 0.1, 0.01, 0.001]
    assert he.learning_rate(0) == 0.1  # only ResNet-110 warms up
    im = load_study("identity2016").recipe()
    assert (im.warmup_epochs, im.learning_rate(0), im.learning_rate(1)) == (1, 0.01, 0.1)
    assert load_study("blog").recipe().lr_drops() == (81, 122)  # the blog's unchanged
    r = run_cli("run", "--study", "he2015", "he_resnet20", "--milestones", "30,40",
                "--warmup-epochs", "2", "--nesterov", "--dry-run")
    recipe = json.loads(r.stdout.splitlines()[0].split(": ", 1)[1])
    assert (recipe["milestones"], recipe["warmup_epochs"], recipe["nesterov"]) == (
        [30, 40], 2, True)
    assert recipe["epochs"] == 164 and recipe["augment"] == "crop"


def test_he_resnet20_trains_and_reports_beside_the_published_error(tmp_path, cifar_dir):
    res = tmp_path / "results"
    r = run_cli("run", "--study", "he2015", "he_resnet20", "--epochs", "2", "--train-limit",
                "256", "--test-limit", "100", "--batch-size", "32", "--data-dir",
                str(cifar_dir), "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = run_dirs(res)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "done" and s["params_total"] == 271_786 and s["depth"] == 20
    assert s["recipe"]["nesterov"] is False and s["recipe"]["augment"] == "crop"
    out = tmp_path / "report"
    r = run_cli("report", "--study", "he2015", "--results", str(res), "--out", str(out))
    assert r.returncode == 0, r.stderr
    md = (out / "README.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| he_resnet20 "))
    assert "8.75" in row and "published error %" in md
    assert "Missing**: he_resnet32, he_resnet44, he_resnet56, he_resnet110" in md
    assert "ablation run --study he2015 he_resnet32" in md


# Identity Mappings' nets, counted by hand (as the blog's counts are typed in): a conv
# k x k from a to b channels with bias has k*k*a*b + b weights; a BN of c channels 4c
# (2c trainable, 2c moving statistics).
def _conv(k: int, a: int, b: int) -> int:
    return k * k * a * b + b


def _hand_110(unit: str) -> tuple[int, int]:
    """ResNet-110: stem conv3x3 3->16 + BN(16); 3 stages of 18 basic units (two 3x3
    convs, two BNs), widths 16/32/64, a 1x1 projection where the width doubles; dense
    64->10. (d), (e) add the head's BN(64); (e) moves each unit's first BN before conv1
    (on the unit's input width) and drops the very first one (the stem's BN-ReLU is it)."""
    total, bn = _conv(3, 3, 16) + 4 * 16, 16
    c_in = 16
    for width in (16, 32, 64):
        for block in range(18):
            a = c_in if block == 0 else width
            total += _conv(3, a, width) + _conv(3, width, width)
            if block == 0 and a != width:
                total += _conv(1, a, width)
            first = 0 if (unit == "e" and width == 16 and block == 0) else (
                a if unit == "e" else width)
            bn += first + width
            total += 4 * (first + width)
        c_in = width
    total += 64 * 10 + 10
    if unit in ("d", "e"):
        total, bn = total + 4 * 64, bn + 64
    return total, 2 * bn


def _hand_164(unit: str) -> tuple[int, int]:
    """ResNet-164: the same stem; 3 stages of 18 bottleneck units (1x1 to the inner
    width, 3x3, 1x1 to 4x it; three BNs), inner 16/32/64, a 1x1 projection in each
    stage's first unit; dense 256->10. (d), (e) add the head's BN(256); (e)'s BNs sit
    before each conv (input width, inner, inner), the very first dropped."""
    total, bn = _conv(3, 3, 16) + 4 * 16, 16
    c_in = 16
    for inner in (16, 32, 64):
        out = 4 * inner
        for block in range(18):
            a = c_in if block == 0 else out
            total += _conv(1, a, inner) + _conv(3, inner, inner) + _conv(1, inner, out)
            if block == 0:
                total += _conv(1, a, out)
            if unit == "e":
                channels = (0 if (inner == 16 and block == 0) else a) + 2 * inner
            else:
                channels = 2 * inner + out
            bn += channels
            total += 4 * channels
        c_in = out
    total += 256 * 10 + 10
    if unit in ("d", "e"):
        total, bn = total + 4 * 256, bn + 256
    return total, 2 * bn


# The hand counts, written out: (total, non-trainable)
IM_BY_HAND = {
    "im_resnet110_a": (1_742_762, 8_096), "im_resnet110_b": (1_742_762, 8_096),
    "im_resnet110_c": (1_742_762, 8_096), "im_resnet110_d": (1_743_018, 8_224),
    "im_resnet110_e": (1_742_762, 8_096),
    "im_resnet164_a": (1_740_042, 24_224), "im_resnet164_b": (1_740_042, 24_224),
    "im_resnet164_c": (1_740_042, 24_224), "im_resnet164_d": (1_741_066, 24_736),
    "im_resnet164_e": (1_740_042, 24_224),
}


@pytest.mark.parametrize("name", IM)
def test_identity2016_counts_equal_totals_derived_by_hand(name):
    depth, unit = name.split("_")[1], name[-1]
    by_hand = (_hand_110 if depth == "resnet110" else _hand_164)(unit)
    assert by_hand == IM_BY_HAND[name]
    info = count_params(name)
    assert (info.params_total, info.params_non_trainable) == IM_BY_HAND[name]
