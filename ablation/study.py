"""Studies: a named set of variants, the comparisons that report them, and the recipe
defaults they are trained with, as data (a TOML file; the schema is docs/studies.md).

The built-in studies (`blog`, `he2015`, `identity2016`) are TOML files shipped in
`ablation/studies/`, loaded by exactly the code that loads a user's file; `blog` is
the default study of every command. Loading a study registers its variants (so
`build_model(name)` builds them) and the units of its `units` file.

Runs never mix definitions: each variant's resolved definition, with the source hash of
every user unit it uses, is hashed; the hash is recorded with every run, and a user
study's run folders carry it in their name, so an edited variant is a new run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ablation import models, registry, verdict
from ablation.errors import AblationError
from ablation.recipe import Recipe
from ablation.registry import Variant

BUILTIN_DIR = Path(__file__).resolve().parent / "studies"
DEFAULT = "blog"

_TOP_KEYS = {"name", "title", "description", "units", "recipe", "analysis", "variant",
             "comparison", "published"}
_VARIANT_KEYS = {f.name for f in fields(Variant)} | {"base"}
_COMPARISON_KEYS = {"key", "title", "variants", "zoom", "sizes", "question", "references",
                    "published_source", "published_error"}
_PUBLISHED_KEYS = {"source", "network", "metric", "value"}
# recipe fields a variant may fix for itself (they change how it trains, not the data)
VARIANT_RECIPE_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "milestones",
                       "warmup_epochs", "warmup_lr")


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
    published_error: tuple[tuple[str, float], ...] = ()  # variant -> published error %


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
                                        f"{home!r}: add --study {home}") from None
            raise

    def recipe(self, overrides: dict | None = None) -> Recipe:
        """The study's defaults, then `overrides` (command-line flags) on top."""
        return Recipe(**{**dict(self.recipe_defaults), **(overrides or {})})

    @property
    def default_out(self) -> str:
        """Where `ablation report` writes by default: reports/, or reports/<study>."""
        return "reports" if self.name == DEFAULT else f"reports/{self.name}"


# --- definitions ----------------------------------------------------------------------------

_PINNED: dict[str, str] = {}  # variant name -> built-in study that defines it


def definition(v: Variant) -> dict:
    """What decides a variant's network and training: its fields (not its name or
    cosmetic labels) and the source hash of each user unit it uses."""
    d = v.to_dict()
    # cosmetic, or (unit_module) where the units live: their source hashes below pin them
    for cosmetic in ("name", "label", "description", "reference_params", "unit_module"):
        d.pop(cosmetic)
    for key, default in registry.ADDED_FIELDS.items():  # earlier definitions stay valid
        if d.get(key) == default:
            d.pop(key)
    d["unit_sources"] = {u: h for u in v.unit_names()
                         if (h := models.user_unit_hash(u, v.unit_module))}
    return d


def definition_hash(v: Variant) -> str:
    return hashlib.sha256(json.dumps(definition(v), sort_keys=True).encode()).hexdigest()[:12]


def folder_tag(v: Variant) -> str:
    """What a run folder's name carries besides variant and seed: nothing for a
    built-in study's variants (pinned by the package and its tests), the definition
    hash for a user's, whose definition can change under their hands."""
    return "" if _PINNED.get(v.name) else definition_hash(v)[:8]


def builtin_home(name: str) -> str | None:
    """The built-in study that defines variant `name`, if any."""
    load_builtins()
    return _PINNED.get(name)


def unit_records(v: Variant) -> list[dict]:
    """The user units a variant needs, with where they come from and their hashes
    (what a training process must import and check)."""
    out = []
    for u in v.unit_names():
        h = models.user_unit_hash(u, v.unit_module)
        if h:
            out.append({"name": u, "source": _UNIT_SOURCES.get(v.unit_module or ""),
                        "module": v.unit_module, "sha256": h})
    return out


# --- user units -----------------------------------------------------------------------------

_UNIT_SOURCES: dict[str, str] = {}  # units module -> the file path or module it came from


