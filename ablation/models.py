"""One builder for every variant, and the residual units it is built from.

The network is written once, as calls on an *ops* object (conv, bn, relu, add, ...).
Two interpreters run it:

* `KerasOps` makes the real Keras functional model (`build_model`);
* `CountOps` only tracks shapes, so `count_params` gives exact parameter counts, depth
  and multiply-adds for resnet152 in microseconds, without allocating 57M weights.
  Because both run the same graph code, the counts cannot drift from the models; the
  tests check them against built models anyway. A user's unit runs under both too.

A residual unit is a function `(ops, x, block) -> y` (public API, see docs/studies.md),
looked up by name in `UNITS`. The built-in ones follow *Identity Mappings in Deep
Residual Networks* (He et al. 2016), Fig. 4 a-e, on a residual branch F that is
either two 3x3 convs (basic) or 1x1-3x3-1x1 (bottleneck), with BN-ReLU between convs:

* (a) original:            ReLU(BN(F(x)) + S)
* (b) BN after addition:   ReLU(BN(F(x) + S))
* (c) ReLU before add:     ReLU(BN(F(x))) + S
* (d) ReLU-only pre-act:   h = ReLU(x);     BN(F(h)) + S, S = x or P(h)
* (e) full pre-activation: h = ReLU(BN(x)); F(h) + S,     S = x or P(h)

S is the identity, or where the shape changes either the 1x1 projection P (reading h,
or the block input x in the blog's `_v2` variants) or the paper's parameter-free
option A (subsample by the stride, zero-pad the new channels). Basic units are named
`a`..`e`, bottleneck units `bottleneck_a`..`bottleneck_e`; `bottleneck` (the blog's
ResNet-50/101/152 unit, form c) and `preact_bottleneck` (resnet34's downsampling
unit, form e, inner width C/2) keep the blog's defaults.

Deviations from the papers that the blog's parameter counts demand are documented in
the README ("Deviations from the papers").
"""

from __future__ import annotations

import hashlib
import inspect
import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from ablation import registry
from ablation.errors import AblationError
from ablation.recipe import DEFAULTS
from ablation.registry import Variant

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


@dataclass(frozen=True)
class Block:
    """Where a unit sits and what it must produce (public API: a unit reads these)."""

    name: str  # layer-name prefix, e.g. "s2b1"
    filters: int  # output width
    stride: int
    project: bool  # the shortcut must change shape (stride or width)
    projection_input: str  # "preact": P reads h; "input": P reads x (the v2 tweak)
    inner: int | None = None  # bottleneck inner width, if the stage sets one
    shortcut: str = "projection"  # how a shape-changing shortcut is made: projection | pad
    preactivated: bool = False  # the stem already applied this unit's pre-activation


class UnitError(AblationError):
    """A unit that does not build: names the unit and the block."""


# --- shortcuts and residual branches --------------------------------------------------------


def shortcut(ops: Any, x: Any, h: Any, block: Block) -> Any:
    """The block's shortcut: identity, or where the shape changes the 1x1 projection
    (reading h, or x when `block.projection_input == "input"`) or option A."""
    if not block.project:
        return x
    if block.shortcut == "pad":
        return ops.pad_shortcut(x, block.filters, block.stride, f"{block.name}_short")
    src = x if block.projection_input == "input" else h
    return ops.conv(src, block.filters, 1, block.stride, f"{block.name}_proj", main=False)


def basic_branch(ops: Any, x: Any, b: Block) -> tuple[Any, int]:
    """conv3x3 (stride) -> BN -> ReLU -> conv3x3; returns the output and its conv count."""
    y = ops.conv(x, b.filters, 3, b.stride, f"{b.name}_conv1")
    y = ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")
    return ops.conv(y, b.filters, 3, 1, f"{b.name}_conv2"), 2


