"""The designs a lab ablates today, written as a user would from docs/studies.md, and the
same networks written again in plain Keras, independently of ablation's ops, so the
tests can hold `ablation list`'s counts against models nobody counted by rule.

`design_units()` is the examples' four units files plus three more designs and a unit
named like a built-in (`plain`) that uses a Keras layer of its own (LayerScale)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_UNITS = ("se_units.py", "convnext_units.py", "resnext_units.py",
                 "stochastic_depth_units.py", "convmixer_units.py", "vit_units.py",
                 "mlp_mixer_units.py")

MORE_UNITS = '''

import keras  # noqa: E402

from ablation import head, stem  # noqa: E402


@unit("e_silu")  # SiLU in place of every ReLU of (e); the variant sets head_act = "silu"
def e_silu(ops, x, block):
    n = block.name
    h = ops.act(ops.bn(x, f"{n}_preact_bn"), "silu", f"{n}_preact_act")
    y = ops.conv(h, block.filters, 3, block.stride, f"{n}_conv1")
    y = ops.act(ops.bn(y, f"{n}_bn1"), "silu", f"{n}_act1")
    y = ops.conv(y, block.filters, 3, 1, f"{n}_conv2")
    return ops.add(y, shortcut(ops, x, h, block), f"{n}_add")


@unit("e_dilated")  # (e) whose 3x3 convs dilate by 2 in the last stage (after its stride)
def e_dilated(ops, x, block):
    n = block.name
    d = 2 if block.stage == block.stages - 1 and block.stride == 1 else 1
    h = ops.relu(ops.bn(x, f"{n}_preact_bn"), f"{n}_preact_relu")
    y = ops.conv(h, block.filters, 3, block.stride, f"{n}_conv1", dilation=d)
    y = ops.relu(ops.bn(y, f"{n}_bn1"), f"{n}_relu1")
    y = ops.conv(y, block.filters, 3, 1, f"{n}_conv2", dilation=d)
    return ops.add(y, shortcut(ops, x, h, block), f"{n}_add")


@unit("e_gn")  # (e) with Keras' GroupNormalization (4 groups) in place of BN
def e_gn(ops, x, block):
    n = block.name
    h = ops.layer(keras.layers.GroupNormalization(groups=4, name=f"{n}_preact_gn"), x)
    h = ops.relu(h, f"{n}_preact_relu")
    y = ops.conv(h, block.filters, 3, block.stride, f"{n}_conv1")
    y = ops.layer(keras.layers.GroupNormalization(groups=4, name=f"{n}_gn1"), y)
    y = ops.relu(y, f"{n}_relu1")
    y = ops.conv(y, block.filters, 3, 1, f"{n}_conv2")
    return ops.add(y, shortcut(ops, x, h, block), f"{n}_add")


@keras.saving.register_keras_serializable(package="designs")
class LayerScale(keras.layers.Layer):
    """A learned per-channel scale (CaiT, ConvNeXt): a layer Keras does not ship."""

    def __init__(self, init=0.1, **kwargs):
        super().__init__(**kwargs)
        self.init = init

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma",
                                     initializer=keras.initializers.Constant(self.init))

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return {**super().get_config(), "init": self.init}


@unit("kitchen")  # the ops no other design here uses: concat, avgpool, groupnorm, dropout
def kitchen(ops, x, block):
    n = block.name
    h = ops.relu(ops.groupnorm(x, 4, f"{n}_gn"), f"{n}_relu")
    a = ops.conv(h, block.filters // 2, 3, block.stride, f"{n}_conv_a", bias=False)
    b = ops.conv(h, block.filters // 2, 1, block.stride, f"{n}_conv_b", main=False)
    y = ops.dropout(ops.concat([a, b], f"{n}_concat"), 0.1, f"{n}_dropout")
    if block.project:
        s = ops.conv(ops.avgpool(x, f"{n}_pool") if block.stride == 2 else x, block.filters,
                     1, 1, f"{n}_proj", main=False)
    else:
        s = x
    return ops.add(y, s, f"{n}_add")


class Gate(keras.layers.Layer):
    """A sigmoid gate with a learned bias per channel: a layer of the study's own that
    the file does NOT register with Keras (ablation does, as the file is imported)."""

    def build(self, input_shape):
        self.shift = self.add_weight(shape=(input_shape[-1],), name="shift",
                                     initializer="zeros")

    def call(self, x):
        return keras.ops.sigmoid(x + self.shift)


@unit("cbam")  # CBAM's channel attention: one MLP shared by the average and max pools
def cbam(ops, x, block):
    n, c = block.name, x.shape[-1]
    mlp1 = keras.layers.Dense(max(1, c // 4), activation="relu", name=f"{n}_ca_mlp1")
    mlp2 = keras.layers.Dense(c, name=f"{n}_ca_mlp2")
    avg = ops.pool(x, f"{n}_ca_avg")
    top = ops.layer(keras.layers.GlobalMaxPooling2D(name=f"{n}_ca_max"), x)
    a = ops.layer(mlp2, ops.layer(mlp1, avg, main=False), main=False)
    m = ops.layer(mlp2, ops.layer(mlp1, top, main=False), main=False)  # the same layers
    gate = ops.layer(Gate(name=f"{n}_ca_gate"), ops.add(a, m, f"{n}_ca_sum"))
    y = ops.multiply(x, gate, f"{n}_ca_scale")
    y = ops.conv(ops.relu(ops.bn(y, f"{n}_bn"), f"{n}_relu"), block.filters, 3,
                 block.stride, f"{n}_conv")
    s = ops.conv(x, block.filters, 1, block.stride, f"{n}_proj", main=False) \
        if block.project else x
    return ops.add(y, s, f"{n}_add")


@unit("map_attention")  # self-attention over a map's positions, through ops.layer with
def map_attention(ops, x, block):  # MultiHeadAttention's two tensor arguments
    n = block.name
    h = ops.layernorm(x, f"{n}_ln")
    mha = keras.layers.MultiHeadAttention(2, 8, attention_axes=(1, 2), name=f"{n}_mha")
    return ops.add(x, ops.layer(mha, h, h), f"{n}_add")


@stem("t_tokens")  # a token stem of the study's own: patches, a class token, positions
def t_tokens(ops, x, net):
    y = ops.conv(x, net.stem_filters, 8, 8, "stem_patchify")
    y = ops.class_token(ops.tokens(y, "stem_tokens"), "stem_cls")
    return ops.position_embedding(y, "stem_pos")


@head("t_head")  # a head of the study's own: LayerNorm, mean of the tokens, dense
def t_head(ops, x, net):
    x = ops.dense(ops.pool(ops.layernorm(x, "head_ln"), "head_pool"), net.num_classes,
                  "head_dense")
    return x


@unit("plain")  # the study's own `plain` shadows the built-in one: (e) + LayerScale
def plain(ops, x, block):
    n = block.name
    h = ops.relu(ops.bn(x, f"{n}_preact_bn"), f"{n}_preact_relu")
    y = ops.conv(h, block.filters, 3, block.stride, f"{n}_conv1")
    y = ops.relu(ops.bn(y, f"{n}_bn1"), f"{n}_relu1")
    y = ops.conv(y, block.filters, 3, 1, f"{n}_conv2")
    y = ops.layer(LayerScale(name=f"{n}_scale"), y)
    return ops.add(y, shortcut(ops, x, h, block), f"{n}_add")
'''

TINY3 = "[[1, 16], [1, 32], [1, 64]]"
STUDY = f'''\
name = "designs"
units = "designs_units.py"

[[variant]]
name = "t_e"
base = "resnet32_e"
stages = {TINY3}

[[variant]]
name = "t_se"
base = "t_e"
unit = "e_se"

[[variant]]
name = "t_convnext"
base = "t_e"
unit = "convnext"
head = "plain"

[[variant]]
name = "t_resnext"
base = "t_e"
unit = "resnext_c8"
stem = "conv_bn_relu"
stem_filters = 32
head = "plain"
stages = [[1, 64, 16], [1, 128, 32], [1, 256, 64]]

[[variant]]
name = "t_droppath"
base = "t_e"
unit = "e_droppath"

[[variant]]
name = "t_silu"
base = "t_e"
unit = "e_silu"
head_act = "silu"

[[variant]]
name = "t_dilated"
base = "t_e"
unit = ["e", "e", "e_dilated"]
stages = [[1, 16], [1, 32], [2, 64]]

[[variant]]
name = "t_gn"
base = "t_e"
unit = "e_gn"

[[variant]]
name = "t_plain"
base = "t_e"
unit = "plain"

[[variant]]
name = "t_kitchen"
base = "t_e"
unit = "kitchen"

# the designs, three to a network (a unit per stage): what the tests train
[[variant]]
name = "mix_a"
base = "t_e"
unit = ["e_se", "convnext", "resnext_c8"]
stages = [[1, 16], [1, 32], [1, 64, 16]]

[[variant]]
name = "mix_b"
base = "t_e"
unit = ["e_droppath", "e_silu", "e_dilated"]
stages = [[1, 16], [1, 32], [2, 64]]
head_act = "silu"

[[variant]]
name = "mix_c"
base = "t_e"
unit = ["e_gn", "plain", "kitchen"]

# He 2015's option A (a parameter-free shortcut of standard layers), one unit a stage
[[variant]]
name = "t_option_a"
base = "t_e"
unit = "a"
stem = "conv_bn_relu"
head = "plain"
shortcut = "pad"

# token models: a patchify stem of the study's own, attention, MLP mixing, a shared MLP
# and an unregistered layer class (CBAM), attention over a map through ops.layer
[[variant]]
name = "t_convmixer"
unit = "convmixer"
stem = "convmixer_patches"
stem_filters = 32
stages = [[2, 32]]
head = "plain"

[[variant]]
name = "t_vit"
unit = "vit"
stem = "vit_patches"
stem_filters = 32
stages = [[2, 32]]
head = "ln_cls"

[[variant]]
name = "t_mixer"
unit = "mixer"
stem = "mixer_patches"
stem_filters = 32
stages = [[2, 32]]
head = "ln_gap"

[[variant]]
name = "mix_d"
base = "t_e"
unit = ["convmixer", "cbam", "map_attention"]
stem = "convmixer_patches"
stem_filters = 16
stages = [[1, 16], [1, 32], [1, 32]]
head = "ln_gap"

[[variant]]
name = "mix_e"
unit = ["vit", "mixer"]
stem = "t_tokens"
stem_filters = 32
stages = [[1, 32], [1, 32]]
head = "t_head"

[[comparison]]
title = "Designs against (e)"
variants = ["t_e", "t_se", "t_convnext", "t_resnext", "t_droppath", "t_silu", "t_dilated",
            "t_gn", "t_plain", "t_kitchen"]

[[comparison]]
title = "Three designs a network"
variants = ["mix_a", "mix_b", "mix_c", "mix_d", "mix_e"]
'''


def design_units() -> str:
    """The examples' units and MORE_UNITS, as one units file."""
    return "\n\n".join((EXAMPLES / f).read_text() for f in EXAMPLE_UNITS) + MORE_UNITS


