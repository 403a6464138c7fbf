"""A job's side of the device: which Keras backend it trains on, whether it sees the
GPU it was given, and the compile and precision settings it trains with.

Keras reads its backend once, when it is first imported, so `choose()` runs before
that. KERAS_BACKEND wins when set. Otherwise TensorFlow is used when it imports, and
JAX when it does not (a GPU image that ships JAX but not TensorFlow): no flag needed.

A job given a GPU that it cannot see stops with `NoDevice` (the job's process exits
`Exit.NO_DEVICE`) before any data is read: TensorFlow installed without its CUDA
libraries would otherwise train on the CPU, quietly and about 50x slower.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from ablation.errors import AblationError
from ablation.protocol import JobEnv

INSTALL_HINT = ("pip install -e '.[tf]' (or '.[jax]'; on a GPU machine '.[tf-gpu]' or "
                "'.[jax-gpu]')")
GPU_STEPS_PER_EXECUTION = 32  # most steps per host sync on a GPU (steps_per_execution)

note: str | None = None  # why the backend is not the default, for the job's log


class NoDevice(AblationError):
    """Given a GPU, the job sees none: the machine's problem, not the job's."""


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a bad path
        return False


def _configured() -> str | None:
    """A backend the user wrote into keras.json (Keras writes "tensorflow" there itself
    on first import, so that value says nothing)."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        name = json.loads((home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name != "tensorflow" else None


# What TensorFlow's C++ side logs to stderr while it imports, whatever TF_CPP_MIN_LOG_LEVEL
# says (absl's INFO and WARNING lines: oneDNN, missing CUDA stubs): noise around the one
# line a command prints on a mistake
_IMPORT_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is "
                           r"called are written to STDERR|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
                           r"|To enable the following instructions: .* rebuild TensorFlow")


@contextlib.contextmanager
def _held_stderr():
    """Hold what is written to file descriptor 2 (C++ included), then write back the
    lines that are not TensorFlow's import noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(True)
                    if not _IMPORT_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports TensorFlow, the first time anything asks for it, with its start-up log
    lines held back (`_held_stderr`); everything else it prints, and every error, comes
    through."""

    def __init__(self):
        self.loader = None

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" or self.loader is not None:
            return None
        sys.meta_path.remove(self)  # once: find the real spec, and never again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with _held_stderr():
            self.loader.exec_module(module)


