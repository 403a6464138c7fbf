"""`ablation evaluate`: the tiny trained runs on generated corruptions, on a released
CIFAR-10-C layout and on an extra test set (CIFAR-10.1's layout), from the CLI; reruns,
damaged files, bad input; the report's section and its verdicts."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error, run_cli

from ablation.data import corruptions as C
from ablation.errors import AblationError

SEVERITIES = "1,5"


@pytest.fixture(scope="module")
def evaluated(tiny_results, cifar_dir, tmp_path_factory):
    """A copy of the tiny runs (resnet32 and resnet32_e, 2 seeds, 64 test images each),
    evaluated at two severities and on a 200-image extra set in CIFAR-10.1's layout."""
    from ablation.data import sources

    root = tmp_path_factory.mktemp("evaluate")
    res = root / "results"
    shutil.copytree(tiny_results, res, ignore=shutil.ignore_patterns("tensorboard"))
    x, y = sources.read_cifar("cifar10", cifar_dir)[2:4]
    np.save(root / "extra_v6_data.npy", np.ascontiguousarray(x[-200:]))
    np.save(root / "extra_v6_labels.npy", y[-200:].astype(np.int64))
    r = run_cli("evaluate", "--results", str(res), "--data-dir", str(cifar_dir),
                "--severities", SEVERITIES, "--test-set",
                f"c101={root / 'extra_v6_data.npy'}")
    return root, res, r, (x, y)


def _frame(res, run: str) -> pd.DataFrame:
    return pd.read_csv(next((res / "runs").glob(f"*/{run}")) / "robustness.csv",
                       keep_default_na=False)


def test_every_run_evaluated_clean_as_it_trained(evaluated):
    _, res, r, _ = evaluated
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 run(s), 32 test set(s) each" in r.stdout and "ETA" in r.stdout
    for run in ("resnet32-s0", "resnet32-s1", "resnet32_e-s0", "resnet32_e-s1"):
        df = _frame(res, run)
        folder = next((res / "runs").glob(f"*/{run}"))
        record = json.loads((folder / "summary.json").read_text())
        clean = df[df["test_set"] == "clean"]
        # the run's own 64 test images: the accuracy its training recorded
        assert clean["images"].iloc[0] == record["test_images"] == 64
        assert clean["accuracy"].iloc[0] == pytest.approx(record["final_test_accuracy"],
                                                          abs=1e-6)
        corr = df[df["test_set"] == "corrupted"]
        assert sorted(set(corr["corruption"])) == sorted(C.NAMES)
        assert sorted(set(corr["severity"])) == [1, 5] and len(corr) == 30
        assert set(corr["source"]) == {"generated v1 seed 0, procedural frost"}
        extra = df[df["test_set"] == "c101"]
        assert extra["images"].iloc[0] == 200 and 0 <= extra["accuracy"].iloc[0] <= 1


def test_generated_images_are_cached_and_shared(evaluated):
    _, res, _, (x, _) = evaluated
    cached = list((res / "corruptions").glob("64-*/fog-5.npy"))
    assert len(cached) == 1  # four runs, one test subset: one set of images
    from ablation.data import balanced_subset

    y = np.load(cached[0])
    assert y.shape == (64, 32, 32, 3)
    keys = balanced_subset(np.asarray(evaluated[3][1]), 64, 10)
    np.testing.assert_array_equal(y, C.corrupt(np.ascontiguousarray(x[keys]), "fog", 5,
                                               keys))


