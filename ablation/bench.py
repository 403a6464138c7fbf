"""`ablation bench`: what a user checks before committing a GPU-day.

Times steady-state training steps of the exact model, optimizer and input pipeline
that `ablation run` uses (compiled as a job on this device would be), each
measurement in a fresh process. Without `--steps`, the timed part grows until it
lasts MIN_SECONDS, so a GPU's figure is not 0.1 s of noise and a CPU's not an hour.
It prints images/s per variant and the projected wall time of its study's recipe, and, scaled by
multiply-adds from the variants measured, of each whole study on this machine and on
the blog's GPU (its ~20 s per ResNet-32 epoch on a GTX 1080 Ti). `--baseline` also
times the blog's own Keras-2 path (`python -m ablation.baseline`, needs the
`baseline` extra) in float32, as the blog ran it, alternating ours and theirs, and
prints the median of the pairwise ratios: with `--precision bf16` that is the
speed-up over the blog's actual setup.
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

from ablation import parallel, registry, results
from ablation.errors import AblationError
from ablation.protocol import module_command
from ablation.recipe import TRAIN_IMAGES

# The blog's reference GPU figure: a Keras ResNet-32 epoch of this recipe in about 20 s
# on a GTX 1080 Ti (a public reproduction; docs/performance.md).
GPU_NAME, GPU_RESNET32_EPOCH_S, GPU_REF_VARIANT = "GTX 1080 Ti", 20.0, "resnet32"
MIN_SECONDS = 10.0  # the timed steps of a figure last at least this long (auto steps)
FIRST_STEPS, MAX_STEPS = 10, 100_000
POOL_BATCHES = 50  # distinct batches of images cycled through (a time-sized run)


def _study_of(variant: str, study: str | None):
    """The study whose recipe a variant is benched under: the one named, else the
    built-in study that defines it (all built-in studies are loaded)."""
    from ablation.study import builtin_home, load_study

    return load_study(study or builtin_home(variant))


def measure(variant: str, precision: str, steps: int | None, batch_size: int,
            data_dir: str | None, study: str | None = None,
            augment_on: str = "host", devices_per_job: int = 1) -> dict:
    """In this process: time `steps` training steps after a warm-up of as many (of
    FIRST_STEPS when `steps` is None; then the timed steps grow until they last
    MIN_SECONDS), the blog's augmentation on the host or in the step (`augment_on`),
    data parallel over `devices_per_job` devices (`ablation.parallel`; `batch_size` the
    global batch)."""
    from ablation import backend

    name = backend.choose()
    import keras

    from ablation import data, devices, training
    from ablation.recipe import Recipe

    _study_of(variant, study)  # registers the variant
    recipe = Recipe(precision=precision, batch_size=batch_size, augment_on=augment_on)
    on_device = augment_on == "device"
    on_gpu = backend.gpus_seen(name) > 0
    # whole executions only: k is always a multiple of the steps per execution
    settings = backend.compile_settings(name, precision, on_gpu,
                                        steps or backend.GPU_STEPS_PER_EXECUTION)
    spe = settings["steps_per_execution"]
    k = steps or max(FIRST_STEPS, spe)
    n = min(k, POOL_BATCHES) * batch_size
    ds = (data.load("cifar10", data_dir, train_limit=n, test_limit=10) if data_dir
          else data.synthetic(n_train=n, n_test=10))
    keras.utils.set_random_seed(0)
    spread = parallel.setup(devices_per_job, name, on_gpu)
    with spread.scope():
        model = spread.adopt(training.training_model(
            variant, recipe, ds.num_classes, settings["jit_compile"], spe,
            on_device=(ds.mean, ds.std)
            if on_device else None))
    source = data.TrainStream(ds, batch_size, seed=0, augment="blog", epochs=MAX_STEPS,
                              threads=devices.loader_threads(1), on_device=on_device)
    stream = spread.feed(iter(source), lambda: iter(source), source.batch(0, 0))

    class Timer(keras.callbacks.Callback):
        """The epoch's own time: not fit()'s setup of its data adapter."""

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    def timed(k: int) -> float:
        timer = Timer()
        model.fit(stream, steps_per_epoch=k, epochs=1, verbose=0, shuffle=False,
                  callbacks=[timer])
        return timer.seconds

    timed(k)  # warm-up: tracing, compilation, the first allocations
    seconds = timed(k)
    while steps is None and seconds < MIN_SECONDS and k < MAX_STEPS:
        k = min(MAX_STEPS, max(2 * k, int(k * 1.2 * MIN_SECONDS / max(seconds, 1e-3))))
        k = -(-k // spe) * spe
        seconds = timed(k)
    return {"images_per_second": k * batch_size / seconds, "seconds": seconds, "steps": k,
            **settings, "backend": name, "device": "GPU" if on_gpu else "CPU",
            "variant": variant, "precision": precision, "augment_ran": augment_on,
            **spread.record}


def _child(cmd: list[str]) -> dict:
    """Run one measurement process. It may run beside training jobs: one GPU (the
    first), memory as needed (ablation.devices)."""
    from ablation import devices

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **devices.shared_process_env())
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            if "error" in result:
                raise AblationError(result["error"])
            return result
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    raise AblationError(f"benchmark process failed: {tail}")


def _ours(variant, precision, steps, batch_size, data_dir, study, augment_on="host") -> dict:
    cmd = module_command("ablation.bench", variant, precision, str(steps or 0),
                         str(batch_size), data_dir or "", study or "", augment_on)
    return _child(cmd)


def _theirs(variant, steps, batch_size, data_dir) -> float:
    """The blog's path as the blog ran it: float32 (it predates mixed precision), for
    as many steps as ours timed."""
    cmd = module_command("ablation.baseline", "--variant", variant, "--precision", "fp32",
                         "--steps", str(steps), "--batch-size", str(batch_size))
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return _child(cmd)["images_per_second"]


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of the pairwise ratios ours[k] / theirs[k]: each pair ran back to back,
    so a machine that slows down for a while slows both sides of a pair alike."""
    if not ours or len(ours) != len(theirs):
        raise ValueError("need one baseline figure per figure of ours")
    return statistics.median(o / t for o, t in zip(ours, theirs, strict=True))


