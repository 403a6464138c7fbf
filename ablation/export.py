"""`ablation export mlflow`: a study's runs and verdicts in an MLflow tracking store.

Labs keep their runs in a tracker beside everything else they train; this puts each run
folder there as one MLflow run, and each comparison of each recipe as a parent run that
holds its verdicts, so nobody copies numbers by hand. What goes where:

- a **run folder** -> one run: params are the recipe's fields (`recipe.*`), the variant's
  definition (`definition.*`) and the seed; metrics the per-epoch curves (step = epoch,
  Keras' `val_*` named `test_*`), the final and best accuracies, the counts and the
  `.h5` size; tags the study, variant, recipe id, definition hash, status, backend,
  device, host, commit and a tuned run's phase; artifacts `history.csv` and
  `config.json` (and `model.h5` with `--models`).
- a **comparison** of a recipe -> a parent run: the verdict rows (as `comparisons.csv`
  has them, docs/statistics.md) as `verdicts.csv` and `verdicts.md`, one tag per pair,
  and the runs of its variants as children (a run has one parent in MLflow: the first
  comparison of the study that holds its variant; every comparison lists its runs in
  the `ablation.runs` tag).

Idempotent: each MLflow run carries its source's identity in the `ablation.key` tag, so
exporting again finds it, adds only the epochs it lacks and updates its status, and
never makes a second one. A run still training is exported as RUNNING; the next export
brings it up to date. The server is asked once before anything is written, so an
unreachable one leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ablation import results, store
from ablation import study as studies
from ablation.errors import AblationError, did_you_mean
from ablation.protocol import SUMMARY, JobState, number

KEY = "ablation.key"  # the tag that makes an export idempotent
KIND = "ablation.kind"  # "run" or "comparison"
INSTALL = "pip install 'ablation[mlflow]' (or: pip install mlflow-skinny)"
# a setting stopped at its rung by successive halving ended as planned: FINISHED (its
# ablation.status tag says paused; a later promotion exports it again)
STATUS = {JobState.DONE: "FINISHED", JobState.PAUSED: "FINISHED",
          JobState.FAILED: "FAILED", JobState.INTERRUPTED: "KILLED", JobState.RUNNING: "RUNNING",
          JobState.QUEUED: "SCHEDULED"}
# history.csv column -> metric name: Keras calls the test set `val_*` (the blog's logs
# did); in a tracker beside other projects the names say what they are
CURVES = {"accuracy": "train_accuracy", "loss": "train_loss", "val_accuracy": "test_accuracy",
          "val_loss": "test_loss"}
FINALS = {split.final: f"final_{split.name}_accuracy" for split in results.SPLITS.values()}
FINALS |= {split.best: f"best_{split.name}_accuracy" for split in results.SPLITS.values()}
FINALS |= {"final_accuracy": "final_train_accuracy", "final_loss": "final_train_loss",
           "params_total": "params_total", "params_trainable": "params_trainable",
           "params_non_trainable": "params_non_trainable", "h5_bytes": "h5_bytes",
           "train_seconds": "train_seconds", "images_per_second": "images_per_second"}
TAGS = ("study", "variant", "recipe_id", "definition_hash", "status", "backend", "device",
        "host", "git_commit", "phase")  # phase: a tuned study's tune or compare
BATCH = 500  # metrics per log_batch call (MLflow's limit is 1000)
MAX_PARAM = 6000  # MLflow's longest param value
MAX_TAG = 5000  # and tag value (older servers)


@dataclass
class Tally:
    new: int = 0
    updated: int = 0
    unchanged: int = 0


def _client(tracking_uri: str | None):
    """MLflow's client, failing fast: no retries against a server that is not there, and
    its store's setup chatter (database migrations) kept off the terminal."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise AblationError(f"MLflow is not installed: {INSTALL}") from None
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_uri(uri)
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as e:
        raise AblationError(f"cannot use the MLflow tracking store {uri}: "
                            f"{_first_line(e)}") from e


