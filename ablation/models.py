"""One builder for every registry row.

The network is written once, as calls on an *ops* object (conv, bn, relu, add, ...).
Two interpreters run it:

* `KerasOps` makes the real Keras functional model (`build_model`);
* `CountOps` only tracks channel counts, so `count_params` gives exact parameter
  counts and depth for resnet152 in microseconds, without allocating 57M weights.
  Because both run the same graph code, the counts cannot drift from the models;
  a test checks them against built models anyway.

Residual units are looked up by name in `UNITS` (the dict keyed by the registry's
`unit` / `down_unit` fields), following *Identity Mappings in Deep Residual
Networks* (He et al. 2016), Fig. 4 a-e, as the blog implemented them:

* (a) original:            ReLU(BN(conv2(ReLU(BN(conv1(x))))) + S)
* (b) BN after addition:   ReLU(BN(conv2(ReLU(BN(conv1(x)))) + S))
* (c) ReLU before add:     ReLU(BN(conv2(ReLU(BN(conv1(x)))))) + S
* (d) ReLU-only pre-act:   h = ReLU(x);     BN(conv2(ReLU(BN(conv1(h))))) + S, S = x or P(h)
* (e) full pre-activation: h = ReLU(BN(x)); conv2(ReLU(BN(conv1(h)))) + S,     S = x or P(h)

with S = x, or the 1x1 projection P in downsampling blocks; the `_v2` variants feed
P the block input x instead of h.

Deviations from the papers, kept because the blog's parameter counts demand them:

* `resnet34` is the (e) network whose two downsampling blocks are pre-activation
  bottlenecks (1x1 stride-2, 3x3, 1x1 to 2C; projection from h). The blog shows only
  a picture; this is the layout consistent with both of its published counts.
* `resnet50/101/152` halve the map in the first block of *every* stage (32->16->8->4->2)
  and end each bottleneck with BN -> ReLU before the addition, like (c).
* the blog's `resnet152` is 3-4-36-3 (the paper has 3-8-36-3): 140 weighted layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ablation import registry
from ablation.registry import Variant

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class Block:
    """Where a unit sits and what it must produce."""

    name: str  # layer-name prefix, e.g. "s2b1"
    filters: int
    stride: int
    project: bool  # shortcut is a 1x1 projection (downsampling / widening block)
    projection_input: str  # "preact" or "input"
    inner: int | None = None


# --- residual units: (ops, x, block) -> y ------------------------------------------------


def _shortcut(ops: Any, x: Any, h: Any, b: Block) -> Any:
    """Identity, or the 1x1 projection reading h (pre-activated) or x (the v2 tweak)."""
    if not b.project:
        return x
    src = x if b.projection_input == "input" else h
    return ops.conv(src, b.filters, 1, b.stride, f"{b.name}_proj", main=False)


def _two_convs(ops: Any, x: Any, b: Block, bn_after_conv2: bool) -> Any:
    y = ops.conv(x, b.filters, 3, b.stride, f"{b.name}_conv1")
    y = ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")
    y = ops.conv(y, b.filters, 3, 1, f"{b.name}_conv2")
    return ops.bn(y, f"{b.name}_bn2") if bn_after_conv2 else y


def unit_a(ops: Any, x: Any, b: Block) -> Any:
    y = _two_convs(ops, x, b, bn_after_conv2=True)
    return ops.relu(ops.add(y, _shortcut(ops, x, x, b), f"{b.name}_add"), f"{b.name}_out")


def unit_b(ops: Any, x: Any, b: Block) -> Any:
    y = _two_convs(ops, x, b, bn_after_conv2=False)
    y = ops.add(y, _shortcut(ops, x, x, b), f"{b.name}_add")
    return ops.relu(ops.bn(y, f"{b.name}_bn2"), f"{b.name}_out")


def unit_c(ops: Any, x: Any, b: Block) -> Any:
    y = ops.relu(_two_convs(ops, x, b, bn_after_conv2=True), f"{b.name}_relu2")
    return ops.add(y, _shortcut(ops, x, x, b), f"{b.name}_add")


def unit_d(ops: Any, x: Any, b: Block) -> Any:
    h = ops.relu(x, f"{b.name}_preact_relu")
    y = _two_convs(ops, h, b, bn_after_conv2=True)
    return ops.add(y, _shortcut(ops, x, h, b), f"{b.name}_add")


def unit_e(ops: Any, x: Any, b: Block) -> Any:
    h = ops.relu(ops.bn(x, f"{b.name}_preact_bn"), f"{b.name}_preact_relu")
    y = _two_convs(ops, h, b, bn_after_conv2=False)
    return ops.add(y, _shortcut(ops, x, h, b), f"{b.name}_add")


def unit_preact_bottleneck(ops: Any, x: Any, b: Block) -> Any:
    """resnet34's downsampling block: input width C -> 2C, stride on the first 1x1."""
    inner = b.inner or b.filters // 2
    h = ops.relu(ops.bn(x, f"{b.name}_preact_bn"), f"{b.name}_preact_relu")
    y = ops.conv(h, inner, 1, b.stride, f"{b.name}_conv1")
    y = ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")
    y = ops.conv(y, inner, 3, 1, f"{b.name}_conv2")
    y = ops.relu(ops.bn(y, f"{b.name}_bn2"), f"{b.name}_relu2")
    y = ops.conv(y, b.filters, 1, 1, f"{b.name}_conv3")
    return ops.add(y, _shortcut(ops, x, h, b), f"{b.name}_add")


