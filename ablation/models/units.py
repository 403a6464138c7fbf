"""Residual units: where a block stands (`Block`), the built-in units, and the units
studies bring, each study's in a namespace of its own.

A unit is a function `(ops, x, block) -> y` (public API, docs/studies.md). The built-in
ones follow *Identity Mappings in Deep Residual Networks* (He et al. 2016), Fig. 4 a-e,
on a residual branch F that is either two 3x3 convs (basic) or 1x1-3x3-1x1
(bottleneck), with BN-ReLU between convs:

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

Names: a study's own units come first for that study's variants, then the built-in
ones. So a unit a later version adds to the package never breaks a study file that
already uses the name for its own unit, and two studies may each have their own `f`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ablation.errors import AblationError
from ablation.models.parts import Parts, UnknownPart, source_hash


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
    # --- added in 0.5: where the block stands, so a unit needs no name parsing
    stage: int = 0  # 0-based stage
    index: int = 0  # 0-based block within its stage
    position: int = 0  # 0-based block within the network
    blocks: int = 1  # blocks in the network (a linear drop-path rate: position / blocks)
    stages: int = 1  # stages in the network
    # --- added in 0.6
    dropout: float = 0.0  # the variant's dropout, for a unit that uses it (WRN's, between
    # the convs)
    # --- added in 0.7
    drop_path: float = 0.0  # this block's stochastic-depth rate: the variant's `drop_path`
    # x position / (blocks - 1), for a unit that uses it (the ConvNeXt roadmap's)


class UnitError(AblationError):
    """A unit that does not build: names the unit and the block."""


Unit = Callable[[Any, Any, Block], Any]


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


# --- Wide Residual Networks (Zagoruyko & Komodakis 2016) -------------------------------------


def kernels_branch(kernels: tuple[int, ...]) -> Branch:
    """The WRN paper's block type B(k1, k2, ...): convs of these sizes at the output
    width, BN-ReLU between them, the stride on the first, and the variant's dropout
    (`block.dropout`, WRN's) before the last (B(3,3) with dropout is the WRN block)."""
    def branch(ops: Any, x: Any, b: Block) -> tuple[Any, int]:
        y = x
        for i, k in enumerate(kernels, 1):
            if i > 1:
                y = ops.relu(ops.bn(y, f"{b.name}_bn{i - 1}"), f"{b.name}_relu{i - 1}")
                if i == len(kernels) and b.dropout:
                    y = ops.dropout(y, b.dropout, f"{b.name}_dropout")
            y = ops.conv(y, b.filters, k, b.stride if i == 1 else 1, f"{b.name}_conv{i}")
        return y, len(kernels)
    return branch


WIDE_BLOCKS = {"wide": (3, 3), "wide_313": (3, 1, 3), "wide_131": (1, 3, 1),
               "wide_31": (3, 1), "wide_13": (1, 3), "wide_311": (3, 1, 1)}


# --- Bag of Tricks (He et al. 2019): ResNet-50's downsampling block and its tweaks --------


def _bn_proj(ops: Any, x: Any, b: Block, pool: bool) -> Any:
    """The torchvision ResNet's projection: a 1x1 conv with the stride, then BN; with
    `pool` (ResNet-D) a 2x2 average pool does the striding and the conv has stride 1."""
    if not b.project:
        return x
    if pool and b.stride == 2:
        x = ops.avgpool(x, f"{b.name}_proj_pool")
    y = ops.conv(x, b.filters, 1, 1 if pool else b.stride, f"{b.name}_proj", main=False)
    return ops.bn(y, f"{b.name}_proj_bn")


def resnet50_unit(stride_on: int, pool: bool) -> Unit:
    """ResNet-50's bottleneck as torchvision (and the paper) builds it: conv1x1 -> BN-ReLU
    -> conv3x3 -> BN-ReLU -> conv1x1 -> BN, plus the projection (1x1 conv + BN), then
    ReLU; the stride on the first 1x1 (`stride_on` 1: ResNet-A, the original) or on the
    3x3 (2: ResNet-B); with `pool`, ResNet-D's average-pooled projection."""
    def unit(ops: Any, x: Any, b: Block) -> Any:
        inner = b.inner or b.filters // 4
        y = ops.conv(x, inner, 1, b.stride if stride_on == 1 else 1, f"{b.name}_conv1")
        y = ops.relu(ops.bn(y, f"{b.name}_bn1"), f"{b.name}_relu1")
        y = ops.conv(y, inner, 3, b.stride if stride_on == 2 else 1, f"{b.name}_conv2")
        y = ops.relu(ops.bn(y, f"{b.name}_bn2"), f"{b.name}_relu2")
        y = ops.bn(ops.conv(y, b.filters, 1, 1, f"{b.name}_conv3"), f"{b.name}_bn3")
        y = ops.add(y, _bn_proj(ops, x, b, pool), f"{b.name}_add")
        return ops.relu(y, f"{b.name}_out")
    return unit


# --- airbench (Jordan 2024) -------------------------------------------------------------------


def airbench_group(init: str, momentum: float) -> Unit:
    """airbench's ConvGroup: conv3x3 (no bias), a 2x2 max-pool where the block halves the
    map (airbench halves it in every group), BN, GELU, conv3x3, BN, GELU; batch norms
    without scale, epsilon 1e-12, at `momentum` (Keras': PyTorch's 1 − momentum); the
    convs start at `init` (airbench's "dirac": a partial identity)."""
    bn = {"scale": False, "epsilon": 1e-12, "momentum": momentum}

    def group(ops: Any, x: Any, b: Block) -> Any:
        y = ops.conv(x, b.filters, 3, 1, f"{b.name}_conv1", bias=False, init=init)
        if b.stride == 2:
            y = ops.maxpool(y, f"{b.name}_pool")
        y = ops.act(ops.bn(y, f"{b.name}_bn1", **bn), "gelu", f"{b.name}_gelu1")
        y = ops.conv(y, b.filters, 3, 1, f"{b.name}_conv2", bias=False, init=init)
        return ops.act(ops.bn(y, f"{b.name}_bn2", **bn), "gelu", f"{b.name}_gelu2")

    return group


# --- the ConvNeXt roadmap (Liu et al. 2022, "A ConvNet for the 2020s", Section 2) ----------


@dataclass(frozen=True)
class RoadmapBlock:
    """One step's residual block, as data: the roadmap's one builder reads it.

    `layout`: "bottleneck" (1x1, k x k, 1x1: ResNet's, ResNeXt's, and the inverted
    bottleneck, whose inner width is 4x the output's: the stage's widths say which) or
    "dw_first" (the k x k depthwise conv moved up: k x k, 1x1, 1x1); `depthwise`: the
    k x k conv is depthwise; `acts`/`norms`: after every conv ("all", ReLU/GELU also
    after the addition) or "one" (one activation between the two 1x1s; one norm after
    the k x k); `downsample`: "projection" (the first block of a stage strides and its
    shortcut is a 1x1 conv + norm) or "separate" (a LayerNorm and a 2x2 stride-2 conv
    before the block, which is then a plain residual); `layer_scale`: its init (0: none).
    Every block drops its branch at `block.drop_path` (stochastic depth)."""

    layout: str = "bottleneck"
    depthwise: bool = False
    kernel: int = 3
    act: str = "relu"
    acts: str = "all"
    norms: str = "all"
    norm: str = "bn"
    downsample: str = "projection"
    layer_scale: float = 0.0


def roadmap_unit(spec: RoadmapBlock) -> Unit:
    """The roadmap's block builder: every step's unit is this function fed one row."""
    def normed(ops: Any, y: Any, name: str) -> Any:
        return ops.bn(y, name) if spec.norm == "bn" else ops.layernorm(y, name)

    def unit(ops: Any, x: Any, b: Block) -> Any:
        n = b.name
        stride = b.stride
        if b.project and spec.downsample == "separate":  # outside the residual
            x = ops.layernorm(x, f"{n}_down_ln")
            x = ops.conv(x, b.filters, 2 if stride == 2 else 1, stride, f"{n}_down", main=False)
            stride = 1
        inner = b.inner or b.filters // 4
        # (width, kernel, stride) of each conv; kernel > 1: the spatial one
        if spec.layout == "dw_first":
            convs = [(x.shape[-1], spec.kernel, stride), (inner, 1, 1), (b.filters, 1, 1)]
        else:
            convs = [(inner, 1, 1), (inner, spec.kernel, stride), (b.filters, 1, 1)]
        y = x
        for i, (width, k, s) in enumerate(convs, 1):
            last = i == len(convs)
            if k > 1 and spec.depthwise:
                y = ops.depthwise(y, k, s, f"{n}_conv{i}")
            else:
                y = ops.conv(y, width, k, s, f"{n}_conv{i}")
            if spec.norms == "all" or k > 1:
                y = normed(ops, y, f"{n}_{spec.norm}{i}")
            if not last and (spec.acts == "all" or (k == 1 and i == len(convs) - 1)):
                y = ops.act(y, spec.act, f"{n}_{spec.act}{i}")
        if spec.layer_scale:
            y = ops.layer_scale(y, f"{n}_scale", init=spec.layer_scale)
        if b.drop_path:
            y = ops.drop_path(y, b.drop_path, f"{n}_drop_path")
        short = x
        if b.project and spec.downsample == "projection":
            short = ops.conv(x, b.filters, 1, stride, f"{n}_proj", main=False)
            short = normed(ops, short, f"{n}_proj_{spec.norm}")
        y = ops.add(y, short, f"{n}_add")
        return ops.act(y, spec.act, f"{n}_out") if spec.acts == "all" else y

    return unit


def _roadmap() -> dict[str, RoadmapBlock]:
    """The roadmap's blocks, each step the one before with what the paper changed (the
    kernel sizes it tried and did not keep, 5, 9 and 11, beside the 7 it kept)."""
    rows: dict[str, RoadmapBlock] = {}
    spec = RoadmapBlock()
    for name, change in (
            ("roadmap_resnet", {}),  # ResNet-50's bottleneck (stride on the 3x3)
            ("roadmap_resnext", {"depthwise": True}),  # and the inverted bottleneck
            ("roadmap_dw_up", {"layout": "dw_first"}),
            ("roadmap_k7", {"kernel": 7}),
            ("roadmap_gelu", {"act": "gelu"}),
            ("roadmap_one_act", {"acts": "one"}),
            ("roadmap_one_norm", {"norms": "one"}),
            ("roadmap_ln", {"norm": "ln"}),
            ("convnext_block", {"downsample": "separate", "layer_scale": 1e-6})):
        spec = dataclasses.replace(spec, **change)
        rows[name] = spec
    for k in (5, 9, 11):
        rows[f"roadmap_k{k}"] = dataclasses.replace(rows["roadmap_dw_up"], kernel=k)
    return rows


ROADMAP = _roadmap()


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
    # Wide ResNets: full pre-activation (e) on a block type B(...), dropout as the variant's
    **{name: partial(form_e, branch=kernels_branch(k)) for name, k in WIDE_BLOCKS.items()},
    # Bag of Tricks: ResNet-50's unit (A), the stride on the 3x3 (B), and the pooled
    # projection (D; C is a stem)
    "resnet50_a": resnet50_unit(1, pool=False),
    "resnet50_b": resnet50_unit(2, pool=False),
    "resnet50_d": resnet50_unit(2, pool=True),
    # airbench: its conv group with PyTorch's default init (the ablation's baseline), with
    # the dirac init (clean_airbench's and the ablation's later steps, batch norm momentum
    # PyTorch's default 0.1), and airbench94's faster batch norm (PyTorch 0.4)
    "airbench_plain": airbench_group("torch", 0.9),
    "airbench": airbench_group("dirac", 0.9),
    "airbench94": airbench_group("dirac", 0.6),
    # the ConvNeXt roadmap's blocks, one builder fed a row each
    **{name: roadmap_unit(spec) for name, spec in ROADMAP.items()},
}


