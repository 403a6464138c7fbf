"""Your own design: the ops for the blocks labs test today, each with exact counts; any
Keras layer through ops.layer; the examples; a unit named like a built-in; and the
errors a unit's author meets, each one line naming the unit, the block and the op."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import need, one_line_error, run_cli, run_dirs
from designs import DESIGNS, EXAMPLE_NETS, EXAMPLES, MIXED, counts, write_designs

import ablation
from ablation import models, study
from ablation.models import costs, graph, ops


@pytest.fixture(scope="module")
def designs(tmp_path_factory):
    return write_designs(tmp_path_factory.mktemp("designs"))


def test_every_activation_name_is_one_keras_resolves():
    import keras

    for name in ops.ACTIVATIONS:
        assert callable(keras.activations.get(name)), name


def test_the_designs_count_like_independent_keras_models(designs, isolated_registry):
    s = ablation.load_study(designs)
    assert s.shadowed == ("plain",)
    for name, make in DESIGNS.items():
        info = ablation.count_params(name)
        assert (info.params_total, info.params_trainable, info.params_non_trainable) == \
            counts(make()), name
        built = ablation.build_model(name)  # and the model ablation builds has them too
        assert counts(built) == counts(make()), name
        # multiply-adds: the ops' rules (and ops.layer's) summed are what the independent
        # model's compiled form multiplies (the five networks that hold every design)
        if name in MIXED:
            twin = make()
            assert info.macs == costs.hlo_macs(costs.hlo_text(
                lambda x, m=twin: m(x, training=False), [tuple(twin.input_shape[1:])])), name
    e, silu = ablation.count_params("t_e"), ablation.count_params("t_silu")
    assert e.macs == silu.macs == ablation.count_params("t_gn").macs > 0  # GN counts 0
    # depth: the SE gate's dense layers are beside the branch; ConvNeXt's three convs count
    assert ablation.count_params("t_se").depth == e.depth == 8
    assert ablation.count_params("t_convnext").depth == 1 + 3 * 3 + 1
    # drop-path, by position: linear up to the last block's 0.2 (3 blocks here)
    m = ablation.build_model("t_droppath")
    rates = [m.get_layer(f"s{i}b1_droppath").rate for i in (1, 2, 3)]
    assert rates == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
    assert m.get_layer("s3b1_droppath").noise_shape == (None, 1, 1, 1)
    # dilation only in the last stage, after its strided first block; groups; head act
    d = ablation.build_model("t_dilated")
    assert [d.get_layer(f"s3b{j}_conv1").dilation_rate for j in (1, 2)] == [(1, 1), (2, 2)]
    assert d.get_layer("s2b1_conv1").dilation_rate == (1, 1)
    assert ablation.build_model("t_resnext").get_layer("s1b1_conv2").groups == 8
    assert ablation.build_model("t_silu").get_layer("head_act").get_config()[
        "activation"] == "silu"
    # (0.6) a layer applied twice shares its weights, counted once; gates beside the
    # branch (main=False) and a shared layer's second use are no depth
    d = ablation.build_model("mix_d")
    nodes = {c["name"]: c["inbound_nodes"] for c in d.get_config()["layers"]}
    assert len(nodes["s2b1_ca_mlp1"]) == 2  # one layer, two calls (the average and max)
    # stem conv, ConvMixer's depthwise and pointwise, CBAM's 3x3 (its MLPs are beside
    # the branch), the attention (a kernel, through ops.layer), the dense head
    assert ablation.count_params("mix_d").depth == 1 + 2 + 1 + 1 + 1
    # ops.layer gave MultiHeadAttention its query and value as two arguments
    assert len(nodes["s3b1_mha"][0]["args"]) == 2
    # a stem and a head of the study's own, and the token ops' layers
    e = ablation.build_model("mix_e")
    assert e.get_layer("stem_cls").__class__.__name__ == "ClassToken"
    assert tuple(e.get_layer("stem_pos").position_embedding.shape) == (17, 32)
    assert ablation.count_params("t_vit").macs > 0  # attention's multiply-adds by rule


@pytest.mark.parametrize("example,variant", list(EXAMPLE_NETS))
def test_examples_count_like_independent_keras_models(example, variant, isolated_registry):
    s = ablation.load_study(EXAMPLES / example)
    assert variant in s.variant_names and s.comparisons and s.comparisons[0].question
    info = ablation.count_params(variant)
    assert (info.params_total, info.params_trainable, info.params_non_trainable) == \
        counts(EXAMPLE_NETS[(example, variant)]())


def test_drop_path_drops_whole_samples_and_scales_the_kept_ones():
    import keras
    import numpy as np

    g = models.graph.Builder(keras, 0.0)
    x = g.input((3, 3, 2))
    model = keras.Model(x, g.drop_path(x, 0.5, "dp"))
    keras.utils.set_random_seed(0)
    out = np.asarray(model(np.ones((400, 3, 3, 2), "float32"), training=True))
    per_sample = out.reshape(400, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}  # kept ones are scaled by 1/(1 - rate)
    assert (per_sample == per_sample[:, :1]).all()  # a whole sample, never single values
    assert 0.4 < (per_sample[:, 0] == 0).mean() < 0.6
    assert (np.asarray(model(np.ones((4, 3, 3, 2), "float32"), training=False)) == 1).all()


def test_each_op_counts_what_keras_builds():
    """Every op, alone on a small input, under both interpreters: the counting rule's
    shape and parameters are the Keras layer's (build_model checks the sums; this checks
    each op, its settings included)."""
    import keras

    calls = [
        ("conv", (16, 3, 1, "c"), {}), ("conv", (32, 3, 2, "c"), {"groups": 4}),
        ("conv", (8, 3, 1, "c"), {"dilation": 2, "bias": False}),
        ("conv", (8, 5, 2, "c"), {"main": False}),
        ("depthwise", (7, 1, "d"), {}), ("depthwise", (3, 2, "d"), {"bias": False}),
        ("depthwise", (3, 1, "d"), {"dilation": 3}),
        ("bn", ("b",), {}), ("layernorm", ("l",), {}), ("groupnorm", (4, "g"), {}),
        ("relu", ("r",), {}), ("act", ("gelu", "a"), {}), ("act", ("hard_swish", "a"), {}),
        ("maxpool", ("p",), {}), ("avgpool", ("p",), {}), ("pool", ("p",), {}),
        ("flatten", ("f",), {}), ("dropout", (0.3, "o"), {}), ("drop_path", (0.3, "o"), {}),
        ("pad_shortcut", (16, 2, "s"), {}), ("softmax", ("s",), {}),
        ("softmax", ("s",), {"axis": 1}), ("softmax", ("s",), {"axis": -2}),
    ]
    for op_name, args, kw in calls:
        results = []
        for g in (graph.Counter(), graph.Builder(keras, 1e-4)):
            x = g.input((8, 8, 8))
            y = getattr(g, op_name)(x, *args, **kw)
            results.append((tuple(y.shape[1:]), g.trainable, g.non_trainable, g.macs,
                            g.depth))
            if not g.counting:
                m = keras.Model(x, y)
                assert counts(m)[1:] == (g.trainable, g.non_trainable), op_name
        assert results[0] == results[1], (op_name, kw, results)
    for g in (graph.Counter(), graph.Builder(keras, 1e-4)):  # the ops of two or more tensors
        x = g.input((8, 8, 8))
        gate = g.dense(g.pool(x, "p"), 8, "d", activation="sigmoid", main=False)
        y = g.concat([g.multiply(x, gate, "m"), g.add(x, x, "a")], "c")
        assert tuple(y.shape[1:]) == (8, 8, 16) and g.depth == 0 and g.trainable == 72
    # ops.layer: Attention's call(inputs, mask=None) takes query and value as one list
    # (given separately, the value would become its mask); MultiHeadAttention needs two
    for g in (graph.Counter(), graph.Builder(keras, 1e-4)):
        x = g.input((8, 8, 8))
        att = g.layer(keras.layers.Attention(name="att"), x, g.relu(x, "v"))
        mha = g.layer(keras.layers.MultiHeadAttention(2, 4, name="mha"), att, x)
        assert tuple(mha.shape[1:]) == (8, 8, 8)
        if not g.counting:
            nodes = {c["name"]: c["inbound_nodes"]
                     for c in keras.Model(x, mha).get_config()["layers"]}
            assert len(nodes["att"][0]["args"]) == 1  # one list: query, value
            assert len(nodes["mha"][0]["args"]) == 2  # query, value
    # ops.attention's four projection kernels carry the recipe's L2, as conv and dense do
    g = graph.Builder(keras, 1e-4)
    x = g.input((4, 4, 8))
    assert len(keras.Model(x, g.attention(x, 2, "at")).losses) == 4


BAD_UNITS = {
    "unused": ('''
@unit("u")
def u(ops, x, block):
    n = block.name
    y = ops.conv(x, block.filters, 3, block.stride, f"{n}_conv1")
    s = ops.dense(ops.pool(y, f"{n}_se_pool"), 4, f"{n}_se_fc", activation="relu")
    return ops.relu(y, f"{n}_relu")
''', "unit 'u' in block s1b1 of mine computes layer 's1b1_se_pool' but never uses it"),
    "activation": ('''
@unit("u")
def u(ops, x, block):
    y = ops.conv(x, block.filters, 3, block.stride, f"{block.name}_conv1")
    return ops.dense(ops.pool(y, f"{block.name}_p"), 4, f"{block.name}_d",
                     activation="swishh")
''', "unit 'u' failed in block s1b1 of mine: ops.dense: unknown activation 'swishh' "
     "(Keras activations: relu,"),
    "keyword": ('''
@unit("u")
def u(ops, x, block):
    return ops.conv(x, block.filters, 3, block.stride, f"{block.name}_c", group=2)
''', "unit 'u' failed in block s1b1 of mine: ops.conv(x, filters, kernel, stride, name, "
     "main=True, groups=1, dilation=1, bias=True, init='he_normal', padding='same'): got "
     "an unexpected keyword argument"),
    "groups": ('''
@unit("u")
def u(ops, x, block):
    return ops.conv(x, block.filters, 3, block.stride, f"{block.name}_c", groups=3)
''', "unit 'u' failed in block s1b1 of mine: ops.conv: groups 3 must divide the input's "
     "16 channels and the 16 filters"),
    "keras_layer": ('''
import keras


@unit("u")
def u(ops, x, block):
    return keras.layers.GroupNormalization(groups=2)(x)
''', "(a Keras layer in a unit goes through ops.layer(layer, x))"),
    "returns_none": ('''
@unit("u")
def u(ops, x, block):
    ops.conv(x, block.filters, 3, block.stride, f"{block.name}_c")
''', "unit 'u' in block s1b1 of mine returned NoneType, not a tensor"),
    "dilation_and_stride": ('''
@unit("u")
def u(ops, x, block):
    return ops.conv(x, block.filters, 3, 2, f"{block.name}_c", dilation=2)
''', "ops.conv: stride and dilation cannot both be above 1"),
}


@pytest.mark.parametrize("case", list(BAD_UNITS))
def test_a_units_mistake_is_one_line_at_list(tmp_path, case):
    body, needle = BAD_UNITS[case]
    (tmp_path / "u.py").write_text("from ablation import unit\n" + body)
    (tmp_path / "s.toml").write_text('units = "u.py"\n[[variant]]\nname = "mine"\n'
                                     'base = "resnet32_e"\nunit = "u"\n'
                                     'stages = [[1, 16], [1, 32], [1, 64]]\n')
    line = one_line_error(run_cli("list", "--study", str(tmp_path / "s.toml")))
    assert needle in line, line
    for internal in ("CountOps", "Counter", "Builder", "Sym"):
        assert internal not in line, line


BAD_PARTS = {  # (0.6) a study's own stem or head: the same one line at `ablation list`
    "stem unused": ("""
