"""Where a run ran: versions, device, and the code's git commit (airbench's lesson:
keep the code's identity beside the numbers it produced)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    # only for a source checkout of the package itself (an installed copy has no .git)
    if not (_REPO / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_diff() -> str | None:
    """The uncommitted change to the package's code (what a dirty run ran), or None."""
    return _git("diff", "HEAD", "--", "ablation") or None


def git_state() -> dict:
    """The project's commit and whether the work tree differed from it."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "ablation")
    return {"git_commit": commit.strip(), "git_dirty": bool(status and status.strip())}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The accelerator the backend will use, else the CPU model."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            d = jax.devices()[0]
            if d.platform != "cpu":
                return f"{d.device_kind} (jax {d.platform})"
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return details.get("device_name", gpus[0].name)
    except Exception:  # a device query must never fail a run
        pass
    return f"{cpu_name()} ({os.cpu_count()} CPUs)"


def describe() -> dict:
    """Versions and machine, recorded in every summary.json."""
    import keras

    backend = keras.backend.backend()
    info = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras": keras.__version__,
        "backend": backend,
        "device": device_name(),
    }
    mod = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if mod and mod in sys.modules:
        info["backend_version"] = getattr(sys.modules[mod], "__version__", None)
    info.update(git_state())
    return info
