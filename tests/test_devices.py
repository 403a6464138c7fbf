"""GPU machines, tested on a CPU: GPU listing (a fake nvidia-smi, MIG, the driver's /proc
listing), packing K jobs per GPU, each job's environment (pinning, memory variables,
device order), a job given a GPU that sees none, Ray's slots and its tasks' GPUs (a
local Ray instance declaring fake GPUs), and the settings a GPU job trains with."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import need, one_line_error, run_cli, run_dirs, tiny_study

from ablation import backend, devices
from ablation.protocol import JobEnv

TWO_GPUS = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-66666666-7777-8888-9999-000000000000)
"""
ONE_GPU = TWO_GPUS.splitlines(keepends=True)[0]
MIG = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)
  MIG 3g.20gb     Device  0: (UUID: MIG-1111-aaaa)
  MIG 3g.20gb     Device  1: (UUID: MIG-2222-aaaa)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)
"""


def fake_nvidia_smi(folder: Path, listing: str = TWO_GPUS) -> Path:
    """A folder holding an `nvidia-smi` that prints `listing` for `-L`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    assert "'" not in listing
    script.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\n")  # a builtin: no PATH needed
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def env_without_gpus(path: str) -> dict:
    """This environment, with `path` as PATH and no CUDA_VISIBLE_DEVICES (None: run_cli
    removes it)."""
    return dict(os.environ, PATH=path, CUDA_VISIBLE_DEVICES=None)


def _env(path: str) -> dict:
    return {k: v for k, v in env_without_gpus(path).items() if v is not None}


# --- listing -------------------------------------------------------------------------------


def test_nvidia_smi_listing_with_and_without_mig():
    assert devices.parse_nvidia_smi(TWO_GPUS) == ["0", "1"]
    # a GPU split into MIG slices offers its slices, by UUID (CUDA takes no other name)
    assert devices.parse_nvidia_smi(MIG) == ["MIG-1111-aaaa", "MIG-2222-aaaa", "1"]
    assert devices.parse_nvidia_smi("No devices were found\n") == []


def test_gpus_come_from_the_environment_then_nvidia_smi_then_the_driver(tmp_path, monkeypatch):
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    got = devices.list_gpus(_env(f"{bin_dir}:{os.environ['PATH']}"))
    assert got == devices.GpuListing(("0", "1"), "nvidia-smi") and got.pci_order
    given = dict(_env(str(bin_dir)), CUDA_VISIBLE_DEVICES="3,GPU-abc")
    assert devices.list_gpus(given) == devices.GpuListing(("3", "GPU-abc"), "CUDA_VISIBLE_DEVICES")
    assert not devices.list_gpus(given).pci_order  # the user's ids mean what they meant
    for hidden in ("", "-1", "-1,0"):
        assert devices.list_gpus(dict(given, CUDA_VISIBLE_DEVICES=hidden)).ids == ()
    # no nvidia-smi on PATH: the driver's own listing (a container without the tool)
    proc = tmp_path / "proc"
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (proc / bus).mkdir(parents=True)
    monkeypatch.setattr(devices, "NVIDIA_PROC", proc)
    empty = str(tmp_path / "empty")
    assert devices.list_gpus(_env(empty)) == devices.GpuListing(("0", "1"), "/proc")
    monkeypatch.setattr(devices, "NVIDIA_PROC", tmp_path / "nothing")
    assert devices.list_gpus(_env(empty)) == devices.GpuListing((), "none")


# --- packing and the job's environment -----------------------------------------------------


def test_jobs_per_gpu_packs_slots_and_says_how_many_share():
    two = devices.GpuListing(("0", "1"), "nvidia-smi")
    slots = devices.plan_slots(two, None, 2)
    assert [(s.gpu, s.sharing) for s in slots] == [("0", 2), ("1", 2), ("0", 2), ("1", 2)]
    assert slots[0].describe() == "GPU 0 (2 jobs/GPU)"
    # --workers alone deals GPUs out in turn; the memory split follows what is dealt
    assert [(s.gpu, s.sharing) for s in devices.plan_slots(two, 3, None)] == [
        ("0", 2), ("1", 1), ("0", 2)]
    assert [s.gpu for s in devices.plan_slots(devices.GpuListing((), "none"), 2, None)] == [
        None, None]
    with pytest.raises(devices.AblationError, match="no GPU was found"):
        devices.plan_slots(devices.GpuListing((), "none"), None, 2)
    with pytest.raises(devices.AblationError, match="more than 2 GPU"):
        devices.plan_slots(two, 5, 2)


