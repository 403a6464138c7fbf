"""The reproductions README's Results section states, committed as run records under
results/ and reports under reports/: each report rebuilds from the committed runs alone,
byte for byte, and every number the Results section states is the runs' own.

A reproduction is added here when its first runs are committed; the table below and
README's Results section name the same ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from scipy import stats

from ablation.store import load_runs, quiet

# results folder -> how its report is rebuilt (the out folder is appended): an
# `ablation` command, or a script run from the repository (the parity pairs')
REPORTS = {
    "airbench2024": ["report", "--study", "airbench2024", "--results",
                     "results/airbench2024", "--out"],
    "he2015": ["report", "--study", "he2015", "--results", "results/he2015", "--out"],
    "parity": ["benchmarks/parity.py", "--report-only", "--results", "results/parity",
               "--out"],
}
STUDY_REPORT = ("README.md", "comparisons.csv", "runs.csv")


def _rebuild(name: str, out: Path) -> tuple[subprocess.CompletedProcess, tuple[str, ...]]:
    """Rebuild a committed report into `out`; the files to compare with the committed."""
    args = [*REPORTS[name], str(out)]
    if args[0].endswith(".py"):
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=600), ("README.md",)
    return run_cli(*args), STUDY_REPORT


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
    r, compared = _rebuild(name, out)
    assert r.returncode == 0, r.stderr
    for file in compared:
        committed = ROOT / "reports" / name / file
        assert committed.is_file(), f"reports/{name}/{file} is not committed"
        assert (out / file).read_text(encoding="utf-8") == \
            committed.read_text(encoding="utf-8"), \
            f"reports/{name}/{file} differs from what its runs give: rebuild it with " \
            f"`{' '.join(REPORTS[name])} reports/{name}`"
    assert f"reports/{name}/README.md" in _results_section()


def _runs(name: str, variant: str) -> list:
    return [r.record for r in load_runs(ROOT / "results" / name, quiet, history=False)
            if r.variant == variant and r.record.finished]


def _row(*words: str) -> str:
    return next(line for line in _results_section().splitlines()
                if line.startswith("|") and all(w in line for w in words))


def test_airbench_accuracy_is_the_runs_own():
    runs = sorted(_runs("airbench2024", "airbench"), key=lambda r: r.seed)
    assert runs and all(r.recipe.epochs == 10 and r.recipe.batch_size == 1000
                        and r.recipe.tta == "flip_translate" for r in runs)
    row = _row("airbench2024", "clean_airbench")
    hours = sum(r.train_seconds for r in runs) / len(runs) / 3600
    if len(runs) == 1:
        (run,) = runs
        assert f"{100 * run.final_tta_accuracy:.2f} % test accuracy with TTA " \
               f"({100 * run.final_test_accuracy:.2f} % without), seed {run.seed}" in row, row
    else:  # the mean and its 95 % t interval over the seeds (SciPy's)
        tta = [r.final_tta_accuracy for r in runs]
        low, high = stats.t.interval(0.95, len(tta) - 1, loc=np.mean(tta), scale=stats.sem(tta))
        assert f"{100 * np.mean(tta):.2f} % test accuracy with TTA, 95 % interval " \
               f"[{100 * low:.2f}, {100 * high:.2f}] over {len(tta)} seeds" in row, row
        # the published mean beside ours, as a test (SciPy's)
        p = stats.ttest_1samp(tta, 0.9397).pvalue
        assert f"against 93.97 %, SciPy's: p = {p:.3f})" in row, row
        gap = 100 * np.mean(tta) - 93.97
        side = "above" if gap > 0 else "below"
        assert f"{abs(gap):.2f} points {side} the published mean" in row, row
    assert f"{len(runs)} of 5 seeds" in row and f"{hours:.1f} h of training each" in row, row
    assert "93.97 %" in row


def test_he2015_resnet20_error_is_the_runs_own():
    (run,) = _runs("he2015", "he_resnet20")
    assert run.recipe.epochs == 182 and run.recipe.validation == 5000  # 64k iterations
    assert run.recipe.precision == "bf16" and run.recipe.augment == "crop"
    row = _row("he2015", "ResNet-20")
    assert f"{100 - 100 * run.final_test_accuracy:.2f} % test error, seed {run.seed}" in row, row
    assert f"{run.train_seconds / 3600:.1f} h of training" in row, row
    assert f"median epoch {run.images_per_second:,.0f} img/s" in row, row
    assert "8.75 %" in row and "8.27 %" in row


def test_parity_difference_is_the_runs_own():
    """The harness beside the blog's own code: both paths' mean final accuracy and the
    paired difference's 95 % interval, as the committed runs give them."""
    from ablation.report import parity

    df = parity.frame(ROOT / "results" / "parity")
    assert len(df) >= 3 and set(df["epochs"]) == {10}
    mean, low, high = parity.interval(100 * df["difference"])
    row = _row("parity", "blog's own code")
    assert f"harness {100 * df['harness'].mean():.2f} %" in row, row
    assert f"blog's path {100 * df['blog_path'].mean():.2f} %" in row, row
    assert (f"{mean:+.2f} points, 95 % interval [{low:+.2f}, {high:+.2f}] over {len(df)} "
            "seeds") in row, row
    minutes = [*df["harness_minutes"], *df["blog_path_minutes"]]
    assert f"{min(minutes):.0f}–{max(minutes):.0f} min of training a run" in row, row
