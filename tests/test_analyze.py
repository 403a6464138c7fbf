"""`ablation analyze`: layer responses of tiny trained runs, checked against an
independent NumPy computation; reruns, --force, damaged and missing models; the
report's figure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

IMAGES = "100"


@pytest.fixture(scope="module")
def analysed(tiny_results, tmp_path_factory):
    """A copy of the tiny runs, one more whose model.h5 is damaged and one trained with
    --no-keep-model, analysed once."""
    res = tmp_path_factory.mktemp("analyze") / "results"
    shutil.copytree(tiny_results, res)
    runs = sorted((res / "runs").glob("*/*"))
    damaged = runs[0].parent / "resnet32_e-s7"
    shutil.copytree(runs[-1], damaged)
    s = json.loads((damaged / "summary.json").read_text())
    (damaged / "summary.json").write_text(json.dumps({**s, "seed": 7}))
    (damaged / "model.h5").write_bytes(b"not an HDF5 file")
    no_model = runs[0].parent / "resnet32_e-s8"
    shutil.copytree(runs[-1], no_model)
    (no_model / "summary.json").write_text(json.dumps({**s, "seed": 8}))
    (no_model / "model.h5").unlink()
    r = run_cli("analyze", "--results", str(res), "--images", IMAGES)
    return res, r


def test_one_row_per_3x3_conv_in_network_order(analysed):
    res, r = analysed
    assert r.returncode == 1, r.stdout + r.stderr  # the damaged run failed, the rest went on
    for run in ("resnet32-s0", "resnet32-s1", "resnet32_e-s0", "resnet32_e-s1"):
        df = pd.read_csv(next((res / "runs").glob(f"*/{run}")) / "responses.csv")
        # ResNet-32: the 3x3 stem and the 30 3x3 convs of its 15 units
        assert len(df) == 31 and list(df["index"]) == list(range(31))
        assert df["layer"].iloc[0] == "stem_conv" and df["layer"].iloc[-1] == "s3b5_conv2"
        assert np.isfinite(df["std"]).all() and (df["std"] > 0).all()
        assert (df["images"] == int(IMAGES)).all()
        # (e): conv1 is read after its BN; conv2 feeds the addition, so its own output
        conv1 = df[df["layer"].str.endswith("_conv1")]
        conv2 = df[df["layer"].str.endswith("_conv2")]
        assert (conv1["point"] == "after BN").all() and (conv2["point"] == "conv output").all()
        assert list(df.loc[df["layer"] == "s2b3_conv1", ["stage", "block"]].iloc[0]) == [2, 3]


def test_damaged_and_missing_models_are_one_line_each(analysed):
    _, r = analysed
    lines = r.stdout.splitlines()
    bad = [line for line in r.stderr.splitlines() if "resnet32_e s7" in line]  # failures
    assert len(bad) == 1 and "FAILED: cannot load" in bad[0] and "model.h5" in bad[0]
    missing = [line for line in lines if "resnet32_e s8" in line]
    assert len(missing) == 1 and "skipped, no model.h5" in missing[0]
    assert "Traceback" not in r.stdout + r.stderr


def test_std_equals_an_independent_numpy_computation(analysed, cifar_dir):
    """The after-BN response of s2b1_conv1 over 250 images — three batches of the
    analyser's 100, the last one short, so its running merge is checked — recomputed
    over all images at once: the conv's output from Keras, then BN in NumPy from the
    layer's own weights. The CLI's own figure (one batch) is checked the same way."""
    import keras

    from ablation import analyze, data

    res, _ = analysed
    run = next((res / "runs").glob("*/resnet32_e-s0"))
    model = keras.models.load_model(str(run / "model.h5"), compile=False)
    ds = data.load("cifar10", cifar_dir, train_limit=10, test_limit=250)
    x = data.normalise(ds.x_test, ds.mean, ds.std)
    assert len(x) > 2 * analyze.BATCH and len(x) % analyze.BATCH
    conv = keras.Model(model.inputs[0], model.get_layer("s2b1_conv1").output)
    bn = model.get_layer("s2b1_bn1")
    gamma, beta, mean, var = (np.asarray(w, dtype=np.float64) for w in bn.get_weights())

    def by_numpy(images):
        y = np.asarray(conv(images, training=False), dtype=np.float64)
        return np.std((y - mean) / np.sqrt(var + bn.epsilon) * gamma + beta)

    ours = analyze.measure(run / "model.h5", x).set_index("layer")
    assert ours.loc["s2b1_conv1", "std"] == pytest.approx(by_numpy(x), rel=1e-4)
    assert ours.loc["s2b1_conv1", "images"] == 250
    small = data.load("cifar10", cifar_dir, train_limit=10, test_limit=int(IMAGES))
    cli = pd.read_csv(run / "responses.csv").set_index("layer")
    assert cli.loc["s2b1_conv1", "std"] == pytest.approx(
        by_numpy(data.normalise(small.x_test, small.mean, small.std)), rel=1e-4)


def test_reruns_skip_and_force_recomputes(analysed):
    res, _ = analysed
    r = run_cli("analyze", "resnet32", "--results", str(res), "--images", IMAGES)
    assert r.stdout.count("already analysed") == 2, r.stdout
    path = next((res / "runs").glob("*/resnet32-s0")) / "responses.csv"
    path.write_text("damaged")
    r = run_cli("analyze", "resnet32", "--results", str(res), "--images", IMAGES, "--force")
    assert r.returncode == 0 and "31 3x3 layers" in r.stdout, r.stdout + r.stderr
    assert len(pd.read_csv(path)) == 31


def test_report_adds_the_response_figure(analysed, tmp_path):
    res, _ = analysed
    out = tmp_path / "reports"
    r = run_cli("report", "--results", str(res), "--out", str(out))
    assert r.returncode == 0, r.stderr
    md = (out / "README.md").read_text()
    block = md.split("### 2.")[1].split("### 3.")[0]
    assert "2-refactor-responses.png" in block
    assert "resnet32: " in block and "with depth (slope" in block and "over 31 layers" in block
    assert next(out.rglob("2-refactor-responses.png")).stat().st_size > 10_000


@pytest.mark.parametrize("name,count", [
    ("resnet32_a", 31), ("resnet32_b", 31), ("resnet32_d", 31), ("resnet34", 29),
    ("resnet50", 17), ("resnet152", 47)])
def test_3x3_layers_are_found_from_the_graph(name, count):
    """The stem, then one or two 3x3 convs per unit (one in a bottleneck), by kernel size;
    read after BN exactly where a BN is the conv's only consumer."""
    import keras

    from ablation import build_model
    from ablation.analyze import AFTER_BN, response_points

    m = build_model(name)
    points = response_points(m)
    assert len(points) == count
    assert [p[0] for p in points] == [layer.name for layer in m.layers if isinstance(
        layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)]
    for _, measured, point in points:
        assert (point == AFTER_BN) == isinstance(m.get_layer(measured),
                                                 keras.layers.BatchNormalization)
    if name == "resnet32_b":  # conv2 feeds the addition; BN comes after the sum
        assert dict((p[0], p[2]) for p in points)["s2b1_conv2"] == "conv output"
    if name == "resnet32_a":  # conv2 feeds its BN
        assert dict((p[0], p[1]) for p in points)["s2b1_conv2"] == "s2b1_bn2"
