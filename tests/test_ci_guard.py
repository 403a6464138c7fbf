"""In CI nothing passes by skipping: with the CI variable set, a test that would skip for
missing data (or a missing optional package) fails, naming what is missing."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

DATA_TEST = "tests/test_data.py::test_real_cifar10_loads_with_the_blog_statistics"


def _pytest(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["ABLATION_DATA_DIR"] = str(tmp_path)  # set, and holding no CIFAR-10: data hidden
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n0", "-p",
                           "no:cacheprovider", DATA_TEST], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_hidden_data_skips_on_a_users_machine_and_fails_in_ci(tmp_path):
    user = _pytest(tmp_path, ci=False)
    assert user.returncode == 0 and "1 skipped" in user.stdout, user.stdout
    ci = _pytest(tmp_path, ci=True)
    # a fixture's skip happens in setup: pytest counts the failure there as an error
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout
    assert "nothing may skip in CI" in ci.stdout and "real CIFAR-10 not found" in ci.stdout
