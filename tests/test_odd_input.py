"""Bad input and odd layouts a careless user meets (0.6's findings): a results folder
copied elsewhere, a clone named like the package beside the working folder, image sizes,
budgets and rungs a run cannot keep, heads that cannot train, damaged or read-only
results. Each is one line and a non-zero exit, or it works; nothing here trains."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import one_line_error, run_cli

from ablation.jobqueue import JobQueue
from ablation.protocol import JobKey, JobState, module_command


def test_a_copied_results_folder_never_writes_into_the_original(tmp_path):
    """`cp -a results results_copy`, then a run on the copy: the copy's queue names its
    own run folders (0.6 read them back from the database, so a claim in the copy
    resumed and rewrote the original's runs)."""
    original = tmp_path / "results"
    original.mkdir()
    with JobQueue(original) as q:
        (job_id,) = q.add([(JobKey("resnet32_e", "", 0, "rid"), {})])
        q.claim([job_id], "w")
        q.finish(job_id, JobState.INTERRUPTED)
    copy = tmp_path / "elsewhere" / "results_copy"
    shutil.copytree(original, copy)
    with JobQueue(copy) as q:
        q.add([(JobKey("resnet32_e", "", 0, "rid"), {})])  # requeued, as a rerun does
        row = q.claim([job_id], "w")
        assert row.run_dir == str(copy / "runs" / "rid" / "resnet32_e-s0")
        assert all(str(copy) in r.run_dir for r in q.all())
    with JobQueue(original) as q:
        assert q.get(job_id).status == JobState.INTERRUPTED  # untouched


def test_a_clone_named_like_the_package_does_not_shadow_it_in_a_job(tmp_path):
    """`git clone ... ablation` used from the folder that holds it: a job process started
    with `python -m` put that folder first on sys.path, and the clone's `results/`
    became `ablation.results` (0.6: every job failed with "module 'ablation.results' has
    no attribute 'read_json'")."""
    (tmp_path / "ablation" / "results").mkdir(parents=True)
    (tmp_path / "ablation" / "README.md").write_text("a clone\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    r = subprocess.run(module_command("ablation.job", str(run)), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert "read_json" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "not a job's config" in r.stdout, r.stdout + r.stderr


def test_status_and_report_on_a_file_say_so(tmp_path):
    f = tmp_path / "results"
    f.write_text("not a folder")
    for cmd in ("status", "report"):
        line = one_line_error(run_cli(cmd, "--results", str(f)))
        assert "is a file, not a results folder" in line, line


def _read_only(folder: Path) -> bool:
    """Make `folder` unwritable for this process, as a colleague's folder or a read-only
    mount is: chmod, or as root (who may write anywhere) the immutable attribute. False
    where neither holds here."""
    import os

    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        return False
    return not os.access(folder, os.W_OK)


def _writable_again(folder: Path) -> None:
    import os

    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_status_reads_a_results_folder_it_may_not_write(tmp_path, capsys, monkeypatch):
    """A results folder this user may read but not write (a colleague's, a read-only
    mount): `status` shows the queue (0.6 called the healthy database damaged, since WAL
    mode cannot make its -shm file there, and advised moving it aside)."""
    import sqlite3

    from ablation import cli, jobqueue

    res = tmp_path / "results"
    res.mkdir()
    with JobQueue(res) as q:
        q.add([(JobKey("resnet32_e", "", 0, "rid"), {})])
    if not _read_only(res):  # a file system without the attribute: the same, simulated
        real = JobQueue._connect

        def wal_fails(self, uri, journal):
            if journal:
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return real(self, uri, journal)

        monkeypatch.setattr(JobQueue, "_connect", wal_fails)
        monkeypatch.setattr(jobqueue.os, "access", lambda *a: False)
    try:
        assert cli.main(["status", "--results", str(res)]) == 0
    finally:
        _writable_again(res)
    out = capsys.readouterr().out
    assert "resnet32_e" in out and "queued: 1" in out, out


def test_another_executors_flags_are_refused_not_ignored():
    """`--slurm-*` or `--ray-*` flags without their executor trained locally, perhaps on
    a login node, with no word (0.6)."""
    line = one_line_error(run_cli("run", "resnet32_e", "--slurm-partition", "gpu",
                                  "--dry-run"))
    assert "--slurm-partition is a setting of --executor slurm" in line
    assert "add --executor slurm" in line
    line = one_line_error(run_cli("run", "resnet32_e", "--ray-gpus", "0.5", "--executor",
                                  "slurm", "--dry-run"))
    assert "--ray-gpus is a setting of --executor ray, not of --executor slurm" in line


HEADS = '''from ablation import head, unit

@head("logits")
def logits(ops, x, net):
    return ops.dense(ops.pool(x, "gap"), net.num_classes, "fc", activation=None)

@head("map")
def map_head(ops, x, net):
    return ops.conv(x, net.num_classes, 1, 1, "fc")

@head("wide")
def wide(ops, x, net):
    return ops.dense(ops.pool(x, "gap"), 13, "fc")

@head("twice")
def twice(ops, x, net):
    y = ops.relu(ops.bn(x, "bn"), "relu")
    return ops.dense(ops.pool(ops.relu(y, "relu"), "gap"), net.num_classes, "fc")

@unit("lam")
def lam(ops, x, block):
    import keras
    y = ops.layer(keras.layers.Lambda(lambda t: t * 2, name=f"{block.name}_x2"), x)
    return ops.add(y, x, f"{block.name}_add")
'''


def _study_with(tmp_path, **fields) -> str:
    (tmp_path / "parts.py").write_text(HEADS)
    extra = "".join(f'{k} = "{v}"\n' for k, v in fields.items())
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\nunits = "parts.py"\n[[variant]]\nname = "v"\n'
                    f'base = "resnet32_e"\nstages = [[1, 16], [1, 32], [1, 64]]\n{extra}')
    return str(path)


def test_heads_that_cannot_train_and_lambda_layers_are_refused_at_list(tmp_path):
    """A head without a softmax trained to a meaningless loss (cross-entropy on logits);
    a map, or 13 outputs for 10 classes, failed only inside the job; a Lambda layer
    trained, then its saved model could not be loaded by `analyze` (0.6)."""
    cases = {"logits": "does not end in a softmax",
             "map": "gives shape (N, 8, 8, 10); it must give (N, 10)",
             "wide": "gives shape (N, 13); it must give (N, 10)",
             "twice": "give the head's layers names of their own"}
    for head_name, says in cases.items():
        line = one_line_error(run_cli("list", "--study", _study_with(tmp_path,
                                                                      head=head_name)))
        assert says in line and f"head {head_name!r}" in line, line
    line = one_line_error(run_cli("list", "--study", _study_with(tmp_path, unit="lam")))
    assert "a Lambda layer (s1b1_x2) cannot be loaded back" in line, line


def test_image_size_resizes_any_dataset_and_the_record_says_what_trained(cifar_dir):
    """`--image-size 16` on CIFAR-10 trained at 32x32 and recorded 16 (0.6): now every
    dataset is resized (bilinear, as a folder's images are), its statistics are its own
    at that size, and the network is counted at it."""
    import numpy as np

    from ablation import data, models

    ds = data.load("cifar10", cifar_dir, train_limit=100, test_limit=50,
                   image_size=(16, 16))
    assert ds.x_train.shape == (100, 16, 16, 3) and ds.x_test.shape == (50, 16, 16, 3)
    assert ds.input_shape == (16, 16, 3) and ds.mean != data.CIFAR10_MEAN
    assert np.allclose(ds.mean, data.CIFAR10_MEAN, atol=1.0)  # a resize keeps the mean
    assert data.shape_of("cifar10", (16, 16)) == ((16, 16, 3), 10)
    at16 = models.count_params("resnet32_e", 10, (16, 16, 3)).macs
    at32 = models.count_params("resnet32_e", 10, (32, 32, 3)).macs
    assert at16 < at32 / 3.5


def test_data_a_network_cannot_learn_from_is_refused_before_anything_runs(tmp_path):
    """One class trained to 100 % and reported; 1x1 images and `--image-size 1` trained;
    an empty .npz said "no image of class 0" (0.6)."""
    import numpy as np

    def npz(name, n, hw, classes):
        path = tmp_path / f"{name}.npz"
        rng = np.random.default_rng(0)
        np.savez(path, x_train=rng.integers(0, 255, (n, *hw, 3), dtype=np.uint8),
                 y_train=np.arange(n) % classes, x_test=np.zeros((4, *hw, 3), np.uint8),
                 y_test=np.zeros(4, np.int64))
        return str(path)

    cases = {npz("one", 8, (32, 32), 1): "one class only",
             npz("tiny", 8, (1, 1), 2): "stride 2 over a 1x1 map: the images are too small",
             npz("empty", 0, (32, 32), 2): "y_train is empty"}
    for path, says in cases.items():
        line = one_line_error(run_cli("run", "resnet32_e", "--dataset", path, "--dry-run",
                                      "--results", str(tmp_path / "r")))
        assert says in line, line
    line = one_line_error(run_cli("run", "resnet32_e", "--image-size", "1", "--dry-run",
                                  "--results", str(tmp_path / "r")))
    assert "too small for this network" in line, line


def test_a_history_with_an_epoch_twice_is_read_once_with_a_warning(tmp_path):
    """A history.csv with a duplicated epoch (a copy merged by hand, a foreign tool) drew
    a spike from 8 % to 90 % in the curves (0.6): the last record of each epoch is read,
    and the file is named."""
    from ablation.store import RunFolder

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_accuracy\n0,2.0,0.08\n1,1.5,0.30\n1,1.4,0.90\n"
                    "2,1.2,0.40\n")
    said = []
    df = RunFolder(tmp_path).history(said.append)
    assert list(df["epoch"]) == [0, 1, 2] and list(df["val_accuracy"]) == [0.08, 0.90, 0.40]
    assert said and "epoch(s) 1 recorded more than once" in said[0]


