"""One job across several devices (`ablation.parallel`), on this CPU split into two
devices (JAX's host platform, TensorFlow's logical CPUs): two devices train the same
loss curve as one at the same global batch, to a stated tolerance, on both backends,
with augmentation on the host and on the device (on JAX the device's, with mixup: its
one program mixes across the global batch); a job stopped after its first epoch and
resumed on two devices is the unbroken run, bit for bit.
And the executors reserve N GPUs a job, or refuse in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT, one_line_error, run_cli

from ablation import devices, parallel
from ablation.errors import AblationError
from ablation.protocol import JobEnv

XLA_TERMINATE = "--xla_cpu_collective_call_terminate_timeout_seconds"
# the loss of each epoch, two devices against one: the sums' order differs, nothing else
LOSS_RTOL = 1e-4

SCRIPT = r"""
import json, pathlib, sys, tempfile
import numpy as np, keras
from ablation import backend, callbacks, data, parallel, registry, training
from ablation.recipe import Recipe
from ablation.registry import Variant

be = keras.backend.backend()
net = Variant.from_dict({**registry.get("resnet32_e").to_dict(), "name": "par_e",
                         "stages": [[1, 8], [1, 8], [1, 8]]})
ds = data.synthetic(64, 16)
tmp = pathlib.Path(tempfile.mkdtemp())


def train(where, spread, first, last, root):
    # mixup on TensorFlow pairs images within each device's share (ablation.data.ondevice)
    mixup = 0.2 if where == "device" and be == "jax" else 0
    recipe = Recipe(epochs=2, batch_size=16, train_limit=64, augment="crop", mixup=mixup,
                    augment_on=where)
    on_device = (ds.mean, ds.std) \
        if where == "device" else None
    keras.utils.set_random_seed(0)
    with spread.scope():  # as a job builds it (training.build): compiled, on JAX whole
        model = spread.adopt(training.training_model(
            net, recipe, 10, jit_compile=backend.jit_compile(be, False), steps_per_epoch=4,
            on_device=on_device))
    backup = callbacks.AtomicBackup(root, {"variant": "par_e", "seed": 0,
                                           "recipe_id": recipe.id, "definition_hash": "x"})
    assert backup.resume(model, 4) == (first, 0)
    stream = data.TrainStream(ds, 16, seed=0, augment="crop", start_epoch=first,
                              epochs=last, mixup=recipe.mixup, on_device=on_device is not None)
    h = model.fit(spread.feed(iter(stream), lambda: iter(stream), stream.batch(first, 0)),
                  steps_per_epoch=4, epochs=last, initial_epoch=first, verbose=0,
                  callbacks=[backup])
    return h.history["loss"], [np.asarray(w) for w in model.get_weights()]


out = {}
# the host path's batches are the backend's own business on TensorFlow only (a tf.data
# dataset split across replicas); JAX's one program takes either path's alike
paths = ("host", "device") if be == "tensorflow" else ("device",)
if be == "tensorflow":  # the CPU is split before TensorFlow starts
    two = parallel.setup(2, be, False)
one = parallel.setup(1, be, False)
for where in paths:
    out[where] = {"one": train(where, one, 0, 2, tmp / f"1{where}")[0]}
if be == "jax":  # one device first: the distribution is the process's
    two = parallel.setup(2, be, False)
for where in paths:
    loss, whole = train(where, two, 0, 2, tmp / f"2{where}")
    out[where]["two"] = loss
