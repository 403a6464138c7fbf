"""The variant registry: every network of the study is a data row fed to one builder.

A variant says *what* to build (unit type, stage layout, widths, where the projection
reads from); `ablation.models` says *how*. Adding a variant to a study is one
`register(Variant(...))` call, never a new builder function.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field

from ablation.errors import AblationError


@dataclass(frozen=True)
class Stage:
    """One stage of residual blocks: how many, output width, bottleneck inner width."""

    blocks: int
    width: int
    inner: int | None = None  # bottleneck units only


@dataclass(frozen=True)
class Variant:
    """A registry row. `unit` names an entry of `ablation.models.UNITS`."""

    name: str
    label: str  # the blog's name for it
    unit: str
    stages: tuple[Stage, ...]
    stem_filters: int = 16
    down_unit: str | None = None  # unit used for downsampling blocks, if different
    projection_input: str = "preact"  # "preact": P reads h (d/e); "input": P reads x (v2)
    first_stage_stride: int = 1
    description: str = ""
    reference_params: tuple[int, int, int] | None = field(default=None, compare=False)


class UnknownVariantError(AblationError, KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a variant; a duplicate name is a programming error, so it raises."""
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant
    return variant


def get(name: str) -> Variant:
    """Look a variant up by exact name, suggesting close matches on a miss."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownVariantError(
            f"unknown variant {name!r}{hint} (`ablation list` shows all "
            f"{len(_REGISTRY)})"
        ) from None


def variants(pattern: str = "*") -> list[str]:
    """Registered names matching a shell glob, in registry order."""
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def select(patterns: list[str]) -> list[str]:
    """Expand names and globs from the command line, keeping registry order.

    A plain name that is not registered raises UnknownVariantError; a glob that
    matches nothing raises too, because silently running nothing is never wanted.
    """
    chosen: set[str] = set()
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = variants(pat)
            if not hits:
                raise UnknownVariantError(f"no variant matches {pat!r} (`ablation list`)")
            chosen.update(hits)
        else:
            chosen.add(get(pat).name)
    return [n for n in _REGISTRY if n in chosen]


# --- the study's twelve networks -------------------------------------------------------
# 32-layer family: three stages of n=5 basic blocks, 16/32/64 filters (depth 6n+2).
_CIFAR32 = (Stage(5, 16), Stage(5, 32), Stage(5, 64))
_A_TO_D = (470_410, 468_042, 2_368)
_E = (470_218, 467_946, 2_272)


def _bottleneck(blocks: tuple[int, int, int, int]) -> tuple[Stage, ...]:
    widths = ((64, 256), (128, 512), (256, 1024), (512, 2048))
    return tuple(Stage(n, out, inner) for n, (inner, out) in zip(blocks, widths, strict=True))


for _row in (
    Variant("resnet32", "my_resnet_32", "e", _CIFAR32, reference_params=_E,
            description="The blog's first, hand-unrolled ResNet-32; structure (e)."),
    Variant("resnet32_a", "resnet_32_a", "a", _CIFAR32, reference_params=_A_TO_D,
            description="(a) original unit: ReLU after the addition."),
    Variant("resnet32_b", "resnet_32_b", "b", _CIFAR32, reference_params=_A_TO_D,
            description="(b) BN after the addition."),
    Variant("resnet32_c", "resnet_32_c", "c", _CIFAR32, reference_params=_A_TO_D,
            description="(c) ReLU before the addition."),
    Variant("resnet32_d", "resnet_32_d", "d", _CIFAR32, reference_params=_A_TO_D,
            description="(d) ReLU-only pre-activation; projection reads ReLU(x)."),
    Variant("resnet32_e", "resnet_32_e", "e", _CIFAR32, reference_params=_E,
            description="(e) full pre-activation; projection reads ReLU(BN(x))."),
    Variant("resnet32_d_v2", "resnet_32_d_v2", "d", _CIFAR32, projection_input="input",
            reference_params=_A_TO_D,
            description="(d) with the projection reading the block input x."),
    Variant("resnet32_e_v2", "resnet_32_e_v2", "e", _CIFAR32, projection_input="input",
            reference_params=_E,
            description="(e) with the projection reading the block input x."),
    Variant("resnet34", "my_resnet_34", "e", _CIFAR32, down_unit="preact_bottleneck",
            reference_params=(416_458, 414_186, 2_272),
            description="resnet32 with pre-activation bottleneck downsampling blocks."),
    Variant("resnet50", "resnet_50", "bottleneck", _bottleneck((3, 4, 6, 3)), stem_filters=64,
            first_stage_stride=2, reference_params=(23_593_098, 23_543_690, 49_408),
            description="Bottleneck 3-4-6-3 for 32x32 input, ReLU before addition."),
    Variant("resnet101", "resnet_101", "bottleneck", _bottleneck((3, 4, 23, 3)),
            stem_filters=64, first_stage_stride=2,
            reference_params=(42_663_562, 42_561_930, 101_632),
            description="Bottleneck 3-4-23-3 for 32x32 input, ReLU before addition."),
    Variant("resnet152", "resnet_152", "bottleneck", _bottleneck((3, 4, 36, 3)),
            stem_filters=64, first_stage_stride=2,
            reference_params=(57_246_858, 57_105_290, 141_568),
            description="The blog's '152': 3-4-36-3 (140 weighted layers, not the "
                        "paper's 3-8-36-3)."),
):
    register(_row)
