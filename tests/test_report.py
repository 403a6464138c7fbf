"""`ablation report` from real tiny runs: tables, figures, damaged and empty inputs,
determinism."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
from conftest import TINY, one_line_error, run_cli

from ablation import report


@pytest.fixture(scope="module")
def results(tiny_results):
    """resnet32 and resnet32_e, two seeds each (conftest.tiny_results)."""
    return tiny_results


def test_report_tables_and_figures(results, tmp_path):
    out = tmp_path / "reports"
    r = run_cli("report", "--results", str(results), "--out", str(out), "--latex",
                "--figure-format", "svg")
    assert r.returncode == 0, r.stderr
    md = (out / "README.md").read_text()
    assert md.count("### ") == 6  # the blog's six comparisons
    assert "a subset of the data, not comparable with published numbers" in md
    # comparison 2 has both variants with 2 seeds and the blog's counts marked
    block = md.split("### 2.")[1].split("### 3.")[0]
    table = [line for line in block.splitlines()
             if line.startswith("| resnet32") and "✓" in line]
    assert len(table) == 2
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "470,218 ✓" and cells[3] == "467,946 ✓" and cells[4] == "2,272 ✓"
        assert cells[6] == "2" and cells[7] == "2/2"
        assert "±" in cells[8] and "±" in cells[9]
    assert "Paired t-test" in block and "| resnet32 | resnet32_e | 2 |" in re.sub(" +", " ", block)
    verdicts = pd.read_csv(out / "comparisons.csv")
    assert verdicts.set_index("comparison").loc["refactor", "n"] == 2
    # comparison 1 is ResNet-32 vs VGG19, whose runs are missing; 3 has its command
    first = md.split("### 2.")[0]
    assert "ResNet-32 vs VGG19" in first and "Missing**: vgg19_pretrain, vgg19" in first
    assert "ablation run vgg19_pretrain vgg19 --seeds 2 --epochs 2" in first
    assert "Missing**: resnet34" in md and "ablation run resnet34 --seeds 2 --epochs 2" in md
    assert "**Pending**" in md.split("### 6.")[1]
    # published numbers kept apart
    assert "## Published numbers (context, not measured here)" in md
    assert "6.37%" in md.split("## Published numbers")[1]
    assert "6.37%" not in md.split("## Published numbers")[0]
    # figures exist, are PNGs, and are linked
    pngs = sorted(out.rglob("*.png"))
    assert {p.name for p in pngs} >= {"1-resnet32-curves.png", "2-refactor-curves.png",
                                     "3-deeper-curves.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
        assert f"{p.parent.name}/{p.name}" in md
        # for a paper: the same figure as SVG beside it, and the comparison's tables
        assert p.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    assert "\\toprule" in next(out.rglob("2-refactor-verdicts.tex")).read_text()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["variant"]) == {"resnet32", "resnet32_e"}
    assert (runs["status"] == "done").all()


def test_report_is_deterministic(results, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    report.build(results, a)
    report.build(results, b)
    assert (a / "README.md").read_bytes() == (b / "README.md").read_bytes()


def test_damaged_runs_are_skipped_with_a_warning(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    runs = sorted((copy / "runs").glob("*/*"))
    (runs[0] / "summary.json").write_text('{"variant": "resnet32", "se')  # half-written
    (runs[1] / "history.csv").write_bytes(b"\x00\xff garbage")
    s = json.loads((runs[2] / "summary.json").read_text())
    s.update(status="running", epochs_done=1)  # a run still going
    (runs[2] / "summary.json").write_text(json.dumps(s))
    r = run_cli("report", "--results", str(copy), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: skipping run") == 2
    assert str(runs[0] / "summary.json") in r.stderr
    md = (tmp_path / "out" / "README.md").read_text()
    assert "**Partial runs**" in md and "(1/2 epochs, running)" in md


def test_empty_or_missing_results_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        r = run_cli("report", "--results", str(tmp_path / folder), "--out",
                    str(tmp_path / "o"))
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "run `ablation run` first" in r.stderr


def test_recipe_filters(results, tmp_path):
    r = run_cli("report", "--results", str(results), "--out", str(tmp_path / "o"),
                "--epochs", "200")
    assert r.returncode != 0 and "no runs match" in r.stderr


def test_until_decided_runs_looks_reports_them_and_resumes(results, tmp_path, cifar_dir):
    """resnet32 vs resnet32_e (comparison 2) to a single look of 3 seeds: the two seeds
    already run are reused, the verdict comes from the recorded design, a rerun trains
    nothing and decides the same, and a changed design is refused."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    cmd = ["run", "resnet32", "resnet32_e", "--until-decided", "--max-seeds", "3", *TINY,
           "--workers", "2", "--data-dir", str(cifar_dir), "--results", str(copy)]
    plan = run_cli(*cmd, "--dry-run")  # the first look's jobs, not one seed's
    assert plan.returncode == 0, plan.stderr
    assert "look 1: 6 job(s), 3 seeds of resnet32, resnet32_e" in plan.stdout
    assert plan.stdout.count("[done]") == 4 and plan.stdout.count("[new]") == 2
    r = run_cli(*cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "looks at 3 seeds" in r.stdout and "6 job(s): 4 already done, 2 to run" in r.stdout
    look = next(line for line in r.stdout.splitlines() if line.startswith("look 1/1 (3 seeds)"))
    r = run_cli("report", "--results", str(copy), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "out" / "comparisons.csv").set_index("comparison")
    assert df.loc["refactor", "n"] == 3 and df.loc["refactor", "design"] == "sequential"
    assert df.loc["refactor", "verdict"] in ("better", "worse", "equivalent", "undecided")
    assert "**Design**: sequential" in (tmp_path / "out" / "README.md").read_text()
    again = run_cli(*cmd)
    assert again.returncode == 0 and "6 job(s): 6 already done, 0 to run" in again.stdout
    assert look in again.stdout.splitlines()
    changed = run_cli(*cmd, "--margin", "0.2")
    assert "different --until-decided design" in one_line_error(changed)