def project(measured: dict[str, float]) -> dict[str, tuple[float, float, list[str]]]:
    """Whole-study training seconds (one seed) per built-in study with a measured
    variant: (here, on the blog's GPU, the measured variants used). Each variant's speed
    is the measured speed of its study's variant closest in multiply-adds, scaled by
    multiply-adds; the GPU figure scales the blog's ResNet-32 epoch time the same way."""
    from ablation.models import count_params
    from ablation.study import load_builtins

    studies = load_builtins()
    macs = {n: count_params(n).macs for n in measured}
    ref_macs = count_params(GPU_REF_VARIANT).macs
    out = {}
    for s in studies:
        here = [n for n in measured if n in s.variant_names]
        if not here:
            continue
        recipe = s.recipe()
        cpu = gpu = 0.0
        for v in s.variant_names:
            m = count_params(v).macs
            ref = min(measured, key=lambda n, m=m: (n not in here, abs(macs[n] - m)))
            epochs = registry.get(v).train_recipe(recipe).epochs
            cpu += epochs * TRAIN_IMAGES[recipe.dataset] / (measured[ref] * macs[ref] / m)
            gpu += epochs * GPU_RESNET32_EPOCH_S * m / ref_macs
        out[s.name] = (cpu, gpu, here)
    return out


def project_studies(measured: dict[str, float]) -> list[str]:
    """`project` as lines for the console."""
    from ablation.study import load_study

    lines = []
    for name, (cpu, gpu, here) in project(measured).items():
        s = load_study(name)
        lines.append(f"study {name} ({len(s.variant_names)} variants, one seed, "
                     f"{s.recipe().epochs} epochs): ≈ {results.duration(cpu)} of training "
                     f"here, ≈ {results.duration(gpu)} on a {GPU_NAME} (scaled by "
                     f"multiply-adds from {', '.join(here)})")
    return lines


