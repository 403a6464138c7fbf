"""Shared fixtures: where the real CIFAR-10 lives, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def find_cifar10() -> Path | None:
    """ABLATION_DATA_DIR, else ../shared/data beside the checkout."""
    for cand in (os.environ.get("ABLATION_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if cand and (Path(cand) / "cifar-10-batches-py" / "test_batch").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    found = find_cifar10()
    if found is None:
        pytest.skip("real CIFAR-10 not found: set ABLATION_DATA_DIR to the folder holding "
                    "cifar-10-batches-py/ (or place it at ../shared/data)")
    return found


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `ablation ...` as a user would, in a fresh process."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
