"""Studies as data: a user's TOML file and units, outside the repository, get exact
counts, runs, reports and definitions that never mix; bad study files are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, one_line_error, run_cli, run_dirs

import ablation
from ablation import study

# The README's example, verbatim.
UNITS = '''\
from ablation import unit


@unit("f")
def unit_f(ops, x, block):
    h = ops.relu(ops.bn(x, f"{block.name}_preact_bn"), f"{block.name}_preact_relu")
    y = ops.conv(h, block.filters, 3, block.stride, f"{block.name}_conv1")
    y = ops.relu(ops.bn(y, f"{block.name}_bn1"), f"{block.name}_relu1")
    y = ops.bn(ops.conv(y, block.filters, 3, 1, f"{block.name}_conv2"), f"{block.name}_bn2")
    s = (ops.conv(h, block.filters, 1, block.stride, f"{block.name}_proj", main=False)
         if block.project else x)
    return ops.add(y, s, f"{block.name}_add")
'''
STUDY = '''\
name = "my-units"
description = "Does a BN after conv2 help the full pre-activation unit?"
units = "my_units.py"

[recipe]
epochs = 200

[[variant]]
name = "resnet32_f"
base = "resnet32_e"
unit = "f"
label = "(f) = (e) + BN after conv2"

[[variant]]
name = "resnet56_e"
base = "resnet32_e"
stages = [[9, 16], [9, 32], [9, 64]]

[[comparison]]
title = "(e) vs (f) vs deeper (e)"
variants = ["resnet32_e", "resnet32_f", "resnet56_e"]
zoom = true
sizes = true
question = "Is (f) better than (e) beyond seed noise?"
'''
# exact counts of the two user variants (checked against built Keras models below)
COUNTS = {"resnet32_f": (472_458, 469_066, 3_392, 32), "resnet56_e": (861_770, 857_706, 4_064, 56)}


def write_study(folder: Path, study_text: str = STUDY, units: str = UNITS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_units.py").write_text(units)
    (folder / "my-units.toml").write_text(study_text)
    return folder / "my-units.toml"


def test_the_blog_is_a_built_in_study_like_any_other():
    s = study.load_study("blog")
    assert s.builtin and s.path.name == "blog.toml" and s.path.parent == study.BUILTIN_DIR
    assert list(s.variant_names) == ablation.variants() and len(s.comparisons) == 6
    assert study.builtin_names() == ["blog", "airbench2024", "convnext2022",
                                     "convnext2022_imagenette", "he2015", "identity2016",
                                     "tricks2019", "wrn2016"]
    r = run_cli("studies")
    assert r.returncode == 0 and all(n in r.stdout for n in ("blog", "he2015", "identity2016"))


def test_user_variants_count_exactly_like_their_built_models(tmp_path, isolated_registry):
    import numpy as np

    s = ablation.load_study(write_study(tmp_path))
    assert s.name == "my-units" and s.units == ("f",)
    assert list(s.variant_names) == ["resnet32_f", "resnet56_e", "resnet32_e"]
    for name, (total, trainable, non_trainable, depth) in COUNTS.items():
        info = ablation.count_params(name)
        assert (info.params_total, info.params_trainable, info.params_non_trainable,
                info.depth) == (total, trainable, non_trainable, depth)
        m = ablation.build_model(name)  # after load_study, build_model builds them
        built = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
        assert (m.count_params(), built) == (total, trainable)
    assert ablation.load_study(s.path) is s  # loading again is the same study


def test_cli_list_study_json(tmp_path):
    r = run_cli("list", "--study", str(write_study(tmp_path)), "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert list(rows) == ["resnet32_f", "resnet56_e", "resnet32_e"]
    for name, (total, trainable, non_trainable, depth) in COUNTS.items():
        assert (rows[name]["params_total"], rows[name]["params_trainable"],
                rows[name]["params_non_trainable"], rows[name]["depth"]) == (
            total, trainable, non_trainable, depth)
    assert set(rows["resnet32_e"]) == {"name", "label", "depth", "params_total",
                                       "params_trainable", "params_non_trainable", "macs",
                                       "macs_unknown", "description"}  # macs: 0.5; unknown: 0.7
    assert rows["resnet32_e"]["macs"] == 69_124_736 and rows["resnet32_e"]["macs_unknown"] == []


BROKEN_UNIT = '''\
from ablation import unit


@unit("g")
def unit_g(ops, x, block):
    y = ops.conv(x, block.filters, 3, block.stride, f"{block.name}_conv1")
    return ops.add(y, x, f"{block.name}_add")  # no projection: wrong shape at s2b1
'''
RAISING_UNIT = '''\
from ablation import unit


@unit("g")
def unit_g(ops, x, block):
    raise ValueError("not written yet")
'''
UNKNOWN_OP_UNIT = '''\
from ablation import unit


@unit("g")
def unit_g(ops, x, block):
    return ops.transformer(x, 8)
'''


def _g(units: str) -> tuple[str, str]:
    return ('units = "my_units.py"\n[[variant]]\nname = "mine_g"\nbase = "resnet32_e"\n'
            'unit = "g"\n', units)


@pytest.mark.parametrize("text,units,needle", [
    ("name = \n", UNITS, "not valid TOML"),
    ('[[variant]]\nname = "mine"\nbase = "resnet31"\n', UNITS, "unknown base 'resnet31'"),
    ('[[variant]]\nname = "mine"\nbase = "resnet32"\nunit = "z"\n', UNITS, "unknown unit 'z'"),
    ('[[variant]]\nname = "mine"\nbase = "resnet32"\n[[variant]]\nname = "mine"\n'
     'base = "resnet32"\n', UNITS, "duplicate variant name 'mine'"),
    ('[[variant]]\nname = "resnet32_e"\nbase = "resnet32"\n', UNITS,
     "clashes with a built-in variant"),
    ('[[comparison]]\ntitle = "empty"\nvariants = []\n', UNITS, "needs a non-empty list"),
    ('[[comparison]]\ntitle = "t"\nvariants = ["resnet32_q"]\n', UNITS,
     "unknown variant 'resnet32_q'"),
    ('units = "nowhere.py"\n', UNITS, "units file"),
    ('units = "my_units.py"\n', "import not_a_module_anywhere\n",
     "cannot import units"),
    (*_g(BROKEN_UNIT), "unit 'g' failed in block s2b1 of mine_g"),
    (*_g(RAISING_UNIT), "unit 'g' failed in block s1b1 of mine_g: ValueError"),
    (*_g(UNKNOWN_OP_UNIT), "unknown op 'transformer'"),
    ('[[variant]]\nname = "mine"\nbase = "resnet32"\nstage = [[1, 16]]\n', UNITS,
     "unknown key 'stage'"),
    ('[recipe]\nepochs = 0\n', UNITS, "[recipe] epochs must be at least 1"),
])
def test_bad_study_files_are_one_line_and_queue_nothing(tmp_path, text, units, needle):
    path = write_study(tmp_path, text, units)
    res = tmp_path / "results"
    r = run_cli("run", "--study", str(path), "--all", "--results", str(res))
    line = one_line_error(r)
    assert r.returncode == 2 and needle in line and str(path) in line, line
    assert not res.exists()


def test_user_study_end_to_end_and_definitions_never_mix(tmp_path, tiny_results, cifar_dir):
    """Train a user study, report it, analyse it; then
    edit the unit: the old run is neither reused as done nor pooled with the new one.

    The example's variants at one block per stage (resnet8_f, resnet8_e) keep it quick;
    the built-in resnet32_e comes from the shared tiny runs, as a user's would from the
    blog study's: same definition, same folder, not trained again."""
    text = (STUDY.replace("resnet32_f", "resnet8_f").replace("resnet56_e", "resnet8_e")
            .replace("[[9, 16], [9, 32], [9, 64]]", "[[1, 16], [1, 32], [1, 64]]")
            .replace('unit = "f"', 'unit = "f"\nstages = [[1, 16], [1, 32], [1, 64]]'))
    path = write_study(tmp_path / "mystudy", text)
    res = tmp_path / "results"
    shutil.copytree(tiny_results, res)
    flags = [*TINY, "--data-dir", str(cifar_dir), "--results", str(res)]
    r = run_cli("run", "--study", str(path), "--all", *flags)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 job(s): 1 already done, 2 to run" in r.stdout and "3 done" in r.stdout
    runs = {p.name: p for p in run_dirs(res)}
    f_old = next(p for n, p in runs.items() if n.startswith("resnet8_f-"))
    assert "resnet32_e-s0" in runs  # a built-in keeps its plain folder name
    cfg = json.loads((f_old / "config.json").read_text())
    assert cfg["definition"]["unit"] == "f" and cfg["units"][0]["name"] == "f"
    summary = json.loads((f_old / "summary.json").read_text())
    assert summary["definition_hash"] == cfg["definition_hash"]
    listed = {row["name"]: row for row in json.loads(
        run_cli("list", "--study", str(path), "--json").stdout)}
    total = listed["resnet8_f"]["params_total"]
    assert (summary["params_total"], summary["depth"]) == (total, 8)
    assert "def unit_f" in (f_old / "units.py").read_text()

    # (that its .h5 loads with plain Keras, optimizer and all: tests/test_ops.py)

    # the user unit's 3x3 convs are found from the graph; its conv2 is read after bn2
    r = run_cli("analyze", "--study", str(path), "resnet8_f", "--results", str(res),
                "--images", "50")
    assert r.returncode == 0, r.stdout + r.stderr
    resp = pd.read_csv(f_old / "responses.csv")
    assert len(resp) == 7 and (resp["point"] == "after BN").sum() == 6

    # redefine (f): a changed line in the unit is a new definition
    (path.parent / "my_units.py").write_text(UNITS.replace('_relu1")', '_relu1")  # v2'))
    plan = run_cli("run", "--study", str(path), "resnet8_f", *flags, "--dry-run")
    assert "[new]" in plan.stdout and f_old.name not in plan.stdout
    r = run_cli("run", "--study", str(path), "resnet8_f", *flags)
    assert r.returncode == 0 and "0 already done, 1 to run" in r.stdout, r.stdout + r.stderr
    f_dirs = sorted(p for p in run_dirs(res) if p.name.startswith("resnet8_f-"))
    assert len(f_dirs) == 2 and f_old in f_dirs
    # one report of it all: the study's comparison, and the stale run left out
    out = tmp_path / "report"
    r = run_cli("report", "--study", str(path), "--results", str(res), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "1 run(s) of an earlier definition of resnet8_f left out" in r.stderr
    md = (out / "README.md").read_text()
    assert "### 1. (e) vs (f) vs deeper (e)" in md
    for name in ("resnet32_e", "resnet8_f", "resnet8_e"):
        assert f"| {name} " in md
    # curves, zoom, sizes, accuracy against cost
    assert len(list(out.rglob("1-e-vs-f-vs-deeper-e-*.png"))) == 4
    frame = pd.read_csv(out / "runs.csv")
    f_rows = frame[frame["variant"] == "resnet8_f"]
    assert len(f_rows) == 1 and f_rows["run_dir"].iloc[0] != str(f_old)