def unit_bottleneck(ops: Any, x: Any, b: Block) -> Any:
    """resnet50/101/152: 1x1 (stride) -> 3x3 -> 1x1, BN -> ReLU before the addition."""
    inner = b.inner or b.filters // 4
    y = ops.conv(x, inner, 1, b.stride, f"{b.name}_conv1")
    y = ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")
    y = ops.conv(y, inner, 3, 1, f"{b.name}_conv2")
    y = ops.relu(ops.bn(y, f"{b.name}_bn2"), f"{b.name}_relu2")
    y = ops.conv(y, b.filters, 1, 1, f"{b.name}_conv3")
    y = ops.relu(ops.bn(y, f"{b.name}_bn3"), f"{b.name}_relu3")
    return ops.add(y, _shortcut(ops, x, x, b), f"{b.name}_add")


UNITS: dict[str, Callable[[Any, Any, Block], Any]] = {
    "a": unit_a,
    "b": unit_b,
    "c": unit_c,
    "d": unit_d,
    "e": unit_e,
    "preact_bottleneck": unit_preact_bottleneck,
    "bottleneck": unit_bottleneck,
}


def _network(ops: Any, v: Variant, x: Any, num_classes: int) -> Any:
    """The one builder: stem, stages of units, BN-ReLU-GAP-Dense head."""
    x = ops.conv(x, v.stem_filters, 3, 1, "stem_conv")
    width = v.stem_filters
    for i, stage in enumerate(v.stages):
        for j in range(stage.blocks):
            stride = 2 if j == 0 and (i > 0 or v.first_stage_stride == 2) else 1
            project = j == 0 and (stride != 1 or width != stage.width)
            unit = v.down_unit if (project and v.down_unit) else v.unit
            block = Block(f"s{i + 1}b{j + 1}", stage.width, stride, project,
                          v.projection_input, stage.inner)
            x = UNITS[unit](ops, x, block)
            width = stage.width
    x = ops.relu(ops.bn(x, "head_bn"), "head_relu")
    x = ops.pool(x, "head_pool")
    return ops.dense(x, num_classes, "head_dense")


# --- interpreters ------------------------------------------------------------------------


