"""Fair comparisons: [tune] candidates (a grid, quasi-random points over ranges), the
choice (by validation, never test; a tie to the nearest setting), the edge warning, and
both phases from one command on one-unit-per-stage nets: resumable, reported."""

from __future__ import annotations

import json
import math
import os
import re
import signal

import pytest
from conftest import (
    history,
    hold_after,
    one_line_error,
    run_cli,
    run_dirs,
    start_cli,
    wait_for,
)

from ablation import registry, tune
from ablation.errors import AblationError
from ablation.protocol import HELD_MARKER, RunRecord
from ablation.recipe import Recipe

BASE = Recipe(epochs=1, validation=40)


def test_a_grid_is_its_product_and_ranges_are_reproducible_quasi_random_points():
    t = tune.parse({"lr": [0.05, 0.1], "warmup_epochs": [0, 1]}, BASE.replace(epochs=3), "s")
    assert t.candidates() == [{"lr": 0.05, "warmup_epochs": 0}, {"lr": 0.05, "warmup_epochs": 1},
                              {"lr": 0.1, "warmup_epochs": 0}, {"lr": 0.1, "warmup_epochs": 1}]
    table = {"lr": {"low": 0.01, "high": 1.0, "log": True},
             "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True}, "samples": 16}
    a, b = (tune.parse(table, BASE, "s").candidates() for _ in range(2))
    assert a == b and len(a) == 16  # the same study file: the same candidates
    assert tune.parse(table, BASE, "other").candidates() != a  # seeded by the study
    lrs = sorted(c["lr"] for c in a)
    assert lrs[0] >= 0.01 and lrs[-1] <= 1.0
    # a Sobol design on a log scale: every decade of lr gets its share of the 16 points
    assert [sum(lo <= x < lo * 10 for x in lrs) for lo in (0.01, 0.1)] == [8, 8]
    ints = tune.parse({"warmup_epochs": {"low": 0, "high": 4}, "samples": 8},
                      BASE.replace(epochs=6), "s").candidates()
    assert all(isinstance(c["warmup_epochs"], int) for c in ints)


@pytest.mark.parametrize("table,says", [
    ({"lr": [0.1]}, "needs validation = N"),
    ({"epochs": [1, 2], "validation": 10}, "cannot tune 'epochs'"),
    ({"lr": [], "validation": 10}, "lr needs at least one candidate"),
    ({"lr": [0.1, -1], "validation": 10}, "lr candidate -1: must be a positive number"),
    ({"lr": {"low": 0.1}, "validation": 10}, "a range is { low = X, high = Y"),
    ({"weight_decay": {"low": 0, "high": 1e-3, "log": True}, "validation": 10},
     "a log range needs a positive low"),
    ({"lr": [0.1], "seeds": 0, "validation": 10}, "seeds must be a positive integer"),
    ({"lr": [0.1], "seed": 2, "validation": 10}, "cannot tune 'seed'; did you mean seeds?"),
    ({"min_lr": [0.5], "validation": 10}, "the candidate min_lr 0.5: min-lr is where"),
])
def test_bad_tune_tables_are_one_line(table, says):
    with pytest.raises(AblationError, match=r"^\[tune\] ") as e:
        tune.parse(table, Recipe(), "s")
    assert says in str(e.value)


def _run(variant, setting, val, test, phase="tune", seed=0, status="done"):
    rec = {**BASE.to_dict(), **setting}
    return RunRecord.parse({"variant": variant, "seed": seed, "recipe": rec, "recipe_id": "x",
                            "status": status, "phase": phase,
                            "final_validation_accuracy": val, "final_test_accuracy": test,
                            "epochs_done": 1,
                            "tuning": {"group": "g", "fields": ["lr"], "base": {"lr": 0.1}}})


def test_the_choice_is_the_validation_argmax_never_the_test_set_and_ties_go_near():
    t = tune.parse({"lr": [0.01, 0.1, 1.0], "seeds": 2}, BASE, "s")
    base = BASE.replace(lr=0.1)
    runs = [  # a planted case: lr 0.01 wins on validation, 1.0 on test
        _run("a", {"lr": 0.01}, 0.80, 0.10, seed=0),
        _run("a", {"lr": 0.01}, 0.70, 0.10, seed=1),
        _run("a", {"lr": 0.1}, 0.60, 0.50, seed=0), _run("a", {"lr": 0.1}, 0.60, 0.50, seed=1),
        _run("a", {"lr": 1.0}, 0.50, 0.99, seed=0),
        _run("a", {"lr": 1.0}, None, 0.99, seed=1, status="failed"),
        # b: a tie between 0.01 and 1.0 on validation; 0.1 diverged (failed)
        _run("b", {"lr": 0.01}, 0.7, 0.2), _run("b", {"lr": 1.0}, 0.7, 0.2),
        _run("b", {"lr": 0.1}, None, None, status="failed"),
    ]
    scores = tune.scores(runs, "g")
    assert scores["a"][0][tune.key({"lr": 1.0})] == [0.5]  # the failed seed left out
    c = tune.select(*scores["a"], t, base)
    assert c.setting == {"lr": 0.01} and c.accuracy == pytest.approx(0.75) and c.seeds == 2
    assert c.edges == ("lr: best at the low edge of what was tried (0.01): widen below "
                       "0.01",)
    # a log-spaced grid: 0.003 is the third of seven values tried, no edge (0.6 read the
    # grid on a linear scale and warned "widen below 0.003")
    grid = [3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3]
    t7 = tune.parse({"lr": grid}, BASE, "s")
    tried = [{"lr": x} for x in grid]
    assert tune.edges({"lr": 3e-3}, tried, t7) == ()
    assert tune.edges({"lr": 0.3}, tried, t7)[0].startswith("lr: best at the high edge")
    b = tune.select(*scores["b"], t, base)
    assert b.tied == 1 and b.setting in ({"lr": 0.01}, {"lr": 1.0})
    # nearest the base on a log scale: 0.01 and 1.0 are one decade from 0.1 each, so the
    # tie falls to the smaller distance, then to the key (deterministic)
    assert tune.select(*scores["b"], t, base.replace(lr=0.5)).setting == {"lr": 1.0}
    assert tune.select({}, {}, t, base) is None


TUNED = '''name = "tuned"
[recipe]
epochs = 1
batch_size = 32
train_limit = 128
test_limit = 64
tta = "flip"

[tune]
lr = [0.03, 0.1]
seeds = 1
validation = 40

[[variant]]
name = "t8"
base = "resnet32_e"
stages = [[1, 16], [1, 32], [1, 64]]

[[variant]]
name = "t8_c"
base = "t8"
unit = "c"

[[comparison]]
title = "e against c, each at its own lr"
variants = ["t8", "t8_c"]
'''


def test_one_command_tunes_chooses_compares_resumes_and_reports(tmp_path, cifar_dir):
    study = tmp_path / "tuned.toml"
    study.write_text(TUNED)
    res = tmp_path / "results"
    args = ["run", "--study", str(study), "--all", "--seeds", "2", "--data-dir",
            str(cifar_dir), "--results", str(res)]
    plan = run_cli(*args, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "phase tune: 4 job(s), 4 to run (2 variant(s) x 2 setting(s) of lr, x 1 " \
        "seed(s))" in plan.stdout
    assert "phase compare: 4 job(s)" in plan.stdout and "seeds 1..2" in plan.stdout
    # --until-decided: the comparison's first look, and the looks after it, said as such
    looks = run_cli(*[a for a in args if a not in ("--seeds", "2")], "--until-decided",
                    "--dry-run")
    assert looks.returncode == 0, looks.stderr
    assert ("phase compare: 6 job(s) (each variant at the setting the tuning chooses; seeds "
            "from 1 in looks of 3, 5, 8, 12 (more only where a pair is undecided) (the first "
            "look))") in looks.stdout
    # the first tuning job is killed after its epoch, before it saved: a rerun resumes it
    p = start_cli(*args, "--workers", "1", env=hold_after(1))
    held = lambda: (res / "runs").exists() and any(  # noqa: E731
        (r / HELD_MARKER).exists() for r in run_dirs(res))
    wait_for(held, "the first tuning job to hold", p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    r = run_cli(*args, "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "phase 1/2, tune" in r.stdout and "phase 2/2, compare" in r.stdout
    assert " test_acc " in r.stdout and " valid_acc " in r.stdout  # the split that chooses
    # a tuning job's lines say the setting it trains
    # (the held job, t8 at lr 0.03, resumes after its only epoch: no epoch line)
    assert "] t8 s0 (lr 0.1)  epoch 1/1" in r.stdout and " s0 (lr 0.1): done" in r.stdout
    runs, attempts = {}, []
    for d in run_dirs(res):
        cfg = json.loads((d / "config.json").read_text())
        s = json.loads((d / "summary.json").read_text())
        runs[(cfg["phase"], cfg["variant"], cfg["seed"], cfg["recipe"]["lr"])] = (s, d)
        assert s["status"] == "done" and len((d / "history.csv").read_text().splitlines()) == 2
        # a tuning run chooses on its validation split: it never evaluates the test set
        # (Keras' CSVLogger still writes the val_ columns, empty, in a run without them)
        tests = [row.get("val_accuracy") for row in history(d)]
        assert all(v not in ("", "NA", None) for v in tests) == (cfg["phase"] == "compare")
        assert (s.get("final_test_accuracy") is None) == (cfg["phase"] == "tune")
        # nor under test-time augmentation
        assert (s.get("final_tta_accuracy") is None) == (cfg["phase"] == "tune")
        attempts.append((d / "train.log").read_text().count("--- attempt started"))
    assert sorted(attempts) == [1] * 7 + [2]  # nothing lost, nothing but the killed job twice
    assert sum(k[0] == "tune" for k in runs) == 4 and sum(k[0] == "compare" for k in runs) == 4
    # each variant's comparison runs use its own setting: the validation argmax
    for v in ("t8", "t8_c"):
        tuned = {lr: s["final_validation_accuracy"] for (ph, var, _, lr), (s, _) in
                 runs.items() if ph == "tune" and var == v}
        best = max(tuned.values())
        chosen = [lr for (ph, var, _, lr) in runs if ph == "compare" and var == v]
        assert set(chosen) == {min((lr for lr, a in tuned.items() if a == best),
                                   key=lambda lr: abs(math.log(lr / 0.1)))}
        assert sorted(seed for (ph, var, seed, _) in runs if ph == "compare" and var == v) \
            == [1, 2]
    again = run_cli(*args)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout
    status = run_cli("status", "--results", str(res)).stdout
    assert status.count(" tune ") == 4 and status.count(" compare ") == 4
    out = tmp_path / "report"
    rep = run_cli("report", "--study", str(study), "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "README.md").read_text()
    assert "## Tuned comparisons" in md and "Each variant's own setting" in md
    assert "| tuning group `" in md  # the report's overview lists the group
    assert "--validation" not in md  # its commands leave the phases' split to [tune]
    assert "Does the ranking hold across settings?" in md
    assert any(p.name == "tuning.png" for p in out.rglob("*.png"))
    choices = {v: next(lr for (ph, var, _, lr) in runs if ph == "compare" and var == v)
               for v in ("t8", "t8_c")}
    assert set(choices.values()) <= {0.03, 0.1}
    # a grid of two: whichever lr a variant chose is an edge of what was tried
    assert md.count("lr: best at the") == 2 and "widen" in md
    rows = [row for row in (out / "comparisons.csv").read_text().splitlines()[1:]
            if ",True," in row]
    assert len(rows) == 1 and '{""lr"": ' in rows[0]
    # what an export reads (MLflow's comparison runs) is comparisons.csv's row, the
    # tuning cost included: 2 settings x 1 epoch x 1 seed a variant, both trained
    import csv

    from ablation import report
    from ablation import runs as runs_
    from ablation.study import load_study

    tuned_csv = [r for r in csv.DictReader((out / "comparisons.csv").open())
                 if r["tuned"] == "True"]
    (_, _, exported, _), = [j for j in report.comparison_rows(
        res, load_study(str(study)), runs_.load_runs(res)) if "tuned-" in j[0]]
    assert [(str(r["a_tune_epochs"]), str(r["a_grid_epochs"])) for r in exported] == \
        [(r["a_tune_epochs"], r["a_grid_epochs"]) for r in tuned_csv] == [("2", "2")]
    assert one_line_error(run_cli("report", "--study", str(study), "--results", str(res),
                                  "--recipe", "nope"))


SPACES = '''name = "spaces"
[recipe]
epochs = 3

[tune]
lr = [0.05, 0.1, 0.2]
validation = 64

[[tune.space]]
variants = ["adam_e"]
lr = { times = [0.3, 1, 3] }

[[variant]]
name = "adam_e"
base = "resnet32_e"
recipe = { optimizer = "adamw", lr = 0.001, weight_decay = 0.05 }

[[comparison]]
title = "SGD (e) against AdamW (e), each over its own range"
variants = ["resnet32_e", "adam_e"]
'''


def test_each_variant_can_be_tuned_over_its_own_space(tmp_path, isolated_registry):
    """AdamW and SGD want learning rates two orders of magnitude apart: a variant's own
    space, here multipliers of its own lr, is searched instead of the study's; its tuned
    lr wins over the lr its own recipe fixes (0.6 let the variant's value win, so every
    setting trained alike), while its other fixed fields stay."""
    from ablation import registry
    from ablation.study import load_study

    path = tmp_path / "spaces.toml"
    path.write_text(SPACES)
    study = load_study(str(path))
    t, base = study.tune, study.recipe()
    adam = registry.get("adam_e")
    own = adam.train_recipe(base)
    assert [c["lr"] for c in t.for_variant("adam_e", own).candidates()] == [0.0003, 0.001,
                                                                            0.003]
    assert [c["lr"] for c in t.for_variant("resnet32_e", base).candidates()] == [0.05, 0.1,
                                                                                 0.2]
    tried = adam.train_recipe(base.replace(lr=0.003), keep=("lr",))
    assert (tried.lr, tried.optimizer, tried.weight_decay) == (0.003, "adamw", 0.05)
    r = run_cli("run", "--study", str(path), "--all", "--dry-run", "--train-limit", "256",
                "--test-limit", "64", "--results", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert ("adam_e 3 setting(s) of lr (its own space); resnet32_e 3 setting(s) of lr, "
            in r.stdout)
    assert "lr 0.0003" in r.stdout and "lr 0.2" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(SPACES.replace('variants = ["adam_e"]', 'variants = ["adam_x"]')
                   .replace('"adam_e"', '"adam_f"').replace('"spaces"', '"bad"'))
    with pytest.raises(AblationError, match="names 'adam_x', which is not one of"):
        load_study(str(bad))


@pytest.mark.parametrize("space,message", [
    ("beta_1 = { times = [0.5, 1] }", "multiplies the variant's own beta_1, which is None"),
    ("optimizer = { times = [0.5, 1] }", "multiplies the variant's own optimizer, which is "
                                         "'adamw'"),
    ("batch_size = { times = [0.3, 1] }", "0.3 x 128 = 38.4 is not a whole number"),
    ("lr = { times = [1, 1.0] }", "the multipliers [1, 1.0] of 0.001 give 0.001 twice"),
    ("tta = ['none', 'flip']", "cannot tune 'tta'"),
    ("lr = { time = [1, 3] }", "unknown key 'time'; did you mean times?"),
])
def test_a_space_that_cannot_be_searched_is_one_line(space, message, tmp_path,
                                                     isolated_registry):
    from ablation.study import load_study

    path = tmp_path / "bad.toml"
    path.write_text(SPACES.replace("lr = { times = [0.3, 1, 3] }", space))
    with pytest.raises(AblationError, match=re.escape(message)):
        study = load_study(str(path))
        study.tune.for_variant("adam_e", registry.get("adam_e").train_recipe(study.recipe()))


def test_multipliers_keep_an_integer_field_whole(tmp_path, isolated_registry):
    from ablation.study import load_study

    path = tmp_path / "ints.toml"
    path.write_text(SPACES.replace("lr = { times = [0.3, 1, 3] }",
                                   "batch_size = { times = [0.5, 2] }"))
    study = load_study(str(path))
    space = study.tune.for_variant("adam_e", registry.get("adam_e").train_recipe(study.recipe()))
    assert [c["batch_size"] for c in space.candidates()] == [64, 256]
    assert all(isinstance(c["batch_size"], int) for c in space.candidates())
