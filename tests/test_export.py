"""`ablation export mlflow`: real runs (the shared tiny ones) into an MLflow store in a
temporary folder, read back with MLflow's own client, never its files: one MLflow run per
run folder with its params, per-epoch metrics and tags, a parent run per comparison with
its verdicts, children linked, and a second export that duplicates nothing."""

from __future__ import annotations

import csv
import json
import os
import shutil

from conftest import need, one_line_error, run_cli, run_dirs


def _store(tmp_path) -> str:
    """A local store of MLflow's default kind (SQLite), in the test's folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_export_runs_verdicts_and_children_then_again_without_duplicates(tmp_path,
                                                                          tiny_results):
    need("mlflow")
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    uri = _store(tmp_path)
    res = tmp_path / "results"
    shutil.copytree(tiny_results, res)
    # one run caught mid-training: its first epoch only, and "running"
    live = next(d for d in run_dirs(res) if d.name == "resnet32_e-s1")
    done_files = {n: (live / n).read_text() for n in ("summary.json", "history.csv")}
    summary = json.loads(done_files["summary.json"])
    (live / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    (live / "history.csv").write_text("".join(
        done_files["history.csv"].splitlines(keepends=True)[:2]))
    args = ["export", "mlflow", "--results", str(res), "--tracking-uri", uri,
            "--experiment", "tiny"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "exported 4 run(s) and 5 comparison(s)" in first.stdout
    assert "9 new, 0 updated, 0 unchanged" in first.stdout and "9/9 exported" in first.stdout
    assert f"mlflow ui --backend-store-uri {uri}" in first.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    (mid,) = [r for r in client.search_runs([exp.experiment_id], "tags.`ablation.kind` = 'run'")
              if r.data.tags["ablation.key"].endswith("/resnet32_e-s1")]
    assert mid.info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(mid.info.run_id, "test_accuracy")] == [0]
    # it finishes; the next export brings that MLflow run up to date, adds nothing else
    for name, text in done_files.items():
        (live / name).write_text(text)
    second = run_cli(*args)
    assert second.returncode == 0 and "0 new" in second.stdout, second.stdout + second.stderr

    def runs(kind: str):
        return client.search_runs([exp.experiment_id], f"tags.`ablation.kind` = '{kind}'",
                                  run_view_type=ViewType.ALL)

    def snapshot():
        out = {}
        for r in runs("run"):
            out[r.info.run_id] = {k: [(m.step, m.value) for m in
                                      client.get_metric_history(r.info.run_id, k)]
                                  for k in r.data.metrics}
        return out

    folders = {(json.loads((d / "summary.json").read_text())["variant"],
                json.loads((d / "summary.json").read_text())["seed"]): d
               for d in run_dirs(res)}
    exported = runs("run")
    assert len(exported) == len(folders) == 4
    parents = {r.info.run_id: r for r in runs("comparison")}
    assert len(parents) == 5
    for r in exported:
        tags, params = r.data.tags, r.data.params
        d = folders[(tags["ablation.variant"], int(params["seed"]))]
        summary = json.loads((d / "summary.json").read_text())
        assert r.info.status == "FINISHED"
        assert tags["ablation.recipe_id"] == summary["recipe_id"]
        assert tags["ablation.definition_hash"] == summary["definition_hash"]
        assert tags["ablation.status"] == "done" and tags["ablation.backend"]
        assert params["recipe.epochs"] == "2" and params["recipe.lr"] == "0.1"
        assert json.loads(params["definition.stages"]) == summary["definition"]["stages"]
        with open(d / "history.csv") as f:
            rows = list(csv.DictReader(f))
        curve = client.get_metric_history(r.info.run_id, "test_accuracy")
        assert sorted((m.step, m.value) for m in curve) == [
            (int(row["epoch"]), float(row["val_accuracy"])) for row in rows]
        assert r.data.metrics["final_test_accuracy"] == summary["final_val_accuracy"]
        assert r.data.metrics["params_total"] == summary["params_total"]
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"history.csv", "config.json"} <= names and "model.h5" not in names
        # the parent: the study's first comparison holding the variant, which lists it
        parent = parents[tags["mlflow.parentRunId"]]
        first_cmp = "resnet32" if tags["ablation.variant"] == "resnet32" else "refactor"
        assert parent.data.tags["ablation.key"].endswith(f"/{first_cmp}")
        assert r.info.run_id in parent.data.tags["ablation.runs"].split(",")
    refactor = next(p for p in parents.values()
                    if p.data.tags["ablation.key"].endswith("/refactor"))
    said = refactor.data.tags["verdict.resnet32 vs resnet32_e"]
    assert said.split()[0] in ("better", "worse", "equivalent", "undecided")
    assert {a.path for a in client.list_artifacts(refactor.info.run_id)} == {
        "verdicts.csv", "verdicts.md"}
    before = snapshot()

    again = run_cli(*args, "--models")  # the models asked for only now
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 updated, 9 unchanged" in again.stdout
    assert len(runs("run")) == 4 and len(runs("comparison")) == 5
    assert snapshot() == before  # not one metric value logged twice
    for r in runs("run"):  # an unchanged run still gets the model it lacked
        assert "model.h5" in {a.path for a in client.list_artifacts(r.info.run_id)}


def test_export_mistakes_are_one_line(tmp_path, tiny_e_results):
    need("mlflow")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("export", "mlflow", "--results", str(empty), "--tracking-uri",
                _store(tmp_path))
    assert "no runs of study 'blog'" in one_line_error(r)
    # a misspelt scheme, and a plain folder (MLflow's file store): what works, in one line
    for uri, says in (("sqllite:///x.db", "unknown scheme 'sqllite'; did you mean sqlite?"),
                      (f"file://{tmp_path}/store", "a plain folder (MLflow's file store) is "
                       "not a store MLflow 3 writes to; use a database file, e.g. sqlite:///")):
        line = one_line_error(run_cli("export", "mlflow", "--results",
                                      str(tiny_e_results[0]), "--tracking-uri", uri))
        assert line.startswith(f"ablation: error: MLflow tracking URI {uri}: ") and says \
            in line, line
    # a server that is not there: one line, fast, and nothing written anywhere
    r = run_cli("export", "mlflow", "--results", str(tiny_e_results[0]), "--tracking-uri",
                "http://127.0.0.1:9", timeout=120)
    assert "cannot reach the MLflow tracking store http://127.0.0.1:9" in one_line_error(r)
    # MLflow not installed (hidden from the process): the command that installs it
    (tmp_path / "hide" / "mlflow").mkdir(parents=True)
    (tmp_path / "hide" / "mlflow" / "__init__.py").write_text("raise ImportError('hidden')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "hide"),
                                          os.environ.get("PYTHONPATH", "")])}
    r = run_cli("export", "mlflow", "--results", str(tiny_e_results[0]), env=env)
    assert "pip install 'ablation[mlflow]'" in one_line_error(r)


def test_every_job_state_has_an_mlflow_status():
    from ablation import export
    from ablation.protocol import JobState

    assert set(export.STATUS) == set(JobState)  # a paused rung is never shown as RUNNING
    assert export.STATUS[JobState.PAUSED] == "FINISHED"
