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
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, Field

from ablation.errors import AblationError, did_you_mean, validation_line

# The choices of a variant's fields that the builder implements (ablation.models)
SHORTCUTS = ("projection", "pad")
PROJECTION_INPUTS = ("preact", "input")
DOWNSAMPLES = ("stride", "pool")
NAME = r"^[A-Za-z0-9][\w.-]*$"


def _positive(v: int) -> int:
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


def _below_one(v: float) -> float:
    if not 0 <= v < 1:
        raise ValueError("must be a number from 0 to below 1")
    return v


PosInt = Annotated[int, AfterValidator(_positive)]
_StageList = Annotated[list[PosInt], Field(min_length=2, max_length=3)]


def _f(default: Any, toml: Any, why: str | None = None, since: str | None = None,
       **kw: Any) -> Any:
    """A variant field: its default; how a study file writes it (`toml`, the schema of
    `ablation.study.schema`'s `[[variant]]`) and what a bad value is told (`why`); the
    version that added it (`since`: at its default it leaves the definitions of
    earlier variants, and so their hashes and run folders, unchanged)."""
    meta = {"toml": toml, "why": why, "since": since}
    if default is dataclasses.MISSING:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


_REQUIRED = dataclasses.MISSING


@dataclass(frozen=True)
class Stage:
    """One stage of residual blocks: how many, output width, bottleneck inner width."""

    blocks: int
    width: int
    inner: int | None = None  # bottleneck units only


@dataclass(frozen=True)
class Variant:
    """A registry row, declared once: each field's type, default, how a study file
    writes it and its check (the `[[variant]]` schema is made from these fields), and
    the version that added it. `unit` / `down_unit` name units, `stem` and `head` stems
    and heads (`ablation.models`: the study's own in `unit_module`, then the built-in
    ones)."""

    name: str = _f(_REQUIRED, Annotated[str, Field(pattern=NAME)],
                   "needs a name of letters, digits, '_', '.', '-'")
    label: str = _f(_REQUIRED, str)  # the blog's (or the paper's) name for it
    # one unit, or one per stage
    unit: str | tuple[str, ...] = _f(_REQUIRED, str | Annotated[list[str],
                                                                Field(min_length=1)])
    stages: tuple[Stage, ...] = _f(_REQUIRED, Annotated[list[_StageList], Field(
        min_length=1)], "must be a list of [blocks, width] or [blocks, width, inner], "
        "positive integers")
    stem_filters: int = _f(16, PosInt, "must be a positive integer")
    down_unit: str | None = _f(None, str)  # the unit of shape-changing blocks, if another
    # "preact": P reads h (d/e); "input": P reads x (v2)
    projection_input: str = _f("preact", Literal[PROJECTION_INPUTS])
    first_stage_stride: int = _f(1, Literal[1, 2], "must be 1 or 2")
    description: str = _f("", str)
    reference_params: tuple[int, int, int] | None = _f(
        None, Annotated[list[int], Field(min_length=3, max_length=3)],
        "must be [total, trainable, non-trainable]", compare=False)
    stem: str = _f("conv", str)  # a stem's name: conv | conv_bn_relu | none | a study's own
    head: str = _f("bn_relu", str)  # a head's name: bn_relu | plain | dense | dense_bn | ...
    shortcut: str = _f("projection", Literal[SHORTCUTS])  # projection (1x1 conv) | pad (A)
    # recipe fields this network is always trained with (He 2015's ResNet-110 warm-up)
    recipe: tuple[tuple[str, Any], ...] = _f((), dict[str, Any], "must be a table")
    # --- added in 0.3 (non-residual families)
    # stride: first block of a stage strides; pool: 2x2 max-pool after each stage
    downsample: str = _f("stride", Literal[DOWNSAMPLES], since="0.3")
    head_widths: tuple[int, ...] = _f((), list[PosInt], "must be a list of positive integers",
                                      since="0.3")  # hidden dense layers of the dense heads
    # after each hidden dense layer's ReLU (dense heads); between the convs of units that
    # read `block.dropout` (Wide ResNets)
    dropout: float = _f(0.0, Annotated[int | float, AfterValidator(_below_one)],
                        "must be a number from 0 to below 1", since="0.3")
    # "imagenet" or a VGG19 weights file: the convs start there
    pretrained: str | None = _f(None, str, 'must be "imagenet" or a weights file path',
                                since="0.3")
    # --- added in 0.5 (your own designs)
    head_act: str = _f("relu", str, since="0.5")  # the head's activation (ReLU, SiLU, ...)
    # --- added in 0.7
    # stochastic depth: the largest drop-path rate, for units that read `block.drop_path`
    # (the ConvNeXt roadmap's: 0 for the first block, rising linearly to this at the last)
    drop_path: float = _f(0.0, Annotated[int | float, AfterValidator(_below_one)],
                          "must be a number from 0 to below 1", since="0.7")
    # where the study's own units live (a module name): they come first for this variant.
    # Not part of the definition (the units' source hashes are), not a study file's key
    unit_module: str | None = None

    def train_recipe(self, recipe, keep: tuple[str, ...] | list[str] = ()):
        """`recipe` with this network's own fixed fields on top (`recipe`: what every job,
        bench measurement and projection of it trains with), except the fields in `keep`
        (a tuned run's: the setting tried wins over the variant's own value)."""
        return recipe.overlay({k: v for k, v in self.recipe if k not in keep})

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
        """`to_dict`'s plain data (a job's config.json, a study's resolved table) as a
        variant, validated; an unknown key or a bad value is one line (a hand-edited
        config.json fails its job saying which key, never with pydantic's page)."""
        try:
            return _VARIANT.validate_python(d)
        except pydantic.ValidationError as e:
            raise AblationError(validation_line(e, "not a variant definition: ")) from e

    def replace(self, **changes: Any) -> Variant:
        return dataclasses.replace(self, **changes)


def _load(d: Any) -> Any:
    """The plain form's lists as the dataclass's tuples, stages as Stage rows."""
    if not isinstance(d, dict):
        return d
    d = dict(d)
    if isinstance(d.get("stages"), list | tuple):
        d["stages"] = tuple(Stage(*s) if isinstance(s, list | tuple) else s
                            for s in d["stages"])
    for key in ("reference_params", "head_widths"):
        if isinstance(d.get(key), list):
            d[key] = tuple(d[key])
    if isinstance(d.get("unit"), list):
        d["unit"] = tuple(d["unit"])
    if isinstance(d.get("recipe"), dict):
        d["recipe"] = tuple(sorted(d["recipe"].items()))
    elif d.get("recipe") is None:
        d.pop("recipe", None)
    return d


Variant.__pydantic_config__ = pydantic.ConfigDict(extra="forbid")
_VARIANT = pydantic.TypeAdapter(Annotated[Variant, pydantic.BeforeValidator(_load)])

# Variant fields added after 0.2, with the default that leaves a definition unchanged
ADDED_FIELDS = {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
                for f in fields(Variant) if f.metadata.get("since")}


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
