"""Runs never mix definitions: what decides a variant's network and training, hashed.

Each variant's resolved definition (its fields but its name and cosmetic labels, plus
the source hash of every user unit it uses) is hashed; the hash is recorded with every
run, and a user study's run folders carry it in their name, so an edited variant is a
new run. Built-in variants are pinned by the package (their counts are tested), so
their folders keep the plain name.
"""

from __future__ import annotations

import hashlib
import json

from ablation import models, registry
from ablation.registry import Variant
from ablation.study.units import source_of

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
    for kind, name in (("stem", v.stem), ("head", v.head)):  # a study's own only, so
        h = models.PARTS[kind].source_hash(name, v.unit_module)  # no earlier hash changes
        if h:
            d[f"{kind}_source"] = h
    return d


def definition_hash(v: Variant) -> str:
    return hashlib.sha256(json.dumps(definition(v), sort_keys=True).encode()).hexdigest()[:12]


def folder_tag(v: Variant) -> str:
    """What a run folder's name carries besides variant and seed: nothing for a
    built-in study's variants (pinned by the package and its tests), the definition
    hash for a user's, whose definition can change under their hands."""
    return "" if _PINNED.get(v.name) else definition_hash(v)[:8]


def pin(name: str, study: str) -> None:
    """Variant `name` is defined by the built-in study `study`."""
    _PINNED[name] = study


def pinned(name: str) -> str | None:
    return _PINNED.get(name)


def unit_records(v: Variant) -> list[dict]:
    """The study's own parts a variant needs (units, and since 0.6 a stem or a head),
    with where they come from and their hashes (what a training process must import and
    check)."""
    out = []
    wanted = [("unit", u) for u in v.unit_names()] + [("stem", v.stem), ("head", v.head)]
    for kind, name in wanted:
        h = models.PARTS[kind].source_hash(name, v.unit_module)
        if h:
            out.append({"name": name, "source": source_of(v.unit_module),
                        "module": v.unit_module, "sha256": h,
                        **({"kind": kind} if kind != "unit" else {})})
    return out