def bottleneck_branch(ops: Any, x: Any, b: Block, ratio: int = 4) -> tuple[Any, int]:
    """conv1x1 (stride) -> BN-ReLU -> conv3x3 -> BN-ReLU -> conv1x1 to the output width.
    Inner width: the stage's `inner`, else output width / ratio."""
    inner = b.inner or b.filters // ratio
    y = ops.conv(x, inner, 1, b.stride, f"{b.name}_conv1")
    y = ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")
    y = ops.conv(y, inner, 3, 1, f"{b.name}_conv2")
    y = ops.relu(ops.bn(y, f"{b.name}_bn2"), f"{b.name}_relu2")
    return ops.conv(y, b.filters, 1, 1, f"{b.name}_conv3"), 3


Branch = Callable[[Any, Any, Block], tuple[Any, int]]


# --- the five unit forms --------------------------------------------------------------------


def form_a(ops: Any, x: Any, b: Block, branch: Branch = basic_branch) -> Any:
    y, k = branch(ops, x, b)
    y = ops.bn(y, f"{b.name}_bn{k}")
    return ops.relu(ops.add(y, shortcut(ops, x, x, b), f"{b.name}_add"), f"{b.name}_out")


def form_b(ops: Any, x: Any, b: Block, branch: Branch = basic_branch) -> Any:
    y, k = branch(ops, x, b)
    y = ops.add(y, shortcut(ops, x, x, b), f"{b.name}_add")
    return ops.relu(ops.bn(y, f"{b.name}_bn{k}"), f"{b.name}_out")


def form_c(ops: Any, x: Any, b: Block, branch: Branch = basic_branch) -> Any:
    y, k = branch(ops, x, b)
    y = ops.relu(ops.bn(y, f"{b.name}_bn{k}"), f"{b.name}_relu{k}")
    return ops.add(y, shortcut(ops, x, x, b), f"{b.name}_add")


def form_d(ops: Any, x: Any, b: Block, branch: Branch = basic_branch) -> Any:
    h = x if b.preactivated else ops.relu(x, f"{b.name}_preact_relu")
    y, k = branch(ops, h, b)
    y = ops.bn(y, f"{b.name}_bn{k}")
    return ops.add(y, shortcut(ops, x, h, b), f"{b.name}_add")


def form_e(ops: Any, x: Any, b: Block, branch: Branch = basic_branch) -> Any:
    h = x if b.preactivated else ops.relu(ops.bn(x, f"{b.name}_preact_bn"),
                                          f"{b.name}_preact_relu")
    y, _ = branch(ops, h, b)
    return ops.add(y, shortcut(ops, x, h, b), f"{b.name}_add")


def plain(ops: Any, x: Any, b: Block) -> Any:
    """The unit without its shortcut (He 2015's plain nets, Fig. 6; VGG's conv pairs):
    conv3x3 (stride) -> BN -> ReLU -> conv3x3 -> BN -> ReLU."""
    y, k = basic_branch(ops, x, b)
    return ops.relu(ops.bn(y, f"{b.name}_bn{k}"), f"{b.name}_relu{k}")


def conv_bn_relu(ops: Any, x: Any, b: Block) -> Any:
    """One conv3x3 (stride) -> BN -> ReLU: VGG's layer, a stage of n of them VGG's
    stage of n convs."""
    y = ops.conv(x, b.filters, 3, b.stride, f"{b.name}_conv1")
    return ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")


Unit = Callable[[Any, Any, Block], Any]

BUILTIN_UNITS: dict[str, Unit] = {
    **{name: partial(form, branch=basic_branch)
       for name, form in zip("abcde", (form_a, form_b, form_c, form_d, form_e), strict=True)},
    **{f"bottleneck_{name}": partial(form, branch=bottleneck_branch)
       for name, form in zip("abcde", (form_a, form_b, form_c, form_d, form_e), strict=True)},
    # the blog's names: ResNet-50/101/152's unit, and resnet34's downsampling unit
    "bottleneck": partial(form_c, branch=bottleneck_branch),
    "preact_bottleneck": partial(form_e, branch=partial(bottleneck_branch, ratio=2)),
    "plain": plain,
    "conv_bn_relu": conv_bn_relu,
}
UNITS: dict[str, Unit] = dict(BUILTIN_UNITS)  # plus the user units studies load
_UNIT_HASHES: dict[str, str] = {}


