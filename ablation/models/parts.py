"""A network's parts by name: units, stems and heads, each kind one table of functions.

The built-in parts and a study's own are the same thing: a function a variant names,
written in the ops (`ablation.models.ops`) and run by both interpreters. A study's
parts live in the namespace of its units module and come first for that study's own
variants, then the built-in ones; so a name the package adds later never breaks a
study file that already uses it, and two studies may each have their own `patchify`.

* a unit is `(ops, x, block) -> y` (`ablation.unit`; `ablation.models.units`);
* a stem is `(ops, x, net) -> y`: the image in, the first unit's input out
  (`ablation.stem`);
* a head is `(ops, x, net) -> y`: the last unit's output in, the softmax out
  (`ablation.head`).

`net` (`Net`) tells a stem or head what the variant and the data say: its widths, its
classes, the image size. Public API (docs/studies.md): additions only.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ablation.errors import AblationError


@dataclass(frozen=True)
class Net:
    """What a stem or a head reads of the network it is part of (public API)."""

    name: str  # the variant's name
    num_classes: int
    input_shape: tuple[int, int, int]  # (H, W, C) of the images
    stem_filters: int  # the variant's stem width
    widths: tuple[int, ...]  # each stage's output width
    blocks: int  # units in the network
    head_widths: tuple[int, ...] = ()  # the dense heads' hidden layers
    dropout: float = 0.0
    head_act: str = "relu"  # the head's activation

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_shape[0], self.input_shape[1]

    @property
    def stages(self) -> int:
        return len(self.widths)


def source_hash(fn: Callable) -> str:
    """sha256 of a part's source and of the same module's functions and classes (a Keras
    layer of the study's own) it uses by name, so editing a part, or a helper or layer it
    uses, is a new definition."""
    seen: set[str] = set()
    parts: list[str] = []

    def source(f: Any) -> str:
        try:
            return inspect.getsource(f)
        except (OSError, TypeError):
            return f.__qualname__

    def visit(f: Any) -> None:
        f = getattr(f, "func", f)  # functools.partial
        if not isinstance(f, types.FunctionType) or f.__qualname__ in seen:
            return
        seen.add(f.__qualname__)
        parts.append(source(f))
        for name in f.__code__.co_names:
            g = f.__globals__.get(name)
            if getattr(g, "__module__", None) != f.__module__:
                continue
            if isinstance(g, types.FunctionType):
                visit(g)
            elif isinstance(g, type) and g.__qualname__ not in seen:
                seen.add(g.__qualname__)
                parts.append(source(g))

    visit(fn)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


LAYER_PACKAGE = "ablation_units"  # what a study's own Keras layers are registered under


def register_layers(namespace: dict, module: str) -> list[str]:
    """Make a study's own Keras layers (the classes its units file defines) loadable from
    a saved `.h5`: each one the file does not register itself is registered with Keras
    under the package `ablation_units` (`ablation_units>Gate`). The decorators of
    `unit`, `stem` and `head` call this as the file is imported, so the model a job saves
    names the class so, and importing the file (plain Keras, `ablation analyze`,
    `ablation.load_model`) registers it again: a layer class defined before the first
    part that uses it is found. `namespace`: the module's globals (it need not be in
    sys.modules). Returns the names registered here."""
    if "keras" not in sys.modules:  # no Keras loaded: the file defines no Keras layer
        return []
    import keras

    from ablation import layers  # noqa: F401  (ablation's own: position embedding, ...)

    done = []
    for obj in list(namespace.values()):
        if (isinstance(obj, type) and issubclass(obj, keras.layers.Layer)
                and obj.__module__ == module
                and keras.saving.get_registered_object(
                    keras.saving.get_registered_name(obj)) is not obj):
            keras.saving.register_keras_serializable(package=LAYER_PACKAGE)(obj)
            done.append(obj.__name__)
    return done


class UnknownPart(AblationError, KeyError):
    """A variant names a part that no table has."""

    def __str__(self) -> str:
        return str(self.args[0])


class Parts:
    """One kind of part (units, stems or heads): the built-in table, and each study
    module's own, in a namespace of its own."""

    def __init__(self, kind: str, builtin: dict[str, Callable]):
        self.kind, self.builtin = kind, builtin
        # module name -> {part name -> (function, source hash)}
        self.user: dict[str, dict[str, tuple[Callable, str]]] = {}

    def register(self, name: str, fn: Callable) -> Callable:
        """Add a study module's part (the decorator's work). Registering the same source
        again (a study loaded twice) is a no-op; another under the same name is an
        error. The module's Keras layers defined so far become loadable
        (`register_layers`), so importing the units file is all a saved model needs."""
        if not name or not isinstance(name, str):
            raise AblationError(f"a {self.kind} needs a name, got {name!r}")
        module = getattr(fn, "__module__", None) or "__main__"
        register_layers(getattr(fn, "__globals__", {}), module)
        digest = source_hash(fn)
        space = self.user.setdefault(module, {})
        if name in space and space[name][1] != digest:
            raise AblationError(f"{self.kind} {name!r} is defined twice in {module}")
        space[name] = (fn, digest)
        return fn

    def resolve(self, name: str, module: str | None = None) -> Callable:
        """The part `name` for a variant whose study's parts are in `module`: the study's
        own first, then the built-in ones."""
        found = self.user.get(module or "", {}).get(name)
        if found:
            return found[0]
        try:
            return self.builtin[name]
        except KeyError:
            raise UnknownPart(f"unknown {self.kind} {name!r} (known: "
                              f"{', '.join(self.known(module))})") from None

    def known(self, module: str | None = None) -> list[str]:
        """The names a variant of a study with its parts in `module` may use."""
        return list(dict.fromkeys([*self.mine(module), *self.builtin]))

    def mine(self, module: str | None) -> list[str]:
        """The parts a module defines, in definition order."""
        return list(self.user.get(module or "", {}))

    def source_hash(self, name: str, module: str | None) -> str | None:
        """A study's own part's source hash; None for a built-in one (pinned by the
        package) or a name the module does not define."""
        found = self.user.get(module or "", {}).get(name)
        return found[1] if found else None

    def shadowed(self, module: str | None) -> list[str]:
        """The built-in names the module's own parts shadow."""
        return [n for n in self.mine(module) if n in self.builtin]


