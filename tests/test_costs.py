"""Multiply-adds of every op, `ops.layer` included (ablation.models.costs): each rule
agrees with the backend's compiled form of the layer, whole networks' counts with their
compiled forms, and a layer neither covers is unknown with the reason, never 0."""

from __future__ import annotations

import re

import keras
import pytest
from conftest import ROOT

import ablation
from ablation.models import costs

L = keras.layers


def _applied(layer, shapes, spread=False):
    probes = [keras.KerasTensor((None, *s)) for s in shapes]
    return tuple(costs._call(layer, probes, spread).shape[1:])


RULED = [  # (layer, input shapes, spread): every rule at least once, odd settings included
    (L.Dense(7), [(5, 6)], False),
    (L.EinsumDense("abc,cd->abd", (5, 4)), [(5, 3)], False),
    (L.EinsumDense("...b,bc->...c", 4), [(3, 5, 6)], False),
    (L.Conv2D(8, 3, strides=2, groups=2), [(9, 9, 4)], False),
    (L.Conv1D(8, 3), [(9, 4)], False),
    (L.Conv2D(6, 3, data_format="channels_first", padding="same"), [(4, 7, 7)], False),
    (L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), [(9, 9, 4)], False),
    (L.SeparableConv2D(6, 3, padding="same"), [(9, 9, 4)], False),
    (L.Conv2DTranspose(5, 3, strides=2), [(6, 6, 4)], False),
    (L.MultiHeadAttention(3, 5), [(7, 12), (7, 12)], True),
    (L.MultiHeadAttention(3, 5, value_dim=4, attention_axes=(1, 2)), [(4, 5, 12), (4, 5, 12)],
     True),
    (L.MultiHeadAttention(2, 4), [(6, 8), (9, 10)], True),  # cross-attention
    (L.Attention(), [(6, 8), (9, 8)], False),
    (L.Dot(axes=1), [(6, 1), (6, 8)], False),
    (L.Dot(axes=(2, 2)), [(6, 5), (7, 5)], False),
    (L.GroupNormalization(groups=2), [(4, 4, 4)], False),
    (L.MaxPooling2D(3, 1, padding="same"), [(4, 4, 3)], False),
]


@pytest.mark.parametrize("layer,shapes,spread", RULED, ids=lambda v: getattr(
    v, "__class__", type(v)).__name__ if isinstance(v, L.Layer) else None)
def test_each_rule_is_what_the_compiled_layer_multiplies(layer, shapes, spread):
    out = _applied(layer, shapes, spread)
    ruled, how = costs.layer_macs(layer, shapes, out, spread)
    assert how == "rule"
    compiled, how = costs.compiled_macs(layer, shapes, spread)
    assert how == "compiled" and compiled == ruled, type(layer).__name__


class TwiceDense(L.Layer):
    """A user's own layer: one dense layer applied twice (no rule knows it)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.fc = L.Dense(4)

    def call(self, x):
        return self.fc(x) + self.fc(x)


def test_a_layer_without_a_rule_is_compiled_and_a_loop_is_unknown_with_why():
    mine = TwiceDense()
    assert costs.layer_macs(mine, [(3, 5)], _applied(mine, [(3, 5)]), False) == \
        (2 * 3 * 5 * 4, "compiled")
    seq = keras.Sequential([L.Dense(6), L.Dense(2)])  # a Sequential: compiled, as a whole
    assert costs.layer_macs(seq, [(5,)], _applied(seq, [(5,)]), False) == \
        (5 * 6 + 6 * 2, "compiled")
    lstm = L.LSTM(4)  # its HLO loops over the steps: unknown, and why
    assert costs.layer_macs(lstm, [(3, 5)], _applied(lstm, [(3, 5)]), False) == \
        (None, "its compiled form loops (while/conditional)")


def _parts_example(tmp_path):
    """docs/studies.md's stem-and-head example, as a user copies it, in a study."""
    text = (ROOT / "docs" / "studies.md").read_text()
    block = re.search(r"```python\n# my_parts\.py\n(.*?)```", text, re.S).group(1)
    (tmp_path / "my_parts.py").write_text(block + '''

from ablation import unit


@unit("tok")  # a pre-LN MLP block on tokens
def tok(ops, x, block):
    y = ops.layernorm(x, f"{block.name}_ln")
    y = ops.dense(y, block.filters, f"{block.name}_fc", activation="gelu")
    return ops.add(x, y, f"{block.name}_add")
''')
    rows = "\n".join(f'''
[[variant]]
name = "p_{h}"
unit = "tok"
stem = "patches4"
stem_filters = 32
stages = [[1, 32]]
head = "{h}"
''' for h in ("ln_max", "seqpool"))
    (tmp_path / "parts.toml").write_text(f'name = "parts"\nunits = "my_parts.py"\n{rows}')
    return tmp_path / "parts.toml"


def test_networks_count_what_their_compiled_forms_multiply(tmp_path, isolated_registry):
    """The blog's ResNet with projections, airbench's whitened net and the docs' token
    heads (a Keras pooling layer through ops.layer; CCT's sequence pooling): the ops'
    rules summed over the network equal the multiply-adds of its compiled form."""
    ablation.load_study("airbench2024")
    ablation.load_study(_parts_example(tmp_path))
    for name in ("resnet32_d_v2", "airbench", "p_ln_max", "p_seqpool"):
        info = ablation.count_params(name)
        model = ablation.build_model(name)
        text = costs.hlo_text(lambda x, m=model: m(x, training=False), [(32, 32, 3)])
        assert info.macs == costs.hlo_macs(text) and not info.unknown_macs, name
    ln_max, seq = ablation.count_params("p_ln_max"), ablation.count_params("p_seqpool")
    # sequence pooling: a score per token (C + 1 weights, L·C multiply-adds) and the
    # weighted sum (L·C); 64 tokens of 32 channels
    assert seq.params_total - ln_max.params_total == 32 + 1
    assert seq.macs - ln_max.macs == 2 * 64 * 32
