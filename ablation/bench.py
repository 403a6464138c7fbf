"""`ablation bench`: what a user checks before committing a GPU-day.

Times steady-state training steps of the exact model, optimizer and input pipeline
that `ablation run` uses, each measurement in a fresh process; prints images/s per
variant and the projected wall time of the blog's 200-epoch recipe (and of
`run --all` when every variant is benched). `--baseline` also times the blog's own
Keras-2 path (benchmarks/keras2_blog.py, needs the `baseline` extra) in float32, as
the blog ran it, alternating ours and theirs, and prints the median of the pairwise
ratios: with `--precision bf16` that is the speed-up over the blog's actual setup.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ablation.errors import AblationError

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "keras2_blog.py"
FULL_EPOCHS, TRAIN_IMAGES = 200, 50_000


def measure(variant: str, precision: str, steps: int, batch_size: int,
            data_dir: str | None) -> dict:
    """In this process: time `steps` training steps after a warm-up epoch of as many."""
    import keras

    from ablation import data, training
    from ablation.recipe import Recipe

    recipe = Recipe(precision=precision, batch_size=batch_size)
    n = steps * batch_size
    ds = (data.load("cifar10", data_dir, train_limit=n, test_limit=10) if data_dir
          else data.synthetic(n_train=n, n_test=10))
    keras.utils.set_random_seed(0)
    model = training.training_model(variant, recipe, ds.num_classes)
    stream = data.TrainStream(ds, batch_size, seed=0, augment="blog", epochs=2)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    timer = Timer()
    model.fit(iter(stream), steps_per_epoch=stream.steps_per_epoch, epochs=2, verbose=0,
              callbacks=[timer], shuffle=False)
    return {"images_per_second": n / timer.seconds, "seconds": timer.seconds,
            "backend": keras.backend.backend(), "variant": variant, "precision": precision}


def _child(cmd: list[str]) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            if "error" in result:
                raise AblationError(result["error"])
            return result
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    raise AblationError(f"benchmark process failed: {tail}")


def _ours(variant, precision, steps, batch_size, data_dir) -> float:
    cmd = [sys.executable, "-m", "ablation.bench", variant, precision, str(steps),
           str(batch_size), data_dir or ""]
    return _child(cmd)["images_per_second"]


def _theirs(variant, steps, batch_size, data_dir) -> float:
    """The blog's path as the blog ran it: float32 (it predates mixed precision)."""
    cmd = [sys.executable, str(BASELINE), "--variant", variant, "--precision", "fp32",
           "--steps", str(steps), "--batch-size", str(batch_size)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return _child(cmd)["images_per_second"]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(variants: list[str], precision: str = "fp32", steps: int = 30,
         batch_size: int = 128, baseline: bool = False, data_dir: str | None = None,
         repeats: int = 3) -> int:
    from ablation import data, registry

    if data_dir:
        folder = data.resolve_data_dir("cifar10", data_dir)
        data.check("cifar10", folder)
        data_dir = str(folder)
    if baseline and importlib.util.find_spec("tf_keras") is None:
        raise AblationError("--baseline needs tf_keras: pip install -e '.[baseline]'")
    source = f"real CIFAR-10 ({data_dir})" if data_dir else "generated images"
    print(f"benchmark: {steps} steps of batch {batch_size}, {precision}, {source}; "
          "each figure from a fresh process after a warm-up epoch", flush=True)
    total = 0.0
    for v in variants:
        ours, theirs, ratios = [], [], []
        for k in range(repeats if baseline else 1):
            ours.append(_ours(v, precision, steps, batch_size, data_dir))
            line = f"  {v} run {k + 1}: ablation {ours[-1]:.0f} img/s"
            if baseline:
                theirs.append(_theirs(v, steps, batch_size, data_dir))
                ratios.append(ours[-1] / theirs[-1])
                line += (f", blog Keras-2 path (fp32) {theirs[-1]:.0f} img/s, "
                         f"ratio {ratios[-1]:.2f}")
            print(line, flush=True)
        ips = statistics.median(ours)
        projected = FULL_EPOCHS * TRAIN_IMAGES / ips
        total += projected
        msg = (f"{v}: {ips:.0f} img/s (median); 200-epoch recipe ≈ {_hours(projected)} of "
               "training here (evaluation not included)")
        if baseline:
            msg += (f"; blog path (fp32) {statistics.median(theirs):.0f} img/s; "
                    f"median ratio ablation/blog = {statistics.median(ratios):.2f}")
        print(msg, flush=True)
    if set(variants) == set(registry.variants()):
        print(f"ablation run --all (one seed) ≈ {_hours(total)} of training here", flush=True)
    return 0


if __name__ == "__main__":  # one measurement, in its own process
    v, prec, st, bs, dd = sys.argv[1:6]
    print(json.dumps(measure(v, prec, int(st), int(bs), dd or None)), flush=True)
    sys.stdout.flush()
    os._exit(0)