# --- the built-in stems and heads -------------------------------------------------------------


def _act(ops: Any, x: Any, net: Net, name: str) -> Any:
    """The head's activation: ReLU (the blog's, layer `<name>_relu`) or another Keras
    activation (layer `<name>_act`)."""
    if net.head_act == "relu":
        return ops.relu(x, f"{name}_relu")
    return ops.act(x, net.head_act, f"{name}_act")


def stem_conv(ops: Any, x: Any, net: Net) -> Any:
    """The blog's stem: one 3x3 conv, no BN of its own."""
    return ops.conv(x, net.stem_filters, 3, 1, "stem_conv")


def stem_conv_bn_relu(ops: Any, x: Any, net: Net) -> Any:
    """The papers' stem: conv3x3 -> BN -> ReLU (for pre-activation units it is the
    first unit's pre-activation, applied before the split into two paths)."""
    y = ops.conv(x, net.stem_filters, 3, 1, "stem_conv")
    return ops.relu(ops.bn(y, "stem_bn"), "stem_relu")


stem_conv_bn_relu.preactivates = True


def stem_none(ops: Any, x: Any, net: Net) -> Any:
    """No stem: the first unit reads the image (VGG)."""
    return x


def stem_deep3(ops: Any, x: Any, net: Net) -> Any:
    """Bag of Tricks' ResNet-C stem at CIFAR size: three 3x3 conv-BN-ReLU (32, 32 and
    stem_filters channels) in place of one conv; stride 1 (the paper's stride-2 convs
    replace the 7x7/2 of a 224x224 input, which a 32x32 input does not have)."""
    for i, width in enumerate((32, 32, net.stem_filters), 1):
        x = ops.conv(x, width, 3, 1, f"stem_conv{i}")
        x = ops.relu(ops.bn(x, f"stem_bn{i}"), f"stem_relu{i}")
    return x