def unit_source_hash(fn: Unit) -> str:
    """sha256 of a unit's source and of the same module's functions it calls by name,
    so editing a unit (or a helper it uses) is a new definition."""
    seen: set[str] = set()
    parts: list[str] = []

    def visit(f: Any) -> None:
        f = getattr(f, "func", f)  # functools.partial
        if not isinstance(f, types.FunctionType) or f.__qualname__ in seen:
            return
        seen.add(f.__qualname__)
        try:
            parts.append(inspect.getsource(f))
        except (OSError, TypeError):
            parts.append(f.__qualname__)
        for name in f.__code__.co_names:
            g = f.__globals__.get(name)
            if isinstance(g, types.FunctionType) and g.__module__ == f.__module__:
                visit(g)

    visit(fn)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def unit(name: str) -> Callable[[Unit], Unit]:
    """Decorator that registers a residual unit `(ops, x, block) -> y` under `name`.

    Public API: `from ablation import unit`. A built-in name cannot be redefined;
    registering the same source again (a study loaded twice) is a no-op.
    """
    def register(fn: Unit) -> Unit:
        if not name or not isinstance(name, str):
            raise AblationError(f"a unit needs a name, got {name!r}")
        if name in BUILTIN_UNITS:
            raise AblationError(f"unit {name!r} clashes with a built-in unit; pick another "
                                "name")
        digest = unit_source_hash(fn)
        if name in UNITS and _UNIT_HASHES.get(name) != digest:
            raise AblationError(f"unit {name!r} is already defined by other code")
        UNITS[name] = fn
        _UNIT_HASHES[name] = digest
        return fn
    return register


def user_unit_hash(name: str) -> str | None:
    """The source hash of a user unit; None for built-in units (pinned by the package)."""
    return _UNIT_HASHES.get(name)


# --- stems and heads ------------------------------------------------------------------------


def stem_conv(ops: Any, x: Any, v: Variant) -> Any:
    """The blog's stem: one 3x3 conv, no BN of its own."""
    return ops.conv(x, v.stem_filters, 3, 1, "stem_conv")


def stem_conv_bn_relu(ops: Any, x: Any, v: Variant) -> Any:
    """The papers' stem: conv3x3 -> BN -> ReLU (for pre-activation units it is the
    first unit's pre-activation, applied before the split into two paths)."""
    y = ops.conv(x, v.stem_filters, 3, 1, "stem_conv")
    return ops.relu(ops.bn(y, "stem_bn"), "stem_relu")


def stem_none(ops: Any, x: Any, v: Variant) -> Any:
    """No stem: the first unit reads the image (VGG)."""
    return x


def head_bn_relu(ops: Any, x: Any, num_classes: int, v: Variant) -> Any:
    """The blog's head (and the papers' for pre-activation nets): BN-ReLU-GAP-dense."""
    x = ops.relu(ops.bn(x, "head_bn"), "head_relu")
    return ops.dense(ops.pool(x, "head_pool"), num_classes, "head_dense")


def head_plain(ops: Any, x: Any, num_classes: int, v: Variant) -> Any:
    """GAP-dense: for nets whose units end in their own activation (He 2015)."""
    return ops.dense(ops.pool(x, "head_pool"), num_classes, "head_dense")


def _hidden_dense(ops: Any, x: Any, v: Variant) -> Any:
    x = ops.flatten(x, "head_flatten")
    for i, width in enumerate(v.head_widths, 1):
        x = ops.dense(x, width, f"head_fc{i}", activation=None)
        x = ops.relu(ops.bn(x, f"head_fc{i}_bn"), f"head_fc{i}_relu")
        if v.dropout:
            x = ops.dropout(x, v.dropout, f"head_fc{i}_dropout")
    return x