def quiet_tensorflow_import() -> None:
    """Hold back TensorFlow's start-up log lines in this process (import-free: only a
    finder that waits for TensorFlow's import)."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def prefer_installed() -> None:
    """Cheap, import-free half of `choose` for any process that imports the package:
    with TensorFlow not installed at all and JAX installed, Keras must load JAX."""
    if (not os.environ.get("KERAS_BACKEND") and "keras" not in sys.modules
            and not _configured() and not _has("tensorflow") and _has("jax")):
        os.environ["KERAS_BACKEND"] = "jax"


def choose() -> str:
    """Set the Keras backend before Keras loads, and return its name."""
    global note
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    name = os.environ.get("KERAS_BACKEND") or _configured()
    if name:
        return name
    try:
        import tensorflow  # noqa: F401  (Keras' default backend; it would import it anyway)

        return "tensorflow"
    except Exception as e:  # not installed, blocked, or broken (CUDA libraries, numpy)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if _has("jax"):
        os.environ["KERAS_BACKEND"] = "jax"
        note = f"TensorFlow cannot be imported ({why}): training on JAX"
        return "jax"
    raise AblationError(f"no Keras backend: TensorFlow cannot be imported ({why}) and JAX "
                        f"is not installed; install one: {INSTALL_HINT}")


def keep_tensorflow_off_gpu(backend: str) -> bool:
    """In a job on another backend, make TensorFlow (when installed) see no GPU; return
    whether it is there to be told. Keras' `set_random_seed` and tensorboard's file
    writer import TensorFlow when they can, and TensorFlow's first use reserves memory
    on every GPU it sees: beside a JAX job that preallocates, an out-of-memory error."""
    if backend == "tensorflow" or not _has("tensorflow"):
        return False
    try:
        import tensorflow as tf
    except Exception:  # present but broken: nothing will use it
        return False
    tf.config.set_visible_devices([], "GPU")
    return True


def gpus_seen(backend: str) -> int:
    """How many GPUs the backend can use in this process."""
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def _why_no_gpu(backend: str) -> str:
    """The likeliest cause and its remedy, in a few words."""
    driver = ("the NVIDIA driver was not found or does not match (check that nvidia-smi "
              "works in this environment)")
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.test.is_built_with_cuda():
            return "this TensorFlow has no CUDA support: pip install -e '.[tf-gpu]'"
        if not _has("nvidia.cudnn"):
            return ("TensorFlow's CUDA libraries are not installed: pip install -e "
                    "'.[tf-gpu]' (tensorflow[and-cuda])")
        return driver
    if backend == "jax":
        if not any(_has(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
            return "this JAX has no CUDA plugin: pip install -e '.[jax-gpu]' (jax[cuda12])"
        return driver
    return driver


def require_given_gpu(backend: str) -> bool:
    """Whether the job runs on a GPU. Raises NoDevice when it was given one (JobEnv.GPU)
    and sees none: it must never fall back to the CPU in silence."""
    given = os.environ.get(JobEnv.GPU)
    seen = gpus_seen(backend)
    if given and 0 < seen < len(given.split(",")):
        raise NoDevice(f"given GPUs {given}, {backend} sees {seen}; nothing was trained, "
                       "rerun the same command once it is fixed")
    if given and not seen:
        raise NoDevice(f"given GPU {given} (CUDA_VISIBLE_DEVICES="
                       f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}), {backend} sees no GPU: "
                       f"{_why_no_gpu(backend)}; nothing was trained, rerun the same command "
                       "once it is fixed")
    return seen > 0


def set_matmul_precision(backend: str, precision: str, on_gpu: bool = True) -> str:
    """Make `fp32` true float32 and `tf32` TensorFloat-32, and return what float32 matmuls
    and convolutions now use. Both backends run float32 as TF32 on Ampere and later GPUs
    by default; the blog's GTX 1080 Ti had no TF32, so `fp32` turns it off. Under bf16 and
    fp16 the float32 remainder keeps the backend's default. A CPU has no TF32: there it
    is float32 whatever the flags say."""
    said = _matmul_precision(backend, precision)
    return said if on_gpu else "float32"


def _matmul_precision(backend: str, precision: str) -> str:
    if backend == "tensorflow":
        import tensorflow as tf

        if precision in ("fp32", "tf32"):
            tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
        return "tf32" if tf.config.experimental.tensor_float_32_execution_enabled() else "float32"
    if backend == "jax":
        import jax

        if precision in ("fp32", "tf32"):
            jax.config.update("jax_default_matmul_precision",
                              "tensorfloat32" if precision == "tf32" else "float32")
        return str(jax.config.jax_default_matmul_precision or "default (tf32 on GPUs)")
    return "default"


def jit_compile(backend: str, on_gpu: bool) -> bool:
    """XLA or not, chosen rather than left to Keras' "auto". JAX always compiles (False
    there means op by op). TensorFlow: XLA on a GPU, where it fuses each BN, ReLU and
    addition into its convolution's neighbours; not on a CPU, where TensorFlow's own
    oneDNN kernels and the fused layers of ablation.layers are faster
    (docs/performance.md)."""
    if backend == "jax":
        return True
    return bool(on_gpu) if backend == "tensorflow" else False


def steps_per_execution(on_gpu: bool, steps_per_epoch: int) -> int:
    """Training steps per host-device round trip: on a GPU it runs that far ahead of the
    per-batch callbacks; a CPU host syncs every step. Up to JobEnv.STEPS_PER_EXECUTION if
    set, else up to GPU_STEPS_PER_EXECUTION on a GPU and 1 on a CPU, and always a divisor
    of the epoch's steps: Keras runs whole executions, so one that crossed an epoch's end
    would train on the next epoch's batches (the blog's 391 steps = 17 × 23: 23). The
    per-epoch records are the same either way."""
    most = _env_count(JobEnv.STEPS_PER_EXECUTION) or (GPU_STEPS_PER_EXECUTION if on_gpu else 1)
    return max(k for k in range(1, min(most, steps_per_epoch) + 1) if steps_per_epoch % k == 0)


def loader_threads() -> int:
    """Input-pipeline threads: JobEnv.LOADER_THREADS as the executor set it, else 2."""
    return _env_count(JobEnv.LOADER_THREADS) or 2


def _env_count(name: str) -> int | None:
    """A positive whole number from the environment, else None."""
    given = os.environ.get(name, "")
    return int(given) if given.isdigit() and int(given) >= 1 else None


def compile_settings(backend: str, precision: str, on_gpu: bool, steps_per_epoch: int) -> dict:
    """What a training process (a job, a bench measurement) sets before it builds the
    model, under the names its summary records them by: the matmul precision (set here),
    jit_compile and steps_per_execution."""
    return {"matmul_precision": set_matmul_precision(backend, precision, on_gpu),
            "jit_compile": jit_compile(backend, on_gpu),
            "steps_per_execution": steps_per_execution(on_gpu, steps_per_epoch)}
