"""The two interpreters the ops run on (`ablation.models.ops` defines the ops), and the
graph they share. Each op is one function: it checks its arguments, computes its output
shape and its cost from its inputs' shapes, and says which Keras layer computes it;
`Graph.emit` does the bookkeeping every op shares, once, and each interpreter only says
what a layer is to it (timm's lesson: parts by name from one table, each defined once):

* `Counter` tracks shapes only: exact counts, depth and multiply-adds of ResNet-152 in
  milliseconds, without Keras and without allocating a weight (`ablation list`);
* `Builder` makes and applies the Keras layers, and checks every layer's output shape
  against the op's rule; `build_model` then checks the model's parameter counts against
  the rules' sums, so a rule that drifts from Keras fails loudly.

Both record the op graph, so a layer that a unit computes and never uses (which Keras
would silently drop, leaving counts that are not the model's) is an error that names
the layer. `ops.layer` takes any Keras layer: the counting pass then asks Keras itself
for its parameters and output shape, and `ablation.models.costs` for its multiply-adds
(by rule for the usual classes, else from the backend's compiled form of it).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from ablation.errors import AblationError
from ablation.models import costs


class OpError(AblationError):
    """A bad op call: names the op and what it accepts (the builder adds the unit,
    block and variant)."""


class UnknownOp(OpError, AttributeError):
    """A unit called an op that does not exist."""


# --- the graph both interpreters record -----------------------------------------------------


class Sym:
    """A tensor of the counting pass: its shape, `(None, ...)` like a Keras tensor's, so
    a unit may read `x.shape[-1]` under either interpreter."""

    __slots__ = ("shape",)

    def __init__(self, dims: tuple[int, ...]):
        self.shape = (None, *dims)

    def __repr__(self) -> str:
        return f"<tensor {self.shape}>"


class Graph:
    """What both interpreters share: op lookup with argument checks, the op graph
    (for unused layers and unique names), and the running totals."""

    counting: bool

    def __init__(self):
        self.trainable = self.non_trainable = self.depth = self.macs = 0
        self.whitening = 0  # ops.whiten layers (a recipe may freeze their bias)
        self.unknown_macs: list[str] = []
        self.where = "the network"  # what the builder is running, for messages
        self._node: dict[int, int] = {}  # id(tensor) -> node
        self._keep: list[Any] = []  # the tensors, so an id is never reused
        self._nodes: list[tuple[str | None, tuple[int, ...], str]] = []  # name, inputs, where
        self._names: dict[str, str] = {}  # layer name -> where it was made
        self._probabilities: set[int] = set()  # nodes whose output is a softmax

    def __getattr__(self, name: str) -> Any:  # only for names that are not attributes
        fn = OPS.get(name)
        if name.startswith("__"):
            raise AttributeError(name)
        if fn is None:
            raise UnknownOp(f"unknown op {name!r} (a unit may call {', '.join(sorted(OPS))})")
        return _bound(fn, self)

    # --- graph bookkeeping

    def track(self, tensor: Any, name: str | None, inputs: list[Any]) -> Any:
        self._keep.append(tensor)
        self._node[id(tensor)] = len(self._nodes)
        self._nodes.append((name, tuple(self._node[id(t)] for t in inputs), self.where))
        return tensor

    def claim(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise OpError(f"a layer name must be a non-empty string, got {name!r}")
        if name in self._names:
            part = self.where.split(" ", 1)[0]  # a unit has a block; a stem or head not
            fix = ("prefix layer names with block.name" if part == "unit" else
                   f"give the {part}'s layers names of their own (e.g. '{part}_...')")
            raise OpError(f"layer name {name!r} is used twice (also in "
                          f"{self._names[name]}); {fix}")
        self._names[name] = self.where

    def probabilities(self, tensor: Any) -> Any:
        """Mark `tensor` as class probabilities (a softmax's output)."""
        self._probabilities.add(self._node[id(tensor)])
        return tensor

    def gives_probabilities(self, tensor: Any) -> bool:
        """Whether `tensor` is a softmax's output: what the loss, a cross-entropy on
        probabilities, needs of the network's output."""
        return self._node.get(id(tensor)) in self._probabilities

    def tensor(self, x: Any, op: str, what: str = "x", rank: int | None = None
               ) -> tuple[int, ...]:
        """The dims (without the batch) of an input, checked: a tensor of this graph of
        the rank the op needs."""
        if id(x) not in self._node:
            raise OpError(f"ops.{op}: {what} must be a tensor (the unit's input or an op's "
                          f"output), got {_short(x)}")
        dims = tuple(x.shape[1:])
        if rank is not None and len(dims) != rank:
            want = {3: "an (N, H, W, C) map", 1: "an (N, C) vector"}.get(rank, f"rank {rank}")
            raise OpError(f"ops.{op}: {what} must be {want}, got shape {_shape(dims)}")
        return dims

    def finish(self, output: Any) -> None:
        """Every layer must lead to the output: Keras drops one that does not, and the
        counts would no longer be the model's."""
        if not self._nodes:
            return
        seen, stack = set(), [self._node[id(output)]]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self._nodes[n][1])
        for i, (name, _, where) in enumerate(self._nodes):
            if i not in seen and name is not None:
                raise OpError(f"{where} computes layer {name!r} but never uses it: Keras "
                              "would drop it from the model, so the counts would not be "
                              "the model's; use it or remove it")

    # --- what each interpreter does with an op

    def emit(self, name: str, inputs: list[Any], dims: tuple[int, ...], make: Callable,
             trainable: int = 0, non_trainable: int = 0, macs: int = 0,
             depth: bool = False, call: Callable | None = None,
             after: Callable | None = None) -> Any:
        """One layer of an op: its name claimed, its output (the interpreter's `_layer`:
        a shape, or the Keras layer made and applied; `after(layer)` runs once the built
        layer has its weights, for an initialisation Keras has no initializer for), its
        cost counted, its node recorded."""
        self.claim(name)
        y = self._layer(name, inputs, dims, make, call, after)
        self._add(trainable, non_trainable, macs, depth, name)
        return self.track(y, name, inputs)

    def foreign(self, layer: Any, inputs: list[Any], spread: bool, main: bool) -> Any:
        """A Keras layer of the user's (`ops.layer`): applied (the interpreter's
        `_foreign`), its weights counted once however often it is applied, its depth if
        it has a kernel on the main path, its multiply-adds each time it is applied."""
        again = self.shared(layer)
        if not again:
            self.claim(layer.name)
        y = self._foreign(layer, list(inputs), spread)
        t, nt = (0, 0) if again else _weights(layer)
        macs, how = self._foreign_macs(layer, inputs, y, spread)
        self._add(t, nt, macs, main and not again and _weighted(layer),
                  layer.name if macs is not None else f"{layer.name} ({how})")
        return self.track(y, layer.name, inputs)

    def _foreign_macs(self, layer: Any, inputs: list[Any], y: Any, spread: bool
                      ) -> tuple[int | None, str]:
        return None, "not counted while building (the counting pass counts it)"

    def _layer(self, name: str, inputs: list[Any], dims: tuple[int, ...], make: Callable,
               call: Callable | None, after: Callable | None) -> Any:
        raise NotImplementedError

    def _foreign(self, layer: Any, inputs: list[Any], spread: bool) -> Any:
        raise NotImplementedError

    def shared(self, layer: Any) -> bool:
        """Whether `layer` (a Keras layer object) was applied in this network before: a
        second application shares its weights, so they count once (and its depth)."""
        seen = self.__dict__.setdefault("_layers", set())
        if id(layer) in seen:
            return True
        seen.add(id(layer))
        self._keep.append(layer)
        return False

    def _add(self, trainable: int, non_trainable: int, macs: int | None, depth: bool,
             name: str) -> None:
        self.trainable += trainable
        self.non_trainable += non_trainable
        self.depth += int(depth)
        if macs is None:
            self.unknown_macs.append(name)
        else:
            self.macs += macs


