"""The GPU benchmark (benchmarks/gpu.py) end to end on this CPU, its GPUs faked as the
device tests fake them (an `nvidia-smi` listing two): every part runs, places its
processes as the local executor would, and writes its table; nothing is downloaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT, tiny_study
from test_devices import TWO_GPUS, fake_nvidia_smi


def test_the_gpu_benchmark_runs_every_part_and_writes_its_table(tmp_path):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", TWO_GPUS)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT))
    out = tmp_path / "gpu.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--study",
                        str(tiny_study(tmp_path)), "--variants", "tiny8", "--precisions",
                        "fp32", "--packed", "2", "--gpus-per-job", "2", "--steps", "2",
                        "--batch", "32", "--epoch-images", "256",
                        "--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    md = out.read_text()
    assert md.startswith("# GPU benchmark: 2 GPU(s) (0, 1, from nvidia-smi)")
    number = r"[\d,]+"
    # 1. host and device augmentation side by side
    assert re.search(rf"\| tiny8 \| fp32 \| {number} \| {number} \|", md), md
    # 2. two jobs packed on one GPU, each measured, summed
    assert re.search(rf"\| 2 \| {number}, {number} \| {number} \|", md), md
    # 3. one job on both GPUs (a global batch of 64, split)
    assert re.search(rf"\| 2 \| 64 \| {number} \| {number} \|", md), md
    # 4. the timed epoch: 256 images, 8 steps of 32, in the one precision named
    assert re.search(rf"one epoch of tiny8 \(fp32, .*\n.*\n\| training steps \| 256 \| "
                     rf"[\d.]+ \| {number} \|", md), md
    assert "batch 32 per device" in md
    assert "measured on the CPU" in md and "skipped" not in md