def test_a_packed_jobs_environment():
    base = {"PATH": "/bin", JobEnv.GPU: "7", JobEnv.LOADER_THREADS: "9"}  # the runner's own
    env = devices.job_env(base, "1", 4, pci_order=True, threads=3, steps_per_execution=16)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env[JobEnv.GPU] == "1" and env[JobEnv.JOBS_PER_GPU] == "4"
    assert env[JobEnv.LOADER_THREADS] == "3" and env[JobEnv.STEPS_PER_EXECUTION] == "16"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    # exactly one of JAX's memory variables (newer jaxlib refuses two)
    assert [v for v in devices.JAX_MEMORY_VARS if v in env] == ["XLA_PYTHON_CLIENT_MEM_FRACTION"]
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    # alone on its GPU: JAX keeps its default; a variable the user set is never overridden
    alone = devices.job_env({}, "0", 1)
    assert not any(v in alone for v in devices.JAX_MEMORY_VARS)
    mine = devices.job_env({"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                            "TF_FORCE_GPU_ALLOW_GROWTH": "false"}, "0", 2)
    assert [v for v in devices.JAX_MEMORY_VARS if v in mine] == ["XLA_PYTHON_CLIENT_PREALLOCATE"]
    assert mine["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    # the user's own ids are not renumbered
    assert "CUDA_DEVICE_ORDER" not in devices.job_env({}, "GPU-abc", 1, pci_order=False)
    # a CPU job on a GPU machine sees no GPU, in either backend
    cpu = devices.job_env({"CUDA_VISIBLE_DEVICES": "0,1"}, "")
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["JAX_PLATFORMS"] == "cpu"
    assert JobEnv.GPU not in cpu
    # what the job records, under the variables' own names
    rec = devices.recorded(env)
    assert rec["CUDA_VISIBLE_DEVICES"] == "1" and rec["jobs_per_gpu"] == 4
    assert rec["XLA_PYTHON_CLIENT_PREALLOCATE"] is None
    assert rec["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
    # and which CPU kernels TensorFlow was told to use (its own default where unset)
    assert rec["TF_ENABLE_ONEDNN_OPTS"] is None
    assert devices.recorded({"TF_ENABLE_ONEDNN_OPTS": "1"})["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_analyze_and_bench_processes_take_one_gpu_and_memory_as_needed(tmp_path):
    on_cpu = {"PATH": str(tmp_path)}
    assert devices.shared_process_env(on_cpu) == {"TF_FORCE_GPU_ALLOW_GROWTH": "true",
                                                  "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert devices.shared_process_env(dict(on_cpu, XLA_PYTHON_CLIENT_MEM_FRACTION=".2")) == {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    two = {"PATH": str(fake_nvidia_smi(tmp_path / "bin"))}
    got = devices.shared_process_env(two)
    assert (got["CUDA_VISIBLE_DEVICES"], got["CUDA_DEVICE_ORDER"]) == ("0", "PCI_BUS_ID")
    assert "CUDA_DEVICE_ORDER" not in devices.shared_process_env(
        dict(two, CUDA_VISIBLE_DEVICES="1"))


def test_loader_threads_share_the_hosts_cores():
    assert devices.loader_threads(1, cpus=16) == 8  # capped
    assert devices.loader_threads(8, cpus=16) == 2
    assert devices.loader_threads(4, cpus=2) == 1


# --- the job's side ------------------------------------------------------------------------


def test_a_job_given_a_gpu_it_cannot_see_stops(monkeypatch):
    monkeypatch.delenv(JobEnv.GPU, raising=False)
    assert backend.require_given_gpu("tensorflow") is False  # a CPU job: fine
    monkeypatch.setenv(JobEnv.GPU, "0")
    with pytest.raises(backend.NoDevice, match=r"given GPU 0 .* tensorflow sees no GPU: "):
        backend.require_given_gpu("tensorflow")


def test_a_jax_job_hides_the_gpus_from_tensorflow(monkeypatch):
    """Keras and tensorboard import TensorFlow where it is installed; in a JAX job it must
    not take GPU memory: it is shown no GPU before anything uses it."""
    tf = need("tensorflow")
    calls = []
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda *a: calls.append(a))
    assert backend.keep_tensorflow_off_gpu("jax") is True and calls == [([], "GPU")]
    assert backend.keep_tensorflow_off_gpu("tensorflow") is False and len(calls) == 1


def test_compile_settings_follow_the_device(monkeypatch):
    monkeypatch.delenv(JobEnv.STEPS_PER_EXECUTION, raising=False)
    assert backend.jit_compile("tensorflow", on_gpu=True) is True
    assert backend.jit_compile("tensorflow", on_gpu=False) is False
    assert backend.jit_compile("jax", on_gpu=False) is True
    # the most a GPU job syncs after, and always a divisor of the epoch's steps (Keras
    # runs whole executions: one across an epoch's end would take the next one's batches)
    assert backend.steps_per_execution(True, 64) == backend.GPU_STEPS_PER_EXECUTION == 32
    assert backend.steps_per_execution(True, 391) == 23  # the blog's epoch: 17 × 23
    assert backend.steps_per_execution(True, 3) == 3
    assert backend.steps_per_execution(False, 391) == 1
    monkeypatch.setenv(JobEnv.STEPS_PER_EXECUTION, "8")
    assert backend.steps_per_execution(False, 12) == 6
    assert backend.steps_per_execution(True, 391) == 1


def test_fp32_is_true_float32_and_tf32_is_asked_for():
    tf = need("tensorflow")
    was = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        assert backend.set_matmul_precision("tensorflow", "fp32") == "float32"
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
        assert backend.set_matmul_precision("tensorflow", "tf32") == "tf32"
        # a CPU has no TF32: a bf16 run there said "tf32" (0.6)
        assert backend.set_matmul_precision("tensorflow", "bf16", on_gpu=False) == "float32"
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(was)
    jax = need("jax")
    was = jax.config.jax_default_matmul_precision
    try:
        assert backend.set_matmul_precision("jax", "fp32") == "float32"
        assert backend.set_matmul_precision("jax", "tf32") == "tensorfloat32"
    finally:
        jax.config.update("jax_default_matmul_precision", was)


def test_softmax_output_is_float32_under_mixed_precision():
    import keras

    from ablation.models import build_model

    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        for name in ("resnet32_e", "vgg19"):
            m = build_model(name)
            assert m.output.dtype == "float32", name
            assert m.layers[-1].compute_dtype == "float32", name
            convs = [lay for lay in m.layers if isinstance(lay, keras.layers.Conv2D)]
            assert convs[0].compute_dtype == "bfloat16", name  # the rest stays mixed
    finally:
        keras.mixed_precision.set_global_policy("float32")


TINY_NET = {"name": "tiny8", "label": "tiny8", "unit": "e",
            "stages": [[1, 16], [1, 32], [1, 64]]}


def _train(steps_per_execution: int, jit: bool = False) -> tuple[list, list]:
    import keras

    from ablation import data, training
    from ablation.recipe import Recipe
    from ablation.registry import Variant

    v = Variant.from_dict(TINY_NET)
    ds = data.synthetic(n_train=96, n_test=32)
    recipe = Recipe(batch_size=32, epochs=2)
    keras.utils.set_random_seed(0)
    model = training.training_model(v, recipe, ds.num_classes, jit, steps_per_execution)
    stream = data.TrainStream(ds, 32, seed=0, epochs=2, threads=1)
    h = model.fit(iter(stream), steps_per_epoch=stream.steps_per_epoch, epochs=2, verbose=0,
                  shuffle=False)
    return h.history["loss"], model.get_weights()


def test_steps_per_execution_changes_speed_never_the_numbers():
    """A GPU job runs several steps per host sync; its per-epoch records and weights are
    those of one step per sync."""
    loss1, w1 = _train(1)
    loss3, w3 = _train(3)
    assert loss1 == loss3
    assert all(np.array_equal(a, b) for a, b in zip(w1, w3, strict=True))


def test_a_gpu_jobs_compile_settings_train_here():
    """XLA (jit_compile), as a TensorFlow job on a GPU compiles, works on the fused
    layers: the same step, compiled, learns."""
    loss, _ = _train(3, jit=True)
    assert all(np.isfinite(loss)) and loss[-1] < loss[0] * 1.5


# --- Ray -----------------------------------------------------------------------------------


def _node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_ray_slots_count_fractions_per_node():
    from ablation.executors.ray_cluster import default_cpus, slots

    two = [_node(64, 1), _node(64, 1)]
    assert slots(two, 0.1, 1) == 20  # int(1 // 0.1) is 9: float rounding loses a slot
    assert slots(two, round(1 / 3, 4), 1) == 6
    assert slots(two, 0.4, 1) == 4  # per node: 2 + 2, not 2.0 / 0.4 = 5
    assert slots(two, 0.25, 32) == 4  # CPUs bound it too
    assert slots([*two, _node(64, 1, alive=False)], 1, 1) == 2
    assert slots([_node(6)], 0, 2) == 3
    assert default_cpus([_node(32, 2)], 0.25) == 4  # 8 tasks share 32 cores
    assert default_cpus([_node(32, 2), _node(8, 1)], 1) == 8  # the smallest GPU node's share
    assert default_cpus([_node(8)], 0) == 1


def test_ray_tasks_see_only_their_gpus(tmp_path):
    """On a local Ray instance that declares two fake GPUs: a CPU task gives its job no
    GPU (recent Ray no longer hides them); a task of half a GPU gives its job the GPU Ray
    pinned and half of its memory; the executor counts the slots."""
    ray = need("ray")
    from ablation.executors.ray_cluster import RayExecutor, task_env

    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, object_store_memory=100 * 1024 * 1024)
    try:
        env_of = ray.remote(task_env)
        cpu = ray.get(env_of.options(num_gpus=0).remote(0.0, 1))
        assert cpu["CUDA_VISIBLE_DEVICES"] == "" and JobEnv.GPU not in cpu
        half = ray.get(env_of.options(num_gpus=0.5).remote(0.5, 2))
        assert half["CUDA_VISIBLE_DEVICES"] in ("0", "1")
        assert half[JobEnv.GPU] == half["CUDA_VISIBLE_DEVICES"]
        assert half[JobEnv.JOBS_PER_GPU] == "2"
        assert half["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"
        assert RayExecutor(gpus_per_job=0.25).size == 8
        assert RayExecutor(gpus_per_job=0.1, cpus_per_job=0.25).size == 20
        with pytest.raises(devices.AblationError, match="fraction up to 1"):
            RayExecutor(gpus_per_job=1.5)
    finally:
        ray.shutdown()


# --- end to end ----------------------------------------------------------------------------


def test_packed_jobs_on_gpus_that_are_not_there_never_train_on_the_cpu(tmp_path, cifar_dir):
    """The issue's case with a fake nvidia-smi listing a GPU packed two jobs deep (the
    spread over several GPUs is test_jobs_per_gpu_packs_slots_and_says_how_many_share's):
    the job records its memory settings and stops at once with one line naming the
    cause; nothing is lost, and once the GPU is gone a plain rerun trains it."""
    study = tiny_study(tmp_path)
    res = tmp_path / "results"
    args = ["run", "tiny8", "--study", str(study), "--epochs", "1",
            "--train-limit", "128", "--test-limit", "64", "--batch-size", "32",
            "--data-dir", str(cifar_dir), "--results", str(res)]
    bin_dir = fake_nvidia_smi(tmp_path / "bin", ONE_GPU)
    gpu_env = env_without_gpus(f"{bin_dir}:{os.environ['PATH']}")
    r = run_cli(*args, "--jobs-per-gpu", "2", env=gpu_env, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "2 local worker(s) on GPU(s) 0 (from nvidia-smi), 2 job(s) per GPU" in out
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.450" in out
    assert "1 job(s) not started: given GPU" in out and "sees no GPU" in out
    assert "epoch 1/1" not in out  # not one epoch anywhere
    pinned = []
    for run in run_dirs(res):
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "interrupted" and "sees no GPU" in s["error"]
        assert (s["TF_FORCE_GPU_ALLOW_GROWTH"], s["XLA_PYTHON_CLIENT_MEM_FRACTION"],
                s["XLA_PYTHON_CLIENT_PREALLOCATE"], s["jobs_per_gpu"],
                s["CUDA_DEVICE_ORDER"]) == ("true", "0.450", None, 2, "PCI_BUS_ID")
        pinned.append(s["CUDA_VISIBLE_DEVICES"])
        assert not (run / "history.csv").exists()
    assert pinned == ["0"]
    status = run_cli("status", "--results", str(res)).stdout
    assert status.count("GPU 0 (2 jobs/GPU)") == 1 and status.count("interrupted") >= 1
    # the GPUs removed: the same command (less the packing) trains every job
    again = run_cli(*args, "--workers", "2", env=env_without_gpus(os.environ["PATH"]),
                    timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 already done, 1 to run" in again.stdout
    for run in run_dirs(res):
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "done" and s["CUDA_VISIBLE_DEVICES"] is None
        assert s["jobs_per_gpu"] is None and s["loader_threads"] == 1


def test_packing_without_a_gpu_is_a_one_line_error(tmp_path):
    r = run_cli("run", "resnet32_e", "--jobs-per-gpu", "2", "--results", str(tmp_path),
                env=env_without_gpus(str(tmp_path)))
    assert "--jobs-per-gpu 2 given, but no GPU was found" in one_line_error(r)