def _tuned(tmp_path, tune: str, epochs: int = 9) -> str:
    path = tmp_path / "t.toml"
    path.write_text(f'name = "t"\n[recipe]\nepochs = {epochs}\n[tune]\n{tune}\n'
                    'validation = 64\n[[comparison]]\ntitle = "x"\n'
                    'variants = ["resnet32_e", "resnet32_c"]\n')
    return str(path)


def test_budgets_and_rungs_are_checked_against_the_run_not_the_file(tmp_path):
    """A budget below one full run was spent nine times over; min_epochs was checked
    against the study file's epochs, not the run's; the dry run promised the full grid's
    theoretical share whatever the grid (0.6)."""
    flags = ["--all", "--dry-run", "--train-limit", "256", "--test-limit", "64",
             "--results", str(tmp_path / "r")]
    line = one_line_error(run_cli("run", "--study", _tuned(tmp_path, "lr = [0.05, 0.1]\n"
                                                           "budget = 1"), *flags))
    assert "budget 1 epochs is less than one full run (9 epochs x 1 tuning seed(s) = 9)" \
        in line, line
    small = _tuned(tmp_path, "lr = [0.05, 0.1]\nhalving = { factor = 3, min_epochs = 5 }",
                   epochs=3)
    r = run_cli("run", "--study", small, *flags, "--epochs", "9")
    assert r.returncode == 0, r.stderr  # the run's 9 epochs leave rungs 5, 9
    assert "rungs at epochs 5, 9" in r.stdout
    line = one_line_error(run_cli("run", "--study", _tuned(
        tmp_path, "lr = [0.05, 0.1]\nhalving = { factor = 2, min_epochs = 2 }"), *flags,
        "--epochs", "2"))
    assert "min_epochs 2 leaves no rung before the last (the run's epochs: 2)" in line
    halving = "halving = { factor = 3, min_epochs = 1 }"  # rungs 1, 3, 9
    for grid, share in (("[0.01, 0.1, 1.0]", "11 of the full grid's 27 epochs a variant "
                                             "(41 %)"),
                        ("[0.1]", "9 of the full grid's 9 epochs a variant (100 %)")):
        r = run_cli("run", "--study", _tuned(tmp_path, f"lr = {grid}\n{halving}"), *flags)
        assert r.returncode == 0 and share in r.stdout, r.stdout + r.stderr


