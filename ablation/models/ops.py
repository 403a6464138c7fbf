"""The ops units, stems and heads are written in: each op defined once, one function
that checks its arguments, computes its output shape and what it costs (trainable and
non-trainable parameters, multiply-adds, whether it is a weighted layer of the main path)
from its inputs' shapes, and says which Keras layer computes it. The interpreters that
run them, counting and building, are `ablation.models.graph`'s.

The ops and their signatures are public API (docs/studies.md): additions only.
"""

from __future__ import annotations

import math
from typing import Any

from ablation.models.graph import OpError, _shape, _short, _spreads, op

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
LN_EPSILON = 1e-6  # LayerNormalization, as ConvNeXt sets it
GN_EPSILON = 1e-5  # GroupNormalization, as Wu & He 2018 (and PyTorch) set it

# Keras activations by name (`keras.activations.get`), for ops.act, ops.dense and the
# head's activation: a fixed list, so a typo fails at `ablation list` without importing
# Keras; tests/test_ops.py checks that Keras resolves every one of them.
ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
               "hard_silu", "hard_swish", "mish", "sigmoid", "hard_sigmoid", "log_sigmoid",
               "tanh", "softplus", "softsign", "linear", "exponential", "softmax")


def _int(v: Any, op: str, what: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise OpError(f"ops.{op}: {what} must be an integer >= {lo}, got {_short(v)}")
    return v


def _rate(v: Any, op: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
        raise OpError(f"ops.{op}: rate must be a number from 0 to below 1, got {_short(v)}")
    return float(v)


def _activation(v: Any, op: str, what: str = "fn", none: bool = False) -> str | None:
    if v is None and none:
        return None
    if v not in ACTIVATIONS:
        raise OpError(f"ops.{op}: unknown {what} {v!r} (Keras activations: "
                      f"{', '.join(ACTIVATIONS)}{', or None' if none else ''})")
    return v


def _out(size: int, stride: int) -> int:
    return -(-size // stride)  # `same` padding


def _strided(g, op: str, name: str, h: int, w: int, stride: int) -> None:
    """A stride needs a map at least that large: a stride of 2 over a 1x1 map computes,
    with `same` padding, but the images are then smaller than the network assumes."""
    if stride > 1 and min(h, w) < stride:
        raise OpError(f"ops.{op} {name}: stride {stride} over a {h}x{w} map: the images are "
                      "too small for this network; give a larger image_size")


# --- the ops -------------------------------------------------------------------------------


INITS = ("he_normal", "torch", "dirac")  # how ops.conv and ops.dense start their kernels


def _kernel_init(init: Any, op: str) -> Any:
    """A kernel's initializer by name: He-normal (the blog's); PyTorch's default
    (uniform in ±1/sqrt(fan_in), as Keras' VarianceScaling says it); `dirac`: PyTorch's
    default, then each filter whose index is an input channel's passes that channel
    through (airbench's partial identity; set once the layer is built, `_dirac`)."""
    if init not in INITS:
        raise OpError(f"ops.{op}: init must be one of {', '.join(INITS)}, got {_short(init)}")

    def make() -> Any:  # only a built layer needs it: the counting pass imports no Keras
        if init == "he_normal":
            return "he_normal"
        import keras

        return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")

    return make


def _dirac(layer: Any) -> None:
    """Filter o < C_in passes input channel o through unchanged: 1 at the centre of its
    own channel, 0 elsewhere (PyTorch's `dirac_` on the first C_in filters)."""
    import numpy as np

    w = np.array(layer.kernel.numpy() if hasattr(layer.kernel, "numpy") else layer.kernel)
    kh, kw, c_in, c_out = w.shape
    n = min(c_in, c_out)
    w[:, :, :, :n] = 0.0
    w[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
    layer.kernel.assign(w)


@op
def conv(g, x, filters, kernel, stride, name, main=True, groups=1, dilation=1, bias=True,
         init="he_normal", padding="same"):
    """2-D convolution, `same` padding (or `valid`), the recipe's L2 on the kernel; its
    kernel starts He-normal (`init`: or "torch", PyTorch's default uniform, or "dirac",
    that plus the partial identity of airbench: `INITS`). Counts k·k·(C/groups)·filters
    weights (+ filters biases); multiply-adds those weights times the output's H·W; a
    weighted layer of the main path unless `main=False`."""
    h, w, c = g.tensor(x, "conv", rank=3)
    filters = _int(filters, "conv", "filters")
    kernel = _int(kernel, "conv", "kernel")
    stride = _int(stride, "conv", "stride")
    groups = _int(groups, "conv", "groups")
    dilation = _int(dilation, "conv", "dilation")
    if c % groups or filters % groups:
        raise OpError(f"ops.conv: groups {groups} must divide the input's {c} channels and "
                      f"the {filters} filters")
    if stride > 1 and dilation > 1:
        raise OpError("ops.conv: stride and dilation cannot both be above 1 (Keras "
                      "convolutions support one or the other)")
    _strided(g, "conv", name, h, w, stride)
    start = _kernel_init(init, "conv")
    if init == "dirac" and groups != 1:
        raise OpError("ops.conv: a dirac init needs groups = 1")
    if padding not in ("same", "valid"):
        raise OpError(f"ops.conv {name}: padding must be same or valid, got {_short(padding)}")
    if padding == "valid":
        reach = dilation * (kernel - 1) + 1
        if h < reach or w < reach:
            raise OpError(f"ops.conv {name}: a {kernel}x{kernel} kernel does not fit {h}x{w}")
        h, w = h - reach + 1, w - reach + 1
    dims = (_out(h, stride), _out(w, stride), filters)
    weights = kernel * kernel * (c // groups) * filters
    return g.emit(name, [x], dims, lambda L: L.Conv2D(
        filters, kernel, strides=stride, padding=padding, groups=groups,
        dilation_rate=dilation, use_bias=bool(bias), kernel_initializer=start(),
        kernel_regularizer=g.reg, bias_regularizer=g.bias_reg, name=name),
        trainable=weights + filters * bool(bias), macs=weights * dims[0] * dims[1],
        depth=bool(main), after=_dirac if init == "dirac" else None)


@op
def depthwise(g, x, kernel, stride, name, dilation=1, bias=True):
    """Depthwise 2-D convolution (one k x k filter per channel), `same` padding,
    He-normal, the recipe's L2. Counts k·k·C weights (+ C biases); multiply-adds k·k·C
    times the output's H·W; a weighted layer of the main path."""
    h, w, c = g.tensor(x, "depthwise", rank=3)
    kernel = _int(kernel, "depthwise", "kernel")
    stride = _int(stride, "depthwise", "stride")
    dilation = _int(dilation, "depthwise", "dilation")
    if stride > 1 and dilation > 1:
        raise OpError("ops.depthwise: stride and dilation cannot both be above 1")
    _strided(g, "depthwise", name, h, w, stride)
    dims = (_out(h, stride), _out(w, stride), c)
    return g.emit(name, [x], dims, lambda L: L.DepthwiseConv2D(
        kernel, strides=stride, padding="same", dilation_rate=dilation, use_bias=bool(bias),
        depthwise_initializer="he_normal", depthwise_regularizer=g.reg,
        bias_regularizer=g.bias_reg, name=name),
        trainable=kernel * kernel * c + c * bool(bias), macs=kernel * kernel * c * dims[0]
        * dims[1], depth=True)


@op
def bn(g, x, name, scale=True, momentum=BN_MOMENTUM, epsilon=BN_EPSILON):
    """BatchNormalization over the last axis (momentum 0.9, epsilon 1e-5 unless given):
    C trainable offsets (beta), C scales (gamma; none with `scale=False`, as airbench's),
    and 2·C non-trainable moving mean and variance. Under the recipe's `bn_bias_lr` the
    offset is a layer of its own, `<name>_bias` (`ablation.layers.ScaledBias`), whose
    steps are that many times larger; the counts are the same."""
    dims = g.tensor(x, "bn")
    c = dims[-1]
    for what, v, ok in (("momentum", momentum, lambda v: 0 <= v < 1),
                        ("epsilon", epsilon, lambda v: v > 0)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not ok(v):
            raise OpError(f"ops.bn {name}: bad {what} {_short(v)}")
    apart = g.bn_bias_lr != 1

    def norm(L):
        return L.BatchNormalization(
            momentum=momentum, epsilon=epsilon, name=name, scale=bool(scale), center=not apart,
            gamma_regularizer=g.bias_reg, beta_regularizer=g.bias_reg)

    if not apart:
        return g.emit(name, [x], dims, norm, trainable=(1 + bool(scale)) * c,
                      non_trainable=2 * c)
    y = g.emit(name, [x], dims, norm, trainable=bool(scale) * c, non_trainable=2 * c)
    return g.emit(f"{name}_bias", [y], dims, lambda L: _token_layers().ScaledBias(
        g.bn_bias_lr ** 0.5, regularizer=g.bias_reg, name=f"{name}_bias"), trainable=c)


@op
def layernorm(g, x, name):
    """LayerNormalization over the channels (epsilon 1e-6): 2·C trainable."""
    dims = g.tensor(x, "layernorm")
    return g.emit(name, [x], dims, lambda L: L.LayerNormalization(
        axis=-1, epsilon=LN_EPSILON, name=name, gamma_regularizer=g.bias_reg,
        beta_regularizer=g.bias_reg), trainable=2 * dims[-1])


@op
def groupnorm(g, x, groups, name):
    """GroupNormalization of the channels in `groups` groups (epsilon 1e-5): 2·C
    trainable."""
    dims = g.tensor(x, "groupnorm")
    groups = _int(groups, "groupnorm", "groups")
    if dims[-1] % groups:
        raise OpError(f"ops.groupnorm: groups {groups} must divide the {dims[-1]} channels")
    return g.emit(name, [x], dims, lambda L: L.GroupNormalization(
        groups=groups, axis=-1, epsilon=GN_EPSILON, name=name, gamma_regularizer=g.bias_reg,
        beta_regularizer=g.bias_reg), trainable=2 * dims[-1])


@op
def relu(g, x, name):
    """ReLU (an Activation layer; no parameters)."""
    return act(g, x, "relu", name)


@op
def act(g, x, fn, name):
    """A Keras activation by name (relu, gelu, silu/swish, hard_swish, mish, ...;
    `ACTIVATIONS`); no parameters."""
    dims = g.tensor(x, "act")
    fn = _activation(fn, "act")
    if fn == "softmax":
        return softmax(g, x, name)
    return g.emit(name, [x], dims, lambda L: L.Activation(fn, name=name))


@op
def softmax(g, x, name, axis=-1):
    """Softmax over `axis` (the last by default; 1 for a token axis, (N, L, 1) scores ->
    weights over the L tokens), computed in float32 under mixed precision. An axis of
    one element is refused: its softmax is 1 everywhere."""
    dims = g.tensor(x, "softmax")
    axis = _int(axis, "softmax", "axis", lo=-len(dims))
    if axis == 0 or axis > len(dims):
        raise OpError(f"ops.softmax {name}: axis {axis} is not an axis of {_shape(dims)} "
                      "(1 is the first after the batch, -1 the last)")
    size = dims[axis] if axis < 0 else dims[axis - 1]
    if size == 1:
        raise OpError(f"ops.softmax {name}: axis {axis} of {_shape(dims)} has one element, "
                      "so every weight would be 1: give the axis to normalise over (axis=1 "
                      "for tokens)")
    if axis in (-1, len(dims)):  # the last: class probabilities, as a head gives them
        return g.probabilities(g.emit(name, [x], dims, lambda L: L.Activation(
            "softmax", name=name, dtype="float32")))
    return g.emit(name, [x], dims, lambda L: L.Softmax(axis=axis, name=name,
                                                       dtype="float32"))


@op
def add(g, a, b, name):
    """Element-wise sum of two tensors of one shape."""
    da, db = g.tensor(a, "add", "a"), g.tensor(b, "add", "b")
    if da != db:
        raise OpError(f"ops.add {name}: adding {_shape(da)} to {_shape(db)}")
    return g.emit(name, [a, b], da, lambda L: L.Add(name=name))


@op
def multiply(g, a, b, name):
    """Element-wise product; a (N, C) or (N, 1, 1, C) gate broadcasts over a
    (N, H, W, C) map (squeeze-and-excitation). A (N, C) gate is first reshaped by a
    layer named `<name>_gate`."""
    da, db = g.tensor(a, "multiply", "a"), g.tensor(b, "multiply", "b")
    if sorted((len(da), len(db))) == [1, 3]:  # a (N, C) gate and a (N, H, W, C) map
        gate, full = (a, db) if len(da) == 1 else (b, da)
        c = (da if len(da) == 1 else db)[0]
        if c != full[-1]:
            raise OpError(f"ops.multiply {name}: a gate of {c} channels cannot scale a map "
                          f"of {full[-1]}")
        shaped = g.emit(f"{name}_gate", [gate], (1, 1, c),
                        lambda L: L.Reshape((1, 1, c), name=f"{name}_gate"))
        a, b = (shaped, b) if len(da) == 1 else (a, shaped)
        da, db = tuple(a.shape[1:]), tuple(b.shape[1:])
    if len(da) != len(db) or any(p != q and 1 not in (p, q) for p, q in zip(da, db,
                                                                             strict=True)):
        raise OpError(f"ops.multiply {name}: cannot multiply {_shape(da)} by {_shape(db)}")
    dims = tuple(max(p, q) for p, q in zip(da, db, strict=True))
    return g.emit(name, [a, b], dims, lambda L: L.Multiply(name=name))


@op
def concat(g, xs, name):
    """Concatenate two or more maps along the channels (their H, W must agree)."""
    if not isinstance(xs, list | tuple) or len(xs) < 2:
        raise OpError(f"ops.concat {name}: xs must be a list of two or more tensors, got "
                      f"{_short(xs)}")
    dims = [g.tensor(x, "concat", f"xs[{i}]") for i, x in enumerate(xs)]
    if len({d[:-1] for d in dims}) != 1:
        raise OpError(f"ops.concat {name}: cannot concatenate "
                      f"{', '.join(_shape(d) for d in dims)} along the channels")
    out = (*dims[0][:-1], sum(d[-1] for d in dims))
    return g.emit(name, list(xs), out, lambda L: L.Concatenate(axis=-1, name=name))


@op
def pad_shortcut(g, x, filters, stride, name):
    """Option A (He et al. 2015): subsample by the stride, zero-pad the channels up to
    `filters`; standard layers only (so the .h5 loads without project code), no
    parameters."""
    h, w, c = g.tensor(x, "pad_shortcut", rank=3)
    filters = _int(filters, "pad_shortcut", "filters")
    stride = _int(stride, "pad_shortcut", "stride")
    if filters < c:
        raise OpError(f"ops.pad_shortcut {name}: option A cannot shrink {c} channels to "
                      f"{filters}")
    _strided(g, "pad_shortcut", name, h, w, stride)
    if stride > 1:
        h, w = _out(h, stride), _out(w, stride)
        x = g.emit(f"{name}_subsample", [x], (h, w, c), lambda L: L.MaxPooling2D(
            pool_size=1, strides=stride, name=f"{name}_subsample"))
    if filters > c:
        x = g.emit(f"{name}_expand", [x], (h, w, c, 1),
                   lambda L: L.Reshape((h, w, c, 1), name=f"{name}_expand"))
        x = g.emit(f"{name}_pad", [x], (h, w, filters, 1), lambda L: L.ZeroPadding3D(
            ((0, 0), (0, 0), (0, filters - c)), name=f"{name}_pad"))
        x = g.emit(f"{name}_squeeze", [x], (h, w, filters),
                   lambda L: L.Reshape((h, w, filters), name=f"{name}_squeeze"))
    return x


def _pooled(g, x, op: str, name: str, size: Any, stride: Any, padding: Any
            ) -> tuple[tuple[int, int, int], int, int]:
    """A pooling's output dims, its size and stride, checked: `valid` (the windows that
    fit, floor) or `same` (ceil) padding."""
    h, w, c = g.tensor(x, op, rank=3)
    size = _int(size, op, "size")
    stride = size if stride is None else _int(stride, op, "stride")
    if padding not in ("valid", "same"):
        raise OpError(f"ops.{op} {name}: padding must be valid or same, got {_short(padding)}")
    if padding == "valid":
        if h < size or w < size:
            raise OpError(f"ops.{op} {name}: a {size}x{size} window does not fit a {h}x{w} "
                          "map")
        return ((h - size) // stride + 1, (w - size) // stride + 1, c), size, stride
    return (_out(h, stride), _out(w, stride), c), size, stride


@op
def maxpool(g, x, name, size=2, stride=None, padding="valid"):
    """Max-pooling over size x size windows at `stride` (default: the size), `valid`
    (floor) or `same` padding; 2x2 stride 2 by default."""
    dims, size, stride = _pooled(g, x, "maxpool", name, size, stride, padding)
    return g.emit(name, [x], dims, lambda L: L.MaxPooling2D(
        pool_size=size, strides=stride, padding=padding, name=name))


@op
def avgpool(g, x, name, size=2, stride=None, padding="valid"):
    """Average pooling over size x size windows at `stride` (default: the size), `valid`
    (floor) or `same` padding; 2x2 stride 2 by default."""
    dims, size, stride = _pooled(g, x, "avgpool", name, size, stride, padding)
    return g.emit(name, [x], dims, lambda L: L.AveragePooling2D(
        pool_size=size, strides=stride, padding=padding, name=name))


@op
def scale(g, x, factor, name):
    """x times a constant `factor` (Keras' Rescaling): airbench's logit scaling."""
    dims = g.tensor(x, "scale")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor:
        raise OpError(f"ops.scale {name}: factor must be a non-zero number, got "
                      f"{_short(factor)}")
    return g.emit(name, [x], dims, lambda L: L.Rescaling(float(factor), name=name))


@op
def layer_scale(g, x, name, init=1e-6):
    """x times a learned per-channel scale started at `init` (ConvNeXt's layer scale,
    1e-6; `ablation.layers.LayerScale`): C trainable, never weight-decayed unless the
    recipe's `bias_decay`; no multiply-adds by the normalisation convention."""
    dims = g.tensor(x, "layer_scale")
    if isinstance(init, bool) or not isinstance(init, int | float) or init <= 0:
        raise OpError(f"ops.layer_scale {name}: init must be a positive number, got "
                      f"{_short(init)}")
    return g.emit(name, [x], dims, lambda L: _token_layers().LayerScale(
        float(init), name=name), trainable=dims[-1])


@op
def whiten(g, x, name, kernel=2, eps=5e-4):
    """airbench's first layer: a `valid` kernel x kernel convolution into 2·C·kernel²
    channels whose filters whiten the image's patches, set from training images before
    the first step (their covariance's eigenvectors over sqrt(eigenvalue + eps), and
    their negatives; `ablation.layers.Whitening`), never trained; its bias trains.
    Counts the filters as non-trainable, the 2·C·k² biases as trainable."""
    h, w, c = g.tensor(x, "whiten", rank=3)
    kernel = _int(kernel, "whiten", "kernel")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or eps <= 0:
        raise OpError(f"ops.whiten {name}: eps must be a positive number, got {_short(eps)}")
    if h < kernel or w < kernel:
        raise OpError(f"ops.whiten {name}: a {kernel}x{kernel} kernel does not fit {h}x{w}")
    out = 2 * c * kernel * kernel
    dims = (h - kernel + 1, w - kernel + 1, out)
    weights = kernel * kernel * c * out
    g.whitening += 1
    return g.emit(name, [x], dims, lambda L: _token_layers().Whitening(
        kernel, eps, bias_regularizer=g.bias_reg, name=name), trainable=out,
        non_trainable=weights, macs=weights * dims[0] * dims[1], depth=True)


@op
def pool(g, x, name):
    """Global average pooling: (N, H, W, C) -> (N, C); tokens (N, L, C) -> (N, C)."""
    dims = g.tensor(x, "pool")
    if len(dims) == 2:
        return g.emit(name, [x], (dims[-1],), lambda L: L.GlobalAveragePooling1D(name=name))
    _, _, c = g.tensor(x, "pool", rank=3)
    return g.emit(name, [x], (c,), lambda L: L.GlobalAveragePooling2D(name=name))


@op
def flatten(g, x, name):
    """Flatten to (N, H·W·C)."""
    dims = g.tensor(x, "flatten")
    return g.emit(name, [x], (math.prod(dims),), lambda L: L.Flatten(name=name))


@op
def dense(g, x, units, name, activation="softmax", main=True, bias=True, init="he_normal"):
    """A dense layer on the last axis, He-normal, the recipe's L2; `activation` a Keras
    activation or None (linear). A softmax output computes in float32. Counts C·units
    weights + units biases; multiply-adds C·units per position; a weighted layer of the
    main path unless `main=False` (a gate beside the branch, as in squeeze-and-excitation)."""
    dims = g.tensor(x, "dense")
    units = _int(units, "dense", "units")
    activation = _activation(activation, "dense", "activation", none=True)
    # a softmax computes in float32 under mixed precision too (the Keras guide's advice:
    # bf16/fp16 probabilities lose the small ones the loss needs)
    extra = {"dtype": "float32"} if activation == "softmax" else {}
    c = dims[-1]
    if init == "dirac":
        raise OpError("ops.dense: init must be he_normal or torch")
    start = _kernel_init(init, "dense")
    y = g.emit(name, [x], (*dims[:-1], units), lambda L: L.Dense(
        units, activation=activation, kernel_initializer=start(), use_bias=bool(bias),
        kernel_regularizer=g.reg, bias_regularizer=g.bias_reg, name=name, **extra),
        trainable=c * units + units * bool(bias), macs=c * units * math.prod(dims[:-1]),
        depth=bool(main))
    return g.probabilities(y) if activation == "softmax" else y


@op
def dropout(g, x, rate, name):
    """Dropout of single values at `rate` in training; identity at test time."""
    dims = g.tensor(x, "dropout")
    rate = _rate(rate, "dropout")
    return g.emit(name, [x], dims, lambda L: L.Dropout(rate, name=name))


@op
def drop_path(g, x, rate, name):
    """Stochastic depth (Huang et al. 2016): in training, drops a whole sample's tensor
    (a residual branch) with probability `rate` and scales the kept ones by
    1 / (1 − rate); identity at test time. A standard Keras Dropout whose noise is one
    value per sample, so the .h5 loads in plain Keras. Apply it to the branch before
    the addition."""
    dims = g.tensor(x, "drop_path")
    rate = _rate(rate, "drop_path")
    noise = (None, *(1,) * len(dims))
    return g.emit(name, [x], dims, lambda L: L.Dropout(rate, noise_shape=noise, name=name))


# --- token models: attention, tokens and back, position embedding, class token ------------


def _positions(g, x, op: str) -> tuple[tuple[int, ...], int]:
    """(the position axes, channels) of a map (N, H, W, C) or tokens (N, L, C)."""
    dims = g.tensor(x, op)
    if len(dims) not in (2, 3):
        raise OpError(f"ops.{op}: x must be an (N, H, W, C) map or (N, L, C) tokens, got "
                      f"shape {_shape(dims)}")
    return dims[:-1], dims[-1]


@op
def attention(g, x, heads, name, key_dim=None, dropout=0.0, main=True):
    """Multi-head self-attention over every position of a map (N, H, W, C) or of tokens
    (N, L, C): Keras' MultiHeadAttention with `heads` heads of `key_dim` (default
    C / heads) each, query = key = value = x, output C channels. Counts 4 projections:
    3·(C·heads·key_dim + heads·key_dim) + heads·key_dim·C + C; multiply-adds
    4·L·C·heads·key_dim (the projections) + 2·L²·heads·key_dim (the scores and the
    weighted sum), L positions; a weighted layer of the main path unless `main=False`."""
    pos, c = _positions(g, x, "attention")
    heads = _int(heads, "attention", "heads")
    if key_dim is None and c % heads:
        raise OpError(f"ops.attention {name}: {heads} heads do not divide {c} channels "
                      f"(each head would get {c // heads}, {c % heads} channel(s) left over); "
                      "give heads that divide the channels, or key_dim")
    key_dim = c // heads if key_dim is None else _int(key_dim, "attention", "key_dim")
    if not key_dim:
        raise OpError(f"ops.attention {name}: {heads} heads over {c} channels leave no "
                      "key_dim; give key_dim")
    dropout = _rate(dropout, "attention")
    n = math.prod(pos)
    proj = heads * key_dim
    axes = tuple(range(1, len(pos) + 1))
    return g.emit(name, [x], (*pos, c), lambda L: L.MultiHeadAttention(
        heads, key_dim, dropout=dropout, attention_axes=axes, kernel_initializer="he_normal",
        kernel_regularizer=g.reg, bias_regularizer=g.bias_reg, name=name),
        trainable=3 * (c * proj + proj) + proj * c + c,
        macs=4 * n * c * proj + 2 * n * n * proj, depth=bool(main),
        call=lambda layer, xs: layer(xs[0], xs[0]))


@op
def tokens(g, x, name):
    """A map (N, H, W, C) as tokens (N, H·W, C), row by row (a Reshape)."""
    h, w, c = g.tensor(x, "tokens", rank=3)
    return g.emit(name, [x], (h * w, c), lambda L: L.Reshape((h * w, c), name=name))


@op
def grid(g, x, height, width, name):
    """Tokens (N, L, C) back as a map (N, height, width, C), L = height·width."""
    dims = g.tensor(x, "grid", rank=2)
    height, width = _int(height, "grid", "height"), _int(width, "grid", "width")
    if height * width != dims[0]:
        raise OpError(f"ops.grid {name}: {dims[0]} tokens are not a {height}x{width} grid")
    return g.emit(name, [x], (height, width, dims[1]),
                  lambda L: L.Reshape((height, width, dims[1]), name=name))


@op
def permute(g, x, order, name):
    """The non-batch axes in another order (Keras' Permute: `order` counts them from 1):
    (2, 1) turns tokens (N, L, C) into (N, C, L), for MLP-Mixer's token mixing."""
    dims = g.tensor(x, "permute")
    if (not isinstance(order, list | tuple) or sorted(order) != list(range(1, len(dims) + 1))):
        raise OpError(f"ops.permute {name}: order must be a permutation of "
                      f"{tuple(range(1, len(dims) + 1))}, got {_short(order)}")
    out = tuple(dims[i - 1] for i in order)
    return g.emit(name, [x], out, lambda L: L.Permute(tuple(order), name=name))


@op
def position_embedding(g, x, name):
    """A learned embedding added at every position (ViT's): one weight per position and
    channel, the input's shape without the batch, initialised N(0, 0.02²), never
    weight-decayed. Counts H·W·C (or L·C)."""
    pos, c = _positions(g, x, "position_embedding")
    return g.emit(name, [x], (*pos, c), lambda L: _token_layers().PositionEmbedding(
        name=name), trainable=math.prod(pos) * c)


@op
def class_token(g, x, name):
    """A learned class token put before the tokens (ViT's): (N, L, C) -> (N, L + 1, C),
    initialised at 0, never weight-decayed. Counts C."""
    if len(g.tensor(x, "class_token")) == 3:
        raise OpError(f"ops.class_token {name}: x is an (N, H, W, C) map; make it tokens "
                      "first: ops.class_token(ops.tokens(x, name), name)")
    dims = g.tensor(x, "class_token", rank=2)
    return g.emit(name, [x], (dims[0] + 1, dims[1]), lambda L: _token_layers().ClassToken(
        name=name), trainable=dims[1])


@op
def token(g, x, index, name):
    """One token of (N, L, C) as (N, C): the class token is token 0. Standard layers
    (a Cropping1D named `<name>_crop`, then a Reshape)."""
    length, c = g.tensor(x, "token", rank=2)
    index = _int(index, "token", "index", lo=0)
    if index >= length:
        raise OpError(f"ops.token {name}: index {index} of {length} tokens")
    y = g.emit(f"{name}_crop", [x], (1, c), lambda L: L.Cropping1D(
        (index, length - index - 1), name=f"{name}_crop"))
    return g.emit(name, [y], (c,), lambda L: L.Reshape((c,), name=name))


@op
def weighted_sum(g, x, weights, name):
    """The tokens (N, L, C) summed with one weight each, `weights` (N, L, 1) or (N, L):
    (N, C), Σ_l w_l·x_l. With weights from a dense layer's scores softmaxed over the
    tokens (`ops.softmax(s, name, axis=1)`) it is CCT's sequence pooling (Hassani et al.
    2021). Standard layers (a Dot over the token axis named `<name>_dot`, then a Reshape);
    multiply-adds L·C."""
    length, c = g.tensor(x, "weighted_sum", "x", rank=2)
    w = g.tensor(weights, "weighted_sum", "weights")
    if w not in ((length,), (length, 1)):
        raise OpError(f"ops.weighted_sum {name}: weights must be (N, {length}, 1) or "
                      f"(N, {length}), one per token of x {_shape((length, c))}; got "
                      f"{_shape(w)}")
    if len(w) == 1:
        weights = g.emit(f"{name}_w", [weights], (length, 1), lambda L: L.Reshape(
            (length, 1), name=f"{name}_w"))
    y = g.emit(f"{name}_dot", [weights, x], (1, c), lambda L: L.Dot(axes=1,
                                                                     name=f"{name}_dot"),
               macs=length * c)
    return g.emit(name, [y], (c,), lambda L: L.Reshape((c,), name=name))


def _layers_within(layer: Any) -> list[Any]:
    """A layer and, for a model or a Sequential, every layer inside it."""
    out = [layer]
    for inner in getattr(layer, "layers", None) or []:
        out += _layers_within(inner)
    return out


def _softmax_layer(layer: Any) -> bool:
    """Whether a Keras layer's output is a softmax: a Softmax layer, or a layer (or a
    model's last layer) whose activation is softmax."""
    import keras

    last = _layers_within(layer)[-1]
    return isinstance(last, keras.layers.Softmax) or \
        getattr(last, "activation", None) is keras.activations.softmax


def _token_layers():
    from ablation import layers

    return layers


@op
def layer(g, layer, *inputs, main=True):
    """Any Keras layer, applied to `inputs`: one tensor; several, as separate arguments
    when its call needs two or more (MultiHeadAttention(query, value)), else as one list
    (Add, Attention); or one list of tensors, given as a list. Its own name is the layer
    name. Its parameters and output shape come from Keras itself; its multiply-adds, each
    time it is applied, by rule for the usual classes, else from its compiled form
    (`ablation.models.costs`); it counts in depth when it has a kernel, unless
    `main=False` (a gate beside the branch). The same layer object applied again (in one
    block) shares its weights: they count once. Make the layer inside the unit (a layer
    object reused across blocks would share its weights across them too)."""
    try:
        import keras
    except ImportError:  # pragma: no cover - keras is a dependency
        raise OpError("ops.layer needs Keras") from None
    if not isinstance(layer, keras.layers.Layer):
        raise OpError(f"ops.layer: the first argument must be a Keras layer, got "
                      f"{_short(layer)}")
    for inner in _layers_within(layer):
        if isinstance(inner, keras.layers.Lambda):
            raise OpError(f"ops.layer {layer.name}: a Lambda layer ({inner.name}) cannot be "
                          "loaded back from the saved .h5 (Keras refuses its code by "
                          "default), so `ablation analyze` and plain Keras could not read "
                          "the run's model; write a small Keras layer class instead "
                          "(docs/studies.md)")
    as_list = len(inputs) == 1 and isinstance(inputs[0], list | tuple)
    if as_list:
        inputs = tuple(inputs[0])
    if not inputs:
        raise OpError(f"ops.layer {layer.name}: give the tensor(s) it reads")
    for i, x in enumerate(inputs):
        g.tensor(x, "layer", f"inputs[{i}]")
    spread = not as_list and len(inputs) > 1 and _spreads(layer, len(inputs))
    try:
        y = g.foreign(layer, list(inputs), spread, bool(main))
        return g.probabilities(y) if _softmax_layer(layer) else y
    except OpError:
        raise
    except Exception as e:
        raise OpError(f"ops.layer {layer.name} ({type(layer).__name__}): "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                      ) from e