class KerasOps:
    """Builds real Keras layers with the blog's settings (Keras 3 by default; the
    benchmark's Keras-2 baseline passes `tf_keras` to build the same graph)."""

    def __init__(self, weight_decay: float = WEIGHT_DECAY, fast: bool = False,
                 keras_module: Any = None):
        if keras_module is None:
            import keras as keras_module
        self.layers = keras_module.layers
        self.reg = keras_module.regularizers.L2(weight_decay) if weight_decay else None
        self.bn_class = keras_module.layers.BatchNormalization
        self.conv_class = keras_module.layers.Conv2D
        if fast:
            from ablation.layers import BiasAddConv2D, FusedBatchNormalization

            self.bn_class, self.conv_class = FusedBatchNormalization, BiasAddConv2D

    def conv(self, x: Any, filters: int, kernel: int, stride: int, name: str,
             main: bool = True) -> Any:
        return self.conv_class(filters, kernel, strides=stride, padding="same", use_bias=True,
                               kernel_initializer="he_normal", kernel_regularizer=self.reg,
                               name=name)(x)

    def bn(self, x: Any, name: str) -> Any:
        return self.bn_class(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)

    def relu(self, x: Any, name: str) -> Any:
        return self.layers.Activation("relu", name=name)(x)

    def add(self, a: Any, b: Any, name: str) -> Any:
        return self.layers.Add(name=name)([a, b])

    def pool(self, x: Any, name: str) -> Any:
        return self.layers.GlobalAveragePooling2D(name=name)(x)

    def dense(self, x: Any, units: int, name: str) -> Any:
        return self.layers.Dense(units, activation="softmax", kernel_initializer="he_normal",
                                 kernel_regularizer=self.reg, name=name)(x)


@dataclass
class CountOps:
    """Runs the builder on channel counts alone: exact parameter counts and depth."""

    trainable: int = 0
    non_trainable: int = 0
    depth: int = 0

    def conv(self, cin: int, filters: int, kernel: int, stride: int, name: str,
             main: bool = True) -> int:
        self.trainable += kernel * kernel * cin * filters + filters
        self.depth += int(main)
        return filters

    def bn(self, c: int, name: str) -> int:
        self.trainable += 2 * c  # gamma, beta
        self.non_trainable += 2 * c  # moving mean, moving variance
        return c

    def relu(self, c: int, name: str) -> int:
        return c

    def add(self, a: int, b: int, name: str) -> int:
        if a != b:
            raise ValueError(f"{name}: adding {a} to {b} channels")
        return a

    def pool(self, c: int, name: str) -> int:
        return c

    def dense(self, c: int, units: int, name: str) -> int:
        self.trainable += c * units + units
        self.depth += 1
        return units


@dataclass(frozen=True)
class ModelInfo:
    """Analytic facts about a variant, from the same graph code as the model."""

    depth: int
    params_total: int
    params_trainable: int
    params_non_trainable: int


def count_params(name: str | Variant, num_classes: int = 10, channels: int = 3) -> ModelInfo:
    """Exact parameter counts and weighted depth (stem + main-path convs + dense)."""
    v = name if isinstance(name, Variant) else registry.get(name)
    ops = CountOps()
    _network(ops, v, channels, num_classes)
    return ModelInfo(ops.depth, ops.trainable + ops.non_trainable, ops.trainable,
                     ops.non_trainable)


def build_model(name: str | Variant, num_classes: int = 10,
                input_shape: tuple[int, int, int] = (32, 32, 3),
                weight_decay: float = WEIGHT_DECAY, fast: bool = False) -> Any:
    """The uncompiled Keras model of a registry variant (softmax output).

    Seed Keras (`keras.utils.set_random_seed`) beforehand for reproducible weights.
    `fast` swaps in the layers of `ablation.layers` (same math, TensorFlow's fused
    kernels) for training speed; graph, names and weights are the same, so its weights
    load into the standard model, which is what gets saved.
    """
    import keras

    v = name if isinstance(name, Variant) else registry.get(name)
    inputs = keras.Input(shape=input_shape, name="image")
    outputs = _network(KerasOps(weight_decay, fast), v, inputs, num_classes)
    return keras.Model(inputs, outputs, name=v.name)