def import_units(source: str, where: str = "") -> tuple[str, list[str]]:
    """Import a units file (a path) or module; return its module name (the namespace
    of its units) and the names of the units it defines."""
    prefix = f"{where}: " if where else ""
    is_file = source.endswith(".py") or "/" in source or "\\" in source
    if is_file and not Path(source).is_file():
        raise AblationError(f"{prefix}units file {source} not found")
    try:
        if is_file:
            path = Path(source).resolve()
            mod_name = "ablation_units_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
            if mod_name not in sys.modules:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"{path} is not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
            module = sys.modules[mod_name]
        else:
            module = importlib.import_module(source)
    except Exception as e:
        raise AblationError(f"{prefix}cannot import units {source}: "
                            f"{type(e).__name__}: {e}".splitlines()[0]) from None
    found = models.user_units(module.__name__)
    if not found:
        raise AblationError(f"{prefix}units {source} defines no unit (decorate each with "
                            '`@ablation.unit("name")`)')
    _UNIT_SOURCES[module.__name__] = str(path) if is_file else source
    return module.__name__, found


def check_units(records: list[dict]) -> str | None:
    """In a training process: import the user units a job needs and check each source
    is the one the job was queued with. Returns their module (the variant's
    `unit_module`)."""
    module = None
    for r in records:
        module = r.get("module") or module
        if models.user_unit_hash(r["name"], module) != r["sha256"] and r.get("source"):
            module = import_units(r["source"])[0]
        if models.user_unit_hash(r["name"], module) != r["sha256"]:
            raise AblationError(f"unit {r['name']!r} in {r.get('source')} changed since this "
                                "job was queued; run `ablation run` again to queue the new "
                                "definition")
    return module


# --- loading --------------------------------------------------------------------------------

_LOADED: dict[Path, Study] = {}


def builtin_names() -> list[str]:
    """The built-in studies, the default first."""
    names = sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))
    return sorted(names, key=lambda n: n != DEFAULT)


def load_builtins() -> list[Study]:
    return [load_study(n) for n in builtin_names()]


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
        if not path.is_file():
            raise AblationError(f"no study {str(ref)!r}: not a built-in study "
                                f"({', '.join(builtin_names())}) and no such file")
    path = path.resolve()
    if path in _LOADED:
        return _LOADED[path]
    if not is_builtin:
        load_builtins()  # a user study may not redefine, but may use, built-in variants
    study = _Loader(path, is_builtin).load()
    _LOADED[path] = study
    return study


