"""Multiply-adds of a Keras layer that a unit applies through `ops.layer`.

The harness counts what the papers count: the multiply-adds of convolutions, dense
layers and attention's two products, one image, one forward pass; normalisation,
activations, pooling, additions and reshapes count 0 (as the ops' own rules do). A
layer gets its number in one of two ways, and `how` says which:

* **rule**: an exact formula from its class, its weights and its input shapes, for the
  layers units use (dense and einsum-dense on maps or tokens, every convolution,
  multi-head and dot-product attention, `Dot`, and the parameter-free classes above).
  The class must match exactly: a subclass may compute more, so it is compiled.
* **compiled**: any other layer (a user's own class, a `Sequential`, ...) is lowered by
  the backend (`tf.function(jit_compile=True)`'s `experimental_get_compiler_ir`, or
  `jax.jit(...).lower`) to XLA's HLO on one image, and the multiply-adds of its `dot` and
  `convolution` instructions are summed from their shapes. The same sum on a whole built
  model equals the rules' total (tests/test_costs.py), so the two ways agree. It counts
  what the compiled form multiplies: where a backend computes a layer with extra work
  (TensorFlow runs a `valid` dilated convolution on a space-to-batch padded input), that
  work is in it too, which is one reason the usual classes go by rule.

The number is unknown (None, and `how` says why) only where neither applies: the backend
cannot lower the layer, or its HLO loops (`while`, `conditional`: a recurrent layer,
whose trip count the text does not give).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

Shape = tuple[int, ...]  # without the batch axis


def layer_macs(layer: Any, inputs: Sequence[Shape], output: Shape, spread: bool
               ) -> tuple[int | None, str]:
    """(multiply-adds of one application of `layer` to one image, how they were known:
    "rule", "compiled", or why they are unknown)."""
    rule = _rules().get(type(layer))
    if rule is not None:
        try:
            return int(rule(layer, [tuple(s) for s in inputs], tuple(output))), "rule"
        except _NoRule:
            pass
    return compiled_macs(layer, inputs, spread)


class _NoRule(Exception):
    """A ruled class in a setting its rule does not cover (e.g. concat attention)."""


# --- the rules --------------------------------------------------------------------------


def _positions(shape: Shape) -> int:
    return math.prod(shape[:-1])


def _dense(layer, ins, out) -> int:
    return _positions(ins[0]) * ins[0][-1] * layer.units


def _einsum_dense(layer, ins, out) -> int:
    return einsum_macs(layer.get_config()["equation"], (1, *ins[0]), tuple(layer.kernel.shape))


def einsum_macs(equation: str, a: Shape, b: Shape) -> int:
    """Multiply-adds of a two-operand einsum (the product of every index's size), the
    batch axis included in `a` as 1; "..." stands for the dims it covers."""
    lhs = equation.split("->")[0]
    sizes: dict[str, int] = {}
    for spec, shape in zip(lhs.split(","), (a, b), strict=True):
        if "..." in spec:
            head, tail = spec.split("...")
            covered = shape[len(head):len(shape) - len(tail)]
            sizes["..."] = math.prod(covered)
            spec, shape = head + tail, shape[:len(head)] + shape[len(shape) - len(tail):]
        sizes.update(zip(spec, shape, strict=True))
    return math.prod(sizes.values())


def _conv(layer, ins, out) -> int:
    # each output element: the kernel's window over the input channels of its group
    return math.prod(layer.kernel.shape) * math.prod(out) // layer.filters


def _depthwise(layer, ins, out) -> int:
    # each output element: its own window of one input channel
    return math.prod(layer.kernel.shape[:-2]) * math.prod(out)


def _separable(layer, ins, out) -> int:
    positions = math.prod(out) // layer.filters
    return positions * (math.prod(layer.depthwise_kernel.shape)
                        + math.prod(layer.pointwise_kernel.shape))


def _transposed(layer, ins, out) -> int:
    # each input element is spread over the kernel's window, for every output filter
    channels = ins[0][-1] if layer.data_format == "channels_last" else ins[0][0]
    return math.prod(layer.kernel.shape) * math.prod(ins[0]) // channels


def _attention_axes(layer, rank: int) -> list[int]:
    """MultiHeadAttention's attended axes, as indices into a shape without the batch."""
    axes = layer.get_config()["attention_axes"]
    if axes is None:
        return list(range(rank - 1))
    axes = [axes] if isinstance(axes, int) else list(axes)
    return [(a % (rank + 1)) - 1 for a in axes]


def _multi_head(layer, ins, out) -> int:
    q = ins[0]
    v = ins[1] if len(ins) > 1 else q
    k = ins[2] if len(ins) > 2 else v
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    projections = sum(_einsum_dense(d, [s], None) for d, s in (
        (layer.query_dense, q), (layer.key_dense, k), (layer.value_dense, v)))
    attended = math.prod(k[a] for a in _attention_axes(layer, len(k)))
    products = _positions(q) * attended * heads * (key_dim + value_dim)
    output = _einsum_dense(layer.output_dense, [(*q[:-1], heads, value_dim)], None)
    return projections + products + output


def _dot_attention(layer, ins, out) -> int:
    if layer.score_mode != "dot":
        raise _NoRule
    q, v = ins[0], ins[1]
    k = ins[2] if len(ins) > 2 else v
    return _positions(q) * k[-2] * q[-1] + _positions(q) * v[-2] * v[-1]


def _dot(layer, ins, out) -> int:
    axes = layer.axes if isinstance(layer.axes, list | tuple) else (layer.axes,) * 2
    a = ins[0]
    contracted = a[(axes[0] % (len(a) + 1)) - 1]
    return math.prod(out) * contracted


_FREE = (  # classes without multiply-adds, by the convention the ops' rules keep
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
    "UnitNormalization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D",
    "AdaptiveAveragePooling3D", "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D",
    "AdaptiveMaxPooling3D",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "Reshape", "Flatten", "Permute", "RepeatVector", "Cropping1D", "Cropping2D",
    "Cropping3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "UpSampling1D",
    "UpSampling2D", "UpSampling3D", "Identity", "Rescaling",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "ActivityRegularization",
)

_TABLE: dict[type, Callable] = {}


def _rules() -> dict[type, Callable]:
    """Class -> rule, built once (Keras is imported on first use)."""
    if not _TABLE:
        import keras

        named = {"Dense": _dense, "EinsumDense": _einsum_dense,
                 "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv,
                 "DepthwiseConv1D": _depthwise, "DepthwiseConv2D": _depthwise,
                 "SeparableConv1D": _separable, "SeparableConv2D": _separable,
                 "Conv1DTranspose": _transposed, "Conv2DTranspose": _transposed,
                 "Conv3DTranspose": _transposed,
                 "MultiHeadAttention": _multi_head, "Attention": _dot_attention,
                 "Dot": _dot, **dict.fromkeys(_FREE, lambda layer, ins, out: 0)}
        for name, rule in named.items():
            cls = getattr(keras.layers, name, None)
            if cls is not None:
                _TABLE[cls] = rule
    return _TABLE


# --- the compiled layer's HLO -------------------------------------------------------------

_CACHE: dict[str, tuple[int | None, str]] = {}


def compiled_macs(layer: Any, inputs: Sequence[Shape], spread: bool
                  ) -> tuple[int | None, str]:
    """The multiply-adds of the layer's HLO on one image (see the module's docstring),
    cached by the layer's class, configuration and input shapes."""
    try:
        key = json.dumps([type(layer).__qualname__, layer.get_config(), list(map(list, inputs)),
                          spread], sort_keys=True, default=str)
        key = re.sub(r'"name": "[^"]*"', "", key)
    except Exception:  # a layer without a configuration: not cached
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    try:
        text = hlo_text(lambda *xs: _call(layer, xs, spread), inputs)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        got: tuple[int | None, str] = (None, f"the backend could not compile it "
                                             f"({type(e).__name__}: {first})")
    else:
        macs = hlo_macs(text)
        got = (macs, "compiled") if macs is not None else \
            (None, "its compiled form loops (while/conditional)")
    if key is not None:
        _CACHE[key] = got
    return got


def _call(layer: Any, xs: tuple, spread: bool) -> Any:
    if len(xs) == 1:
        return layer(xs[0])
    return layer(*xs) if spread else layer(list(xs))


def hlo_text(fn: Callable, inputs: Sequence[Shape]) -> str:
    """The unoptimised HLO of `fn` applied to zeros of the given shapes (batch 1), from
    the Keras backend in use."""
    import keras

    shapes = [(1, *s) for s in inputs]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        f = tf.function(lambda *xs: fn(*xs), jit_compile=True)  # positional inputs only
        return f.experimental_get_compiler_ir(*[tf.zeros(s) for s in shapes])(stage="hlo")
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        lowered = jax.jit(lambda *xs: fn(*xs)).lower(*[jnp.zeros(s) for s in shapes])
        return lowered.as_text(dialect="hlo")
    raise NotImplementedError(f"no HLO from the {keras.backend.backend()} backend")


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*"
                    r"(?:\w+\[([\d,]*)\](?:\{[^}]*\})?|\(.*?\))\s+(\w[\w\-]*)\((.*)$")