class Counter(Graph):
    """Shapes only: parameters, depth and multiply-adds by each op's rule."""

    counting = True
    reg = bias_reg = None
    bn_bias_lr = 1.0

    def input(self, dims: tuple[int, ...]) -> Sym:
        self.inputs = self.track(Sym(tuple(dims)), None, [])
        return self.inputs

    def _layer(self, name, inputs, dims, make, call, after):
        return Sym(tuple(dims))

    def _foreign(self, layer, inputs, spread):
        import keras

        probes = [keras.KerasTensor((None, *x.shape[1:])) for x in inputs]
        return Sym(tuple(_apply(layer, probes, spread).shape[1:]))

    def _foreign_macs(self, layer, inputs, y, spread):
        return costs.layer_macs(layer, [tuple(x.shape[1:]) for x in inputs],
                                tuple(y.shape[1:]), spread)


class Builder(Graph):
    """Real Keras layers with the blog's settings (He-normal, the recipe's L2), applied
    in order; each layer's output shape is checked against its op's rule."""

    counting = False

    def __init__(self, keras_module: Any, weight_decay: float, overrides: dict | None = None,
                 bias_decay: bool = False, bn_bias_lr: float = 1.0):
        super().__init__()
        self.keras = keras_module
        self.reg = keras_module.regularizers.L2(weight_decay) if weight_decay else None
        # the recipe's bias_decay: biases and normalisation scales and offsets decay too
        self.bias_reg = self.reg if bias_decay else None
        self.bn_bias_lr = bn_bias_lr  # the recipe's learning-rate factor of BN offsets
        self.layers = _Layers(keras_module.layers, overrides or {})

    def input(self, dims: tuple[int, ...]) -> Any:
        self.inputs = self.track(self.keras.Input(shape=tuple(dims), name="image"), None, [])
        return self.inputs

    def _layer(self, name, inputs, dims, make, call, after):
        layer = make(self.layers)
        y = call(layer, inputs) if call else layer(inputs[0] if len(inputs) == 1
                                                   else list(inputs))
        if after is not None:
            after(layer)
        got = tuple(y.shape[1:])
        if got != tuple(dims):
            raise AblationError(f"internal error: {name}: Keras gives shape {_shape(got)}, "
                                f"the op's rule {_shape(dims)}")
        return y

    def _foreign(self, layer, inputs, spread):
        return _apply(layer, inputs, spread)


