"""Reading a study file: its tables validated by the schema (`ablation.study.schema`),
then what only the registry can tell (a base, a unit, a comparison's variants), then its
variants registered, each run once through the counting interpreter so a broken unit
fails here, in one line naming the file, the unit and the block.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation import models, registry, tune, verdict
from ablation.data import shape_of as data_shape_of
from ablation.data.sources import is_path as data_is_path
from ablation.errors import AblationError
from ablation.recipe import VARIANT_FIELDS, Recipe
from ablation.registry import Variant
from ablation.study import definitions, robustness, schema, spaces
from ablation.study.units import import_units

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "studies"
DEFAULT = "blog"


@dataclass(frozen=True)
class Reference:
    """A reference row in a comparison's table (the blog's VGG19): a name and a size."""

    name: str
    params: int


@dataclass(frozen=True)
class Comparison:
    """One comparison of a study: its variants' curves, table, tests and figures."""

    key: str
    title: str
    variants: tuple[str, ...]
    zoom: bool = False  # zoomed test-accuracy plot over the last part of training
    sizes: bool = False  # bar chart of saved .h5 sizes
    question: str = ""
    references: tuple[Reference, ...] = ()
    published_source: str = ""
    # dataset -> variant -> published error % (0.6: by dataset; a study file's plain
    # table is its recipe's dataset's)
    published: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    def published_error(self, dataset: str) -> dict[str, float]:
        """The published errors for runs on `dataset` (none for another dataset: a
        CIFAR-10 number is never set beside a CIFAR-100 run)."""
        return dict(dict(self.published).get(dataset, ()))


@dataclass(frozen=True)
class Published:
    """A published number set beside ours, in the report's context table."""

    source: str
    network: str
    metric: str
    value: str


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    description: str
    path: Path
    builtin: bool
    own: tuple[str, ...]  # variants this file defines
    variant_names: tuple[str, ...]  # own first, then the built-ins its comparisons use
    comparisons: tuple[Comparison, ...]
    recipe_defaults: tuple[tuple[str, Any], ...]
    published: tuple[Published, ...]
    units: tuple[str, ...]  # user units the study's file brought
    units_source: str | None  # where they came from (absolute path or module)
    analysis: verdict.Settings = field(default_factory=verdict.Settings)  # [analysis]
    shadowed: tuple[str, ...] = ()  # built-in unit names its own units shadow
    # built-in stems and heads its own shadow: ("stem", name), ("head", name)
    shadowed_parts: tuple[tuple[str, str], ...] = ()
    tune: tune.Tune | None = None  # [tune]: each variant's nuisance fields, tuned
    spaces: tuple[spaces.Space, ...] = ()  # [[space]]: design spaces, their models sampled
    slurm: dict = field(default_factory=dict)  # [slurm]: --executor slurm's defaults
    # [robustness]: what `ablation evaluate` measures, and the report's reference
    robustness: robustness.Settings = field(default_factory=robustness.Settings)

    def variants(self, pattern: str = "*") -> list[str]:
        return registry.variants(pattern, self.variant_names)

    def select(self, patterns: list[str]) -> list[str]:
        """Names and globs among this study's variants; a hint when the name belongs
        to another built-in study."""
        try:
            return registry.select(patterns, self.variant_names)
        except registry.UnknownVariantError as e:
            for pat in patterns:
                home = builtin_home(pat) if pat not in self.variant_names else None
                if home and home != self.name:
                    raise AblationError(f"{e}; {pat!r} belongs to the built-in study "
                                        f"{home!r}: add --study {home}") from e
            raise

    def recipe(self, overrides: dict | None = None) -> Recipe:
        """The study's defaults, then `overrides` (command-line flags) on top. A relative
        dataset path in the study file is read from the study's folder, or for a built-in
        study (whose folder is the package's) from the working folder."""
        fields_ = dict(self.recipe_defaults)
        ds = fields_.get("dataset")
        if isinstance(ds, str) and data_is_path(ds) and not Path(ds).expanduser().is_absolute():
            fields_["dataset"] = str((data_base(self.path, self.builtin) / ds).resolve())
        return Recipe(**{**fields_, **(overrides or {})})

    @property
    def flag(self) -> list[str]:
        """What a command needs to name this study: nothing for the default one."""
        if self.name == DEFAULT:
            return []
        return ["--study", self.name if self.builtin else str(self.path)]

    @property
    def default_out(self) -> str:
        """Where `ablation report` writes by default: reports/, or reports/<study>."""
        return "reports" if self.name == DEFAULT else f"reports/{self.name}"