def stem_imagenet(ops: Any, x: Any, net: Net) -> Any:
    """The ImageNet stem of He et al. 2015 (and Keras' ResNet50): a 7x7 stride-2 conv
    (with bias, as Keras') -> BN -> ReLU, then a 3x3 stride-2 max-pool: a 224x224 image
    becomes a 56x56 map. `same` padding, so the counts and shapes are Keras', the border
    arithmetic TensorFlow's."""
    y = ops.conv(x, net.stem_filters, 7, 2, "stem_conv")
    y = ops.relu(ops.bn(y, "stem_bn"), "stem_relu")
    return ops.maxpool(y, "stem_pool", size=3, stride=2, padding="same")


stem_imagenet.preactivates = True


def _patchify(p: int) -> Callable:
    def stem(ops: Any, x: Any, net: Net) -> Any:
        return ops.conv(x, net.stem_filters, p, p, "stem_patchify")

    stem.__name__ = f"stem_patchify{p}"
    stem.__doc__ = (f"A patchify stem: non-overlapping {p}x{p} patches, each embedded by one "
                    f"linear map to stem_filters (a {p}x{p} conv of stride {p}, bias, no BN): "
                    "ViT's and ConvMixer's first layer.")
    return stem


def head_bn_relu(ops: Any, x: Any, net: Net) -> Any:
    """The blog's head (and the papers' for pre-activation nets): BN-ReLU-GAP-dense; the
    activation is the variant's `head_act`."""
    x = _act(ops, ops.bn(x, "head_bn"), net, "head")
    return ops.dense(ops.pool(x, "head_pool"), net.num_classes, "head_dense")


def head_plain(ops: Any, x: Any, net: Net) -> Any:
    """GAP-dense: for nets whose units end in their own activation (He 2015)."""
    return ops.dense(ops.pool(x, "head_pool"), net.num_classes, "head_dense")


def _hidden_dense(ops: Any, x: Any, net: Net) -> Any:
    x = ops.flatten(x, "head_flatten")
    for i, width in enumerate(net.head_widths, 1):
        x = ops.dense(x, width, f"head_fc{i}", activation=None)
        x = _act(ops, ops.bn(x, f"head_fc{i}_bn"), net, f"head_fc{i}")
        if net.dropout:
            x = ops.dropout(x, net.dropout, f"head_fc{i}_dropout")
    return x


def head_dense(ops: Any, x: Any, net: Net) -> Any:
    """Flatten, then dense layers of `head_widths` (each with BN, the head activation and
    optional dropout), then a softmax dense layer."""
    return ops.dense(_hidden_dense(ops, x, net), net.num_classes, "head_dense")


def head_dense_bn(ops: Any, x: Any, net: Net) -> Any:
    """As `dense`, with BN between the last dense layer and its softmax: the blog's VGG19
    (its 27,412 non-trainable parameters count a BN of the 10 outputs)."""
    x = ops.dense(_hidden_dense(ops, x, net), net.num_classes, "head_dense", activation=None)
    return ops.softmax(ops.bn(x, "head_dense_bn"), "head_softmax")


def head_ln_gap(ops: Any, x: Any, net: Net) -> Any:
    """The token models' head: LayerNorm, the average over positions (a map's or the
    tokens'), a softmax dense layer."""
    x = ops.layernorm(x, "head_ln")
    return ops.dense(ops.pool(x, "head_pool"), net.num_classes, "head_dense")


def head_ln_cls(ops: Any, x: Any, net: Net) -> Any:
    """ViT's class-token head: LayerNorm, the first token (the class token the stem
    prepended with ops.class_token), a softmax dense layer."""
    x = ops.layernorm(x, "head_ln")
    return ops.dense(ops.token(x, 0, "head_cls"), net.num_classes, "head_dense")