# the tracking stores MLflow 3 writes to, by URI scheme (a `+driver` suffix allowed)
STORES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
WORKS = ("sqlite:///path/mlflow.db (a local file), postgresql://..., mysql://..., "
         "http(s)://HOST:PORT (a server), databricks")


def check_uri(uri: str) -> None:
    """A tracking URI MLflow can write to, or one line naming it and what works: a
    misspelt scheme (sqllite:) and a plain folder (MLflow's file store, which MLflow 3
    no longer writes to) are refused before anything is tried."""
    scheme = uri.split("://", 1)[0] if "://" in uri else uri.split(":", 1)[0] \
        if uri.startswith("databricks") else ""
    base = scheme.split("+", 1)[0].lower()
    if base in ("", "file"):
        raise AblationError(f"MLflow tracking URI {uri}: a plain folder (MLflow's file store) "
                            "is not a store MLflow 3 writes to; use a database file, e.g. "
                            f"sqlite:///{_folder(uri)}/mlflow.db, or a server ({WORKS})")
    if base not in STORES:
        raise AblationError(f"MLflow tracking URI {uri}: unknown scheme {scheme!r}"
                            f"{did_you_mean(base, STORES, n=1)} (stores: {WORKS})")


def _folder(uri: str) -> str:
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return str(Path(path).expanduser().resolve())