def head_dense(ops: Any, x: Any, num_classes: int, v: Variant) -> Any:
    """Flatten, then dense layers of `head_widths` (each with BN, ReLU and optional
    dropout), then a softmax dense layer."""
    return ops.dense(_hidden_dense(ops, x, v), num_classes, "head_dense")


def head_dense_bn(ops: Any, x: Any, num_classes: int, v: Variant) -> Any:
    """As `dense`, with BN between the last dense layer and its softmax: the blog's VGG19
    (its 27,412 non-trainable parameters count a BN of the 10 outputs)."""
    x = ops.dense(_hidden_dense(ops, x, v), num_classes, "head_dense", activation=None)
    return ops.softmax(ops.bn(x, "head_dense_bn"), "head_softmax")


# name -> (stem, whether it applies the first unit's pre-activation)
STEMS: dict[str, tuple[Callable[[Any, Any, Variant], Any], bool]] = {
    "conv": (stem_conv, False),
    "conv_bn_relu": (stem_conv_bn_relu, True),
    "none": (stem_none, False),
}
HEADS: dict[str, Callable[[Any, Any, int, Variant], Any]] = {
    "bn_relu": head_bn_relu,
    "plain": head_plain,
    "dense": head_dense,
    "dense_bn": head_dense_bn,
}
SHORTCUTS = ("projection", "pad")
PROJECTION_INPUTS = ("preact", "input")
DOWNSAMPLES = ("stride", "pool")


def _network(ops: Any, v: Variant, x: Any, num_classes: int, channels: int = 3) -> Any:
    """The one builder: stem, stages of units (halving the map by a strided first unit,
    or by a max-pool after the stage), head."""
    stem, activates = STEMS[v.stem]
    x = stem(ops, x, v)
    width = channels if v.stem == "none" else v.stem_filters
    pool = v.downsample == "pool"
    for i, stage in enumerate(v.stages):
        for j in range(stage.blocks):
            stride = 2 if not pool and j == 0 and (i > 0 or v.first_stage_stride == 2) else 1
            project = j == 0 and (stride != 1 or width != stage.width)
            name = v.down_unit if (project and v.down_unit) else v.unit
            block = Block(f"s{i + 1}b{j + 1}", stage.width, stride, project,
                          v.projection_input, stage.inner, v.shortcut,
                          preactivated=activates and i == 0 and j == 0)
            try:
                x = UNITS[name](ops, x, block)
            except AblationError:
                raise
            except Exception as e:
                raise UnitError(f"unit {name!r} failed in block {block.name} of {v.name}: "
                                f"{type(e).__name__}: {e}".splitlines()[0]) from None
            width = stage.width
        if pool:
            x = ops.maxpool(x, f"s{i + 1}_pool")
    return HEADS[v.head](ops, x, num_classes, v)


# --- interpreters ---------------------------------------------------------------------------

# what a unit (and a head) may call; maxpool, flatten, dense, dropout and softmax were
# added in 0.3 (additions to the stable ops API, docs/studies.md)
OPS = ("conv", "bn", "relu", "add", "pad_shortcut", "maxpool", "pool", "flatten", "dense",
       "dropout", "softmax")


class _Ops:
    def __getattr__(self, name: str) -> Any:  # only for names that are not ops
        raise AttributeError(f"unknown op {name!r} (a unit may call {', '.join(OPS)})")