@stem("s")
def s(ops, x, net):
    y = ops.conv(x, net.stem_filters, 3, 1, "stem_conv")
    ops.bn(y, "stem_bn")
    return y
""", 'stem = "s"', "stem 's' of mine computes layer 'stem_bn' but never uses it"),
    "head bad argument": ("""
@head("h")
def h(ops, x, net):
    return ops.dense(ops.pool(x, "p"), net.num_classes, "d", activation="softmaxx")
""", 'head = "h"', "head 'h' failed in mine: ops.dense: unknown activation 'softmaxx'"),
    "unknown stem": ("", 'stem = "patchify3"', "unknown stem 'patchify3' (known: conv, "
                     "conv_bn_relu, none, patchify2, patchify4, deep3, airbench_whiten, "
                     "airbench_plain, imagenet, convnext)"),
}


@pytest.mark.parametrize("case", list(BAD_PARTS))
def test_a_stem_or_heads_mistake_is_one_line_at_list(tmp_path, case):
    body, key, needle = BAD_PARTS[case]
    (tmp_path / "u.py").write_text("from ablation import head, stem, unit\n" + body +
                                   "\n@unit('u')\ndef u(ops, x, block):\n    return x\n")
    (tmp_path / "s.toml").write_text(f'units = "u.py"\n[[variant]]\nname = "mine"\n'
                                     f'base = "resnet32_e"\n{key}\n')
    line = one_line_error(run_cli("list", "--study", str(tmp_path / "s.toml")))
    assert needle in line and str(tmp_path / "s.toml") in line, line


def test_the_token_examples_train_an_epoch_on_the_training_path(isolated_registry):
    """ConvMixer, ViT and MLP-Mixer at their full size: one epoch of 64 images on what
    `ablation run` trains (ablation's compiled model: fused layers, the recipe)."""
    import numpy as np

    from ablation import data, training
    from ablation.recipe import Recipe

    ds = data.synthetic(64, 16)
    x, y = data.normalise(ds.x_train, ds.mean, ds.std), data.one_hot(ds.y_train, 10)
    for example, variant in (("convmixer.toml", "convmixer_256_8"), ("vit.toml", "vit_96_6"),
                             ("mlp_mixer.toml", "mixer_128_6")):
        ablation.load_study(EXAMPLES / example)
        model = training.training_model(variant, Recipe(epochs=1, batch_size=32), 10)
        h = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        assert np.isfinite(h.history["loss"][0]), variant


def test_a_broken_units_author_sees_their_own_traceback_under_ablation_debug(tmp_path):
    """One line by default; with ABLATION_DEBUG the whole chain, down to the unit's own
    line, then the same one line."""
    (tmp_path / "u.py").write_text("from ablation import unit\n\n\n@unit('u')\n"
                                   "def u(ops, x, block):\n"
                                   "    scale = block.filters // (block.index - block.index)\n"
                                   "    return ops.conv(x, scale, 3, 1, block.name)\n")
    (tmp_path / "s.toml").write_text('units = "u.py"\n[[variant]]\nname = "mine"\n'
                                     'base = "resnet32_e"\nunit = "u"\n')
    args = ("list", "--study", str(tmp_path / "s.toml"))
    line = one_line_error(run_cli(*args))
    assert "unit 'u' failed in block s1b1 of mine: ZeroDivisionError" in line, line
    r = run_cli(*args, env={"ABLATION_DEBUG": "1"})
    assert r.returncode == 2 and r.stderr.count("Traceback") >= 2, r.stderr
    err = r.stderr.splitlines()
    assert f'File "{tmp_path / "u.py"}", line 6, in u' in r.stderr  # the author's own line
    assert "ZeroDivisionError: integer division or modulo by zero" in r.stderr
    assert "The above exception was the direct cause" in r.stderr  # the chain, kept
    assert err[-1] == line


def test_a_unit_named_like_a_built_in_shadows_it_only_in_its_study(designs,
                                                                   isolated_registry):
    ablation.load_study(designs)
    mine = ablation.registry.get("t_plain")
    assert models.resolve("plain", mine.unit_module).__module__ == mine.unit_module
    # everyone else keeps the built-in one
    assert models.resolve("plain") is models.BUILTIN_UNITS["plain"]
    assert study.definition_hash(mine) != study.definition_hash(
        mine.replace(unit_module=None))
    r = run_cli("list", "--study", str(designs))
    assert r.returncode == 0, r.stderr
    assert (f"unit 'plain' of {designs.parent / 'designs_units.py'} shadows the built-in "
            "unit 'plain' for this study's own variants") in r.stdout


JAX_CODE = """
import json, sys, numpy as np, keras, ablation
ablation.load_study(sys.argv[1])
out = {"backend": keras.backend.backend()}
from ablation.models import costs
for name in sys.argv[2:]:
    m = ablation.build_model(name)
    # parameters; multiply-adds counted on JAX (ops.layer's compiled there) and JAX's HLO
    out[name] = [m.count_params(), ablation.count_params(name).macs, costs.hlo_macs(
        costs.hlo_text(lambda x: m(x, training=False), [tuple(m.input_shape[1:])]))]
# option A trains a step, saves and loads back on JAX too (standard layers only)
m = ablation.build_model("t_option_a")
m.compile(optimizer="sgd", loss="categorical_crossentropy")
x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
loss = m.train_on_batch(x, np.eye(10, dtype="float32")[np.arange(8)])
m.save(sys.argv[1] + ".h5")
out["option_a"] = [bool(np.isfinite(loss)), keras.models.load_model(
    sys.argv[1] + ".h5").count_params() == m.count_params()]
print(json.dumps(out))
"""


def test_the_designs_build_on_jax_with_the_same_counts(designs, isolated_registry):
    """Every op, in the networks that hold all the designs, builds on JAX with the same
    parameters and multiply-adds (counted there, and in JAX's compiled HLO); He 2015's
    option A (pad_shortcut) trains a step, saves and loads back there."""
    need("jax")
    out = subprocess.run([sys.executable, "-c", JAX_CODE, str(designs), *MIXED],
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, KERAS_BACKEND="jax"))
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got.pop("backend") == "jax" and got.pop("option_a") == [True, True]
    ablation.load_study(designs)
    assert got == {n: [counts(DESIGNS[n]())[0], *[ablation.count_params(n).macs] * 2]
                   for n in MIXED}  # the same counts as TensorFlow's, compiled or not


