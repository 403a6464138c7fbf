"""Non-residual families as data: the blog's VGG19 (counts, graph, pretrained weights),
He 2015's plain nets in a user's study, and a mixed study that trains end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import one_line_error, run_cli, run_dirs

from ablation import build_model, count_params, registry
from ablation.errors import AblationError
from ablation.models import layer_inputs, load_pretrained

VGG19_CONVS = [64, 64, 128, 128] + [256] * 4 + [512] * 8


def test_list_shows_the_blogs_vgg19_counts_from_the_counting_interpreter():
    r = run_cli("list", "vgg19*", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for name in ("vgg19", "vgg19_pretrain"):
        row = rows[name]
        assert (row["params_total"], row["params_trainable"], row["params_non_trainable"],
                row["depth"]) == (39_002_738, 38_975_326, 27_412, 19)
    assert count_params("vgg19").macs > 5 * count_params("resnet32").macs
    # the quick form stays ResNet-only
    quick = json.loads(run_cli("list", "resnet3*", "--json").stdout)
    assert all(not row["name"].startswith("vgg") for row in quick)


def test_vgg19_is_built_layer_by_layer_as_reconstructed():
    m = build_model("vgg19")
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert (m.count_params(), trainable) == (39_002_738, 38_975_326)
    cfg = {layer.name: layer for layer in m.layers}
    convs = [layer for layer in m.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == VGG19_CONVS
    assert all(c.kernel_size == (3, 3) and c.strides == (1, 1) and c.use_bias for c in convs)
    inputs = layer_inputs(m)
    # stages of 2, 2, 4, 4, 4 convs, each conv -> BN -> ReLU, the next conv reading that
    # ReLU, or the stage's max-pool after it
    names = [f"s{i}b{j}" for i, n in enumerate((2, 2, 4, 4, 4), 1) for j in range(1, n + 1)]
    assert [c.name for c in convs] == [f"{b}_conv1" for b in names]
    previous = "image"
    for b in names:
        stage, j = b[:2], int(b[3:])
        if j == 1 and b != "s1b1":
            previous = f"s{int(stage[1]) - 1}_pool"
        assert inputs[f"{b}_conv1"] == [previous]
        assert inputs[f"{b}_bn1"] == [f"{b}_conv1"]
        assert inputs[f"{b}_relu1"] == [f"{b}_bn1"]
        previous = f"{b}_relu1"
        if b in ("s1b2", "s2b2", "s3b4", "s4b4", "s5b4"):
            assert inputs[f"{stage}_pool"] == [previous]
    assert tuple(cfg["s5_pool"].output.shape) == (None, 1, 1, 512)
    # flatten; dense 4096-BN-ReLU twice; dense 10-BN-softmax
    chain = ["s5_pool", "head_flatten", "head_fc1", "head_fc1_bn", "head_fc1_relu", "head_fc2",
             "head_fc2_bn", "head_fc2_relu", "head_dense", "head_dense_bn", "head_softmax"]
    for src, dst in itertools.pairwise(chain):
        assert inputs[dst] == [src], dst
    assert [cfg[n].units for n in ("head_fc1", "head_fc2", "head_dense")] == [4096, 4096, 10]
    assert cfg["head_dense"].get_config()["activation"] == "linear"
    assert cfg["head_softmax"].get_config()["activation"] == "softmax"
    assert not any("add" in n or "dropout" in n for n in cfg)
    assert dict(registry.get("vgg19").recipe) == {"weight_decay": 5e-4}


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A VGG19 in Keras' include_top=False layout with random weights, saved: what
    `keras.applications.VGG19(weights=...)` reads, ImageNet's or this one."""
    import keras

    keras.utils.set_random_seed(3)
    ref = keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg19_notop.weights.h5"
    ref.save_weights(str(path))
    return path, [w.numpy() for layer in ref.layers if layer.__class__.__name__ == "Conv2D"
                  for w in layer.weights]


def test_pretrained_weights_go_to_the_16_convs_in_order(vgg_weights):
    path, theirs = vgg_weights
    m = build_model("vgg19")
    assert load_pretrained(m, str(path)) == 16
    ours = [w.numpy() for layer in m.layers if layer.__class__.__name__ == "Conv2D"
            for w in layer.weights]
    assert len(ours) == 32 and all(np.array_equal(a, b) for a, b in zip(ours, theirs,
                                                                          strict=True))
    with pytest.raises(AblationError, match="cannot load the pretrained VGG19 weights"):
        load_pretrained(m, str(path.parent / "missing.weights.h5"))
    with pytest.raises(AblationError, match="fit only VGG19's 16 convs"):
        load_pretrained(build_model("resnet32_e"), str(path))


