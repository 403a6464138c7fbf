"""`ablation bench`: times the run path (and the blog's Keras-2 path) in fresh processes."""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import run_cli


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                    reason="the baseline extra (tf_keras) is not installed")
def test_bench_prints_images_per_second_projection_and_the_blog_ratio(cifar_dir, tmp_path):
    """One measurement pair (one fresh process a side): the run path's img/s and the
    study's projected time on the subset asked for, and with --baseline the blog's
    Keras-2 path beside it; the speed is kept for the dry run's projection, which says
    where it came from."""
    res = tmp_path / "results"
    r = run_cli("bench", "resnet32_e", "--steps", "2", "--batch-size", "8", "--repeats", "1",
                "--baseline", "--data-dir", str(cifar_dir), "--train-limit", "2048",
                "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"resnet32_e: (\d+) img/s \(median\); 200-epoch recipe on 2,048 images ≈ "
                  r"([\d.]+) (h|min|s)", r.stdout)
    assert m and int(m.group(1)) > 0, r.stdout
    assert "blog Keras-2 path" in r.stdout
    assert re.search(r"median ratio ablation/blog = \d+\.\d\d", r.stdout), r.stdout
    assert (res / "speeds.json").is_file()
    study = tmp_path / "t.toml"
    study.write_text('name = "t"\n[recipe]\nepochs = 9\n[tune]\nlr = [0.01, 0.1, 1.0]\n'
                     'halving = 3\nvalidation = 64\n[[comparison]]\ntitle = "x"\n'
                     'variants = ["resnet32_e"]\n')
    dry = run_cli("run", "--study", str(study), "--all", "--dry-run", "--train-limit", "2048",
                  "--test-limit", "64", "--results", str(res))
    assert dry.returncode == 0, dry.stderr
    assert "img/s (`ablation bench` here, training steps only)" in dry.stdout, dry.stdout


def test_bench_bad_input_is_one_line():
    r = run_cli("bench", "resnet99")
    assert r.returncode == 2 and "unknown variant 'resnet99'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("bench", "--steps", "1")
    assert r.returncode == 2 and "--steps: must be at least 2" in r.stderr


def test_median_ratio_pairs_each_figure_with_its_own_baseline():
    from ablation.bench import median_ratio

    # pairwise ratios 2.0, 1.0, 1.5: median 1.5; the ratio of medians would say 1.33
    assert median_ratio([200, 100, 300], [100, 100, 200]) == pytest.approx(1.5)
    assert median_ratio([90], [100]) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        median_ratio([1, 2], [1])


def test_study_cost_projection_scales_by_multiply_adds():
    from ablation import registry
    from ablation.bench import GPU_REF_VARIANT, GPU_RESNET32_EPOCH_S, project
    from ablation.models import count_params
    from ablation.study import load_study

    got = project({"resnet32_e": 100.0, "he_resnet20": 200.0})
    assert set(got) == {"blog", "he2015"}  # identity2016 has no measured variant
    # the blog: 200 epochs of 50,000 images per variant at 100 img/s x macs(32e)/macs(v)
    blog = load_study("blog")
    ref = count_params("resnet32_e").macs
    want = sum(200 * 50_000 * count_params(v).macs / (100.0 * ref) for v in blog.variant_names)
    assert got["blog"][0] == pytest.approx(want) and got["blog"][2] == ["resnet32_e"]
    assert got["blog"][1] == pytest.approx(sum(
        200 * GPU_RESNET32_EPOCH_S * count_params(v).macs / count_params(GPU_REF_VARIANT).macs
        for v in blog.variant_names))
    # he2015 from its own variant, with ResNet-110's own recipe (its warm-up epoch)
    he = load_study("he2015")
    r20 = count_params("he_resnet20").macs
    want = sum(he.recipe().replace(**dict(registry.get(v).recipe)).epochs * 50_000
               * count_params(v).macs / (200.0 * r20) for v in he.variant_names)
    assert got["he2015"][0] == pytest.approx(want)
    # twice the speed, half the time
    assert project({"resnet32_e": 200.0})["blog"][0] == pytest.approx(got["blog"][0] / 2)


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                    reason="the baseline extra (tf_keras) is not installed")
def test_the_blog_path_trains_and_the_side_by_side_pairs_it_by_seed(cifar_dir, tmp_path,
                                                                      tiny_e_results):
    """The blog's own path trains the blog's recipe into a run folder (a finished one is
    not trained again); the report pairs its seeds with the harness's and gives the
    paired t interval (SciPy's, checked against the textbook formula)."""
    import json
    import math
    import shutil
    import subprocess

    from ablation.protocol import module_command
    from ablation.report import parity

    res = tmp_path / "results"
    shutil.copytree(tiny_e_results[0], res)  # the harness's: resnet32_e, TINY, seeds 0, 1
    out = res / "baseline" / "resnet32_e-s0"
    cmd = module_command("ablation.baseline", "--epochs", "2", "--seed", "0",
                         "--batch-size", "32", "--train-limit", "128", "--test-limit",
                         "64", "--data-dir", str(cifar_dir), "--out", str(out))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["epochs"] == 2 and 0 <= s["final_test_accuracy"] <= 1
    assert len((out / "history.csv").read_text().splitlines()) == 3
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout.splitlines()[-1]) == s  # finished: not trained again
    # seed 1's blog-path run, for the pairing: seed 0's files under seed 1, its accuracy
    # moved (training it too would test nothing more, at a job's cost)
    one = res / "baseline" / "resnet32_e-s1"
    shutil.copytree(out, one)
    (one / "summary.json").write_text(json.dumps({
        **s, "seed": 1, "final_test_accuracy": s["final_test_accuracy"] * 0.9}))
    df = parity.frame(res)
    assert list(df["seed"]) == [0, 1]
    md = parity.write(res, tmp_path / "report").read_text()
    mean, low, high = parity.interval(100 * df["difference"])
    d = 100 * df["difference"]
    half = 12.706 * d.std(ddof=1) / math.sqrt(2)  # t(0.975, 1 df)
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-3)
    assert f"{mean:+.2f} points, 95 % interval [{low:+.2f}, {high:+.2f}]" in md