def test_a_rerun_does_only_what_is_missing_or_damaged(evaluated, cifar_dir):
    root, res, _, _ = evaluated
    folder = next((res / "runs").glob("*/resnet32_e-s0"))
    before = (folder / "robustness.csv").read_text()
    (folder / "robustness.csv").write_text("not,a\nrobustness file")
    again = run_cli("evaluate", "--results", str(res), "--data-dir", str(cifar_dir),
                    "--severities", SEVERITIES, "--test-set",
                    f"c101={root / 'extra_v6_data.npy'}", "resnet32_e")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already evaluated") == 1  # s1; s0's file was damaged:
    assert "ignoring damaged" in again.stderr and "robustness.csv" in again.stderr
    after = pd.read_csv(folder / "robustness.csv", keep_default_na=False)
    was = pd.read_csv(io.StringIO(before), keep_default_na=False)
    # evaluated again, to the same numbers (the same images, the same model)
    cols = ["test_set", "corruption", "severity", "images", "accuracy", "source"]
    pd.testing.assert_frame_equal(after[cols], was[cols])


def test_the_report_has_the_section_and_its_verdicts(evaluated, tmp_path):
    _, res, _, _ = evaluated
    r = run_cli("report", "--results", str(res), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "rep" / "README.md").read_text()
    section = text[text.index("#### Robustness"):]
    assert "mCE vs resnet32 %" in section and "c101 acc %" in section
    assert "Verdicts on the corrupted accuracy" in section
    assert "Verdicts on the c101 accuracy" in section
    assert "severities 1, 5" in section and "procedural frost" in section
    assert list((tmp_path / "rep").glob("*/*-robustness.png"))
    detail = pd.read_csv(next((tmp_path / "rep").glob("*/2-refactor-robustness.csv")),
                         keep_default_na=False)
    fog5 = detail[(detail["variant"] == "resnet32_e") & (detail["corruption"] == "fog")
                  & (detail["severity"] == 5)]
    want = [_frame(res, f"resnet32_e-s{s}").query("corruption == 'fog' and severity == 5")
            ["accuracy"].iloc[0] for s in (0, 1)]
    assert fog5["seeds"].iloc[0] == 2 and fog5["accuracy"].iloc[0] == pytest.approx(
        np.mean(want), abs=1e-6)
    # the reference's own normalised mCE is 100 on average over its seeds
    row = next(line for line in section.splitlines() if line.startswith("| resnet32 "))
    assert "| 100.0 ±" in row


def test_released_files_are_read_at_the_runs_indices(evaluated, cifar_dir, tmp_path):
    """A folder in the released layout (<corruption>.npy: the test set once per severity;
    labels.npy), here holding the clean images themselves, written sparse: every
    corrupted accuracy is then the clean one."""
    _, src, _, (x, y) = evaluated
    res = tmp_path / "results"
    shutil.copytree(src, res, ignore=shutil.ignore_patterns("robustness.csv", "corruptions",
                                                          "tensorboard"))
    released = tmp_path / "CIFAR-10-C"
    released.mkdir()
    from ablation.data import balanced_subset

    keys = balanced_subset(np.asarray(y), 64, 10)
    np.save(released / "labels.npy", np.tile(np.asarray(y, np.uint8), 5))
    for name in C.NAMES:
        arr = np.lib.format.open_memmap(released / f"{name}.npy", "w+", np.uint8,
                                        (50_000, 32, 32, 3))
        for s in range(5):
            arr[s * 10_000 + keys] = x[keys]
        del arr
    r = run_cli("evaluate", "resnet32_e", "--results", str(res), "--data-dir", str(cifar_dir),
                "--severities", "2", "--corruptions", str(released))
    assert r.returncode == 0, r.stdout + r.stderr
    df = _frame(res, "resnet32_e-s0")
    clean = df.loc[df["test_set"] == "clean", "accuracy"].iloc[0]
    corr = df[df["test_set"] == "corrupted"]
    assert len(corr) == 15 and (corr["accuracy"] == clean).all()
    assert corr["source"].iloc[0] == f"released {released.resolve()}"


