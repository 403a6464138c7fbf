"""The study file's schema, declared once: each table and key with its type and bounds
(pydantic), and one function that turns any violation into the one line a user reads:
the table, the key and what is wrong.

What the schema cannot know (does a `base` exist, is a `unit` defined, is a comparison's
variant known) the loader checks (`ablation.study.loader`); everything else is here. The
recipe's own fields are the recipe's schema (`ablation.recipe`); `[analysis]` is
`ablation.verdict.Settings`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ablation.errors import AblationError
from ablation.models import ACTIVATIONS, DOWNSAMPLES, HEADS, PROJECTION_INPUTS, SHORTCUTS, STEMS

NAME = r"^[A-Za-z0-9][\w.-]*$"


def _why(message: str) -> Any:
    """What a key's error says, whatever the mistake (a wrong type, a bad value): a
    predicate ("must be ...", after the key) or a sentence ("needs ...", "[...] ...")."""
    return Field(json_schema_extra={"why": message})


def _positive(v: int) -> int:
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


def _below_one(v: float) -> float:
    if not 0 <= v < 1:
        raise ValueError("must be a number from 0 to below 1")
    return v


PosInt = Annotated[int, AfterValidator(_positive)]
Stage = Annotated[list[PosInt], Field(min_length=2, max_length=3)]


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class VariantTable(_Table):
    """A `[[variant]]` (docs/studies.md): any Variant field, and `base`. Every key but
    `name` is optional here: a base supplies the rest."""

    name: Annotated[str, Field(pattern=NAME), _why(
        "needs a name of letters, digits, '_', '.', '-'")]
    base: str | None = None
    label: str = ""
    description: str = ""
    unit: str | Annotated[list[str], Field(min_length=1)] | None = None
    down_unit: str | None = None
    stages: Annotated[Annotated[list[Stage], Field(min_length=1)] | None, _why(
        "must be a list of [blocks, width] or [blocks, width, inner], positive "
        "integers")] = None
    stem_filters: Annotated[PosInt | None, _why("must be a positive integer")] = None
    stem: Literal[tuple(STEMS)] | None = None
    head: Literal[tuple(HEADS)] | None = None
    head_act: Literal[ACTIVATIONS] | None = None
    shortcut: Literal[SHORTCUTS] | None = None
    projection_input: Literal[PROJECTION_INPUTS] | None = None
    first_stage_stride: Annotated[Literal[1, 2] | None, _why("must be 1 or 2")] = None
    downsample: Literal[DOWNSAMPLES] | None = None
    head_widths: Annotated[list[PosInt] | None, _why(
        "must be a list of positive integers")] = None
    dropout: Annotated[Annotated[int | float, AfterValidator(_below_one)] | None, _why(
        "must be a number from 0 to below 1")] = None
    pretrained: Annotated[str | None, _why(
        'must be "imagenet" or a weights file path')] = None
    reference_params: Annotated[
        Annotated[list[int], Field(min_length=3, max_length=3)] | None,
        _why("must be [total, trainable, non-trainable]")] = None
    recipe: Annotated[dict[str, Any] | None, _why("must be a table")] = None


class Reference(_Table):
    name: str
    params: int


class ComparisonTable(_Table):
    """A `[[comparison]]`."""

    title: Annotated[str, Field(min_length=1), _why("needs a title")]
    variants: Annotated[list[str], Field(min_length=1), _why(
        "needs a non-empty list of variants")]
    key: str | None = None
    zoom: Annotated[bool, _why("must be true or false")] = False
    sizes: Annotated[bool, _why("must be true or false")] = False
    question: str = ""
    references: Annotated[list[Reference], _why(
        "must be tables with name and params")] = []
    published_source: str = ""
    published_error: Annotated[dict[str, int | float], _why(
        "must map this comparison's variants to numbers")] = {}


class PublishedTable(_Table):
    """A `[[published]]` number for the report's context table (all text)."""

    source: str
    network: str
    metric: str
    value: str


class StudyFile(_Table):
    """The file's top level."""

    name: Annotated[str | None, _why("must be a string")] = None
    title: str | None = None
    description: str = ""
    units: str | None = None
    recipe: Annotated[dict[str, Any], _why("[recipe] must be a table")] = {}
    analysis: Annotated[dict[str, Any], _why("[analysis] must be a table")] = {}
    variant: Annotated[list[dict[str, Any]], _why(
        "[[variant]] must be an array of tables")] = []
    comparison: Annotated[list[dict[str, Any]], _why(
        "[[comparison]] must be an array of tables")] = []
    tune: Annotated[dict[str, Any], _why("[tune] must be a table")] = {}
    published: Annotated[list[PublishedTable], _why(
        "[[published]] must be tables with text for source, network, metric, "
        "value")] = []


def one_line(model: type[BaseModel], e: pydantic.ValidationError, where: str = "") -> str:
    """A schema violation as one line: `where` (the table), the key and what is wrong."""
    err = e.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else "?"
    field = model.model_fields.get(key)
    extra = field.json_schema_extra if field is not None else None
    why = extra.get("why") if isinstance(extra, dict) else None
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        what = "top-level key" if model is StudyFile else "key"
        return (f"{where}unknown {what} {key!r} (allowed: "
                f"{', '.join(sorted(model.model_fields))})")
    if why:
        return f"{where}{why}" if why.startswith(("[", "needs")) else f"{where}{key} {why}"
    if err["type"] == "missing":
        return f"{where}needs {key}"
    if err["type"] == "literal_error":
        known = str(err.get("ctx", {}).get("expected", "")).replace("'", "")
        return f"{where}unknown {key} {err.get('input')!r} (known: {known})"
    msg = err["msg"]
    return f"{where}{key}: {msg[:1].lower()}{msg[1:]}, got {err.get('input')!r}"


def validate(model: type[BaseModel], table: Any, where: str = "") -> BaseModel:
    """`table` as `model`, or AblationError with the one line."""
    try:
        return model.model_validate(table)
    except pydantic.ValidationError as e:
        raise AblationError(one_line(model, e, where)) from None
