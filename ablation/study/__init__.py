"""Studies: a named set of variants, the comparisons that report them, and the recipe
defaults they are trained with, as data (a TOML file; the schema is docs/studies.md).

The built-in studies (`blog`, `he2015`, `identity2016`) are TOML files shipped in
`ablation/studies/`, loaded by exactly the code that loads a user's file; `blog` is
the default study of every command. Loading a study registers its variants (so
`build_model(name)` builds them) and the units of its `units` file.

* `schema`: the file's tables and keys, declared once (pydantic), and the one line a
  violation becomes;
* `loader`: reading a file into a `Study`, registering its variants;
* `units`: a study's units file, imported once, checked again in each job;
* `definitions`: what decides a variant's network and training, and its hash, so runs
  of different definitions never mix.
"""

from ablation import models, registry
from ablation.study.definitions import (
    _PINNED,
    definition,
    definition_hash,
    folder_tag,
    unit_records,
)
from ablation.study.loader import (
    _LOADED,
    BUILTIN_DIR,
    DEFAULT,
    Comparison,
    Published,
    Reference,
    Study,
    builtin_home,
    builtin_names,
    load_builtins,
    load_study,
)
from ablation.study.units import _UNIT_SOURCES, check_units, import_units, modules

__all__ = ["BUILTIN_DIR", "DEFAULT", "Comparison", "Published", "Reference", "Study",
           "builtin_home", "builtin_names", "check_units", "definition", "definition_hash",
           "folder_tag", "import_units", "load_builtins", "load_study", "restore",
           "snapshot", "unit_records"]


def _tables() -> tuple[dict, ...]:
    return (registry._REGISTRY, *(p.user for p in models.PARTS.values()), _PINNED,
            _UNIT_SOURCES, _LOADED)


def snapshot() -> tuple:
    """The loaded state (registry, parts and their modules, studies), for tests."""
    return (*(dict(t) for t in _tables()), modules())


def restore(state: tuple) -> None:
    import sys

    *tables, mods = state
    for target, saved in zip(_tables(), tables, strict=True):
        target.clear()
        target.update(saved)
    for name in set(modules()) - set(mods):
        del sys.modules[name]


load_study(DEFAULT)  # the default study's variants are always registered
