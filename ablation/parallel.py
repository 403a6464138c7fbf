"""One job across several devices: data parallel, through each backend's own mechanism.

The recipe's batch size is the global batch: N devices each take batch / N images of
every step, the gradients are averaged across them, and one optimizer step follows, so
the recipe means what it means on one device. Batch-norm statistics are synchronised
(computed over the global batch), so a step on N devices is the step on one, up to the
order of floating-point sums (tests/test_parallel.py states the tolerance):

- JAX: Keras' distribution API (`keras.distribution.DataParallel`): the model's
  variables replicated, each batch sharded along its first axis, one compiled program
  in which a batch norm's mean is over the global batch by construction;
- TensorFlow: `tf.distribute.MirroredStrategy`, the model built and compiled in its
  scope; every batch norm set `synchronized` (Keras' cross-replica moments), since
  MirroredStrategy's default is each replica's own.

The devices are the GPUs the job was given (its executor reserves N: the local
executor's slots, Ray's `num_gpus`, Slurm's GPUs per task). A job on a machine without
GPUs takes N CPU devices: JAX's host platform (`XLA_FLAGS=
--xla_force_host_platform_device_count=N`, which `cpu_devices_env` sets) or TensorFlow's
CPU split into N logical devices; nothing a lab would train on, and what the tests use.
A device's share of a program waits at each all-reduce for the other devices' shares,
holding its thread of XLA's CPU client pool, the pool that also runs compilations and
host-to-device copies. XLA sizes that pool max(cores, devices): on a 2-core machine
split in two, one share waiting and one compilation filled it, the other share queued
behind the compilation, and past 40 s XLA aborts the process (reproduced by
benchmarks/host_devices.py; the likely cause of two suite runs' aborts on 2 cores, where
the test trained op by op, compiling as it went). `cpu_devices_env` gives the pool a
thread per device beyond XLA's size (`PJRT_NPROC`); docs/performance.md has the
measurements.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ablation.errors import AblationError
from ablation.protocol import JobEnv

HOST_DEVICE_COUNT = "--xla_force_host_platform_device_count"
# the size of XLA's CPU client pool (read by jaxlib at start-up; else the cores)
CLIENT_THREADS = "PJRT_NPROC"


class TooFewDevices(AblationError):
    """The job was given fewer devices than it is to train on."""


def cpu_devices_env(env: dict[str, str], n: int) -> dict[str, str]:
    """The environment in which JAX offers a CPU-only job N host devices (set before JAX
    starts; it concerns JAX's CPU platform only; TensorFlow splits its CPU itself, in
    `setup`), with XLA's CPU client pool one thread per device beyond its own size,
    max(cores, N): a share waiting at an all-reduce holds its thread, and the others must
    still find one free while a compilation runs (see the module's text). A larger
    `PJRT_NPROC` given is kept. A job given GPUs (JobEnv.GPU) is left as it is."""
    if n <= 1 or env.get(JobEnv.GPU):
        return env
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(HOST_DEVICE_COUNT)]
    given = env.get(CLIENT_THREADS, "")
    threads = max(max(_cores(), n) + n, int(given) if given.isdigit() else 0)
    return {**env, "XLA_FLAGS": " ".join([*flags, f"{HOST_DEVICE_COUNT}={n}"]),
            CLIENT_THREADS: str(threads)}


def _cores() -> int:
    """The cores this process may run on (what XLA counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_batch_size(n: int, batch_size: int) -> None:
    """The global batch must divide over the devices (`check_batches`)."""
    if n > 1 and batch_size % n:
        raise AblationError(f"batch size {batch_size} does not divide over {n} devices; give "
                            f"a multiple of {n}")


def check_batches(n: int, batch_size: int, sizes: dict[str, int]) -> None:
    """Every batch is shared evenly by the devices: the global batch, and each split's
    last, smaller batch, must divide by them. JAX shards only even batches; TensorFlow's
    MirroredStrategy split a batch of 33 over two devices and then failed adding the
    shares (seen in a new user's trial), so the rule is both backends'."""
    if n <= 1:
        return
    check_batch_size(n, batch_size)
    for split, count in sizes.items():
        last = count % batch_size
        if last % n:
            flag = "--validation" if split == "validation" else f"--{split}-limit"
            raise AblationError(f"the {split} split's last batch has {last} images, which "
                                f"do not divide over {n} devices; give a {flag} that leaves "
                                f"a multiple of {n}")


Scope = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class Spread:
    """A job's devices, as `setup` arranged them: what builds a model across them, and
    what feeds it."""

    devices: int
    backend: str
    scope: Scope = contextlib.nullcontext  # a new scope to build and compile a model in
    record: dict = field(default_factory=lambda: {"devices_per_job": 1})

    @property
    def _mirrored(self) -> bool:
        return self.devices > 1 and self.backend == "tensorflow"

    def adopt(self, model: Any) -> Any:
        """A model built in `scope`, its batch norms synchronised across TensorFlow's
        replicas (JAX's are, by construction)."""
        if self._mirrored:
            synchronise_batch_norm(model)
        return model

    def feed(self, plain: Any, make: Callable[[], Any], example: Any) -> Any:
        """What `fit` or `evaluate` takes: `plain` itself, or under MirroredStrategy the
        batches `make()` yields as a dataset (`tf_dataset`)."""
        return tf_dataset(make, example) if self._mirrored else plain


def setup(n: int, backend: str, on_gpu: bool) -> Spread:
    """Spread the job over its first N devices. One device: nothing changes."""
    if n <= 1:
        return Spread(1, backend)
    kind = "GPU" if on_gpu else "CPU"
    if backend == "jax":
        import jax
        import keras

        devices = [d for d in jax.devices() if (d.platform == "gpu") == on_gpu]
        _enough(devices, n, kind, backend)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices[:n]))
        scope: Scope = contextlib.nullcontext
        how = "keras.distribution.DataParallel"
    elif backend == "tensorflow":
        import tensorflow as tf

        if not on_gpu:
            cpu = tf.config.list_physical_devices("CPU")[0]
            with contextlib.suppress(RuntimeError):  # already split (a second job here)
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        devices = tf.config.list_logical_devices(kind)
        _enough(devices, n, kind, backend)
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:n]])
        scope, how = strategy.scope, "tf.distribute.MirroredStrategy"
    else:
        raise AblationError(f"a job across devices runs on TensorFlow or JAX, not {backend}")
    return Spread(n, backend, scope, {"devices_per_job": n, "data_parallel": how,
                                      "bn_statistics": "synchronised"})


def tf_dataset(make: Callable[[], Any], example: Any) -> Any:
    """Batches from a Python iterable as a `tf.data.Dataset` (its signature from one
    `example` batch): under MirroredStrategy, Keras feeds a generator's batches one per
    replica (two devices trained on half the steps at twice the batch; measured), but
    splits each element of a dataset across them, as the recipe's global batch means."""
    import tensorflow as tf

    def spec(a: Any) -> Any:
        return tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))

    return tf.data.Dataset.from_generator(make, output_signature=tf.nest.map_structure(
        spec, example))


def _enough(devices: list, n: int, kind: str, backend: str) -> None:
    if len(devices) < n:
        raise TooFewDevices(f"the job is to train on {n} devices, but {backend} sees "
                            f"{len(devices)} {kind}(s)")


def synchronise_batch_norm(model: Any) -> int:
    """On TensorFlow across devices: every batch norm's statistics over the global batch
    (Keras' `synchronized`). How many there were."""
    import keras

    found = 0
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            found += 1
        stack.extend(getattr(layer, "layers", ()))
    return found
