"""The study file's schema, declared once: each table and key with its type and bounds
(pydantic), and one function that turns any violation into the one line a user reads:
the table, the key and what is wrong.

What the schema cannot know (does a `base` exist, is a `unit` defined, is a comparison's
variant known) the loader checks (`ablation.study.loader`); everything else is here. The
recipe's own fields are the recipe's schema (`ablation.recipe`); `[analysis]` is
`ablation.verdict.Settings`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ablation.errors import AblationError, validation_line
from ablation.registry import Variant


def _why(message: str) -> Any:
    """What a key's error says, whatever the mistake (a wrong type, a bad value): a
    predicate ("must be ...", after the key) or a sentence ("needs ...", "[...] ...")."""
    return Field(json_schema_extra={"why": message})


class _Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _variant_key(f: dataclasses.Field) -> tuple[Any, Any]:
    """A `[[variant]]` key from the Variant field that declares it: its type as a study
    file writes it, with its message; optional (a base supplies the rest), but `name`."""
    toml, why = f.metadata["toml"], f.metadata["why"]
    kind = Annotated[toml, _why(why)] if why else toml
    if f.name == "name":
        return kind, ...
    return Annotated[toml | None, _why(why)] if why else toml | None, None


# A `[[variant]]` (docs/studies.md): any Variant field (registry.Variant declares each
# one: its type, its check, its message), and `base`
VariantTable = pydantic.create_model(
    "VariantTable", __base__=_Table, base=(str | None, None),
    **{f.name: _variant_key(f) for f in dataclasses.fields(Variant) if "toml" in f.metadata})


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
    published_error: Annotated[dict[str, int | float] | dict[str, dict[str, int | float]],
                               _why("must map this comparison's variants to numbers, or "
                                    "datasets to such tables")] = {}


class SpaceTable(_Table):
    """A `[[space]]` (ablation.study.spaces): a base variant and ranges or choices over
    its fields, `samples` models drawn from it."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.-]*$"), _why(
        "needs a name of letters, digits, '_', '.', '-'")]
    base: Annotated[str, _why("needs a base variant")]
    samples: Annotated[int, Field(ge=2, le=10_000), _why(
        "must be a whole number from 2 to 10,000")]
    fields: Annotated[dict[str, Any], Field(min_length=1), _why(
        "must be a table of at least one field: { min = A, max = B } or "
        "{ choices = [...] }")]
    description: str = ""


class RobustnessTable(_Table):
    """`[robustness]`: what `ablation evaluate` measures (docs/robustness.md)."""

    corruptions: Annotated[str, _why(
        'must be "generated", "none" or the folder of the released CIFAR-10-C files')] = \
        "generated"
    severities: Annotated[list[Annotated[int, Field(ge=1, le=5)]], Field(min_length=1), _why(
        "must be a list of severities 1 to 5")] = [1, 2, 3, 4, 5]
    seed: Annotated[int, Field(ge=0), _why("must be a whole number >= 0")] = 0
    frost_images: Annotated[str | None, _why(
        "must be the folder of the paper's frost pictures")] = None
    reference: Annotated[str | None, _why("must be a variant's name")] = None
    test_sets: Annotated[dict[str, str], _why(
        "must be a table of name = path (an .npz, a *_data.npy or a folder)")] = {}


class SlurmTable(_Table):
    """`[slurm]`: `--executor slurm`'s defaults for the study (its flags override
    them): the Slurm job's resources, and any other sbatch option in `options`."""

    partition: str | None = None
    gpus: Annotated[int, Field(ge=0)] | None = None
    cpus: Annotated[int, Field(ge=1)] | None = None
    mem: Annotated[int | float, Field(gt=0)] | None = None  # GB
    time: Annotated[int, Field(ge=1)] | None = None  # minutes
    account: str | None = None
    qos: str | None = None
    jobs: Annotated[int, Field(ge=1)] | None = None
    options: dict[str, str | int | float | bool] = {}


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
    space: Annotated[list[dict[str, Any]], _why(
        "[[space]] must be an array of tables")] = []
    tune: Annotated[dict[str, Any], _why("[tune] must be a table")] = {}
    slurm: Annotated[dict[str, Any], _why("[slurm] must be a table")] = {}
    robustness: Annotated[dict[str, Any], _why("[robustness] must be a table")] = {}
    published: Annotated[list[PublishedTable], _why(
        "[[published]] must be tables with text for source, network, metric, "
        "value")] = []


def one_line(model: type[BaseModel], e: pydantic.ValidationError, where: str = "") -> str:
    """A schema violation as one line: `where` (the table), the key and what is wrong."""
    def why(key: str, err: dict) -> str | None:
        field = model.model_fields.get(key)
        extra = field.json_schema_extra if field is not None else None
        return extra.get("why") if isinstance(extra, dict) else None

    return validation_line(e, where, why, model.model_fields,
                           what="top-level key" if model is StudyFile else "key")


def validate(model: type[BaseModel], table: Any, where: str = "") -> BaseModel:
    """`table` as `model`, or AblationError with the one line."""
    try:
        return model.model_validate(table)
    except pydantic.ValidationError as e:
        raise AblationError(one_line(model, e, where)) from e
