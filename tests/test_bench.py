"""`ablation bench`: times the run path (and the blog's Keras-2 path) in fresh processes."""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import run_cli


def test_bench_prints_images_per_second_and_projection():
    r = run_cli("bench", "resnet32_e", "--steps", "2", "--batch-size", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"resnet32_e: (\d+) img/s \(median\); 200-epoch recipe ≈ ([\d.]+) (h|min)",
                  r.stdout)
    assert m and int(m.group(1)) > 0, r.stdout


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                    reason="the baseline extra (tf_keras) is not installed")
def test_bench_baseline_alternates_and_reports_a_ratio(cifar_dir):
    r = run_cli("bench", "resnet32_e", "--steps", "2", "--batch-size", "8", "--repeats", "1",
                "--baseline", "--data-dir", str(cifar_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "blog Keras-2 path" in r.stdout
    assert re.search(r"median ratio ablation/blog = \d+\.\d\d", r.stdout), r.stdout


def test_bench_bad_input_is_one_line():
    r = run_cli("bench", "resnet99")
    assert r.returncode == 2 and "unknown variant 'resnet99'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("bench", "--steps", "1")
    assert r.returncode == 2 and "--steps: must be at least 2" in r.stderr
