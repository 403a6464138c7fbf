"""The report's layers on hand-written run folders (no training, no CIFAR-10 needed):
loading, per-variant statistics, Welch + Holm, the comparison table, definitions that
changed, layer-response trends, and the whole README."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablation import registry, report, study
from ablation import runs as load
from ablation.recipe import Recipe
from ablation.report import markdown, stats

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
    counts = v.reference_params or (470_218, 467_946, 2_272)
    summary = {
        "variant": variant, "seed": seed, "recipe": recipe.to_dict(), "recipe_id": recipe.id,
        "dataset": "cifar10", "status": "done", "epochs_done": len(val_acc),
        "epochs_planned": recipe.epochs, "params_total": counts[0],
        "params_trainable": counts[1], "params_non_trainable": counts[2],
        "best_val_accuracy": max(val_acc), "final_val_accuracy": val_acc[-1],
        "train_seconds": 10.0 * len(val_acc), "images_per_second": 250.0,
        "h5_bytes": 4_176_168, "train_images": 100, "test_images": 50,
        "definition_hash": study.definition_hash(v), **extra}
    summary = {k: v for k, v in summary.items() if v is not None}
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
    assert "final TTA test acc %" not in t  # no run was evaluated under TTA


def test_tta_accuracy_has_its_own_columns_and_interval(tmp_path):
    """The test set under test-time augmentation (airbench's headline): mean ± std and
    a 95 % t interval over seeds, beside the plain accuracy, never in its place."""
    from scipy import stats as sp

    res = tmp_path / "results"
    tta = [0.9391, 0.9402, 0.9388]
    for seed, acc in enumerate(tta):
        make_run(res, "resnet32_e", seed, [0.5, 0.6, 0.7], final_tta_accuracy=acc)
    make_run(res, "resnet32", 0, [0.5, 0.6, 0.7])
    runs = load.load_runs(res)
    by = {v: [r for r in runs if r.variant == v] for v in ("resnet32", "resnet32_e")}
    t = markdown.comparison_table(stats.summarise(by, {}), load_blog().comparisons[1], 3,
                                  published=False).set_index("variant")
    low, high = sp.t.interval(0.95, 2, loc=np.mean(tta), scale=sp.sem(tta))
    assert t.loc["resnet32_e", "final TTA test acc %"] == \
        f"{100 * np.mean(tta):.2f} ± {100 * np.std(tta, ddof=1):.2f}"
    assert t.loc["resnet32_e", "TTA 95 % interval"] == f"[{100 * low:.2f}, {100 * high:.2f}]"
    assert t.loc["resnet32_e", "final test acc %"] == "70.00 ± 0.00"
    assert t.loc["resnet32", "final TTA test acc %"] == "–"


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
    """Twice, with the paper's outputs too (LaTeX tables, PDF figures): the same bytes."""
    a = report.build(results, tmp_path / "a", latex=True, figure_format="pdf")
    b = report.build(results, tmp_path / "b", latex=True, figure_format="pdf")
    assert a.read_bytes() == b.read_bytes()
    md = a.read_text()
    assert md.count("### ") == 6
    block = md.split("### 2.")[1].split("### 3.")[0]
    assert "| resnet32 | resnet32_e | 3 | +30.00 |" in re.sub(" +", " ", block)
    assert "**better**" in block  # 61 % vs 31 %, three seeds each
    assert f"ablation analyze --results {results} resnet32 resnet32_e" in block
    frame = pd.read_csv(tmp_path / "a" / "runs.csv")
    assert sorted(frame["variant"].unique()) == ["resnet32", "resnet32_e"] and len(frame) == 6
    assert (tmp_path / "a" / RECIPE.id / "2-refactor-curves.png").stat().st_size > 10_000
    _latex_tables_hold_the_csvs_numbers_and_vector_figures_are_reproducible(tmp_path)


REQUIRED = ["comparison", "recipe_id", "a", "b", "n", "delta", "ci_low", "ci_high",
            "p_adjusted", "verdict", "seeds_needed"]


def test_comparisons_csv_holds_one_verdict_per_pair_and_recipe(results, tmp_path):
    report.build(results, tmp_path / "r")
    df = pd.read_csv(tmp_path / "r" / "comparisons.csv")
    assert set(REQUIRED) <= set(df.columns)
    row = df[(df.comparison == "refactor")].iloc[0]
    assert (row.a, row.b, row.n, row.verdict, row.design) == ("resnet32", "resnet32_e", 3,
                                                              "better", "fixed")
    assert row.delta == pytest.approx(30.0) and row.ci_low > 0 and math.isnan(row.seeds_needed)
    assert bool(row.same_network) and row.recipe_id == RECIPE.id
    # a comparison whose variants have no runs: pairs listed, n = 0, undecided
    units = df[df.comparison == "units"]
    assert len(units) == 10 and (units.n == 0).all() and (units.verdict == "undecided").all()


def close_runs(res: Path, deltas: list[float], **extra) -> None:
    """resnet32 vs resnet32_e differing by `deltas` points at seeds 0..n-1, with a shared
    seed effect."""
    for s_, d in enumerate(deltas):
        base = 0.60 + 0.01 * ((s_ * 7) % 5)
        make_run(res, "resnet32", s_, [0.2, 0.3, base + d / 100], **extra)
        make_run(res, "resnet32_e", s_, [0.2, 0.3, base], **extra)


def test_equivalent_undecided_seeds_needed_and_the_margin(tmp_path):
    res = tmp_path / "results"
    # 2,000 test images: deltas of a fraction of a point are resolved (0.05 points)
    close_runs(res, [0.10, -0.10, 0.05, 0.0, -0.05, 0.02], test_images=2000)
    report.build(res, tmp_path / "a")
    md = (tmp_path / "a" / "README.md").read_text()
    block = md.split("### 2.")[1].split("### 3.")[0]
    assert "equivalent: no difference beyond ±0.5" in block
    assert "A/A pair: resnet32 and resnet32_e are one network built twice" in block
    # yet one accuracy's standard error is about 1.1 points
    assert "**the margin ±0.5 is below what this test set can resolve**" in md
    report.build(res, tmp_path / "b", margin=0.01)
    md = (tmp_path / "b" / "README.md").read_text()
    block = md.split("### 2.")[1].split("### 3.")[0]
    df = pd.read_csv(tmp_path / "b" / "comparisons.csv").set_index("comparison")
    need = int(df.loc["refactor", "seeds_needed"])
    assert df.loc["refactor", "verdict"] == "undecided" and need > 6
    assert df.loc["refactor", "margin"] == 0.01
    assert f"ablation run resnet32 resnet32_e --seeds {need} --epochs 3" in block
    assert "--until-decided" in block and "no difference" not in block


def test_unfinished_runs_are_never_pooled_into_a_verdict(results, tmp_path):
    make_run(results, "resnet32", 3, [0.1], status="running")
    make_run(results, "resnet32_e", 3, [0.2, 0.3, 0.9], status="failed")
    report.build(results, tmp_path / "r")
    df = pd.read_csv(tmp_path / "r" / "comparisons.csv").set_index("comparison")
    assert df.loc["refactor", "n"] == 3 and df.loc["refactor", "unmatched"] == 0
    md = (tmp_path / "r" / "README.md").read_text()
    assert "Left out of the verdicts: 2 unfinished run(s)" in md


def test_a_recorded_sequential_design_is_replayed_by_the_report(results, tmp_path):
    from ablation import results as res_mod

    res_mod.record_design(results, res_mod.design_key("blog", RECIPE.id), {
        "study": "blog", "recipe_id": RECIPE.id, "looks": [3, 5], "spending": "pocock",
        "variants": ["resnet32", "resnet32_e"],
        "margin": 0.5, "alpha": 0.05, "power": 0.8})
    report.build(results, tmp_path / "r")
    md = (tmp_path / "r" / "README.md").read_text()
    assert "**Design**: sequential (`--until-decided`), looks at 3, 5 seeds" in md
    df = pd.read_csv(tmp_path / "r" / "comparisons.csv").set_index("comparison")
    assert df.loc["refactor", "design"] == "sequential" and df.loc["refactor", "look"] == 1
    assert df.loc["refactor", "verdict"] == "better"
    # the look spent only part of alpha: a wider interval than the fixed design's
    assert df.loc["refactor", "ci_level"] > 0.95


def test_a_study_sets_its_margin_and_bad_analysis_tables_are_one_line(tmp_path,
                                                                       isolated_registry):
    from ablation.errors import AblationError

    assert study.load_study("blog").analysis.margin == 0.5
    assert study.load_study("he2015").analysis.margin == 0.3
    good = tmp_path / "good.toml"
    good.write_text('name = "good"\n[analysis]\nmargin = 0.2\n[[comparison]]\n'
                    'title = "t"\nvariants = ["resnet32_a", "resnet32_b"]\n')
    assert study.load_study(good).analysis.margin == 0.2
    for body, says in (("[analysis]\nmargin = -1\n", "margin must be"),
                       ("[analysis]\nmargn = 1\n", "unknown [analysis] key 'margn'"),
                       ('analysis = "x"\n', "[analysis] must be a table")):
        bad = tmp_path / "bad.toml"
        bad.write_text('name = "bad"\n' + body)
        study._LOADED.pop(bad.resolve(), None)
        with pytest.raises(AblationError, match=re.escape(says)):
            study.load_study(bad)


def test_until_decided_flags_are_checked_before_anything_runs(tmp_path):
    from conftest import one_line_error, run_cli

    # (a data dir that does not exist: the flags are refused before it is looked at)
    base = ["run", "resnet32", "resnet32_e", "--results", str(tmp_path / "r"),
            "--data-dir", str(tmp_path / "nowhere")]
    for extra, says in ((["--until-decided", "--seeds", "3"], "drop --seeds"),
                        (["--max-seeds", "5"], "--max-seeds only goes with --until-decided"),
                        (["--until-decided", "--max-seeds", "2"], "must be at least 3"),
                        (["--until-decided", "--margin", "0"], "must be a positive number")):
        assert says in one_line_error(run_cli(*base, *extra))
    one = run_cli("run", "resnet32", "--until-decided", "--results", str(tmp_path / "r"))
    assert "needs two variants of one of the study's comparisons" in one_line_error(one)
    assert not (tmp_path / "r" / "queue.sqlite").exists()


def _tex_rows(tex: str) -> list[list[str]]:
    """The header and data rows of a booktabs table, as cells."""
    body = tex.split("\\toprule")[1].split("\\bottomrule")[0].replace("\\midrule", "")
    return [[c.strip() for c in row.split(" & ")] for row in body.split("\\\\") if row.strip()]


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[+-]?\d+\.\d+", cell.replace("$-$", "-"))]


def _latex_tables_hold_the_csvs_numbers_and_vector_figures_are_reproducible(tmp_path):
    """The reports in tmp_path/a and /b: the LaTeX tables' cells are the CSV's numbers,
    and they compile where pdflatex is installed (else their structure is parsed)."""
    folder = tmp_path / "a" / RECIPE.id
    verdicts = (folder / "2-refactor-verdicts.tex").read_text()
    assert "\\begin{tabular}" in verdicts and "\\toprule" in verdicts
    rows = _tex_rows(verdicts)
    header, (cells,) = rows[0], rows[1:]
    assert header[:4] == ["A", "B", "seeds", "A $-$ B (pp)"] and len(cells) == len(header)
    row = pd.read_csv(tmp_path / "a" / "comparisons.csv").set_index("comparison").loc["refactor"]
    col = dict(zip(header, cells, strict=True))
    assert (col["A"], col["B"]) == ("resnet32", "resnet32\\_e")
    assert _numbers(col["A $-$ B (pp)"]) == [round(row.delta, 2)]
    assert _numbers(col["interval"])[:2] == [round(row.ci_low, 2), round(row.ci_high, 2)]
    assert col["p (Holm)"] == f"{row.p_adjusted:.3g}" and "\\textbf{better}" in col["verdict"]
    table = _tex_rows((folder / "2-refactor-table.tex").read_text())
    acc = dict(zip(table[0], table[1], strict=True))["final test acc \\%"]
    assert acc == "61.00 $\\pm$ 1.00"
    pdfs = sorted(p.name for p in folder.glob("*.pdf"))
    assert pdfs and pdfs == sorted(p.with_suffix(".pdf").name for p in folder.glob("*.png"))
    for name in pdfs:  # no dates, no versions: the same runs give the same bytes
        assert (folder / name).read_bytes() == (tmp_path / "b" / RECIPE.id / name).read_bytes()
    if shutil.which("pdflatex"):
        doc = tmp_path / "paper.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage{amssymb}"
                       "\\usepackage{graphicx}\\begin{document}"
                       f"\\input{{{folder / '2-refactor-verdicts.tex'}}}"
                       f"\\input{{{folder / '2-refactor-table.tex'}}}"
                       f"\\includegraphics{{{folder / '2-refactor-curves.pdf'}}}"
                       "\\end{document}\n")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                            doc.name], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout[-2000:]