class KerasOps(_Ops):
    """Builds real Keras layers with the blog's settings. `keras_module` defaults to
    Keras 3; the benchmark's baseline passes `tf_keras` to build the same graph."""

    def __init__(self, weight_decay: float = DEFAULTS.weight_decay, fast: bool = False,
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

    def pad_shortcut(self, x: Any, filters: int, stride: int, name: str) -> Any:
        """Option A: subsample by the stride, zero-pad the channels up to `filters`,
        from standard layers only (so the .h5 loads without project code)."""
        if stride > 1:
            x = self.layers.MaxPooling2D(pool_size=1, strides=stride,
                                         name=f"{name}_subsample")(x)
        h, w, c = x.shape[1:]
        if filters > c:
            x = self.layers.Reshape((h, w, c, 1), name=f"{name}_expand")(x)
            x = self.layers.ZeroPadding3D(((0, 0), (0, 0), (0, filters - c)),
                                          name=f"{name}_pad")(x)
            x = self.layers.Reshape((h, w, filters), name=f"{name}_squeeze")(x)
        return x

    def pool(self, x: Any, name: str) -> Any:
        return self.layers.GlobalAveragePooling2D(name=name)(x)

    def maxpool(self, x: Any, name: str) -> Any:
        return self.layers.MaxPooling2D(pool_size=2, strides=2, name=name)(x)

    def flatten(self, x: Any, name: str) -> Any:
        return self.layers.Flatten(name=name)(x)

    def dense(self, x: Any, units: int, name: str, activation: str | None = "softmax") -> Any:
        # a softmax computes in float32 under mixed precision too (the Keras guide's
        # advice: bf16/fp16 probabilities lose the small ones the loss needs)
        extra = {"dtype": "float32"} if activation == "softmax" else {}
        return self.layers.Dense(units, activation=activation, kernel_initializer="he_normal",
                                 kernel_regularizer=self.reg, name=name, **extra)(x)

    def dropout(self, x: Any, rate: float, name: str) -> Any:
        return self.layers.Dropout(rate, name=name)(x)

    def softmax(self, x: Any, name: str) -> Any:
        return self.layers.Activation("softmax", name=name, dtype="float32")(x)


class Shape(NamedTuple):
    h: int
    w: int
    c: int


class CountOps(_Ops):
    """Runs the builder on shapes alone: exact parameter counts, depth, multiply-adds.
    It also checks what Keras would reject: an addition of different shapes."""

    def __init__(self):
        self.trainable = self.non_trainable = self.depth = self.macs = 0

    def conv(self, x: Shape, filters: int, kernel: int, stride: int, name: str,
             main: bool = True) -> Shape:
        out = Shape(math.ceil(x.h / stride), math.ceil(x.w / stride), filters)
        self.trainable += kernel * kernel * x.c * filters + filters
        self.macs += kernel * kernel * x.c * filters * out.h * out.w
        self.depth += int(main)
        return out

    def bn(self, x: Shape | int, name: str) -> Shape | int:
        c = x if isinstance(x, int) else x.c  # a dense layer's output is its width
        self.trainable += 2 * c  # gamma, beta
        self.non_trainable += 2 * c  # moving mean, moving variance
        return x

    def relu(self, x: Shape, name: str) -> Shape:
        return x

    def add(self, a: Shape, b: Shape, name: str) -> Shape:
        if a != b:
            raise ValueError(f"{name}: adding {tuple(a)} to {tuple(b)} (h, w, channels)")
        return a

    def pad_shortcut(self, x: Shape, filters: int, stride: int, name: str) -> Shape:
        if filters < x.c:
            raise ValueError(f"{name}: option A cannot shrink {x.c} channels to {filters}")
        return Shape(math.ceil(x.h / stride), math.ceil(x.w / stride), filters)

    def pool(self, x: Shape, name: str) -> int:
        return x.c

    def maxpool(self, x: Shape, name: str) -> Shape:
        if x.h < 2 or x.w < 2:
            raise ValueError(f"{name}: cannot halve a {x.h}x{x.w} map")
        return Shape(x.h // 2, x.w // 2, x.c)

    def flatten(self, x: Shape, name: str) -> int:
        return x.h * x.w * x.c

    def dense(self, c: int, units: int, name: str, activation: str | None = "softmax") -> int:
        self.trainable += c * units + units
        self.macs += c * units
        self.depth += 1
        return units

    def dropout(self, x: int, rate: float, name: str) -> int:
        return x

    def softmax(self, x: int, name: str) -> int:
        return x


def layer_inputs(model: Any) -> dict[str, list[str]]:
    """layer name -> the layers whose outputs it reads, from the public model config
    (works for any functional Keras model, a user's units included)."""
    def sources(x: Any):
        if isinstance(x, dict):
            config = x.get("config")
            if isinstance(config, dict) and "keras_history" in config:
                yield config["keras_history"][0]
            else:
                for v in x.values():
                    yield from sources(v)
        elif isinstance(x, list | tuple):
            for v in x:
                yield from sources(v)

    return {layer["name"]: [src for node in layer.get("inbound_nodes", [])
                            for src in sources(node.get("args", []))]
            for layer in model.get_config()["layers"]}


@dataclass(frozen=True)
class ModelInfo:
    """Analytic facts about a variant, from the same graph code as the model."""

    depth: int
    params_total: int
    params_trainable: int
    params_non_trainable: int
    macs: int  # multiply-adds of one forward pass of one image


def count_params(name: str | Variant, num_classes: int = 10,
                 input_shape: tuple[int, int, int] = (32, 32, 3)) -> ModelInfo:
    """Exact parameter counts, weighted depth (stem + main-path convs + dense) and
    multiply-adds per image, without building anything."""
    v = name if isinstance(name, Variant) else registry.get(name)
    ops = CountOps()
    _network(ops, v, Shape(*input_shape), num_classes, input_shape[-1])
    return ModelInfo(ops.depth, ops.trainable + ops.non_trainable, ops.trainable,
                     ops.non_trainable, ops.macs)


def build_model(name: str | Variant, num_classes: int = 10,
                input_shape: tuple[int, int, int] = (32, 32, 3),
                weight_decay: float = DEFAULTS.weight_decay, fast: bool = False,
                keras_module: Any = None) -> Any:
    """The uncompiled Keras model of a variant (softmax output).

    Seed Keras (`keras.utils.set_random_seed`) beforehand for reproducible weights.
    `fast` swaps in the layers of `ablation.layers` (same math, TensorFlow's fused
    kernels) for training speed; graph, names and weights are the same, so its weights
    load into the standard model, which is what gets saved. `keras_module` builds the
    same graph on another Keras (the baseline passes `tf_keras`).
    """
    if keras_module is None:
        import keras as keras_module

    v = name if isinstance(name, Variant) else registry.get(name)
    inputs = keras_module.Input(shape=input_shape, name="image")
    outputs = _network(KerasOps(weight_decay, fast, keras_module), v, inputs, num_classes,
                       input_shape[-1])
    return keras_module.Model(inputs, outputs, name=v.name)


def load_pretrained(model: Any, source: str) -> int:
    """Start the model's convolutions from Keras' VGG19 (`keras.applications.VGG19`,
    include_top=False): `source` is "imagenet" (downloaded once, then cached by Keras)
    or the path of a weights file in that layout. The 16 convs are matched by order and
    shape. Returns how many convs were loaded."""
    import keras

    remedy = ("without internet, fetch them once where it is reachable (Keras caches them "
              "in ~/.keras/models) or point `pretrained` at a local copy; or train the "
              "from-scratch variant")
    if source != "imagenet" and not Path(source).is_file():
        raise AblationError(f"cannot load the pretrained VGG19 weights {source!r}: no such "
                            f"file; {remedy}")
    try:
        ref = keras.applications.VGG19(weights=source, include_top=False,
                                       input_shape=(32, 32, 3))
    except Exception as e:  # offline, a damaged or foreign file
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else \
            type(e).__name__
        raise AblationError(f"cannot load the pretrained VGG19 weights {source!r} ({why}); "
                            f"{remedy}") from None
    theirs = [layer for layer in ref.layers if isinstance(layer, keras.layers.Conv2D)]
    ours = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    shapes = [tuple(w.shape for w in layer.weights) for layer in ours]
    if shapes != [tuple(w.shape for w in layer.weights) for layer in theirs]:
        raise AblationError(f"pretrained VGG19 weights fit only VGG19's 16 convs; "
                            f"{model.name} has {len(ours)} convs of other shapes")
    for mine, src in zip(ours, theirs, strict=True):
        mine.set_weights(src.get_weights())
    return len(ours)
