"""How much to trust an inference timing: `ablation.inference.measure` repeated, within
one process and across fresh processes, per variant. The figures in docs/performance.md
("Inference speed") come from this script.

    python benchmarks/inference.py --data-dir DIR [--variants he_resnet20,he_resnet56]
        [--processes 3] [--measurements 3] [--precision fp32] [--out inference.md]

Each process builds the variant as a job does (its compile settings, its precision;
weights at their initialisation, which does not change the speed), then takes
`--measurements` timings in a row, each `inference.measure` (5 repeats of >= 0.25 s at
batch 256, then one-image calls). It prints, per variant: each measurement's median
images/s and latency; the spread of the repeats inside one measurement (lowest to
highest, relative to its median); and the spread of the medians across measurements and
processes (max/min - 1), which is what two runs' recorded figures can differ by.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def child(variant: str, precision: str, measurements: int, data_dir: str | None) -> list:
    """In this process: the variant's network as a job compiles it, timed repeatedly."""
    from ablation import backend

    name = backend.choose()
    import keras

    from ablation import data, inference, training
    from ablation.recipe import Recipe
    from ablation.study import builtin_home, load_study

    load_study(builtin_home(variant))
    on_gpu = backend.gpus_seen(name) > 0
    settings = backend.compile_settings(name, precision, on_gpu, 1)
    ds = (data.load("cifar10", data_dir, train_limit=10, test_limit=inference.BATCH)
          if data_dir else data.synthetic(n_train=10, n_test=inference.BATCH))
    keras.utils.set_random_seed(0)
    model = training.training_model(variant, Recipe(precision=precision), ds.num_classes,
                                    settings["jit_compile"], 1)
    images = data.normalise(ds.x_test, ds.mean, ds.std)
    net = training.network(model)
    return [inference.measure(net.predict_on_batch, images) for _ in range(measurements)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="he_resnet20,he_resnet56")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--measurements", type=int, default=3)
    p.add_argument("--data-dir")
    p.add_argument("--out", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.precision, a.measurements, a.data_dir)))
        return 0
    lines = ["| variant | process | measurement | images/s (median of 5) | repeats "
             "lowest–highest | latency ms median (p90) |", "|---|---|---|---|---|---|"]
    summary = []
    for v in a.variants.split(","):
        medians, within = [], []
        for proc in range(a.processes):
            cmd = [sys.executable, "-P", __file__, "--child", v, "--precision", a.precision,
                   "--measurements", str(a.measurements),
                   *(["--data-dir", a.data_dir] if a.data_dir else [])]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{v}: the measuring process failed: "
                                 f"{out.stderr.strip().splitlines()[-1:]}")
            for m, got in enumerate(json.loads(out.stdout.strip().splitlines()[-1])):
                ips = got["infer_images_per_second"]
                lo, hi = got["infer_images_per_second_low"], got["infer_images_per_second_high"]
                medians.append(ips)
                within.append(hi / lo - 1)
                lines.append(f"| {v} | {proc + 1} | {m + 1} | {ips:,.0f} | {lo:,.0f}–{hi:,.0f} "
                             f"| {got['infer_latency_ms']:.2f} "
                             f"({got['infer_latency_p90_ms']:.2f}) |")
        summary.append(f"- {v}: the repeats inside one measurement span {min(within):.1%}–"
                       f"{max(within):.1%} (highest/lowest − 1); the medians of "
                       f"{len(medians)} measurements in {a.processes} processes span "
                       f"{max(medians) / min(medians) - 1:.1%}.")
    text = "\n".join([*lines, "", *summary]) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