def main(variants: list[str], precision: str = "fp32", steps: int | None = None,
         batch_size: int = 128, baseline: bool = False, data_dir: str | None = None,
         repeats: int = 3, study: str | None = None, train_limit: int | None = None,
         results_dir: Path | None = None, augment_on: str = "host") -> int:
    from ablation import data

    if data_dir:
        folder = data.resolve_data_dir("cifar10", data_dir)
        data.check("cifar10", folder)
        data_dir = str(folder)
    if baseline and importlib.util.find_spec("tf_keras") is None:
        raise AblationError("--baseline needs tf_keras: pip install 'ablation[baseline]'")
    source = f"real CIFAR-10 ({data_dir})" if data_dir else "generated images"
    print(f"benchmark: {steps or f'≥ {MIN_SECONDS:g} s of'} steps of batch {batch_size}, "
          f"{precision}, augmentation on the {augment_on}, {source}; each figure from a "
          "fresh process after a warm-up",
          flush=True)
    measured: dict[str, float] = {}
    for v in variants:
        epochs = registry.get(v).train_recipe(_study_of(v, study).recipe()).epochs
        ours, theirs = [], []
        for k in range(repeats if baseline else 1):
            got = _ours(v, precision, steps, batch_size, data_dir, study, augment_on)
            ours.append(got["images_per_second"])
            line = (f"  {v} run {k + 1}: ablation {ours[-1]:.0f} img/s ({got['steps']} steps, "
                    f"{got['backend']} on {got['device']}, matmul {got['matmul_precision']})")
            if baseline:
                theirs.append(_theirs(v, got["steps"], batch_size, data_dir))
                line += (f", blog Keras-2 path (fp32) {theirs[-1]:.0f} img/s, "
                         f"ratio {ours[-1] / theirs[-1]:.2f}")
            print(line, flush=True)
        ips = statistics.median(ours)
        measured[v] = ips
        images = train_limit or TRAIN_IMAGES["cifar10"]
        projected = epochs * images / ips
        msg = (f"{v}: {ips:.0f} img/s (median); {epochs}-epoch recipe on {images:,} images ≈ "
               f"{results.duration(projected)} of training steps here (evaluation and "
               "start-up not included)")
        if results_dir is not None:
            results.record_speed(results_dir, {
                "variant": v, "images_per_second": round(ips, 1), "precision": precision,
                "batch_size": batch_size, "device": got["device"], "backend": got["backend"],
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if baseline:
            msg += (f"; blog path (fp32) {statistics.median(theirs):.0f} img/s; "
                    f"median ratio ablation/blog = {median_ratio(ours, theirs):.2f}")
        print(msg, flush=True)
    if not study and not train_limit:
        for line in project_studies(measured):
            print(line, flush=True)
    if results_dir is not None:
        print(f"speeds kept in {Path(results_dir) / results.SPEEDS} (what `ablation run "
              f"--dry-run --results {results_dir}` projects from)", flush=True)
    return 0


if __name__ == "__main__":  # one measurement, in its own process
    v, prec, st, bs, dd, sref, *rest = sys.argv[1:]
    where = rest[0] if rest else "host"
    n = int(rest[1]) if len(rest) > 1 else 1
    os.environ.update(parallel.cpu_devices_env(dict(os.environ), n))  # before JAX
    try:  # "host,device": both, one after the other (one start-up for the two figures)
        got = {w: measure(v, prec, int(st) or None, int(bs), dd or None, sref or None, w, n)
               for w in where.split(",")}
        print(json.dumps(got.get(where, got)), flush=True)
    except AblationError as e:  # too few devices, batches that do not divide
        print(json.dumps({"error": str(e)}), flush=True)
    sys.stdout.flush()
    os._exit(0)
