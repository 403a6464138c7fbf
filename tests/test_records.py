"""The typed run record: run folders written by 0.3, 0.4 and 0.5 (tests/data, each made by
that version's own `ablation run`: a tiny ResNet-32 (e) run, and in 0.5 a tuned study's
runs and a job that failed before its first epoch) load as they are, report, and keep
their definitions; the record refuses a misspelt key where it is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydantic
import pytest
from conftest import run_cli

from ablation import runs, store
from ablation.errors import AblationError
from ablation.protocol import JobState, RunRecord

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("version", ["0.3", "0.4", "0.5"])
def test_earlier_versions_run_folders_load_as_typed_records(version):
    warnings: list[str] = []
    found = store.load_runs(DATA / f"results-{version}", warn=warnings.append)
    e = next(r for r in found if r.variant == "resnet32_e")
    rec = e.record
    assert rec.status == JobState.DONE and rec.finished and rec.seed == 0
    assert rec.recipe.epochs == 1 and rec.recipe.train_limit == 64
    assert rec.recipe_id == rec.recipe.id  # the id these versions wrote is ours too
    assert (rec.params_total, rec.depth) == (470218, 32)
    # 0.5 and earlier named the test set's numbers as Keras does: read as test_*
    raw = json.loads((e.folder / "summary.json").read_text())
    assert rec.final_test_accuracy == raw["final_val_accuracy"] is not None
    assert rec.best_test_accuracy == raw["best_val_accuracy"]
    assert len(e.history) == 1 and "val_accuracy" in e.history.columns
    if version == "0.5":  # a job that failed before its first epoch: said so, not "damaged"
        assert len(warnings) == 1 and "failed before its first epoch: damaged data file" \
            in warnings[0], warnings
    else:
        assert warnings == []


def test_a_tuned_study_of_0_5_keeps_its_definitions_and_its_tuning_group(isolated_registry):
    from ablation.study import load_study

    study = load_study(DATA / "results-0.5" / "oldtuned.toml")
    found = runs.for_study(store.load_runs(DATA / "results-0.5", warn=lambda m: None), study,
                           warn=pytest.fail)  # no run is of "an earlier definition"
    assert sorted((r.variant, r.seed, r.record.phase) for r in found) == [
        ("t8", 0, "tune"), ("t8", 1, "compare"), ("t8nan", 0, "tune"),
        ("t8nan", 1, "compare")]
    assert {r.record.tuning.fields[0] for r in found} == {"lr"}


def test_the_report_reads_earlier_versions_runs(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(DATA / "results-0.4", res)
    r = run_cli("report", "--results", str(res), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    csv = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    header = csv[0].split(",")
    # the test set's columns by their name, and 0.5's name beside them for one version
    assert header[:8] == ["recipe_id", "variant", "seed", "status", "epochs_done",
                          "epochs_planned", "best_test_accuracy", "final_test_accuracy"]
    assert "final_val_accuracy" in header


def test_a_misspelt_or_missing_key_is_refused_where_it_is_written_or_read():
    good = json.loads(next((DATA / "results-0.5").glob("runs/*/resnet32_e-s0/summary.json"))
                      .read_text())
    with pytest.raises(pydantic.ValidationError, match="final_tst_accuracy"):
        RunRecord(**{k: v for k, v in good.items() if k in RunRecord.model_fields},
                  final_tst_accuracy=0.5)
    with pytest.raises(AblationError, match=r"damaged file x\.json: needs recipe_id"):
        RunRecord.parse({k: v for k, v in good.items() if k != "recipe_id"}, "x.json")
    assert RunRecord.parse({**good, "a_key_of_0_9": 1}).variant == "resnet32_e"
    # a damaged recipe inside the record names the file too
    with pytest.raises(AblationError, match=r"damaged file x\.json: recipe unknown key 'lrr'"):
        RunRecord.parse({**good, "recipe": {**good["recipe"], "lrr": 1}}, "x.json")