def _local_db(uri: str) -> Path | None:
    """The database file of a local SQLite store (MLflow's own default), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _experiment(client, uri: str, name: str) -> str:
    """The experiment's id, made if missing. The first request: a store that cannot be
    reached fails here, before anything is written."""
    try:
        exp = client.get_experiment_by_name(name)
    except ModuleNotFoundError as e:  # a SQLite store without its database packages
        raise AblationError(f"the MLflow store {uri} needs {e.name}: {INSTALL}") from e
    except Exception as e:  # any failure to reach the store: one line
        raise AblationError(f"cannot reach the MLflow tracking store {uri}: "
                            f"{_first_line(e)}") from e
    if exp is None:
        db = _local_db(uri)
        # a local store keeps its artifacts beside its database, not in whatever folder
        # the command ran from (MLflow's default, ./mlruns)
        where = (db.parent / "mlartifacts" / name).resolve().as_uri() if db else None
        return client.create_experiment(name, artifact_location=where)
    if exp.lifecycle_stage == "deleted":
        raise AblationError(f"MLflow experiment {name!r} at {uri} is deleted: restore it "
                            "(mlflow experiments restore) or pass another --experiment")
    return exp.experiment_id


def _existing(client, exp_id: str) -> dict[str, object]:
    """ablation.key -> MLflow run, for every run this experiment already holds."""
    from mlflow.entities import ViewType

    found, token = {}, None
    while True:
        page = client.search_runs([exp_id], filter_string=f"tags.`{KEY}` != ''",
                                  run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        for r in page:
            found[r.data.tags[KEY]] = r
        token = page.token
        if not token:
            return found


def _flat(prefix: str, value, out: dict[str, str]) -> None:
    """Nested dicts as dotted param names; lists and other values as JSON text."""
    if isinstance(value, dict) and value:
        for k, v in sorted(value.items()):
            _flat(f"{prefix}.{k}", v, out)
    else:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        out[prefix] = text[:MAX_PARAM]


def _params(record) -> dict[str, str]:
    out: dict[str, str] = {"seed": str(record.seed)}
    _flat("recipe", record.recipe.to_dict(), out)
    _flat("definition", record.definition or {}, out)
    return out



def _metrics(run, start_ms: int, have: dict[str, set[int]]):
    """The run's metrics MLflow lacks: each curve's epochs not logged yet (timestamps
    from the epochs' own durations), and the finals once."""
    from mlflow.entities import Metric

    h = run.history
    if "epoch" not in h.columns or not len(h):
        return []
    seconds = h["epoch_seconds"].fillna(0).cumsum() if "epoch_seconds" in h.columns else \
        h["epoch"] * 0
    out = []
    for column in h.columns:
        if column == "epoch":
            continue
        name = CURVES.get(column, column)
        done = have.get(name, set())
        for epoch, value, sec in zip(h["epoch"], h[column], seconds, strict=True):
            v = number(value)
            if v is None or int(epoch) in done:
                continue
            out.append(Metric(name, v, start_ms + int(1000 * sec), int(epoch)))
    last = int(h["epoch"].max())
    for key, name in FINALS.items():
        v = number(getattr(run.record, key))
        if v is not None and last not in have.get(name, set()):
            out.append(Metric(name, v, start_ms + int(1000 * float(seconds.iloc[-1])), last))
    return out


def _start_ms(record) -> int:
    """When the run started, from its last update and its training time."""
    try:
        updated = time.mktime(time.strptime(record.updated, "%Y-%m-%dT%H:%M:%S%z"))
    except (ValueError, TypeError):
        updated = time.time()
    return int(1000 * (updated - float(record.train_seconds or 0)))


def _export_run(client, exp_id: str, run, known, models: bool) -> tuple[str, str]:
    """One run folder as one MLflow run; returns (its MLflow id, new|updated|unchanged)."""
    from mlflow.entities import Param, RunTag

    s = run.record
    key = f"run:{run.folder.parent.name}/{run.folder.name}"
    name = f"{s.variant} seed {s.seed}"
    if s.phase and s.tuning:  # a tuned study's runs differ by their setting
        from ablation import tune

        setting = tune.setting_of(s.recipe.to_dict(), s.tuning.fields)
        name += f" ({s.phase}, {tune.words(setting)})"
    tags = {KEY: key, KIND: "run", "mlflow.runName": name,
            **{f"ablation.{t}": str(getattr(s, t)) for t in TAGS
               if getattr(s, t) is not None}}
    if known is None:
        mr = client.create_run(exp_id, start_time=_start_ms(s), tags=tags)
        run_id, start, have, what = mr.info.run_id, mr.info.start_time, {}, "new"
        params = _params(s)
    else:
        run_id, start, what = known.info.run_id, known.info.start_time, "unchanged"
        have = {k: {m.step for m in client.get_metric_history(run_id, k)}
                for k in known.data.metrics}
        params = {k: v for k, v in _params(s).items() if k not in known.data.params}
    metrics = _metrics(run, start, have)
    if known is not None and (metrics or params or any(known.data.tags.get(k) != v
                                                       for k, v in tags.items())):
        what = "updated"
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, v) for k, v in tags.items()]
    client.log_batch(run_id, params=p[:100], tags=t)  # MLflow takes 100 params a batch
    for i in range(100, len(p), 100):
        client.log_batch(run_id, params=p[i:i + 100])
    for i in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + BATCH])
    if what != "unchanged":  # an unchanged run's files are the ones uploaded before
        for name in (store.HISTORY, store.CONFIG, SUMMARY):
            if (run.folder / name).is_file():
                client.log_artifact(run_id, str(run.folder / name))
    model = run.folder / str(s.model_file or "model.h5")
    if models and model.is_file() and (what != "unchanged" or model.name not in {
            a.path for a in client.list_artifacts(run_id)}):  # --models added later
        client.log_artifact(run_id, str(model))
    status = STATUS[s.status]
    if status in ("RUNNING", "SCHEDULED"):
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status, start + int(
            1000 * float(s.train_seconds or 0)))
    return run_id, what


def _export_comparison(client, exp_id: str, key: str, title: str, rows: list[dict],
                       members: list[str], known) -> tuple[str, str]:
    """One comparison of one recipe as a parent run holding its verdicts."""
    import pandas as pd
    from mlflow.entities import RunTag

    from ablation.report import markdown

    tags = {KEY: key, KIND: "comparison", "mlflow.runName": title,
            "ablation.runs": ",".join(members)[:MAX_TAG]}
    for r in rows:
        lo, hi = number(r["ci_low"]), number(r["ci_high"])
        said = r["verdict"] + ("" if lo is None else
                               f" {r['delta']:+.2f} [{lo:+.2f}, {hi:+.2f}] pp")
        tags[f"verdict.{r['a']} vs {r['b']}"] = said[:MAX_TAG]
    if known is None:
        run_id, what = client.create_run(exp_id, tags=tags).info.run_id, "new"
    else:
        run_id = known.info.run_id
        what = "unchanged" if all(known.data.tags.get(k) == v for k, v in tags.items()) \
            else "updated"
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    frame = pd.DataFrame(rows, columns=markdown.COLUMNS)
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_csv(Path(tmp) / "verdicts.csv", index=False, float_format="%.6g")
        (Path(tmp) / "verdicts.md").write_text(
            f"# {title}\n\n" + markdown.table(frame.fillna("")) + "\n")
        client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, "FINISHED")
    return run_id, what


