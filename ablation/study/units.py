"""A study's units file: imported once per process, its units kept in the namespace of
its module (`ablation.models.units`), and checked again in each training process
against the source hash the job was queued with."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from ablation import models
from ablation.errors import AblationError

_UNIT_SOURCES: dict[str, str] = {}  # units module -> the file path or module it came from


def source_of(module: str | None) -> str | None:
    """Where a units module came from (a file path or a module name)."""
    return _UNIT_SOURCES.get(module or "")


def import_units(source: str, where: str = "") -> tuple[str, list[str]]:
    """Import a units file (a path) or module; return its module name (the namespace
    of its units) and the names of the units it defines."""
    prefix = f"{where}: " if where else ""
    is_file = source.endswith(".py") or "/" in source or "\\" in source
    path = Path(source).resolve() if is_file else None
    if path is not None and not path.is_file():
        raise AblationError(f"{prefix}units file {source} not found")
    try:
        if path is not None:
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
                            f"{type(e).__name__}: {e}".splitlines()[0]) from e
    found = models.user_units(module.__name__)
    others = [n for kind in ("stem", "head") for n in models.PARTS[kind].mine(module.__name__)]
    if not found and not others:
        raise AblationError(f"{prefix}units {source} defines no unit, stem or head (decorate "
                            'each with `@ablation.unit("name")`, `@ablation.stem("name")` '
                            'or `@ablation.head("name")`)')
    models.register_layers(vars(module), module.__name__)
    _UNIT_SOURCES[module.__name__] = str(path) if path is not None else source
    return module.__name__, found


def check_units(records: list[dict]) -> str | None:
    """In a training process: import the user units a job needs and check each source
    is the one the job was queued with. Returns their module (the variant's
    `unit_module`)."""
    module = None
    for r in records:
        kind = r.get("kind", "unit")  # (0.5 and earlier: units only)
        parts = models.PARTS[kind]
        module = r.get("module") or module
        if parts.source_hash(r["name"], module) != r["sha256"] and r.get("source"):
            module = import_units(r["source"])[0]
        if parts.source_hash(r["name"], module) != r["sha256"]:
            raise AblationError(f"{kind} {r['name']!r} in {r.get('source')} changed since "
                                "this job was queued; run `ablation run` again to queue the "
                                "new definition")
    return module


def modules() -> dict:
    """The units modules imported so far (for tests' snapshots)."""
    return {k: v for k, v in sys.modules.items() if k.startswith("ablation_units_")}
