"""Augmentation on the host against augmentation inside the training step: what each
costs the host, what the step pays for it, and a training job's img/s either way. The
figures in docs/performance.md ("Augmentation on the device") come from this script.

    python benchmarks/device_augment.py --data-dir DIR

1. Host CPU seconds per 1,000 training images (the loader's work: the thread's CPU
   time in `TrainStream.batch`), host path against device path, for the blog's
   augmentation, the papers' crop with mixup + CutMix, airbench's reflect and ImageNet's
   random-resized crop, batches of 128, side by side in one process.
2. What the step pays: the device's augmentation alone (`DeviceAugment`, compiled), its
   seconds per 1,000 images on this machine's device.
3. A `resnet32_e` job's training img/s (the second epoch's, from its history.csv) with
   `--augment-on host` and `--augment-on device`, alternated (A B A B), on
   `--images` real CIFAR-10 images.

Nothing is downloaded beyond CIFAR-10 (`--data-dir`; generated images without it).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ablation import data

CASES = {"blog": {"augment": "blog"},
         "crop + mixup + cutmix": {"augment": "crop", "mixup": 0.2, "cutmix": 1.0},
         "reflect (airbench)": {"augment": "reflect", "pad": 2},
         "rrc": {"augment": "rrc"}}


def host_seconds(ds, case: dict, on_device: bool, batches: int, batch: int = 128) -> float:
    """The loader thread's CPU seconds per 1,000 images."""
    stream = data.TrainStream(ds, batch, seed=0, epochs=1, on_device=on_device, **case)
    stream.batch(0, 0)  # the epoch's permutation, first allocations
    t0 = time.thread_time()
    for b in range(1, batches + 1):
        stream.batch(0, b % stream.steps_per_epoch)
    return (time.thread_time() - t0) / (batches * batch) * 1000


def device_seconds(ds, case: dict, batches: int, batch: int = 128) -> float:
    """The step's share: `DeviceAugment` alone, compiled, wall seconds per 1,000 images."""
    import keras

    from ablation.data import ondevice

    layer = ondevice.DeviceAugment(ds.mean, ds.std,
                                   batch, case["augment"], case.get("pad"),
                                   case.get("mixup", 0), case.get("cutmix", 0))
    stream = data.TrainStream(ds, batch, seed=0, epochs=1, on_device=True, **case)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda x, k: layer([x, k], training=True), jit_compile=False)
    else:
        import jax

        step = jax.jit(lambda x, k: layer([x, k], training=True))
    (x, k), _ = stream.batch(0, 0)
    keras.ops.convert_to_numpy(step(x, k))  # trace and compile
    inputs = [stream.batch(0, b % stream.steps_per_epoch)[0] for b in range(batches)]
    t0 = time.perf_counter()
    for x, k in inputs:
        out = step(x, k)
    keras.ops.convert_to_numpy(out)
    return (time.perf_counter() - t0) / (batches * batch) * 1000


def job_rate(where: str, data_dir: str | None, images: int, work: Path) -> float:
    out = work / f"{where}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "ablation.cli", "run", "resnet32_e", "--epochs", "2",
           "--train-limit", str(images), "--test-limit", "500", "--augment-on", where,
           "--results", str(out), "--no-keep-model"]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    else:
        cmd += ["--dataset", str(work / "generated.npz")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"the {where} job failed:\n{r.stdout}\n{r.stderr}")
    (hist,) = out.glob("runs/*/*/history.csv")
    rows = list(csv.DictReader(hist.open()))
    return float(rows[-1]["images_per_second"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="the folder holding cifar-10-batches-py/")
    ap.add_argument("--batches", type=int, default=40, help="batches per host measurement")
    ap.add_argument("--images", type=int, default=4096, help="training images per job")
    ap.add_argument("--repeats", type=int, default=2, help="A B alternations of the jobs")
    args = ap.parse_args()
    ds = (data.load("cifar10", args.data_dir, train_limit=10_000, test_limit=100)
          if args.data_dir else data.synthetic(10_000, 100))
    print("| augmentation | host path: host CPU s / 1,000 img | device path: host CPU s / "
          "1,000 img | ratio | device path: the step's augmentation, s / 1,000 img |")
    print("|---|---:|---:|---:|---:|")
    for name, case in CASES.items():
        host = statistics.median(host_seconds(ds, case, False, args.batches) for _ in range(3))
        dev = statistics.median(host_seconds(ds, case, True, args.batches) for _ in range(3))
        step = statistics.median(device_seconds(ds, case, args.batches) for _ in range(3))
        print(f"| {name} | {host:.4f} | {dev:.4f} | {host / dev:.0f}x | {step:.4f} |",
              flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.data_dir:
            g = data.synthetic(args.images, 500)
            np.savez(work / "generated.npz", x_train=g.x_train, y_train=g.y_train,
                     x_test=g.x_test, y_test=g.y_test)
        rates: dict[str, list[float]] = {"host": [], "device": []}
        for _ in range(args.repeats):
            for where in ("host", "device"):
                rates[where].append(job_rate(where, args.data_dir, args.images, work))
                print(f"resnet32_e, augmentation on the {where}: {rates[where][-1]:.0f} img/s "
                      "(second epoch)", flush=True)
        ratios = [d / h for d, h in zip(rates["device"], rates["host"], strict=True)]
        print(f"training img/s, device / host: median {statistics.median(ratios):.3f} "
              f"({', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