def to_mlflow(results_dir: Path, study: studies.Study, tracking_uri: str | None = None,
              experiment: str | None = None, models: bool = False,
              margin: float | None = None, out=sys.stdout) -> int:
    """Export the study's runs in `results_dir` and its comparisons' verdicts to MLflow
    (module docstring); prints progress and where it went. Returns the exit code."""
    from ablation import report
    from ablation.runs import for_study
    from ablation.store import load_runs

    if not Path(results_dir).is_dir():
        raise AblationError(f"no results folder {results_dir}; run `ablation run` first")
    runs = for_study(load_runs(Path(results_dir)), study)
    if not runs:
        raise AblationError(f"no runs of study {study.name!r} in {results_dir}: nothing to "
                            "export (name the study with --study)")
    client, uri = _client(tracking_uri)
    from mlflow.exceptions import MlflowException
    name = experiment or f"ablation-{study.name}"
    exp_id = _experiment(client, uri, name)
    existing = _existing(client, exp_id)
    runs.sort(key=lambda r: (r.record.recipe_id, r.variant, r.seed))
    judged = report.comparison_rows(Path(results_dir), study, runs, margin)
    tally, ids, t0 = Tally(), {}, time.monotonic()
    total = len(runs) + len(judged)
    for i, run in enumerate(runs, 1):
        key = f"run:{run.folder.parent.name}/{run.folder.name}"
        try:
            ids[id(run)], what = _export_run(client, exp_id, run, existing.get(key), models)
        except (MlflowException, OSError) as e:  # a store's refusal, a lost server
            raise AblationError(f"MLflow refused run {run.folder}: {_first_line(e)} "
                                f"({i - 1} of {len(runs)} runs exported; rerun to go "
                                "on)") from e
        setattr(tally, what, getattr(tally, what) + 1)
        _progress(out, i, total, t0)
    parents: dict[int, str] = {}
    try:
        for j, (ckey, title, rows, members) in enumerate(judged, len(runs) + 1):
            member_ids = [ids[id(r)] for r in members]
            pid, what = _export_comparison(client, exp_id, ckey, title, rows, member_ids,
                                           existing.get(ckey))
            setattr(tally, what, getattr(tally, what) + 1)
            for r in members:  # a run's parent: the first comparison that holds it
                parents.setdefault(id(r), pid)
            _progress(out, j, total, t0)
        for r in runs:
            if id(r) in parents:
                client.set_tag(ids[id(r)], "mlflow.parentRunId", parents[id(r)])
    except (MlflowException, OSError) as e:
        raise AblationError(f"MLflow refused a comparison: {_first_line(e)} (all "
                            f"{len(runs)} runs are exported; rerun to go on)") from e
    print(f"exported {len(runs)} run(s) and {len(judged)} comparison(s) to experiment "
          f"{name!r} at {uri}: {tally.new} new, {tally.updated} updated, {tally.unchanged} "
          "unchanged", file=out)
    if "://" not in uri or uri.startswith(("file:", "sqlite:")):
        print(f"browse them: mlflow ui --backend-store-uri {uri} (the UI comes with the "
              "full package: pip install mlflow)", file=out)
    return 0


def _progress(out, done: int, total: int, t0: float) -> None:
    """done/total and an ETA, every tenth item and the last."""
    if done != total and done % max(1, total // 10):
        return
    elapsed = time.monotonic() - t0
    eta = elapsed / done * (total - done)
    print(f"  {done}/{total} exported, {results.duration(elapsed)} elapsed, ETA "
          f"{results.duration(eta)}", file=out, flush=True)