# --- loading --------------------------------------------------------------------------------


def data_base(path: Path, builtin: bool) -> Path:
    """Where a study's relative dataset path is read from: its file's folder, or the
    working folder for a built-in study (the ConvNeXt roadmap's `imagenet`)."""
    return Path.cwd() if builtin else path.parent


UNIT_CHECK_SECONDS = 60  # counting ResNet-152 takes milliseconds; ops.layer imports Keras


@contextlib.contextmanager
def _time_limit(seconds: float, message: str):
    """Raise AblationError(message) if the block runs longer than `seconds` (a unit is a
    user's code: `ablation list` must not hang without a word). Main thread only, where
    POSIX timers can interrupt; elsewhere no limit."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise AblationError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_LOADED: dict[Path, Study] = {}


def builtin_names() -> list[str]:
    """The built-in studies, the default first."""
    names = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))
    return sorted(names, key=lambda n: n != DEFAULT)


_LOADING: set[str] = set()  # built-in studies being loaded (one may use another's variants)


def load_builtins() -> list[Study]:
    """Every built-in study but those being loaded now (a built-in study that uses
    another's variants loads the others first: `convnext2022_imagenette`)."""
    return [load_study(n) for n in builtin_names() if n not in _LOADING]


def builtin_home(name: str) -> str | None:
    """The built-in study that defines variant `name`, if any."""
    load_builtins()
    return definitions.pinned(name)


def load_study(ref: str | Path | None = None) -> Study:
    """A built-in study by name, or a study file by path; None is the default study.

    Registers its variants and units; loading the same file again returns the same
    study. Every problem is one AblationError naming the file.
    """
    ref = DEFAULT if ref is None else ref
    builtin = BUILTIN_DIR / f"{ref}.toml"
    if isinstance(ref, str) and "/" not in ref and not ref.endswith(".toml") \
            and builtin.is_file():
        path, is_builtin = builtin, True
    else:
        path, is_builtin = Path(ref).expanduser(), False
        if path.is_dir():
            raise AblationError(f"study {str(ref)!r} is a folder; give the study's .toml "
                                "file in it")
        if not path.is_file():
            raise AblationError(f"no study {str(ref)!r}: not a built-in study "
                                f"({', '.join(builtin_names())}) and no such file")
    path = path.resolve()
    if path in _LOADED:
        return _LOADED[path]
    if not is_builtin:
        load_builtins()  # a user study may not redefine, but may use, built-in variants
    if is_builtin:
        _LOADING.add(path.stem)
    try:
        study = _Loader(path, is_builtin).load()
    finally:
        _LOADING.discard(path.stem)
    _LOADED[path] = study
    return study


class _Loader:
    """Reads one study file into a Study, registering what it defines."""

    def __init__(self, path: Path, builtin: bool):
        self.path, self.builtin = path, builtin
        self.module: str | None = None

    def fail(self, msg: str) -> AblationError:
        return AblationError(f"{self.path}: {msg}")

    def check(self, model: type, table: Any, where: str = "") -> Any:
        try:
            return schema.validate(model, table, where)
        except AblationError as e:
            raise self.fail(str(e)) from e

    def load(self) -> Study:
        try:
            doc = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise self.fail(f"not valid TOML: {e}") from e
        except OSError as e:
            raise self.fail(f"cannot read: {e.strerror}") from e
        top = self.check(schema.StudyFile, doc)
        name = top.name or self.path.stem
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise self.fail(f"study name {name!r} must be letters, digits, '.', '_', '-'")
        if not self.builtin and name in builtin_names():
            raise self.fail(f"study name {name!r} clashes with a built-in study")
        self.name = name

        units: list[str] = []
        units_source = None
        if top.units is not None:
            src = top.units
            is_file = src.endswith(".py") or "/" in src
            units_source = str((self.path.parent / src).resolve()) if is_file else src
            self.module, units = import_units(units_source, str(self.path))

        try:
            base = Recipe.parse(top.recipe)
        except AblationError as e:
            raise self.fail(f"[recipe] {e}") from e
        try:
            tuned = tune.parse(top.tune, base, name)
        except AblationError as e:
            raise self.fail(str(e)) from e
        extra = sorted(set(top.analysis) - set(verdict.SETTINGS_KEYS))
        if extra:
            raise self.fail(f"unknown [analysis] key {extra[0]!r} (allowed: "
                            f"{', '.join(verdict.SETTINGS_KEYS)})")
        try:
            settings = verdict.Settings(**top.analysis)
        except AblationError as e:
            raise self.fail(f"[analysis] {e}") from e

        self.shape = self.data_shape(top.recipe)
        self.dataset = str(top.recipe.get("dataset", "cifar10"))
        own = self.variants(top.variant)
        sampled = self.spaces(top.space, own)
        own += [m for sp in sampled for m in sp.models]
        comparisons = self.comparisons(top.comparison, own)
        used = [v for c in comparisons for v in c.variants if v not in own]
        for names, _ in (tuned.spaces if tuned else ()):
            stray = [n for n in names if n not in own and n not in used]
            if stray:
                raise self.fail(f"[[tune.space]] names {stray[0]!r}, which is not one of the "
                                f"study's variants ({', '.join(dict.fromkeys([*own, *used]))})")
        published = tuple(Published(**p.model_dump()) for p in top.published)
        return Study(
            name=name, title=top.title or f"Ablation report: study {name}",
            description=top.description, path=self.path, builtin=self.builtin,
            own=tuple(own), variant_names=tuple(dict.fromkeys([*own, *used])),
            comparisons=tuple(comparisons), recipe_defaults=tuple(top.recipe.items()),
            published=published, units=tuple(units), units_source=units_source,
            analysis=settings, shadowed=tuple(models.shadowed(self.module)), tune=tuned,
            shadowed_parts=tuple((kind, n) for kind in ("stem", "head")
                                 for n in models.PARTS[kind].shadowed(self.module)),
            slurm=self.check(schema.SlurmTable, top.slurm, "[slurm] ").model_dump(
                exclude_none=True), spaces=tuple(sampled),
            robustness=self.robustness(top.robustness, [*own, *used]))

    def data_shape(self, recipe: dict) -> tuple[tuple[int, int, int], int]:
        """The input shape and classes the study's units are checked at: its dataset's
        where it can be read now, else CIFAR's (`run` and `list` read it, or say why)."""
        ds = recipe.get("dataset", "cifar10")
        try:
            size = Recipe.parse(recipe).image_hw
            return data_shape_of(ds, size, data_base(self.path, self.builtin))
        except AblationError:
            return (32, 32, 3), 10

    # --- variants

    def variants(self, tables: list[dict]) -> list[str]:
        own: list[str] = []
        for t in tables:
            name = t.get("name")
            where = f"variant {name!r}: " if isinstance(name, str) else "a [[variant]]: "
            spec = self.check(schema.VariantTable, t, where)
            if name in own:
                raise self.fail(f"duplicate variant name {name!r}")
            if not self.builtin and (home := definitions.pinned(name)):
                raise self.fail(f"variant {name!r} clashes with a built-in variant of "
                                f"study {home!r}; pick another name")
            v = self.variant(spec, where)
            existing = registry.lookup(name)
            if existing is not None and existing != v:
                raise self.fail(f"{where}another study already defines {name!r} differently"
                                " in this process")
            if existing is None:
                registry.register(v)
            if self.builtin:
                definitions.pin(name, self.name)
            own.append(name)
        return own

    def variant(self, spec: schema.VariantTable, where: str) -> Variant:
        given = spec.model_dump(exclude_unset=True)
        base_name = given.pop("base", None)
        if base_name is not None:
            found = registry.lookup(base_name)
            if found is None:
                raise self.fail(f"{where}unknown base {base_name!r} (a built-in variant or "
                                "one defined above in this file)")
            d = found.to_dict()
            changed = ", ".join(k for k in given if k not in ("name", "label", "description"))
            d.update(label="", reference_params=None,
                     description=base_name + (f" with its {changed} changed" if changed
                                              else ""))
        else:
            missing = [k for k in ("unit", "stages") if k not in given]
            if missing:
                raise self.fail(f"{where}needs {' and '.join(missing)} (or a base)")
            d = {}
        d.update(given)
        d["label"] = d.get("label") or spec.name
        if self.module:  # the study's own units come first for its own variants
            d["unit_module"] = self.module
        for key, known in (("stem", models.STEMS.known(self.module)),
                           ("head", models.HEADS.known(self.module)),
                           ("head_act", models.ACTIVATIONS)):
            if key in given and given[key] not in known:
                raise self.fail(f"{where}unknown {key} {given[key]!r} (known: "
                                f"{', '.join(known)})")
        units = models.units.known(d.get("unit_module"))
        unit = d["unit"]
        for u in [*(unit if isinstance(unit, list) else [unit]), d.get("down_unit")]:
            if u is not None and u not in units:
                raise self.fail(f"{where}unknown unit {u!r} (known: {', '.join(units)})")
        if isinstance(unit, list) and len(unit) != len(d["stages"]):
            raise self.fail(f"{where}unit lists {len(unit)} unit(s) for {len(d['stages'])} "
                            "stage(s): give one unit, or one per stage")
        if isinstance(d.get("pretrained"), str) and d["pretrained"] != "imagenet":
            d["pretrained"] = str((self.path.parent / d["pretrained"]).resolve())
        try:
            Recipe.parse(d.get("recipe") or {}, VARIANT_FIELDS)
        except AblationError as e:
            raise self.fail(f"{where}recipe: {e}") from e
        v = Variant.from_dict(d)
        try:  # runs every unit on shapes: a broken unit fails here, a stuck one stops
            with _time_limit(UNIT_CHECK_SECONDS, f"{where}counting its network did not end "
                             f"within {UNIT_CHECK_SECONDS} s (a unit in an endless loop?)"):
                models.count_params(v, self.shape[1], self.shape[0])
        except AblationError as e:
            raise self.fail(str(e)) from e
        return v

    # --- robustness

    def robustness(self, table: dict, names: list[str]) -> robustness.Settings:
        """`[robustness]`, its paths relative to the study file."""
        spec = self.check(schema.RobustnessTable, table, "[robustness] ")

        def here(p: str) -> str:
            return str((self.path.parent / p).resolve())

        if spec.reference is not None and spec.reference not in names:
            raise self.fail(f"[robustness] reference {spec.reference!r} is not one of the "
                            f"study's variants ({', '.join(names)})")
        corr = spec.corruptions
        if corr not in (robustness.GENERATED, robustness.NONE):
            corr = here(corr)
        return robustness.Settings(
            corruptions=corr, severities=tuple(sorted(set(spec.severities))), seed=spec.seed,
            frost_images=here(spec.frost_images) if spec.frost_images else None,
            reference=spec.reference,
            test_sets=tuple((k, here(v)) for k, v in spec.test_sets.items()))

    # --- design spaces

    def spaces(self, tables: list[dict], own: list[str]) -> list[spaces.Space]:
        """Each `[[space]]` checked, its models sampled and registered as variants."""
        out: list[spaces.Space] = []
        keys = set(schema.VariantTable.model_fields) - {"name", "base", "label",
                                                        "description"}
        for i, t in enumerate(tables, 1):
            name = t.get("name")
            where = f"space {name!r}: " if isinstance(name, str) else f"space {i}: "
            spec = self.check(schema.SpaceTable, t, where)
            if any(sp.name == spec.name for sp in out):
                raise self.fail(f"duplicate space name {spec.name!r}")
            base = registry.lookup(spec.base)
            if base is None:
                raise self.fail(f"{where}unknown base {spec.base!r} (a built-in variant or "
                                "one defined in this file)")
            fields = []
            for f, given in spec.fields.items():
                if f not in keys and f not in spaces.KNOBS:
                    allowed = ", ".join(sorted([*spaces.KNOBS, *keys]))
                    raise self.fail(f"{where}unknown field {f!r} (a [[variant]] key, or "
                                    f"blocks, width; known: {allowed})")
                try:
                    fields.append((f, spaces.check_field(f, given, where)))
                except AblationError as e:
                    raise self.fail(str(e)) from e
            space = spaces.Space(spec.name, spec.base, spec.samples, tuple(fields))
            names = spaces.model_names(spec.name, spec.samples)
            clash = [n for n in names if n in own or any(n in sp.models for sp in out)]
            if clash:
                raise self.fail(f"{where}its model {clash[0]!r} has the name of another "
                                "variant; rename the space")
            plain = base.to_dict()
            drawn = spaces.sample(space)
            for model, values in zip(names, drawn, strict=True):
                table = {"name": model, "base": spec.base,
                         **spaces.apply_knobs(values, plain),
                         "description": f"space {spec.name}: " + ", ".join(
                             f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in values.items())}
                at = f"{where}model {model} ({table['description'][len(spec.name) + 8:]}): "
                v = self.variant(self.check(schema.VariantTable, table, at), at)
                if registry.lookup(model) is None:
                    registry.register(v)
                elif registry.lookup(model) != v:
                    raise self.fail(f"{at}another study already defines {model!r} "
                                    "differently in this process")
            out.append(spaces.Space(spec.name, spec.base, spec.samples, tuple(fields),
                                    tuple(names), tuple(tuple(d.items()) for d in drawn)))
        return out

    # --- comparisons

    def comparisons(self, tables: list[dict], own: list[str]) -> list[Comparison]:
        out: list[Comparison] = []
        for i, t in enumerate(tables, 1):
            title = t.get("title")
            where = f"comparison {i} ({title!r}): " if title else f"comparison {i}: "
            spec = self.check(schema.ComparisonTable, t, where)
            for n in spec.variants:
                if not (n in own or definitions.pinned(n)) and self.builtin:
                    load_builtins()  # another built-in study's variant
                if not (n in own or definitions.pinned(n)):
                    raise self.fail(f"{where}unknown variant {n!r} (its own variants or a "
                                    "built-in one)")
            key = spec.key or re.sub(r"[^a-z0-9]+", "-", spec.title.lower()).strip("-")[:40]
            if any(c.key == key for c in out):
                raise self.fail(f"{where}duplicate comparison key {key!r}")
            nested = {d: t for d, t in spec.published_error.items() if isinstance(t, dict)}
            by_dataset = nested if nested else (
                {self.dataset: spec.published_error} if spec.published_error else {})
            strays = [k for t in by_dataset.values() for k in t if k not in spec.variants]
            if strays:
                raise self.fail(f"{where}published_error names {strays[0]!r}, not one of "
                                "this comparison's variants")
            out.append(Comparison(
                key=key, title=spec.title, variants=tuple(dict.fromkeys(spec.variants)),
                zoom=spec.zoom, sizes=spec.sizes, question=spec.question,
                references=tuple(Reference(r.name, r.params) for r in spec.references),
                published_source=spec.published_source,
                published=tuple((d, tuple((k, float(e)) for k, e in t.items()))
                                for d, t in by_dataset.items())))
        return out
