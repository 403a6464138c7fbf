"""The report's layers on hand-written run folders (no training, no CIFAR-10 needed):
loading, per-variant statistics, Welch + Holm, the comparison table, definitions that
changed, layer-response trends, and the whole README."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablation import registry, report, study
from ablation.recipe import Recipe
from ablation.report import load, markdown, stats

RECIPE = Recipe(epochs=3, train_limit=100, test_limit=50)


def make_run(results: Path, variant: str, seed: int, val_acc: list[float],
             recipe: Recipe = RECIPE, **extra) -> Path:
    """A run folder as ablation.training writes it, with the given test accuracies."""
    v = registry.get(variant)
    rd = results / "runs" / recipe.id / f"{variant}-s{seed}"
    rd.mkdir(parents=True)
    rows = ["epoch,accuracy,loss,val_accuracy,val_loss,lr,epoch_seconds,images_per_second"]
    for e, acc in enumerate(val_acc):
        rows.append(f"{e},{acc - 0.05},{2.0 - e / 10},{acc},{2.1 - e / 10},0.1,10.0,250.0")
    (rd / "history.csv").write_text("\n".join(rows) + "\n")
    counts = v.reference_params
    summary = {
        "variant": variant, "seed": seed, "recipe": recipe.to_dict(), "recipe_id": recipe.id,
        "dataset": "cifar10", "status": "done", "epochs_done": len(val_acc),
        "epochs_planned": recipe.epochs, "params_total": counts[0],
        "params_trainable": counts[1], "params_non_trainable": counts[2],
        "best_val_accuracy": max(val_acc), "final_val_accuracy": val_acc[-1],
        "train_seconds": 10.0 * len(val_acc), "images_per_second": 250.0,
        "h5_bytes": 4_176_168, "train_images": 100, "test_images": 50,
        "definition_hash": study.definition_hash(v), **extra}
    (rd / "summary.json").write_text(json.dumps(summary))
    return rd


@pytest.fixture
def results(tmp_path):
    res = tmp_path / "results"
    for seed, finals in enumerate(([0.40, 0.50, 0.60], [0.42, 0.52, 0.62],
                                   [0.41, 0.51, 0.61])):
        make_run(res, "resnet32", seed, finals)
    for seed, finals in enumerate(([0.20, 0.25, 0.30], [0.21, 0.26, 0.31],
                                   [0.22, 0.27, 0.32])):
        make_run(res, "resnet32_e", seed, finals)
    return res


def test_summaries_are_mean_and_sample_std_over_seeds(results):
    runs = load.load_runs(results)
    by = {v: [r for r in runs if r.variant == v] for v in ("resnet32", "resnet32_e")}
    df = stats.summarise(by, {"resnet32": 7.51}).set_index("variant")
    assert df.loc["resnet32", "seeds"] == 3
    assert df.loc["resnet32", "final_mean"] == pytest.approx(0.61)
    assert df.loc["resnet32", "final_std"] == pytest.approx(np.std([0.60, 0.62, 0.61], ddof=1))
    assert df.loc["resnet32_e", "error_mean"] == pytest.approx(69.0)
    assert df.loc["resnet32", "published_error"] == 7.51
    assert math.isnan(df.loc["resnet32_e", "published_error"])
    assert df.loc["resnet32", "h5_mb"] == pytest.approx(4.176168)
    assert (df.loc["resnet32", "epochs_min"], df.loc["resnet32", "epochs_max"]) == (3, 3)


def test_welch_separates_real_gaps_from_noise():
    df = stats.welch({"a": [0.90, 0.91, 0.905], "b": [0.50, 0.51, 0.505],
                      "c": [0.90, 0.91, 0.906], "d": [0.7]})
    row = df.set_index(["a", "b"])
    assert bool(row.loc[("a", "b"), "real"]) is True
    assert row.loc[("a", "b"), "diff_pp"] == pytest.approx(40.0)
    assert row.loc[("a", "c"), "real"] is False or not row.loc[("a", "c"), "real"]
    assert row.loc[("a", "d"), "real"] is None and math.isnan(row.loc[("a", "d"), "p"])
    tested = df["p"].notna()
    assert list(df.loc[tested, "p_holm"]) == pytest.approx(stats.holm(list(df.loc[tested, "p"])))


def test_comparison_table_marks_reference_counts(results):
    runs = load.load_runs(results)
    by = {v: [r for r in runs if r.variant == v] for v in ("resnet32", "resnet32_e")}
    cmp = load_blog().comparisons[1]
    table = markdown.comparison_table(stats.summarise(by, {}), cmp, 3, published=False)
    t = table.set_index("variant")
    assert t.loc["resnet32", "params"] == "470,218 ✓"
    assert t.loc["resnet32_e", "blog label"] == "resnet_32_e"
    assert t.loc["resnet32", "epochs"] == "3/3" and t.loc["resnet32", "seeds"] == "3"
    assert t.loc["resnet32", "final test acc %"] == "61.00 ± 1.00"
    pub = markdown.comparison_table(stats.summarise(by, {"resnet32": 7.51}), cmp, 3, True)
    p = pub.set_index("variant")
    assert p.loc["resnet32", "published error %"] == "7.51"
    assert p.loc["resnet32", "test error % (final)"] == "39.00 ± 1.00"
    assert p.loc["resnet32_e", "published error %"] == "–"


def load_blog():
    return study.load_study("blog")


def test_runs_of_an_earlier_definition_are_left_out(results):
    make_run(results, "resnet32_e", 7, [0.9, 0.9, 0.9], definition_hash="0123456789ab")
    warnings = []
    runs = load.for_study(load.load_runs(results), load_blog(), warn=warnings.append)
    assert len(runs) == 6 and all(r.seed != 7 for r in runs)
    assert warnings == ["1 run(s) of an earlier definition of resnet32_e left out of the report"]


def test_response_trend_gives_the_sign_of_the_slope():
    rows = [{"variant": "deep", "seed": s, "index": i, "layer": f"l{i}", "std": 2.0 - 0.1 * i}
            for s in (0, 1) for i in range(10)]
    rows += [{"variant": "flat", "seed": 0, "index": i, "layer": f"l{i}", "std": 1.0}
             for i in range(10)]
    t = stats.response_trend(pd.DataFrame(rows)).set_index("variant")
    assert t.loc["deep", "slope"] == pytest.approx(-0.1)
    assert t.loc["deep", "seeds"] == 2 and t.loc["deep", "layers"] == 10
    assert t.loc["flat", "slope"] == pytest.approx(0.0, abs=1e-12)
    assert (t.loc["deep", "trend"], t.loc["flat", "trend"]) == ("falls", "flat")
    assert t.loc["deep", "change"] == pytest.approx(-0.9 / 1.55)


def test_build_writes_the_study_and_is_deterministic(results, tmp_path):
    a = report.build(results, tmp_path / "a")
    b = report.build(results, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    md = a.read_text()
    assert md.count("### ") == 6
    block = md.split("### 2.")[1].split("### 3.")[0]
    assert "**yes**, beyond seed spread" in block  # 61 % vs 31 %, three seeds each
    assert f"ablation analyze --results {results} resnet32 resnet32_e" in block
    frame = pd.read_csv(tmp_path / "a" / "runs.csv")
    assert sorted(frame["variant"].unique()) == ["resnet32", "resnet32_e"] and len(frame) == 6
    assert (tmp_path / "a" / RECIPE.id / "2-refactor-curves.png").stat().st_size > 10_000