# --- the units studies bring ----------------------------------------------------------------

# each units file (or module) is a namespace of its own; a variant names the module its
# study's parts came from (ablation.models.parts)
UNITS = Parts("unit", BUILTIN_UNITS)
unit_source_hash = source_hash


def unit(name: str) -> Callable[[Unit], Unit]:
    """Decorator that registers a residual unit `(ops, x, block) -> y` under `name`, in
    the namespace of the module that defines it.

    Public API: `from ablation import unit`. A name may be a built-in unit's: the
    study's own unit then shadows it for that study's variants (`ablation list` says
    so). Registering the same source again (a study loaded twice) is a no-op.
    """
    def register(fn: Unit) -> Unit:
        return UNITS.register(name, fn)
    return register


def user_units(module: str) -> list[str]:
    """The units a module defines, in definition order."""
    return UNITS.mine(module)


def user_unit_hash(name: str, module: str | None) -> str | None:
    """The source hash of a study's own unit; None for a built-in one (pinned by the
    package) or a name the module does not define."""
    return UNITS.source_hash(name, module)


def resolve(name: str, module: str | None = None) -> Unit:
    """The unit `name` for a variant whose study's units are in `module`: the study's
    own first, then the built-in ones."""
    try:
        return UNITS.resolve(name, module)
    except UnknownPart as e:
        raise UnitError(str(e)) from e


def known(module: str | None = None) -> list[str]:
    """Unit names a variant of a study with units in `module` may use."""
    return UNITS.known(module)


def shadowed(module: str | None) -> list[str]:
    """The built-in unit names the module's own units shadow."""
    return UNITS.shadowed(module)