def test_released_files_of_another_test_set_are_refused(tmp_path):
    from ablation import robustness

    test = robustness.TestImages(np.zeros((2, 32, 32, 3), np.uint8), np.array([3, 4]),
                                 np.array([0, 5]), 10, (32, 32), 1.0, (0.0,) * 3, (1.0,) * 3,
                                 "d")
    np.save(tmp_path / "labels.npy", np.zeros(50, np.uint8))
    np.save(tmp_path / "fog.npy", np.zeros((50, 32, 32, 3), np.uint8))
    with pytest.raises(AblationError, match="labels differ from the runs' test set"):
        robustness._released(tmp_path, "fog", 2, test)
    with pytest.raises(AblationError, match=r"no snow\.npy"):
        robustness._released(tmp_path, "snow", 2, test)
    np.save(tmp_path / "fog.npy", np.zeros((40, 32, 32, 3), np.uint8))
    with pytest.raises(AblationError, match="needs 5 x 10"):
        robustness._released(tmp_path, "fog", 2, test)


def test_extra_test_sets_in_each_layout(tmp_path):
    from PIL import Image

    from ablation import robustness

    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "a.npz", x_test=x, y_test=y)
    np.savez(tmp_path / "b.npz", data=x, labels=y)
    np.save(tmp_path / "c_data.npy", x)
    np.save(tmp_path / "c_labels.npy", y)
    for k, name in enumerate(("cat", "dog", "emu")):  # class folders, in name order
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in np.flatnonzero(y == k):
            Image.fromarray(x[i]).save(tmp_path / "d" / name / f"{i}.png")
    for path in ("a.npz", "b.npz", "c_data.npy"):
        got_x, got_y = robustness.read_test_set(tmp_path / path, "t")
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
    got_x, got_y = robustness.read_test_set(tmp_path / "d", "t")
    order = np.argsort(y, kind="stable")
    np.testing.assert_array_equal(got_x, x[order])
    np.testing.assert_array_equal(got_y, y[order])
    np.savez(tmp_path / "e.npz", images=x)
    for path, says in (("e.npz", "needs arrays x_test and y_test"),
                       ("f_data.npy", "no file or folder"),
                       ("a.txt", "no file or folder")):
        with pytest.raises(AblationError, match=says):
            robustness.read_test_set(tmp_path / path, "t")
    np.save(tmp_path / "g_data.npy", x)
    with pytest.raises(AblationError, match=r"no labels file g_labels\.npy"):
        robustness.read_test_set(tmp_path / "g_data.npy", "t")
    test = robustness.TestImages(x, y, np.arange(6), 6, (32, 32), 1.0, (0.0,) * 3,
                                 (1.0,) * 3, "d")
    with pytest.raises(AblationError, match=r"labels 0\.\.2, the runs know 2 classes"):
        robustness._extra("a", str(tmp_path / "a.npz"), test, 2, {})


def test_bad_flags_are_one_line(tmp_path):
    for args, says in [
        (["--severities", "0"], "--severities: must be at least 1"),
        (["--test-set", "nameless"], "expected NAME=PATH"),
        (["--corruptions", str(tmp_path / "nowhere")], "no folder"),
    ]:
        r = run_cli("evaluate", "--results", str(tmp_path), *args)
        assert r.returncode == 2 and says in one_line_error(r), (args, r.stderr)