_TYPE = re.compile(r"\w+\[[\d,]*\](?:\{[^}]*\})?\s*")
_COMP = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:to_apply|calls)=%?([\w.\-]+)")


def _dims(text: str) -> Shape:
    return tuple(int(d) for d in text.split(",") if d)


def _field(rest: str, name: str) -> list[int]:
    m = re.search(name + r"=\{([\d,]*)\}", rest)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def hlo_macs(text: str) -> int | None:
    """Multiply-adds of an HLO module's `dot` and `convolution` instructions (each
    computation counted once per call into it); None where it loops."""
    shapes: dict[str, Shape] = {}
    comps: dict[str, list[tuple[str, Shape, str, str]]] = {}
    entry, current = None, None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(2)
            comps[current] = []
            entry = current if m.group(1) else entry
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, dims, opcode, rest = m.group(1), _dims(m.group(2) or ""), m.group(3), m.group(4)
            shapes[name] = dims
            comps[current].append((name, dims, opcode, rest))
    if entry is None:
        return None

    def operands(rest: str) -> list[str]:
        inside = _TYPE.sub("", rest.split(")", 1)[0])
        return [o.strip().lstrip("%") for o in inside.split(",") if o.strip()]

    def total(comp: str, seen: tuple[str, ...]) -> int | None:
        n = 0
        for _name, dims, opcode, rest in comps.get(comp, []):
            if opcode in ("while", "conditional"):
                return None
            if opcode == "dot":
                lhs = shapes[operands(rest)[0]]
                contracted = _field(rest, "lhs_contracting_dims")
                n += math.prod(dims) * math.prod(lhs[i] for i in contracted)
            elif opcode == "convolution":
                lhs, kernel = (shapes[o] for o in operands(rest)[:2])
                labels = re.search(r"dim_labels=\w+_(\w+)->", rest).group(1)
                if "lhs_dilate=" in rest:  # a transposed convolution: the input's elements
                    groups = re.search(r"feature_group_count=(\d+)", rest)  # times the window
                    n += math.prod(lhs) * math.prod(kernel) // kernel[labels.index("i")] // (
                        int(groups.group(1)) if groups else 1)
                else:  # each output element: the kernel's window over its group's channels
                    n += math.prod(dims) * math.prod(kernel) // kernel[labels.index("o")]
            for called in _CALLS.findall(rest):
                if called in seen:
                    return None
                inner = total(called, (*seen, called))
                if inner is None:
                    return None
                n += inner
        return n

    return total(entry, (entry,))