def write_designs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "designs_units.py").write_text(design_units())
    (folder / "designs.toml").write_text(STUDY)
    return folder / "designs.toml"


# --- the same networks in plain Keras ------------------------------------------------------


def _layers():
    import keras

    return keras.layers


def _preact_e(x, w, stride, project, act="relu", norm="bn", dilation=1, extra=None):
    L = _layers()

    def normalise(t):
        return L.BatchNormalization()(t) if norm == "bn" else L.GroupNormalization(4)(t)

    h = L.Activation(act)(normalise(x))
    y = L.Conv2D(w, 3, strides=stride, padding="same", dilation_rate=dilation)(h)
    y = L.Activation(act)(normalise(y))
    y = L.Conv2D(w, 3, padding="same", dilation_rate=dilation)(y)
    if extra is not None:
        y = extra(y)
    s = L.Conv2D(w, 1, strides=stride)(h) if project else x
    return L.Add()([y, s])


def keras_e(x, w, stride, project, i, j, n_stages):
    return _preact_e(x, w, stride, project)


def keras_se(x, w, stride, project, i, j, n_stages, ratio=4):
    L = _layers()

    def gate(y):
        s = L.GlobalAveragePooling2D()(y)
        s = L.Dense(max(1, w // ratio), activation="relu")(s)
        s = L.Dense(w, activation="sigmoid")(s)
        return L.Multiply()([y, L.Reshape((1, 1, w))(s)])

    return _preact_e(x, w, stride, project, extra=gate)


def keras_droppath(x, w, stride, project, i, j, n_stages):
    L = _layers()
    return _preact_e(x, w, stride, project,
                     extra=lambda y: L.Dropout(0.1, noise_shape=(None, 1, 1, 1))(y))


def keras_silu(x, w, stride, project, i, j, n_stages):
    return _preact_e(x, w, stride, project, act="silu")


def keras_dilated(x, w, stride, project, i, j, n_stages):
    return _preact_e(x, w, stride, project,
                     dilation=2 if i == n_stages - 1 and stride == 1 else 1)


def keras_gn(x, w, stride, project, i, j, n_stages):
    return _preact_e(x, w, stride, project, norm="gn")


def keras_layerscale(x, w, stride, project, i, j, n_stages):
    L = _layers()

    class Scale(L.Layer):
        def build(self, shape):
            self.g = self.add_weight(shape=(shape[-1],))

        def call(self, t):
            return t * self.g

    return _preact_e(x, w, stride, project, extra=lambda y: Scale()(y))


def keras_kitchen(x, w, stride, project, i, j, n_stages):
    L = _layers()
    h = L.Activation("relu")(L.GroupNormalization(4)(x))
    a = L.Conv2D(w // 2, 3, strides=stride, padding="same", use_bias=False)(h)
    b = L.Conv2D(w // 2, 1, strides=stride)(h)
    y = L.Dropout(0.1)(L.Concatenate()([a, b]))
    s = x
    if project:
        s = L.Conv2D(w, 1)(L.AveragePooling2D(2)(x) if stride == 2 else x)
    return L.Add()([y, s])


def keras_convnext(x, w, stride, project, i, j, n_stages):
    L = _layers()
    if project:
        x = L.LayerNormalization()(x)
        x = L.Conv2D(w, 2 if stride == 2 else 1, strides=stride, padding="same")(x)
    y = L.DepthwiseConv2D(7, padding="same")(x)
    y = L.LayerNormalization()(y)
    y = L.Conv2D(4 * w, 1)(y)
    y = L.Activation("gelu")(y)
    y = L.Conv2D(w, 1)(y)
    return L.Add()([x, y])


def keras_resnext(x, w, stride, project, i, j, n_stages, inner=None, groups=8):
    L = _layers()
    y = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(inner, 1)(x)))
    y = L.Conv2D(inner, 3, strides=stride, padding="same", groups=groups)(y)
    y = L.Activation("relu")(L.BatchNormalization()(y))
    y = L.BatchNormalization()(L.Conv2D(w, 1)(y))
    s = L.BatchNormalization()(L.Conv2D(w, 1, strides=stride)(x)) if project else x
    return L.Activation("relu")(L.Add()([y, s]))


def keras_convmixer(x, w, stride, project, i, j, n_stages, k=5):
    L = _layers()
    y = L.BatchNormalization()(L.Activation("gelu")(L.DepthwiseConv2D(k, padding="same")(x)))
    x = L.Add()([x, y])
    return L.BatchNormalization()(L.Activation("gelu")(L.Conv2D(w, 1)(x)))


def keras_vit(x, w, stride, project, i, j, n_stages, heads=4, mlp=2):
    L = _layers()
    h = L.LayerNormalization()(x)
    x = L.Add()([x, L.MultiHeadAttention(heads, w // heads)(h, h)])
    y = L.Dense(mlp * w, activation="gelu")(L.LayerNormalization()(x))
    return L.Add()([x, L.Dense(w)(y)])


def keras_mixer(x, w, stride, project, i, j, n_stages, token_mlp=64, channel_mlp=256):
    L = _layers()
    y = L.Permute((2, 1))(L.LayerNormalization()(x))
    y = L.Dense(x.shape[1])(L.Dense(token_mlp, activation="gelu")(y))
    x = L.Add()([x, L.Permute((2, 1))(y)])
    y = L.Dense(channel_mlp, activation="gelu")(L.LayerNormalization()(x))
    return L.Add()([x, L.Dense(w)(y)])


def keras_cbam(x, w, stride, project, i, j, n_stages):
    L = _layers()
    c = x.shape[-1]
    mlp1, mlp2 = L.Dense(max(1, c // 4), activation="relu"), L.Dense(c)  # shared
    a = mlp2(mlp1(L.GlobalAveragePooling2D()(x)))
    m = mlp2(mlp1(L.GlobalMaxPooling2D()(x)))

    class Gate(L.Layer):
        def build(self, shape):
            self.b = self.add_weight(shape=(shape[-1],))

        def call(self, t):
            return t + self.b

    g = L.Activation("sigmoid")(Gate()(L.Add()([a, m])))
    y = L.Multiply()([x, L.Reshape((1, 1, c))(g)])
    y = L.Conv2D(w, 3, strides=stride, padding="same")(
        L.Activation("relu")(L.BatchNormalization()(y)))
    s = L.Conv2D(w, 1, strides=stride)(x) if project else x
    return L.Add()([y, s])


def keras_map_attention(x, w, stride, project, i, j, n_stages):
    L = _layers()
    h = L.LayerNormalization()(x)
    return L.Add()([x, L.MultiHeadAttention(2, 8, attention_axes=(1, 2))(h, h)])


def _token_stem(x, width, patch):
    """Patches as tokens, a class token before them, a position embedding added."""
    L = _layers()

    class ClassToken(L.Layer):
        def build(self, shape):
            self.t = self.add_weight(shape=(1, 1, shape[-1]))

        def call(self, t):
            import keras
            tok = keras.ops.broadcast_to(self.t, (keras.ops.shape(t)[0], 1, t.shape[-1]))
            return keras.ops.concatenate([tok, t], axis=1)

    class Positions(L.Layer):
        def build(self, shape):
            self.p = self.add_weight(shape=tuple(shape[1:]))

        def call(self, t):
            return t + self.p

    y = L.Conv2D(width, patch, strides=patch)(x)
    y = L.Reshape((y.shape[1] * y.shape[2], width))(y)
    return Positions()(ClassToken()(y))


def keras_net(stages, block, stem_filters=16, stem="conv", head="bn_relu", head_act="relu",
              num_classes=10):
    """A ResNet-like net in plain Keras: stem, stages of `block`, head."""
    import keras

    L = keras.layers
    inp = keras.Input((32, 32, 3))
    if stem in ("conv", "conv_bn_relu"):
        x = L.Conv2D(stem_filters, 3, padding="same")(inp)
    elif stem.startswith("convmixer"):  # patches of 2, GELU, BN
        x = L.BatchNormalization()(L.Activation("gelu")(
            L.Conv2D(stem_filters, 2, strides=2)(inp)))
    elif stem.startswith("mixer"):  # patches of 4 as tokens
        x = L.Conv2D(stem_filters, 4, strides=4)(inp)
        x = L.Reshape((x.shape[1] * x.shape[2], stem_filters))(x)
    else:  # "vit4" or "tokens8": patches as tokens, class token, positions
        x = _token_stem(inp, stem_filters, 4 if stem == "vit4" else 8)
    if stem == "conv_bn_relu":
        x = L.Activation("relu")(L.BatchNormalization()(x))
    width = stem_filters
    for i, (blocks, w, *inner) in enumerate(stages):
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            project = j == 0 and (stride != 1 or width != w)
            kw = {"inner": inner[0]} if inner else {}
            unit = block[i] if isinstance(block, list) else block  # a block per stage
            x = unit(x, w, stride, project, i, j, len(stages), **kw)
            width = w
    if head == "bn_relu":
        x = L.Activation(head_act)(L.BatchNormalization()(x))
    if head == "ln_cls":
        x = L.LayerNormalization()(x)
        x = L.Reshape((width,))(L.Cropping1D((0, x.shape[1] - 1))(x))
    elif head == "ln_gap":
        x = L.LayerNormalization()(x)
    if head != "ln_cls":
        x = (L.GlobalAveragePooling1D() if len(x.shape) == 3 else L.GlobalAveragePooling2D())(x)
    return keras.Model(inp, L.Dense(num_classes, activation="softmax")(x))


def counts(model) -> tuple[int, int, int]:
    """(total, trainable, non-trainable) of a built Keras model."""
    import math

    t = sum(math.prod(w.shape) for w in model.trainable_weights)
    nt = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return t + nt, t, nt


TINY = [[1, 16], [1, 32], [1, 64]]
# variant of the designs study -> its plain-Keras twin
DESIGNS = {
    "t_e": lambda: keras_net(TINY, keras_e),
    "t_se": lambda: keras_net(TINY, keras_se),
    "t_convnext": lambda: keras_net(TINY, keras_convnext, head="plain"),
    "t_resnext": lambda: keras_net([[1, 64, 16], [1, 128, 32], [1, 256, 64]], keras_resnext,
                                   stem_filters=32, stem="conv_bn_relu", head="plain"),
    "t_droppath": lambda: keras_net(TINY, keras_droppath),
    "t_silu": lambda: keras_net(TINY, keras_silu, head_act="silu"),
    "t_dilated": lambda: keras_net([[1, 16], [1, 32], [2, 64]], keras_dilated),
    "t_gn": lambda: keras_net(TINY, keras_gn),
    "t_plain": lambda: keras_net(TINY, keras_layerscale),
    "t_kitchen": lambda: keras_net(TINY, keras_kitchen),
    "mix_a": lambda: keras_net([[1, 16], [1, 32], [1, 64, 16]],
                               [keras_se, keras_convnext, keras_resnext]),
    "mix_b": lambda: keras_net([[1, 16], [1, 32], [2, 64]],
                               [keras_droppath, keras_silu, keras_dilated], head_act="silu"),
    "mix_c": lambda: keras_net(TINY, [keras_gn, keras_layerscale, keras_kitchen]),
}
DESIGNS.update({
    "t_convmixer": lambda: keras_net([[2, 32]], keras_convmixer, stem_filters=32,
                                     stem="convmixer", head="plain"),
    "t_vit": lambda: keras_net([[2, 32]], keras_vit, stem_filters=32, stem="vit4",
                               head="ln_cls"),
    "t_mixer": lambda: keras_net([[2, 32]], keras_mixer, stem_filters=32, stem="mixer",
                                 head="ln_gap"),
    "mix_d": lambda: keras_net([[1, 16], [1, 32], [1, 32]],
                               [keras_convmixer, keras_cbam, keras_map_attention],
                               stem_filters=16, stem="convmixer", head="ln_gap"),
    "mix_e": lambda: keras_net([[1, 32], [1, 32]], [keras_vit, keras_mixer], stem_filters=32,
                               stem="tokens8", head="ln_gap"),
})
# every design, and every op, in five networks
MIXED = ("mix_a", "mix_b", "mix_c", "mix_d", "mix_e")


def _full(n):
    return [[n, 16], [n, 32], [n, 64]]


# the examples' variants at their full size -> their plain-Keras twins
EXAMPLE_NETS = {
    ("se.toml", "resnet32_e_se"): lambda: keras_net(_full(5), keras_se),
    ("convnext.toml", "convnext_c32"): lambda: keras_net(
        [[3, 32], [3, 64], [3, 128]], keras_convnext, stem_filters=32, head="plain"),
    ("resnext.toml", "resnext29_c8"): lambda: keras_net(
        [[3, 256, 64], [3, 512, 128], [3, 1024, 256]], keras_resnext, stem_filters=64,
        stem="conv_bn_relu", head="plain"),
    ("resnext.toml", "resnet29_c1"): lambda: keras_net(
        [[3, 256, 64], [3, 512, 128], [3, 1024, 256]],
        lambda *a, **k: keras_resnext(*a, **k, groups=1), stem_filters=64,
        stem="conv_bn_relu", head="plain"),
    ("stochastic_depth.toml", "resnet56_e_dp"): lambda: keras_net(_full(9), keras_droppath),
    ("stochastic_depth.toml", "resnet110_e_dp"): lambda: keras_net(_full(18),
                                                                   keras_droppath),
    ("convmixer.toml", "convmixer_256_8"): lambda: keras_net(
        [[8, 256]], keras_convmixer, stem_filters=256, stem="convmixer", head="plain"),
    ("vit.toml", "vit_96_6"): lambda: keras_net([[6, 96]], keras_vit, stem_filters=96,
                                                stem="vit4", head="ln_cls"),
    ("mlp_mixer.toml", "mixer_128_6"): lambda: keras_net(
        [[6, 128]], keras_mixer, stem_filters=128, stem="mixer", head="ln_gap"),
}
