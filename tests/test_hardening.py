"""Hardening: absurd values, messages that name the problem, a stuck unit, failures on
stderr, Ctrl-C while the package imports, damaged histories, a lost queue. (SIGTERM and
a runner that is gone: test_resume.py.) Every signal here lands at a known point: an
import hook."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    TINY,
    as_in_a_terminal,
    one_line_error,
    run_cli,
    run_dirs,
)

from ablation.errors import AblationError
from ablation.store import RunFolder


@pytest.mark.parametrize("args,says", [
    (["--epochs", "99999999999999999999999"], "--epochs: must be at most 10,000"),
    (["--train-limit", "999999999"], "--train-limit: must be at most 100,000,000"),
    (["--train-limit", "60000"], "train-limit 60,000 is more than the 50,000 training"),
    (["--milestones", "50,100", "--epochs", "1"], "milestones: epoch 50 is not before"),
    (["--warmup-epochs", "5", "--epochs", "1"], "warmup-epochs 5 leaves no epoch"),
    (["--nesterov", "--no-nesterov"], "give --nesterov or --no-nesterov, not both"),
    (["--results", ""], "--results: must not be empty"),
    (["--seeds", "100000000"], "--seeds: must be at most 10,000"),
    (["--validation", "60000"], "validation 60,000 is more than the 50,000 training"),
])
def test_absurd_values_are_one_line(tmp_path, args, says):
    full = ["run", "resnet32", "--dry-run", *args]
    if "--results" not in args:
        full += ["--results", str(tmp_path / "r")]
    assert says in one_line_error(run_cli(*full))
    assert not (tmp_path / "r").exists()


def test_messages_name_the_file(tmp_path):
    (tmp_path / "s.toml").write_text('units = "/etc/passwd"\n')
    line = one_line_error(run_cli("list", "--study", str(tmp_path / "s.toml")))
    assert "cannot import units /etc/passwd" in line and "not a Python file" in line
    assert "is a folder; give the study's .toml" in one_line_error(
        run_cli("list", "--study", str(tmp_path)))


def test_a_unit_that_never_returns_stops_listing_in_one_line(tmp_path, monkeypatch,
                                                              isolated_registry):
    from ablation.study import load_study, loader

    (tmp_path / "u.py").write_text('from ablation import unit\n\n@unit("spin")\n'
                                   "def spin(ops, x, block):\n    while True:\n"
                                   "        pass\n")
    (tmp_path / "s.toml").write_text('units = "u.py"\n[[variant]]\nname = "v"\n'
                                     'base = "resnet32_e"\nunit = "spin"\n')
    monkeypatch.setattr(loader, "UNIT_CHECK_SECONDS", 1)
    with pytest.raises(AblationError) as e:
        load_study(tmp_path / "s.toml")
    message = str(e.value)
    assert "unit 'spin' failed in block s1b1 of v" in message
    assert "did not end within 1 s (a unit in an endless loop?)" in message


def test_a_refused_pickle_fails_its_job_on_stderr(tmp_path, cifar_dir, tiny):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    data = tmp_path / "cifar-10-batches-py"
    shutil.copytree(Path(cifar_dir) / "cifar-10-batches-py", data)
    (data / "data_batch_1").chmod(0o644)
    (data / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": [1]}))
    r = run_cli("run", "tiny8", *tiny, *TINY, "--data-dir", str(tmp_path), "--results",
                str(tmp_path / "r"))
    assert r.returncode == 1
    assert "refusing to load posix.system" in r.stderr and "refusing" not in r.stdout
    assert "pwned" not in r.stdout + r.stderr
    # the job failed before its first epoch: its record still says which run it is, so
    # a report lists it as failed, never as a damaged file

    record = RunFolder(run_dirs(tmp_path / "r")[0]).record()
    assert (record.variant, record.seed, record.status) == ("tiny8", 0, "failed")
    assert "refusing to load posix.system" in record.error


SITE = '''\
import importlib.abc, os, signal, sys


class Hook(importlib.abc.MetaPathFinder):
    """Ctrl-C at one known moment: when `{module}` is first imported."""

    def find_spec(self, name, path, target=None):
        if name == "{module}":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, Hook())
'''


@pytest.mark.parametrize("module", ["ablation.cli", "ablation.study", "pandas"])
def test_ctrl_c_while_the_package_imports_is_one_line(tmp_path, module):
    """The console script's first step (ablation_launcher) and `main` catch an interrupt
    wherever the imports are: before the command line exists, while the studies load,
    while the report's libraries load."""
    (tmp_path / "sitecustomize.py").write_text(SITE.format(module=module))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    code = "import sys, ablation_launcher; sys.argv[0] = 'ablation'; " \
           "sys.exit(ablation_launcher.main())"
    # Ctrl-C as a terminal delivers it, whatever this test run inherited (a background
    # job starts with SIGINT ignored, and Python then raises no KeyboardInterrupt)
    r = subprocess.run([sys.executable, "-c", code, "report", "--results", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
                       preexec_fn=as_in_a_terminal)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines() == ["ablation: interrupted"], r.stderr


def test_a_history_with_text_in_a_number_column_warns(tmp_path, tiny_e_results):
    res = tmp_path / "results"
    shutil.copytree(tiny_e_results[0], res)
    run = run_dirs(res)[0]
    text = (run / "history.csv").read_text().splitlines()
    cols = text[0].split(",")
    row = text[1].split(",")
    row[cols.index("loss")] = "oops"
    (run / "history.csv").write_text("\n".join([text[0], ",".join(row), *text[2:]]) + "\n")
    r = run_cli("report", "--results", str(res), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert "1 value(s) that are not numbers in loss, read as missing" in r.stderr


def test_runs_done_on_disk_are_counted_as_found_when_the_queue_is_lost(tmp_path,
                                                                        tiny_e_results,
                                                                        cifar_dir):
    res = tmp_path / "results"
    shutil.copytree(tiny_e_results[0], res)
    (res / "queue.sqlite").rename(res / "queue.sqlite.damaged")
    args = ("run", "resnet32_e", "--seeds", "2", *TINY, "--data-dir", str(cifar_dir),
            "--results", str(res))
    dry = run_cli(*args, "--dry-run")  # says what the run will skip
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert dry.stdout.count("[done]") == 2 and "[new]" not in dry.stdout, dry.stdout
    assert not (res / "queue.sqlite").exists()  # a dry run creates no queue
    r = run_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 already done, 2 found done in their run folders, 0 to run" in r.stdout
    assert "2 done (2 from earlier runs)" in r.stdout
    for d in run_dirs(res):  # nothing retrained: the histories are the fixture's
        assert json.loads((d / "summary.json").read_text())["status"] == "done"
        assert (d / "history.csv").read_bytes() == (
            tiny_e_results[0] / d.relative_to(res) / "history.csv").read_bytes()


@pytest.mark.parametrize("code", [-11, -6, 139])
def test_a_job_that_crashes_in_native_code_says_what_may_avoid_it(tmp_path, code):
    """A segfault or abort (oneDNN's kernels crashed so on this CPU for an 8-channel net
    at 64x64) fails the job with its exit code, its last line and what may avoid it."""
    from ablation.executors.base import outcome_from

    o = outcome_from(3, tmp_path, code, ["step 5", "double free or corruption (!prev)"])
    assert o.status == "failed" and o.error.startswith(f"exit code {code}: double free")
    assert "TF_ENABLE_ONEDNN_OPTS=0 or KERAS_BACKEND=jax" in o.error


def test_a_job_that_ends_well_with_a_record_the_runner_cannot_read_says_so(tmp_path):
    """A job that exits 0 after writing a record this runner cannot parse (here, a recipe
    key it does not know, as a newer version's job writes) fails with the record's
    problem, not with the job's last output line."""
    from ablation.executors.base import outcome_from

    (tmp_path / "summary.json").write_text(json.dumps({"recipe": {"no_such_field": 1}}))
    o = outcome_from(3, tmp_path, 0, ["inference: 513 images/s"])
    assert o.status == "failed" and o.error.startswith("exit code 0, but damaged file ")
    assert "summary.json" in o.error and "another ablation version" in o.error