def test_a_damaged_record_of_a_finished_run_is_rebuilt_by_the_same_command(
        tmp_path, cifar_dir, tiny_e_results):
    """A truncated summary.json: 0.6's report said "Missing: run `ablation run ...`",
    which said "already done", and status showed it done: no way out. Status now says
    so, and the same command rebuilds the record from the run's history and model,
    training nothing."""
    import json

    from conftest import TINY

    res = tmp_path / "results"
    shutil.copytree(tiny_e_results[0], res)
    (run,) = [d for d in (res / "runs").glob("*/resnet32_e-s1")]
    before = json.loads((run / "summary.json").read_text())
    history = (run / "history.csv").read_text()
    (run / "summary.json").write_text(json.dumps(before)[:200])
    status = run_cli("status", "--results", str(res))
    assert "done (damaged record)" in status.stdout, status.stdout
    r = run_cli("run", "resnet32_e", "--seeds", "2", *TINY, "--data-dir", str(cifar_dir),
                "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "its job rebuilds it from the run's files" in r.stdout
    after = json.loads((run / "summary.json").read_text())
    assert (run / "history.csv").read_text() == history  # nothing trained again
    for key in ("final_test_accuracy", "epochs_done", "params_total", "h5_bytes", "status"):
        assert after[key] == before[key], key
    assert "rebuilt from history.csv" in after["note"]


def test_smaller_mistakes_each_get_their_line(tmp_path):
    """0.6's smaller findings: a class token on a map, attention heads that do not divide
    the channels, `samples` on a grid-only [tune] table, files written owner-only."""
    import os

    from ablation import results, tune
    from ablation.errors import AblationError
    from ablation.models.graph import Counter, OpError
    from ablation.recipe import Recipe

    g = Counter()
    x = g.input((8, 8, 64))
    for call, says in ((lambda: g.class_token(x, "cls"), "make it tokens first"),
                       (lambda: g.attention(g.tokens(x, "t"), 5, "att"),
                        "5 heads do not divide 64 channels")):
        try:
            call()
        except OpError as e:
            assert says in str(e), str(e)
        else:
            raise AssertionError(says)
    try:
        tune.parse({"lr": [0.1, 0.2], "samples": 4, "validation": 10}, Recipe(), "s")
    except AblationError as e:
        assert "samples = 4 draws points from ranges" in str(e)
    else:
        raise AssertionError("samples on a grid")
    path = tmp_path / "summary.json"
    results.atomic_write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~results.UMASK
    assert os.access(path, os.R_OK)