def test_a_raised_max_seeds_extends_a_design_with_alpha_left_and_only_then(results):
    """The decision `ablation run --until-decided` takes on a recorded design, on the
    three seeds a pair has: extend while a look is left to analyse; refuse once α is
    spent, for a design of 0.4, and for another margin."""

    from ablation import results as res_mod
    from ablation import verdict
    from ablation.errors import AblationError
    from ablation.plan import Plan
    from ablation.policies import looks as sequential

    blog = study.load_study()
    plan = Plan([registry.get("resnet32"), registry.get("resnet32_e")], 3, RECIPE, results,
                None)
    pairs = {"refactor": [("resnet32", "resnet32_e")]}
    settings = verdict.Settings()
    key = sequential.design_key(plan, blog)
    base = {"study": "blog", "recipe_id": RECIPE.id, "variants": ["resnet32", "resnet32_e"],
            **{k: getattr(settings, k) for k in verdict.SETTINGS_KEYS}}

    def decide(looks, recorded):
        res_mod.record_design(results, key, {**base, **recorded})
        notes: list[str] = []
        return sequential._design(plan, blog, pairs, looks, settings, key, notes), \
            "\n".join(notes)

    # look 1 (3 seeds) analysed, looks 5 and 8 not yet: 12 extends, look 1 keeps its bounds
    got, said = decide([3, 5, 8, 12], {"looks": [3, 5, 8], "spending": "obf"})
    assert got["looks"] == [3, 5, 8, 12] and got["extended_from"] == [3, 5, 8]
    assert got["fixed"]["1"]["dir"] == [pytest.approx(verdict.boundaries((3, 5, 8), 0.05)[0])]
    assert "extending the design: looks [3, 5, 8] -> [3, 5, 8, 12]" in said
    with pytest.raises(AblationError, match=r"its last look \(3 seeds\) is analysed"):
        decide([3, 5], {"looks": [3], "spending": "obf"})
    with pytest.raises(AblationError, match=r"a design of 0\.4"):
        decide([3, 5, 8], {"looks": [3, 5], "spending": "pocock"})
    with pytest.raises(AblationError, match="different --until-decided design"):
        decide([3, 5], {"looks": [3, 5], "spending": "obf", "margin": 0.2})


