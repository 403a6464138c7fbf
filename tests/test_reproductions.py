"""The reproductions README's Results section states, committed as run records under
results/ and reports under reports/: each report rebuilds from the committed runs alone,
byte for byte, and every number the Results section states is the runs' own.

A reproduction is added here when its first runs are committed; the table below and
README's Results section name the same ones."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT, run_cli

from ablation.store import load_runs, quiet

# results folder -> how its report is rebuilt (the out folder is appended)
REPORTS = {
    "he2015": ["report", "--study", "he2015", "--results", "results/he2015", "--out"],
}
COMPARED = ("README.md", "comparisons.csv", "runs.csv")


def _results_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## Results\n(.*?)(?=^## )", text, re.S | re.M)
    assert found, "README.md has no Results section"
    return found.group(1)


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_a_committed_report_rebuilds_from_its_runs(name, tmp_path):
    assert any((ROOT / "results" / name / "runs").glob("*/*/summary.json")), \
        f"results/{name}: no committed run"
    out = tmp_path / name
    r = run_cli(*REPORTS[name], str(out))
    assert r.returncode == 0, r.stderr
    for file in COMPARED:
        committed = ROOT / "reports" / name / file
        assert committed.is_file(), f"reports/{name}/{file} is not committed"
        assert (out / file).read_text(encoding="utf-8") == \
            committed.read_text(encoding="utf-8"), \
            f"reports/{name}/{file} differs from what its runs give: rebuild it with " \
            f"`ablation {' '.join(REPORTS[name])} reports/{name}`"
    assert f"reports/{name}/README.md" in _results_section()


def _runs(name: str, variant: str) -> list:
    return [r.record for r in load_runs(ROOT / "results" / name, quiet, history=False)
            if r.variant == variant and r.record.finished]


def test_he2015_resnet20_error_is_the_runs_own():
    (run,) = _runs("he2015", "he_resnet20")
    assert run.recipe.epochs == 182 and run.recipe.validation == 5000
    assert run.recipe.precision == "bf16"
    row = next(line for line in _results_section().splitlines()
               if "he2015" in line and "ResNet-20" in line)
    assert f"{100 - 100 * run.final_test_accuracy:.2f} %" in row, row
    assert "8.75 %" in row and "8.27 %" in row