def test_the_designs_train_report_and_load_in_plain_keras(designs, tmp_path, cifar_dir):
    """Every design trains one epoch on a subset (three designs a network, a unit per
    stage), each network's inference is timed, the study reports (accuracy against
    cost), and every .h5 loads with plain `keras.models.load_model`: the one with a
    Keras layer of the study's own (LayerScale) after importing the run folder's copy of
    the units, as docs/studies.md says."""
    res = tmp_path / "results"
    r = run_cli("run", "--study", str(designs), *MIXED, "--epochs", "1", "--train-limit",
                "64", "--test-limit", "32", "--batch-size", "32", "--workers", "2",
                "--data-dir", str(cifar_dir), "--results", str(res),
                env={"ABLATION_NO_INFERENCE_TIMING": None})  # timed, as by default
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(MIXED)} done" in r.stdout
    runs = {p.name.split("-")[0]: p for p in run_dirs(res)}
    assert set(runs) == set(MIXED)
    summaries = {n: json.loads((p / "summary.json").read_text()) for n, p in runs.items()}
    assert all(s["macs"] > 0 for s in summaries.values())  # ops.layer's included
    assert summaries["mix_b"]["definition"]["unit"] == ["e_droppath", "e_silu", "e_dilated"]
    for s in summaries.values():  # each variant's first run times its network
        assert s["infer_batch"] == 256 and s["status"] == "done"
        assert 0 < s["infer_images_per_second_low"] <= s["infer_images_per_second"] \
            <= s["infer_images_per_second_high"]
        assert 0 < s["infer_latency_ms"] <= s["infer_latency_p90_ms"]
    out = tmp_path / "report"
    rep = run_cli("report", "--study", str(designs), "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "README.md").read_text()
    for name in MIXED:
        assert f"| {name} " in md
    # accuracy against cost: the columns, the figure, the frontier by each cost
    assert "inference img/s (lowest–highest)" in md and "latency ms, median (p90)" in md
    front = next(line for line in md.splitlines() if line.startswith("On the Pareto"))
    assert "by parameters, " in front and "by multiply-adds per image, " in front
    assert "by inference images/s, " in front and "Inference: batch 256 on " in front
    assert next(out.glob("*/2-three-designs-a-network-pareto.png")).stat().st_size > 10_000
    runs_csv = (out / "runs.csv").read_text().splitlines()[0]
    assert "infer_images_per_second" in runs_csv and "infer_latency_p90_ms" in runs_csv
    # plain Keras: the networks of standard layers as they are; those with a Keras layer
    # of the study's own (LayerScale, registered by the file; Gate, registered by
    # ablation as the file's units register) or ablation's own token layers once the
    # run's copy of the units file is imported
    code = ("import importlib.util, json, sys, keras\n"
            "out = {}\n"
            "for run in sys.argv[1:]:\n"
            "    name = run.split('/')[-1].split('-')[0]\n"
            "    if name in ('mix_c', 'mix_d', 'mix_e'):\n"
            "        spec = importlib.util.spec_from_file_location('u' + name, run + '/units.py')\n"
            "        spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "    m = keras.models.load_model(run + '/model.h5')\n"
            "    out[name] = [m.count_params(), m.optimizer.__class__.__name__]\n"
            "print(json.dumps(out))\n")
    loaded = subprocess.run([sys.executable, "-c", code, *map(str, runs.values())],
                            capture_output=True, text=True, cwd="/", timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert got == {n: [s["params_total"], "SGD"] for n, s in summaries.items()}
    # ablation analyze loads them too: the token model with no 3x3 conv is said so
    an = run_cli("analyze", "--study", str(designs), "mix_d", "mix_e", "--images", "10",
                 "--results", str(res), "--data-dir", str(cifar_dir))
    assert an.returncode == 0, an.stdout + an.stderr
    assert "mix_e s0" in an.stdout and "no 3x3 convolution, nothing to measure" in an.stdout
    assert "mix_d s0" in an.stdout and "3x3 layers, response std" in an.stdout


def test_the_docs_table_gives_every_op_with_its_signature():
    text = (ops_docs := (EXAMPLES.parent / "docs" / "studies.md")).read_text()
    for name in graph.OPS:
        assert f"`{graph.signature(name)}`" in text, (name, ops_docs)
    example = (EXAMPLES / "se_units.py").read_text().split('"""', 2)[2]
    body = example[example.index("@unit"):]
    assert body.strip() in text  # the docs show the example in full, as it is


def test_a_softmax_over_one_element_or_no_axis_is_refused():
    """Token scores (N, L, 1) under the last axis' softmax would weigh every token 1: one
    line naming the axis to use; axis 1 normalises over the tokens."""
    import keras
    import numpy as np

    for g in (graph.Counter(), graph.Builder(keras, 1e-4)):
        scores = g.input((5, 1))
        with pytest.raises(graph.OpError, match=r"has one element, so every weight would be 1: "
                                          r"give the axis .*axis=1 for tokens"):
            g.softmax(scores, "w")
        for bad in (0, 3, -3):
            with pytest.raises(graph.OpError, match=r"is not an axis of|must be an integer"):
                g.softmax(scores, f"w{bad}", axis=bad)
        weights = g.softmax(scores, "tokens", axis=1)
        assert tuple(weights.shape[1:]) == (5, 1)
        if not g.counting:
            x = np.arange(10, dtype="float32").reshape(2, 5, 1)
            out = keras.Model(scores, weights)(x)
            np.testing.assert_allclose(np.asarray(out).sum(1), 1.0, rtol=1e-6)