class _Loader:
    """Reads one study file into a Study, registering what it defines."""

    def __init__(self, path: Path, builtin: bool):
        self.path, self.builtin = path, builtin

    def fail(self, msg: str) -> AblationError:
        return AblationError(f"{self.path}: {msg}")

    def load(self) -> Study:
        try:
            doc = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise self.fail(f"not valid TOML: {e}") from None
        except OSError as e:
            raise self.fail(f"cannot read: {e.strerror}") from None
        self.unknown(doc, _TOP_KEYS, "top-level key")
        self.name = name = self.string(doc, "name", self.path.stem)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise self.fail(f"study name {name!r} must be letters, digits, '.', '_', '-'")
        if not self.builtin and name in builtin_names():
            raise self.fail(f"study name {name!r} clashes with a built-in study")

        units: list[str] = []
        units_source = self.module = None
        if "units" in doc:
            src = self.string(doc, "units", "")
            is_file = src.endswith(".py") or "/" in src
            units_source = str((self.path.parent / src).resolve()) if is_file else src
            self.module, units = import_units(units_source, str(self.path))

        recipe = doc.get("recipe", {})
        if not isinstance(recipe, dict):
            raise self.fail("[recipe] must be a table")
        self.unknown(recipe, {f.name for f in fields(Recipe)}, "[recipe] key")
        try:
            Recipe(**recipe)
        except AblationError as e:
            raise self.fail(f"[recipe] {e}") from None

        analysis = doc.get("analysis", {})
        if not isinstance(analysis, dict):
            raise self.fail("[analysis] must be a table")
        self.unknown(analysis, set(verdict.SETTINGS_KEYS), "[analysis] key")
        try:
            settings = verdict.Settings(**analysis)
        except AblationError as e:
            raise self.fail(f"[analysis] {e}") from None

        own = self.variants(doc.get("variant", []))
        comparisons = self.comparisons(doc.get("comparison", []), own)
        used = [v for c in comparisons for v in c.variants if v not in own]
        published = tuple(self.published(p) for p in self.tables(doc, "published"))
        return Study(
            name=name, title=self.string(doc, "title", f"Ablation report: study {name}"),
            description=self.string(doc, "description", ""), path=self.path,
            builtin=self.builtin, own=tuple(own),
            variant_names=tuple(dict.fromkeys([*own, *used])),
            comparisons=tuple(comparisons),
            recipe_defaults=tuple(recipe.items()), published=published,
            units=tuple(units), units_source=units_source, analysis=settings,
            shadowed=tuple(models.shadowed(self.module)))

    # --- pieces ---

    def unknown(self, table: dict, allowed: set[str], what: str, where: str = "") -> None:
        extra = sorted(set(table) - allowed)
        if extra:
            raise self.fail(f"{where}unknown {what} {extra[0]!r} (allowed: "
                            f"{', '.join(sorted(allowed))})")

    def string(self, table: dict, key: str, default: str, where: str = "") -> str:
        v = table.get(key, default)
        if not isinstance(v, str):
            raise self.fail(f"{where}{key} must be a string, got {v!r}")
        return v

    def tables(self, doc: dict, key: str) -> list[dict]:
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
            raise self.fail(f"[[{key}]] must be an array of tables")
        return v

    def variants(self, tables: list) -> list[str]:
        own: list[str] = []
        for t in self.tables({"variant": tables}, "variant"):
            name = t.get("name")
            where = f"variant {name!r}: " if isinstance(name, str) else "a [[variant]]: "
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
                raise self.fail(f"{where}needs a name of letters, digits, '_', '.', '-'")
            self.unknown(t, _VARIANT_KEYS, "key", where)
            if name in own:
                raise self.fail(f"duplicate variant name {name!r}")
            if not self.builtin and (home := _PINNED.get(name)):
                raise self.fail(f"variant {name!r} clashes with a built-in variant of "
                                f"study {home!r}; pick another name")
            v = self.variant(t, name, where)
            existing = registry.get(name) if registry.is_registered(name) else None
            if existing is not None and existing != v:
                raise self.fail(f"{where}another study already defines {name!r} differently"
                                " in this process")
            if existing is None:
                registry.register(v)
            if self.builtin:
                _PINNED[name] = self.name
            own.append(name)
        return own

    def variant(self, t: dict, name: str, where: str) -> Variant:
        fields_ = dict(t)
        base_name = fields_.pop("base", None)
        if base_name is not None:
            if not isinstance(base_name, str) or not registry.is_registered(base_name):
                raise self.fail(f"{where}unknown base {base_name!r} (a built-in variant or "
                                "one defined above in this file)")
            d = registry.get(base_name).to_dict()
            changed = ", ".join(k for k in fields_ if k not in ("name", "label", "description"))
            d.update(label="", reference_params=None,
                     description=f"{base_name}" + (f" with its {changed} changed" if changed
                                                   else ""))
        else:
            missing = [k for k in ("unit", "stages") if k not in fields_]
            if missing:
                raise self.fail(f"{where}needs {' and '.join(missing)} (or a base)")
            d = {}
        d.update(fields_)
        d["name"] = name
        d.setdefault("label", name)
        d["label"] = d["label"] or name
        if self.module:  # the study's own units come first for its own variants
            d["unit_module"] = self.module
        units = models.units.known(d.get("unit_module"))
        for key, allowed in (("down_unit", units), ("stem", models.STEMS),
                             ("head", models.HEADS), ("shortcut", models.SHORTCUTS),
                             ("projection_input", models.PROJECTION_INPUTS),
                             ("head_act", models.ACTIVATIONS)):
            value = d.get(key)
            if (value is not None or key != "down_unit") and key in d and value not in allowed:
                raise self.fail(f"{where}unknown {key} {value!r} (known: "
                                f"{', '.join(allowed)})")
        unit = d.get("unit")
        for u in unit if isinstance(unit, list) else [unit]:
            if u not in units:
                raise self.fail(f"{where}unknown unit {u!r} (known: {', '.join(units)})")
        stages = d.get("stages")
        if not (isinstance(stages, list) and stages and all(
                isinstance(s, list) and len(s) in (2, 3) and all(
                    isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in s)
                for s in stages)):
            raise self.fail(f"{where}stages must be a list of [blocks, width] or "
                            "[blocks, width, inner], positive integers")
        if isinstance(unit, list) and len(unit) != len(stages):
            raise self.fail(f"{where}unit lists {len(unit)} unit(s) for {len(stages)} "
                            "stage(s): give one unit, or one per stage")
        for key in ("stem_filters",):
            if key in d and not (isinstance(d[key], int) and d[key] > 0):
                raise self.fail(f"{where}{key} must be a positive integer")
        if d.get("first_stage_stride", 1) not in (1, 2):
            raise self.fail(f"{where}first_stage_stride must be 1 or 2")
        if d.get("downsample", "stride") not in models.DOWNSAMPLES:
            raise self.fail(f"{where}unknown downsample {d['downsample']!r} (known: "
                            f"{', '.join(models.DOWNSAMPLES)})")
        widths = d.get("head_widths", [])
        if not (isinstance(widths, list | tuple) and all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in widths)):
            raise self.fail(f"{where}head_widths must be a list of positive integers")
        rate = d.get("dropout", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise self.fail(f"{where}dropout must be a number from 0 to below 1")
        if d.get("pretrained") is not None and not isinstance(d["pretrained"], str):
            raise self.fail(f"{where}pretrained must be \"imagenet\" or a weights file path")
        if isinstance(d.get("pretrained"), str) and d["pretrained"] != "imagenet":
            d["pretrained"] = str((self.path.parent / d["pretrained"]).resolve())
        ref = d.get("reference_params")
        if ref is not None and not (isinstance(ref, list) and len(ref) == 3
                                    and all(isinstance(n, int) for n in ref)):
            raise self.fail(f"{where}reference_params must be [total, trainable, "
                            "non-trainable]")
        rec = d.get("recipe") or {}
        if not isinstance(rec, dict):
            raise self.fail(f"{where}recipe must be a table")
        self.unknown(rec, set(VARIANT_RECIPE_KEYS), "recipe key", where)
        try:
            Recipe(**rec)
        except AblationError as e:
            raise self.fail(f"{where}recipe: {e}") from None
        for key in ("label", "description"):
            self.string(d, key, "", where)
        try:
            v = Variant.from_dict(d)
        except TypeError as e:
            raise self.fail(f"{where}{e}") from None
        try:
            models.count_params(v)  # runs every unit on shapes: a broken unit fails here
        except AblationError as e:
            raise self.fail(str(e)) from None
        return v

    def comparisons(self, tables: list, own: list[str]) -> list[Comparison]:
        out: list[Comparison] = []
        for i, t in enumerate(self.tables({"comparison": tables}, "comparison"), 1):
            title = t.get("title")
            where = f"comparison {i} ({title!r}): " if title else f"comparison {i}: "
            self.unknown(t, _COMPARISON_KEYS, "key", where)
            if not isinstance(title, str) or not title:
                raise self.fail(f"{where}needs a title")
            names = t.get("variants")
            if not isinstance(names, list) or not names:
                raise self.fail(f"{where}needs a non-empty list of variants")
            for n in names:
                if not isinstance(n, str) or not (n in own or n in _PINNED):
                    raise self.fail(f"{where}unknown variant {n!r} (its own variants or a "
                                    "built-in one)")
            key = t.get("key") or re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
            if any(c.key == key for c in out):
                raise self.fail(f"{where}duplicate comparison key {key!r}")
            refs = t.get("references", [])
            try:
                references = tuple(Reference(str(r["name"]), int(r["params"])) for r in refs)
            except (KeyError, TypeError, ValueError):
                raise self.fail(f"{where}references must be tables with name and "
                                "params") from None
            pub = t.get("published_error", {})
            if not isinstance(pub, dict) or not all(
                    k in names and isinstance(e, int | float) for k, e in pub.items()):
                raise self.fail(f"{where}published_error must map this comparison's "
                                "variants to numbers")
            flags = {}
            for flag in ("zoom", "sizes"):
                flags[flag] = t.get(flag, False)
                if not isinstance(flags[flag], bool):
                    raise self.fail(f"{where}{flag} must be true or false")
            out.append(Comparison(
                key=key, title=title, variants=tuple(dict.fromkeys(names)), **flags,
                question=self.string(t, "question", "", where), references=references,
                published_source=self.string(t, "published_source", "", where),
                published_error=tuple((k, float(e)) for k, e in pub.items())))
        return out

    def published(self, t: dict) -> Published:
        self.unknown(t, _PUBLISHED_KEYS, "[[published]] key")
        try:
            return Published(**{k: str(t[k]) for k in _PUBLISHED_KEYS})
        except KeyError as e:
            raise self.fail(f"[[published]] needs {e.args[0]}") from None


def _units_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k.startswith("ablation_units_")}


def snapshot() -> tuple:
    """The loaded state (registry, units and their modules, studies), for tests."""
    return (dict(registry._REGISTRY), dict(models.units._USER), dict(_PINNED),
            dict(_UNIT_SOURCES), dict(_LOADED), _units_modules())


def restore(state: tuple) -> None:
    *tables, modules = state
    for target, saved in zip((registry._REGISTRY, models.units._USER, _PINNED,
                              _UNIT_SOURCES, _LOADED), tables, strict=True):
        target.clear()
        target.update(saved)
    for name in set(_units_modules()) - set(modules):
        del sys.modules[name]


load_study(DEFAULT)  # the default study's variants are always registered