PLAIN = """
name = "families"
description = "Plain nets (He 2015, Fig. 6) and VGG19 pretrained from a local file."

[[variant]]
name = "plain20"
label = "plain-20"
unit = "plain"
stem = "conv_bn_relu"
head = "plain"
stages = [[3, 16], [3, 32], [3, 64]]

[[variant]]
name = "plain56"
base = "plain20"
stages = [[9, 16], [9, 32], [9, 64]]

[[variant]]
name = "vgg11"
base = "vgg19"
stages = [[1, 64], [1, 128], [2, 256], [2, 512], [2, 512]]

[[variant]]
name = "vgg_local"
base = "vgg19"
pretrained = "vgg19_notop.weights.h5"

[[variant]]
name = "vgg_offline"
base = "vgg19"
pretrained = "not-downloaded.weights.h5"

[[comparison]]
title = "plain vs VGG19"
variants = ["plain20", "vgg19", "vgg_local", "vgg_offline"]
sizes = true
"""


def test_plain_nets_count_as_their_option_a_resnets(tmp_path, isolated_registry):
    """A plain net is its ResNet without shortcuts: with option A shortcuts (no
    parameters) the counts are equal, and He 2015's are checked by hand."""
    from ablation.study import load_study

    (tmp_path / "families.toml").write_text(PLAIN)
    load_study("he2015")
    load_study(tmp_path / "families.toml")
    for plain, res in (("plain20", "he_resnet20"), ("plain56", "he_resnet56")):
        p, r = count_params(plain), count_params(res)
        assert (p.params_total, p.params_non_trainable, p.depth) == (
            r.params_total, r.params_non_trainable, r.depth)
    assert count_params("plain20").params_total == 271_786
    assert count_params("plain56").depth == 56
    # VGG-11 with BN, by hand: convs 1,792 + 73,856 + 295,168 + 590,080 + 1,180,160 +
    # 3 x 2,359,808; BN 4 x 2,752; dense 2,101,248 + 16,781,312 + 40,970; BN 4 x 8,202
    vgg11 = count_params("vgg11")
    assert (vgg11.params_total, vgg11.depth) == (28_187_826, 11)
    assert vgg11.params_total == build_model("vgg11").count_params()


def test_a_study_of_plain_and_vgg_nets_trains_reports_and_fails_offline_in_one_line(
        tmp_path, vgg_weights, cifar_dir):
    import keras

    path, _theirs = vgg_weights
    (tmp_path / "vgg19_notop.weights.h5").write_bytes(path.read_bytes())
    study = tmp_path / "families.toml"
    study.write_text(PLAIN)
    res = tmp_path / "results"
    # one VGG19 trains (from the local weights): the blog's from-scratch vgg19 is the same
    # network and the same training path, and each VGG19 job costs a minute here
    flags = ["--epochs", "1", "--train-limit", "32", "--test-limit", "16", "--batch-size",
             "16", "--data-dir", str(cifar_dir), "--results", str(res)]
    r = run_cli("run", "--study", str(study), "plain20", "vgg_local", *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 done" in r.stdout
    # a local weights file that is not there stops the command before it queues anything
    # (ImageNet weights that cannot be downloaded fail their job alone: load_pretrained)
    line = one_line_error(run_cli("run", "--study", str(study), "vgg_offline", *flags))
    assert "vgg_offline starts from the pretrained weights" in line and "not-downloaded" in line
    runs = {d.name.split("-")[0]: d for d in run_dirs(res)}
    local = json.loads((runs["vgg_local"] / "summary.json").read_text())
    assert local["status"] == "done"
    assert local["pretrained"].endswith("vgg19_notop.weights.h5")
    assert local["pretrained_convs"] == 16
    assert local["params_total"] == 39_002_738 and local["h5_bytes"] > 300_000_000
    scratch = json.loads((runs["plain20"] / "summary.json").read_text())
    assert scratch["status"] == "done" and "pretrained" not in scratch
    model = keras.models.load_model(str(runs["vgg_local"] / "model.h5"), compile=False)
    assert model.count_params() == 39_002_738
    out = tmp_path / "report"
    r = run_cli("report", "--study", str(study), "--results", str(res), "--out", str(out))
    assert r.returncode == 0, r.stderr
    md = (out / "README.md").read_text()
    assert "Pretrained: vgg_local from" in md and "39,002,738" in md


def test_bad_family_fields_are_one_line(tmp_path):
    for body, says in (('downsample = "avg"', "unknown downsample 'avg'"),
                       ("head_widths = [0]", "head_widths must be a list of positive"),
                       ("dropout = 1.5", "dropout must be a number from 0 to below 1"),
                       ('head = "mlp"', "unknown head 'mlp'")):
        f = tmp_path / "bad.toml"
        f.write_text(f'name = "bad"\n[[variant]]\nname = "v"\nbase = "vgg19"\n{body}\n')
        assert says in one_line_error(run_cli("list", "--study", str(f)))