train("device", two, 0, 1, tmp / "part")  # stopped after its first epoch, resumed
_, resumed = train("device", two, 1, 2, tmp / "part")
out["resumed_exact"] = all(np.array_equal(a, b) for a, b in zip(whole, resumed))
out["info"] = two.record
tasks = pathlib.Path("/proc/self/task")  # XLA's CPU pools, as jaxlib sized them (Linux)
out["xla_threads"] = sum((t / "comm").read_text().strip() == "tf_XLAEigen"
                         for t in tasks.iterdir()) if tasks.is_dir() else None
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_one_devices_curve_and_resume_exactly(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    env = {**parallel.cpu_devices_env(dict(os.environ), 2), "KERAS_BACKEND": backend,
           "PYTHONPATH": str(ROOT)}
    if backend == "jax":  # a share that waits on a busy machine waits, up to half the
        # test's limit, instead of XLA's 40 s; past that, XLA's own message says which
        env["XLA_FLAGS"] += f" {XLA_TERMINATE}=300"
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["info"] == {"devices_per_job": 2, "bn_statistics": "synchronised",
                           "data_parallel": {"tensorflow": "tf.distribute.MirroredStrategy",
                                             "jax": "keras.distribution.DataParallel"}[backend]}
    for where in ("host", "device") if backend == "tensorflow" else ("device",):
        one, two = got[where]["one"], got[where]["two"]
        assert len(one) == len(two) == 2
        assert two == pytest.approx(one, rel=LOSS_RTOL), (where, one, two)
    assert got["resumed_exact"]
    if backend == "jax" and got["xla_threads"] is not None:  # jaxlib honours PJRT_NPROC
        assert got["xla_threads"] == int(env[parallel.CLIENT_THREADS])


def test_host_devices_get_a_client_thread_each_beyond_the_cores():
    """A share of a program waiting at an all-reduce holds its thread of XLA's CPU
    client pool: the pool keeps one thread per device beyond XLA's own max(cores, N)
    (ablation.parallel),
    and a larger one given is kept; a job given GPUs is left as it is."""
    cores = len(os.sched_getaffinity(0))
    env = parallel.cpu_devices_env({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false "
                                    "--xla_force_host_platform_device_count=8"}, 2)
    assert env["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                "--xla_force_host_platform_device_count=2")
    assert env[parallel.CLIENT_THREADS] == str(max(cores, 2) + 2)
    assert parallel.cpu_devices_env({parallel.CLIENT_THREADS: "64"}, 2)["PJRT_NPROC"] == "64"
    assert parallel.cpu_devices_env({"A": "1"}, 1) == {"A": "1"}  # one device: as it was
    given_gpus = {JobEnv.GPU: "0,1", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert parallel.cpu_devices_env(given_gpus, 2) == given_gpus  # GPUs: as it was


def _listing(*ids: str) -> devices.GpuListing:
    return devices.GpuListing(tuple(ids), "nvidia-smi")


def test_slots_hold_n_gpus_a_job_and_mistakes_are_one_line():
    slots = devices.plan_slots(_listing("0", "1", "2", "3", "4"), None, None, 2)
    assert [s.gpu for s in slots] == ["0,1", "2,3"] and slots[0].describe() == "GPUs 0,1"
    env = devices.job_env({}, slots[1].gpu, pci_order=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert [s.gpu for s in devices.plan_slots(_listing("0", "1"), 1, None, 2)] == ["0,1"]
    with pytest.raises(AblationError, match="has them to itself; drop one of the two flags"):
        devices.plan_slots(_listing("0", "1"), None, 2, 2)
    with pytest.raises(AblationError, match=r"offers 1 GPU\(s\)"):
        devices.plan_slots(_listing("0"), None, None, 2)
    with pytest.raises(AblationError, match="--workers 2 is more than the 1 job"):
        devices.plan_slots(_listing("0", "1", "2"), 2, None, 2)
    # no GPU: CPU slots, the job splitting the CPU itself
    assert [s.gpu for s in devices.plan_slots(_listing(), None, None, 2)] == [None]


def test_ray_and_slurm_reserve_n_gpus_or_refuse(monkeypatch):
    from ablation.executors import ray_cluster, slurm

    seen = {}

    def fake_init(self, *args, **kwargs):
        seen["args"] = args

    monkeypatch.setattr(ray_cluster.RayExecutor, "__init__", fake_init)
    args = SimpleNamespace(ray_gpus=None, jobs_per_gpu=None, devices_per_job=2,
                           ray_address=None, ray_cpus=None, ray_retries=3,
                           loader_threads=None, steps_per_execution=None)
    ray_cluster.RayExecutor.from_args(args, None)
    assert seen["args"][2] is None and seen["args"][-1] == 2  # num_gpus: 2 where GPUs are
    for bad, match in (({"ray_gpus": 1.0}, "--ray-gpus 1 and --devices-per-job 2 disagree"),
                       ({"jobs_per_gpu": 2}, "has them to itself")):
        with pytest.raises(AblationError, match=match):
            ray_cluster.RayExecutor.from_args(SimpleNamespace(**{**vars(args), **bad}), None)
    monkeypatch.setattr(slurm.SlurmExecutor, "__init__", fake_init)
    sargs = SimpleNamespace(results="r", slurm_table={}, slurm_option=None, jobs_per_gpu=None,
                            devices_per_job=2, loader_threads=None, steps_per_execution=None,
                            **{f"slurm_{k}": None for k in slurm.OPTIONS})
    slurm.SlurmExecutor.from_args(sargs, None)
    assert seen["args"][2]["gpus"] == 2  # a Slurm job holds the job and its 2 GPUs
    with pytest.raises(AblationError, match="--slurm-gpus 1 and --devices-per-job 2"):
        slurm.SlurmExecutor.from_args(SimpleNamespace(**{**vars(sargs), "slurm_gpus": 1}),
                                      None)


def test_batches_must_divide_over_the_devices_and_mistakes_write_nothing(tmp_path):
    parallel.check_batches(2, 32, {"train": 128, "test": 64})
    with pytest.raises(AblationError, match="batch size 33 does not divide over 2 devices"):
        parallel.check_batches(2, 33, {"train": 128})
    with pytest.raises(AblationError, match=r"the test split's last batch has 5 images.*"
                                            r"--test-limit"):
        parallel.check_batches(2, 32, {"train": 128, "test": 69})
    # refused when the command starts, before a results folder is made (a new user's
    # trial: a batch of 33 on two TensorFlow devices failed inside the job)
    for flags, line in ((["--batch-size", "33"], "batch size 33 does not divide over 2"),
                        (["--jobs-per-gpu", "2"], "drop one of the two flags")):
        r = run_cli("run", "resnet32_e", "--devices-per-job", "2", *flags,
                    "--results", str(tmp_path / "r"))
        assert r.returncode == 2 and line in one_line_error(r), r.stderr
        assert not (tmp_path / "r").exists()
