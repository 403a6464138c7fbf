"""The one builder: a variant (a registry row) becomes stem, stages of units, head.

It runs on either interpreter of `ablation.models.ops`: `count_params` counts, and
`build_model` makes the Keras model, from the same calls. Stems, units and heads are
functions by name (`ablation.models.parts`), the built-in ones and a study's own alike;
the variant names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation import registry
from ablation.errors import AblationError
from ablation.models import ops as _ops  # noqa: F401  (the ops register themselves)
from ablation.models import units as unitlib
from ablation.models.graph import Builder, Counter, Graph, OpError
from ablation.models.parts import HEADS, STEMS, Net, UnknownPart
from ablation.models.units import Block, UnitError
from ablation.recipe import DEFAULTS
from ablation.registry import Variant

_KERAS_HINT = "Only input tensors may be passed"


def _run(g: Graph, what: str, fn: Callable, *args: Any, failed: str = "") -> Any:
    """Run one stem, unit or head (`what`: "unit 'f' in block s2b1 of v"); any failure
    is one line naming it (`failed`: "unit 'f' failed in block s2b1 of v")."""
    g.where = what
    try:
        return fn(g, *args)
    except UnitError:
        raise
    except Exception as e:
        text = str(e) if isinstance(e, AblationError) else f"{type(e).__name__}: {e}"
        text = text.splitlines()[0] if text else type(e).__name__
        if _KERAS_HINT in text:  # Keras' own message names our counting tensor's class
            text = ("a Keras layer was called on a tensor directly (a Keras layer in a unit "
                    "goes through ops.layer(layer, x))")
        raise UnitError(f"{failed or what + ' failed'}: {text}") from e


def net_of(v: Variant, num_classes: int, input_shape: tuple[int, ...]) -> Net:
    """What the variant's stem and head read of it (`Net`)."""
    return Net(v.name, num_classes, tuple(input_shape), v.stem_filters,
               tuple(s.width for s in v.stages), sum(s.blocks for s in v.stages),
               tuple(v.head_widths), v.dropout, v.head_act)


def _part(parts, name: str, module: str | None):
    try:
        return parts.resolve(name, module)
    except UnknownPart as e:
        raise UnitError(str(e)) from e


def _network(g: Graph, v: Variant, num_classes: int, input_shape: tuple[int, ...]) -> Any:
    """The one builder: stem, stages of units (halving the map by a strided first unit,
    or by a max-pool after the stage), head. Each is a function by name; the width
    the first unit sees is the stem's output's."""
    net = net_of(v, num_classes, input_shape)
    stem = _part(STEMS, v.stem, v.unit_module)
    activates = getattr(stem, "preactivates", False)
    x = g.input(input_shape)
    x = _run(g, f"stem {v.stem!r} of {v.name}", stem, x, net,
             failed=f"stem {v.stem!r} failed in {v.name}")
    _check_tensor(x, f"stem {v.stem!r} of {v.name}")
    width = x.shape[-1]
    pool = v.downsample == "pool"
    position = 0
    for i, stage in enumerate(v.stages):
        name = v.stage_unit(i)
        for j in range(stage.blocks):
            stride = 2 if not pool and j == 0 and (i > 0 or v.first_stage_stride == 2) else 1
            project = j == 0 and (stride != 1 or width != stage.width)
            unit = v.down_unit if (project and v.down_unit) else name
            block = Block(f"s{i + 1}b{j + 1}", stage.width, stride, project,
                          v.projection_input, stage.inner, v.shortcut,
                          preactivated=activates and i == 0 and j == 0, stage=i, index=j,
                          position=position, blocks=net.blocks, stages=len(v.stages),
                          dropout=v.dropout,
                          drop_path=v.drop_path * position / max(net.blocks - 1, 1))
            fn = unitlib.resolve(unit, v.unit_module)
            x = _run(g, f"unit {unit!r} in block {block.name} of {v.name}", fn, x, block,
                     failed=f"unit {unit!r} failed in block {block.name} of {v.name}")
            _check_tensor(x, f"unit {unit!r} in block {block.name} of {v.name}")
            width = stage.width
            position += 1
        if pool:
            x = _run(g, f"the pool after stage {i + 1} of {v.name}",
                     lambda ops, y, k=i: ops.maxpool(y, f"s{k + 1}_pool"), x)
    head = _part(HEADS, v.head, v.unit_module)
    out = _run(g, f"head {v.head!r} of {v.name}", head, x, net,
               failed=f"head {v.head!r} failed in {v.name}")
    _check_tensor(out, f"head {v.head!r} of {v.name}")
    _check_output(g, out, v, num_classes)
    try:
        g.finish(out)
    except OpError as e:
        raise UnitError(str(e)) from e
    return out


def _check_output(g: Graph, out: Any, v: Variant, num_classes: int) -> None:
    """The head must give (N, num_classes) class probabilities: the loss is a
    cross-entropy on a softmax's output (on logits it trains to a meaningless loss)."""
    got = tuple(out.shape[1:])
    if got != (num_classes,):
        raise UnitError(f"head {v.head!r} of {v.name} gives shape (N, "
                        f"{', '.join(map(str, got))}); it must give (N, {num_classes}): one "
                        f"probability per class of the data (num_classes {num_classes})")
    if not g.gives_probabilities(out):
        raise UnitError(f"head {v.head!r} of {v.name} does not end in a softmax: the loss is "
                        "a cross-entropy on class probabilities; end the head with "
                        "ops.dense(..., activation='softmax') or ops.softmax")