def test_the_mce_three_ways_on_known_numbers():
    """Two corruptions at two severities, errors chosen by hand: the plain mCE, the one
    normalised by the reference's errors (ImageNet-C's, the reference in AlexNet's
    place) and the relative one (the error added to the clean error)."""
    from ablation.report.robustness import per_run

    def rows(variant, clean_err, errs):
        out = [{"variant": variant, "seed": 0, "test_set": "clean", "corruption": "",
                "severity": 0, "images": 100, "accuracy": 1 - clean_err, "source": ""}]
        for (c, s), e in errs.items():
            out.append({"variant": variant, "seed": 0, "test_set": "corrupted",
                        "corruption": c, "severity": s, "images": 100, "accuracy": 1 - e,
                        "source": "g"})
        return out

    ref = {("fog", 1): 0.2, ("fog", 2): 0.4, ("snow", 1): 0.3, ("snow", 2): 0.5}
    new = {("fog", 1): 0.1, ("fog", 2): 0.3, ("snow", 1): 0.3, ("snow", 2): 0.7}
    df = pd.DataFrame(rows("ref", 0.1, ref) + rows("new", 0.05, new))
    got, notes, grid = per_run(df, "ref")
    assert not notes and len(grid) == 4
    r, n = got.set_index("variant").loc["ref"], got.set_index("variant").loc["new"]
    assert r["mce"] == pytest.approx(35.0) and n["mce"] == pytest.approx(35.0)
    # fog 0.4 / 0.6, snow 1.0 / 0.8: mean 0.958...
    assert n["mce_norm"] == pytest.approx(100 * (0.4 / 0.6 + 1.0 / 0.8) / 2)
    assert r["mce_norm"] == pytest.approx(100) and r["rel_mce"] == pytest.approx(100)
    # added error: fog (0.4 - 2 x 0.05) / (0.6 - 2 x 0.1), snow (1.0 - 0.1) / (0.8 - 0.2)
    assert n["rel_mce"] == pytest.approx(100 * (0.3 / 0.4 + 0.9 / 0.6) / 2)
    assert n["corrupted"] == pytest.approx(0.65) and n["clean"] == pytest.approx(0.95)
    # a run lacking part of the grid has no corrupted numbers, and is said
    partial = df[~((df["variant"] == "new") & (df["corruption"] == "snow")
                   & (df["severity"] == 2))]
    got, notes, grid = per_run(partial, "ref")
    assert len(grid) == 3 and notes == ["corrupted sets beyond the 3 every run has"]
    assert got.set_index("variant").loc["new", "mce"] == pytest.approx(100 * (0.2 + 0.3) / 2)
    # pooled on the study's severities only
    got, notes, grid = per_run(df, "ref", (2,))
    assert grid == {("fog", 2), ("snow", 2)} and not notes
    assert got.set_index("variant").loc["ref", "mce"] == pytest.approx(45.0)


def test_ctrl_c_and_sigterm_stop_between_batches_never_inside_python():
    """The signal is noted and raised at the next check (between batches), never from
    the handler: a KeyboardInterrupt raised there can land in a garbage collector's
    callback, where Python ignores it and the evaluation went on."""
    import signal

    from ablation import robustness
    from ablation.protocol import Terminated

    class Model:
        def __init__(self, sig, at):
            self.calls, self.sig, self.at = 0, sig, at

        def predict_on_batch(self, x):
            self.calls += 1
            if self.calls == self.at:
                signal.raise_signal(self.sig)  # delivered here, acted on at the next check
            return np.eye(10)[np.zeros(len(x), int)]

    x, y = np.zeros((2000, 1)), np.zeros(2000, int)
    # the dispositions a terminal's foreground command has, whatever the test runner's
    # worker inherited (an xdist worker ignores Ctrl-C)
    inherited = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for sig, raised in ((signal.SIGINT, KeyboardInterrupt),
                            (signal.SIGTERM, Terminated)):
            before = signal.getsignal(sig)
            with robustness.Stop() as stop:
                model = Model(sig, at=2)
                with pytest.raises(raised):
                    robustness.accuracy(model, x, y, stop.check)
                assert model.calls == 2  # the batch in progress finished; no third began
            assert signal.getsignal(sig) is before
        with robustness.Stop() as stop:  # no signal: every batch
            assert robustness.accuracy(Model(signal.SIGINT, at=0), x, y, stop.check) == 1
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup: it stays ignored
        with robustness.Stop() as stop:
            model = Model(signal.SIGINT, at=2)
            assert robustness.accuracy(model, x, y, stop.check) == 1 and model.calls == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for sig, old in inherited.items():
            signal.signal(sig, old)
