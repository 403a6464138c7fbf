"""The variant registry: every network is a data row fed to one builder.

A variant says *what* to build (unit type, stage layout, widths, stem, head, where
the projection reads from); `ablation.models` says *how*. Variants come from studies
(`ablation.studies`): the built-in ones ship as TOML files in the package, a user's
from their own file, by the same mechanism. This module only stores them:
register / get / variants (glob) / select, with a clear error for an unknown name.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from ablation.errors import AblationError, did_you_mean

# Variant fields added after 0.2, with the default that leaves a definition unchanged
ADDED_FIELDS = {"downsample": "stride", "head_widths": [], "dropout": 0.0, "pretrained": None,
                "head_act": "relu"}


@dataclass(frozen=True)
class Stage:
    """One stage of residual blocks: how many, output width, bottleneck inner width."""

    blocks: int
    width: int
    inner: int | None = None  # bottleneck units only


@dataclass(frozen=True)
class Variant:
    """A registry row. `unit` / `down_unit` name units (`ablation.models.resolve`: the
    study's own in `unit_module`, then the built-in ones), `stem` and `head` entries of
    `STEMS` and `HEADS`."""

    name: str
    label: str  # the blog's (or the paper's) name for it
    unit: str | tuple[str, ...]  # one unit, or one per stage
    stages: tuple[Stage, ...]
    stem_filters: int = 16
    down_unit: str | None = None  # unit used for shape-changing blocks, if different
    projection_input: str = "preact"  # "preact": P reads h (d/e); "input": P reads x (v2)
    first_stage_stride: int = 1
    description: str = ""
    reference_params: tuple[int, int, int] | None = field(default=None, compare=False)
    stem: str = "conv"  # conv | conv_bn_relu
    head: str = "bn_relu"  # bn_relu | plain
    shortcut: str = "projection"  # projection (1x1 conv) | pad (option A, no parameters)
    # recipe fields this network is always trained with (He 2015's ResNet-110 warm-up)
    recipe: tuple[tuple[str, Any], ...] = ()
    # --- added in 0.3 (non-residual families); at their defaults they leave a variant's
    # definition, and so its hash and run folders, exactly as before (ADDED_FIELDS)
    downsample: str = "stride"  # stride: first block of a stage strides; pool: 2x2 max-pool
    head_widths: tuple[int, ...] = ()  # hidden dense layers of the dense heads
    dropout: float = 0.0  # after each hidden dense layer's ReLU (dense heads)
    pretrained: str | None = None  # "imagenet" or a VGG19 weights file: the convs start there
    # --- added in 0.5 (your own designs)
    head_act: str = "relu"  # the head's activation (BN-ReLU, or BN-SiLU, ...)
    # where the study's own units live (a module name): they come first for this variant.
    # Not part of the definition: the units' source hashes are (ablation.study)
    unit_module: str | None = None

    def train_recipe(self, recipe):
        """`recipe` with this network's own fixed fields on top (`recipe`: what every job,
        bench measurement and projection of it trains with)."""
        return recipe.replace(**dict(self.recipe))

    def stage_unit(self, stage: int) -> str:
        """The unit of stage `stage` (0-based)."""
        return self.unit[stage] if isinstance(self.unit, tuple) else self.unit

    def unit_names(self) -> list[str]:
        """Every unit the network uses, each once."""
        names = list(self.unit) if isinstance(self.unit, tuple) else [self.unit]
        return list(dict.fromkeys([*names, *([self.down_unit] if self.down_unit else [])]))

    def to_dict(self) -> dict:
        """Plain data (JSON/TOML-like): stages as [blocks, width(, inner)] lists."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stages"] = [[s.blocks, s.width] + ([s.inner] if s.inner else []) for s in self.stages]
        d["reference_params"] = list(self.reference_params) if self.reference_params else None
        d["recipe"] = dict(self.recipe)
        d["head_widths"] = list(self.head_widths)
        if isinstance(self.unit, tuple):
            d["unit"] = list(self.unit)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Variant:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["stages"] = tuple(Stage(*s) for s in d["stages"])
        if kw.get("reference_params"):
            kw["reference_params"] = tuple(kw["reference_params"])
        kw["recipe"] = tuple(sorted(dict(d.get("recipe") or {}).items()))
        kw["head_widths"] = tuple(d.get("head_widths") or ())
        if isinstance(kw.get("unit"), list):
            kw["unit"] = tuple(kw["unit"])
        return cls(**kw)

    def replace(self, **changes: Any) -> Variant:
        return dataclasses.replace(self, **changes)


class UnknownVariantError(AblationError, KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_REGISTRY: dict[str, Variant] = {}
# Loaders of the built-in variants (the built-in studies), run once, on the first lookup
# that needs them: `import ablation; ablation.build_model("resnet34")` in a fresh process
# finds the blog's variants whatever was called first. The package installs the loader
# (ablation/__init__.py), so this module imports nothing above it.
_SOURCES: list[Callable[[], object]] = []


def add_source(load: Callable[[], object]) -> None:
    """Run `load` (which registers variants) before the first lookup that misses."""
    _SOURCES.append(load)


def _load_sources() -> bool:
    """Run the pending loaders; whether any ran (a miss is then worth a second look)."""
    ran = False
    while _SOURCES:
        _SOURCES.pop(0)()  # popped first: a loader's own lookups never recurse
        ran = True
    return ran


def register(variant: Variant) -> Variant:
    """Add a variant; a duplicate name is a programming error, so it raises."""
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant
    return variant


def lookup(name: str) -> Variant | None:
    """The variant registered as `name` now, or None; never loads anything (the study
    loader's view, while it registers the built-in studies themselves)."""
    return _REGISTRY.get(name)


def is_registered(name: str) -> bool:
    return name in _REGISTRY or (_load_sources() and name in _REGISTRY)


def get(name: str) -> Variant:
    """Look a variant up by exact name, suggesting close matches on a miss."""
    if name not in _REGISTRY:
        _load_sources()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownVariantError(f"unknown variant {name!r}{did_you_mean(name, _REGISTRY)} "
                                  "(`ablation list` shows them)") from None


def variants(pattern: str = "*", names: Iterable[str] | None = None) -> list[str]:
    """Names matching a shell glob, in order: all registered ones, or among `names`."""
    if names is None:
        _load_sources()
    pool = list(_REGISTRY) if names is None else list(names)
    return [n for n in pool if fnmatch.fnmatchcase(n, pattern)]


def select(patterns: list[str], names: Iterable[str] | None = None) -> list[str]:
    """Expand names and globs from the command line, keeping the pool's order.

    A plain name that is not in the pool raises UnknownVariantError; a glob that
    matches nothing raises too, because silently running nothing is never wanted.
    """
    if names is None:
        _load_sources()
    pool = list(_REGISTRY) if names is None else list(names)
    chosen: set[str] = set()
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = variants(pat, pool)
            if not hits:
                raise UnknownVariantError(f"no variant matches {pat!r} (`ablation list`)")
            chosen.update(hits)
        elif pat in pool:
            chosen.add(pat)
        else:
            raise UnknownVariantError(f"unknown variant {pat!r}{did_you_mean(pat, pool)} "
                                      "(`ablation list` shows them)")
    return [n for n in pool if n in chosen]