def _check_tensor(x: Any, what: str) -> None:
    if x is None or not hasattr(x, "shape"):
        raise UnitError(f"{what} returned {type(x).__name__}, not a tensor (the output of an "
                        "op)")


@dataclass(frozen=True)
class ModelInfo:
    """Analytic facts about a variant, from the same graph code as the model."""

    depth: int
    params_total: int
    params_trainable: int
    params_non_trainable: int
    macs: int | None  # multiply-adds of one forward pass of one image; None: unknown
    unknown_macs: tuple[str, ...] = ()  # "layer (why)": ops.layer layers not counted
    whitening: int = 0  # ops.whiten layers: what `whiten_bias_epochs` freezes


def check_whitening(name: str, whitening: int, whiten_bias_epochs: int | None) -> None:
    """A recipe that freezes the whitening bias needs a network with a whitening layer
    (ops.whiten): checked when the plan counts the network, and again when a job builds
    it."""
    if whiten_bias_epochs is not None and not whitening:
        raise AblationError(f"whiten-bias-epochs: {name} has no whitening layer "
                            "(ops.whiten) whose bias it could freeze")


def count_params(name: str | Variant, num_classes: int = 10,
                 input_shape: tuple[int, int, int] = (32, 32, 3)) -> ModelInfo:
    """Exact parameter counts, weighted depth (stem + main-path convs + dense) and
    multiply-adds per image, without building anything."""
    v = name if isinstance(name, Variant) else registry.get(name)
    g = Counter()
    _network(g, v, num_classes, tuple(input_shape))
    return _info(g)


def _info(g: Graph) -> ModelInfo:
    return ModelInfo(g.depth, g.trainable + g.non_trainable, g.trainable, g.non_trainable,
                     None if g.unknown_macs else g.macs, tuple(g.unknown_macs), g.whitening)


def build_model(name: str | Variant, num_classes: int = 10,
                input_shape: tuple[int, int, int] = (32, 32, 3),
                weight_decay: float = DEFAULTS.weight_decay, fast: bool = False,
                keras_module: Any = None, bias_decay: bool = False,
                bn_bias_lr: float = 1.0) -> Any:
    """The uncompiled Keras model of a variant (softmax output).

    Seed Keras (`keras.utils.set_random_seed`) beforehand for reproducible weights.
    `fast` swaps in the layers of `ablation.layers` (same math, TensorFlow's fused
    kernels) for training speed; graph, names and weights are the same, so its weights
    load into the standard model, which is what gets saved. `keras_module` builds the
    same graph on another Keras (the baseline passes `tf_keras`); `bias_decay` puts the
    L2 on biases and normalisation scales and offsets too; `bn_bias_lr` gives batch-norm
    offsets that factor of the learning rate (`ops.bn`). The model's parameter counts
    are checked against the ops' rules (what `count_params` says).
    """
    if keras_module is None:
        import keras as keras_module

    v = name if isinstance(name, Variant) else registry.get(name)
    overrides = {}
    if fast:
        from ablation.layers import BiasAddConv2D, FusedBatchNormalization

        overrides = {"Conv2D": BiasAddConv2D, "BatchNormalization": FusedBatchNormalization}
    g = Builder(keras_module, weight_decay, overrides, bias_decay, bn_bias_lr)
    outputs = _network(g, v, num_classes, tuple(input_shape))
    model = keras_module.Model(g.inputs, outputs, name=v.name)
    check_counts(model, _info(g), v.name)
    return model


def set_from_data(model: Any, images: Any) -> int:
    """Set the layers whose start depends on the data (`ops.whiten`'s) from normalised
    training images; how many there were."""
    from ablation.layers import Whitening

    found = [layer for layer in model.layers if isinstance(layer, Whitening)]
    for layer in found:
        layer.set_from(images)
    return len(found)


def check_counts(model: Any, info: ModelInfo, name: str) -> None:
    """The built model's parameters must be what the counting pass said."""
    def size(ws) -> int:
        total = 0
        for w in ws:
            n = 1
            for d in w.shape:
                n *= int(d)
            total += n
        return total

    got = (size(model.trainable_weights), size(model.non_trainable_weights))
    want = (info.params_trainable, info.params_non_trainable)
    if got != want:
        raise UnitError(f"{name}: the built model has {got[0]:,} trainable and {got[1]:,} "
                        f"non-trainable parameters, the counting pass {want[0]:,} and "
                        f"{want[1]:,}; a layer is shared or not used as its op says")


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
                            f"{remedy}") from e
    theirs = [layer for layer in ref.layers if isinstance(layer, keras.layers.Conv2D)]
    ours = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    shapes = [tuple(w.shape for w in layer.weights) for layer in ours]
    if shapes != [tuple(w.shape for w in layer.weights) for layer in theirs]:
        raise AblationError(f"pretrained VGG19 weights fit only VGG19's 16 convs; "
                            f"{model.name} has {len(ours)} convs of other shapes")
    for mine, src in zip(ours, theirs, strict=True):
        mine.set_weights(src.get_weights())
    return len(ours)