def test_each_variant_is_reported_with_the_recipe_it_trained_with(tmp_path,
                                                                    isolated_registry):
    """A variant with its own optimizer, schedule and label smoothing beside an SGD one:
    0.6 named only the study's SGD recipe in the report and runs.csv, zoomed at the SGD
    milestones, and compared its smoothed loss and its AdamW-sized .h5 with no word."""
    path = tmp_path / "own.toml"
    path.write_text('name = "own"\n[recipe]\nepochs = 9\n[[variant]]\nname = "adam_e"\n'
                    'base = "resnet32_e"\nrecipe = { optimizer = "adamw", schedule = '
                    '"cosine", lr = 0.001, label_smoothing = 0.1 }\n[[comparison]]\n'
                    'title = "own"\nvariants = ["resnet32_e", "adam_e"]\nzoom = true\n'
                    'sizes = true\n')
    own = study.load_study(str(path))
    recipe = Recipe(epochs=9, train_limit=100, test_limit=50)
    trained = registry.get("adam_e").train_recipe(recipe)
    res = tmp_path / "results"
    accs = [0.1 * k for k in range(1, 10)]
    for seed in range(2):
        make_run(res, "resnet32_e", seed, accs, recipe)
        make_run(res, "adam_e", seed, accs, recipe, train_recipe=trained.to_dict(),
                 h5_bytes=5_880_000)
    md = report.build(res, tmp_path / "r", study=own).read_text()
    assert f"adam_e: {trained.describe()}" in md and "AdamW lr 0.001" in md
    assert "The loss panels compare unlike losses" in md
    assert "adam_e's includes label smoothing 0.1, no weight penalty in the loss" in md
    assert "adam_e: adamw, 2 value(s) per weight" in md
    frame = pd.read_csv(tmp_path / "r" / "runs.csv").set_index(["variant", "seed"])
    assert frame.loc[("adam_e", 0), "recipe_optimizer"] == "adamw"
    assert frame.loc[("adam_e", 0), "recipe_schedule"] == "cosine"
    assert frame.loc[("resnet32_e", 0), "recipe_optimizer"] == "sgd"