# --- airbench (Jordan 2024): its network, whose parts its ablation table varies ----------
AIRBENCH_BN = {"scale": False, "epsilon": 1e-12}  # batch norms without scale, eps 1e-12


def stem_airbench_whiten(ops: Any, x: Any, net: Net) -> Any:
    """airbench's stem: a 2x2 `valid` whitening conv into 24 channels, its filters set
    from training images (ops.whiten), then GELU."""
    return ops.act(ops.whiten(x, "stem_whiten", kernel=2), "gelu", "stem_gelu")


def stem_airbench_plain(ops: Any, x: Any, net: Net) -> Any:
    """airbench's ablation baseline stem: the same 2x2 `valid` conv into 24 channels
    (bias, PyTorch's default init), a batch norm, GELU."""
    y = ops.conv(x, 2 * 3 * 4, 2, 1, "stem_conv", padding="valid", init="torch")
    return ops.act(ops.bn(y, "stem_bn", **AIRBENCH_BN), "gelu", "stem_gelu")


def head_airbench(ops: Any, x: Any, net: Net) -> Any:
    """airbench's head: a 3x3 max-pool (3x3 -> 1x1), flatten, a dense layer without bias
    (PyTorch's default init), the logits scaled by 1/9, softmax."""
    x = ops.flatten(ops.maxpool(x, "head_pool", size=3), "head_flatten")
    x = ops.dense(x, net.num_classes, "head_dense", activation=None, bias=False, init="torch")
    return ops.softmax(ops.scale(x, 1 / 9, "head_scale"), "head_softmax")


# --- ConvNeXt (Liu et al. 2022): the stem and head of its last roadmap step ----------------


def stem_convnext(ops: Any, x: Any, net: Net) -> Any:
    """ConvNeXt's stem: a 4x4 stride-4 patchify conv to stem_filters, then LayerNorm."""
    y = ops.conv(x, net.stem_filters, 4, 4, "stem_patchify")
    return ops.layernorm(y, "stem_ln")


def head_convnext(ops: Any, x: Any, net: Net) -> Any:
    """ConvNeXt's head: global average pooling, then LayerNorm, then a softmax dense
    layer (LayerNorm after the pooling, unlike `ln_gap`)."""
    x = ops.layernorm(ops.pool(x, "head_pool"), "head_ln")
    return ops.dense(x, net.num_classes, "head_dense")


STEMS = Parts("stem", {"conv": stem_conv, "conv_bn_relu": stem_conv_bn_relu,
                       "none": stem_none, "patchify2": _patchify(2),
                       "patchify4": _patchify(4), "deep3": stem_deep3,
                       "airbench_whiten": stem_airbench_whiten,
                       "airbench_plain": stem_airbench_plain, "imagenet": stem_imagenet,
                       "convnext": stem_convnext})
HEADS = Parts("head", {"bn_relu": head_bn_relu, "plain": head_plain, "dense": head_dense,
                       "dense_bn": head_dense_bn, "ln_gap": head_ln_gap,
                       "ln_cls": head_ln_cls, "airbench": head_airbench,
                       "convnext": head_convnext})


def stem(name: str, preactivates: bool = False) -> Callable[[Callable], Callable]:
    """Decorator that registers a stem `(ops, x, net) -> y` under `name`, in the
    namespace of the module that defines it (public API: `from ablation import stem`).
    `preactivates`: the stem ends in the first unit's pre-activation (conv-BN-ReLU), so
    that unit is told `block.preactivated`."""
    def register(fn: Callable) -> Callable:
        fn.preactivates = bool(preactivates)
        return STEMS.register(name, fn)
    return register


def head(name: str) -> Callable[[Callable], Callable]:
    """Decorator that registers a head `(ops, x, net) -> y` under `name`, in the
    namespace of the module that defines it (public API: `from ablation import head`)."""
    def register(fn: Callable) -> Callable:
        return HEADS.register(name, fn)
    return register
