"""A job's process: `python -m ablation.job RUN_DIR`, one per job, started by an executor.

It picks the Keras backend before Keras loads (`ablation.backend`), checks that a job
given a GPU sees one, then trains (`ablation.training.train`). Every way it can end is
an exit code of `ablation.protocol.Exit` and, past the first line, a summary.json with
the reason, so a crash or an out-of-memory kill takes down one job, never the queue.
This module imports no Keras itself: a missing backend is one line, not a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ablation import backend, devices, parallel
from ablation.errors import AblationError
from ablation.protocol import Exit, JobState
from ablation.store import RunFolder


def _watch_parent() -> None:
    """Exit if the runner that started us dies (SIGKILL leaves no chance to tell us),
    so an orphan never trains on while another runner reclaims the job."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(Exit.INTERRUPTED)

    threading.Thread(target=watch, daemon=True).start()


def _fail(run_dir: Path, reason: str) -> int:
    print(f"FAILED: {reason}", flush=True)
    RunFolder(run_dir).record_outcome(JobState.FAILED, reason)
    return Exit.FAILED


def run(run_dir: Path) -> int:
    """Choose the backend, check the device, train. Returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # a job across N devices without GPUs: JAX's N host devices, set before JAX starts
    # (ablation.parallel; a job given GPUs is left as it is)
    spread = RunFolder(run_dir).config().devices
    os.environ.update(parallel.cpu_devices_env(dict(os.environ), spread))
    try:
        name = backend.choose()
        on_gpu = backend.require_given_gpu(name)
        backend.keep_tensorflow_off_gpu(name)
    except backend.NoDevice as e:
        print(f"NOT STARTED: {e}", flush=True)
        RunFolder(run_dir).record_outcome(JobState.INTERRUPTED, str(e), backend=name,
                                          **devices.recorded())
        return Exit.NO_DEVICE
    from ablation import training  # Keras loads here, on the backend chosen above

    return training.train(run_dir, on_gpu)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ablation.job RUN_DIR", file=sys.stderr)
        return Exit.USAGE
    _watch_parent()
    # SIGTERM (from the runner on Ctrl-C, Ray cancelling, Slurm preempting or cancelling)
    # and Slurm's early warnings (SIGUSR1/2 before a time limit) unwind like Ctrl-C: the
    # job stops at a safe point, its last finished epoch in its snapshot
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.default_int_handler)
    run_dir = Path(argv[0])
    try:
        return run(run_dir)
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is backed up", flush=True)
        return Exit.INTERRUPTED
    except AblationError as e:
        if os.environ.get("ABLATION_DEBUG"):  # the whole chain into train.log
            traceback.print_exc()
        return _fail(run_dir, str(e))
    except Exception as e:  # OOM, a bug, a bad variant: the queue goes on
        traceback.print_exc()
        return _fail(run_dir, f"{type(e).__name__}: {e}".splitlines()[0][:500])


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))  # skip interpreter teardown: TF's data threads can stall it