def _apply(layer: Any, inputs: list[Any], spread: bool) -> Any:
    """Call a Keras layer on its inputs: one tensor; several as separate arguments
    (`spread`: MultiHeadAttention(query, value)); or several as one list (Add,
    Concatenate)."""
    if len(inputs) == 1:
        return layer(inputs[0])
    return layer(*inputs) if spread else layer(inputs)


def _spreads(layer: Any, n: int) -> bool:
    """Whether a Keras layer's `call` takes `n` tensors as separate arguments: it needs
    at least two (MultiHeadAttention: query, value) and has room for `n`. A call whose
    second argument has a default (Attention's `mask`, a merge layer's `training`) takes
    its tensors as one list, as Add and Concatenate do."""
    try:
        params = list(inspect.signature(layer.call).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    return required >= 2 and len(positional) >= n


class _Layers:
    """`keras.layers`, with the training path's speed layers in place of some classes."""

    def __init__(self, module: Any, overrides: dict):
        self.module, self.overrides = module, overrides

    def __getattr__(self, name: str) -> Any:
        return self.overrides.get(name) or getattr(self.module, name)


def _weights(layer: Any) -> tuple[int, int]:
    def size(ws) -> int:
        return sum(math.prod(w.shape) for w in ws)

    return size(layer.trainable_weights), size(layer.non_trainable_weights)


def _weighted(layer: Any) -> bool:
    """A foreign layer counts in depth when it has a kernel (a conv or dense layer)."""
    return any(w.path.rsplit("/", 1)[-1] in ("kernel", "depthwise_kernel")
               for w in layer.trainable_weights)


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _shape(dims: tuple) -> str:
    return "(N, " + ", ".join(map(str, dims)) + ")"


# --- argument checks -----------------------------------------------------------------------

OPS: dict[str, Callable] = {}
_SIGNATURES: dict[str, str] = {}
_BINDS: dict[str, inspect.Signature] = {}  # each op's, read once (a network calls thousands)


def op(fn: Callable) -> Callable:
    """Register an op under its function's name; its signature (after the graph) is
    what a unit calls and what an error quotes."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]
    _SIGNATURES[fn.__name__] = f"ops.{fn.__name__}({', '.join(map(str, params))})"
    _BINDS[fn.__name__] = sig
    OPS[fn.__name__] = fn
    return fn


def signature(name: str) -> str:
    """The public signature of op `name`, as the docs and errors show it."""
    return _SIGNATURES[name]


def _bound(fn: Callable, g: Graph) -> Callable:
    sig = _BINDS[fn.__name__]

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(g, *args, **kwargs)
        except TypeError as e:  # Python binds the arguments before the op runs: a wrong
            try:                # call is told by the op's signature, any other error kept
                sig.bind(g, *args, **kwargs)
            except TypeError as wrong:
                raise OpError(f"{signature(fn.__name__)}: {wrong}") from e
            raise

    call.__name__ = fn.__name__
    return call
