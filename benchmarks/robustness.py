"""What the corruption sweep costs: generating CIFAR-10-C's 75 corrupted test sets here,
and `ablation evaluate` per trained run. The figures in docs/robustness.md ("Cost")
come from this script.

    python benchmarks/robustness.py --results DIR --data-dir DIR [--variants resnet32_e]
        [--images 10000] [--out robustness.md]

1. Generation: each corruption at each severity on the test set's first `--images`
   images (class-balanced), timed in this process.
2. Evaluation: the done runs of `--variants` in `--results` (their model.h5 kept) are
   copied to a scratch results folder and evaluated by `ablation evaluate`, as a user
   would; the first run generates the images (its time includes that), the others read
   them from the cache. Per run: the command's own per-set times (robustness.csv's
   `seconds`) and the accuracies.

Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def generation(data_dir: str | None, images: int) -> pd.DataFrame:
    from ablation import data
    from ablation.data import corruptions

    ds = data.load("cifar10", data_dir, train_limit=10)
    keys = data.balanced_subset(ds.y_test, images, ds.num_classes)
    x = np.ascontiguousarray(ds.x_test[keys])
    rows = []
    for name in corruptions.NAMES:
        t = time.perf_counter()
        for s in corruptions.SEVERITIES:
            corruptions.corrupt(x, name, s, keys)
        rows.append({"corruption": name, "seconds (5 severities)": time.perf_counter() - t})
    df = pd.DataFrame(rows)
    return pd.concat([df, pd.DataFrame([{"corruption": "all 15",
                                         "seconds (5 severities)": df.iloc[:, 1].sum()}])])


def evaluation(results: Path, variants: list[str], data_dir: str | None,
               images: int) -> tuple[pd.DataFrame, float]:
    scratch = Path(tempfile.mkdtemp(prefix="robustness-bench-"))
    try:
        for summary in sorted(results.glob("runs/*/*/summary.json")):
            run = summary.parent
            if run.name.rsplit("-s", 1)[0].split("-")[0] in variants and \
                    (run / "model.h5").is_file():
                dest = scratch / run.relative_to(results)
                dest.mkdir(parents=True)
                for f in ("summary.json", "config.json", "history.csv", "model.h5"):
                    if (run / f).is_file():
                        shutil.copy2(run / f, dest / f)
        cmd = [sys.executable, "-m", "ablation.cli", "evaluate", *variants, "--results",
               str(scratch), "--images", str(images)]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t
        rows = []
        for csv in sorted(scratch.glob("runs/*/*/robustness.csv")):
            df = pd.read_csv(csv, keep_default_na=False)
            corr = df[df["test_set"] == "corrupted"]
            rows.append({"run": csv.parent.name, "sets": len(df),
                         "images per set": int(df["images"].iloc[0]),
                         "seconds": df["seconds"].sum(),
                         "clean acc %": 100 * df.loc[df["test_set"] == "clean",
                                                     "accuracy"].iloc[0],
                         "corrupted acc %": 100 * corr["accuracy"].mean(),
                         "mCE %": 100 * (1 - corr.groupby("corruption")["accuracy"].mean()
                                         ).mean()})
        return pd.DataFrame(rows), wall
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--variants", default="resnet32_e")
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    from ablation.environment import cpu_name

    gen = generation(a.data_dir, a.images)
    runs, wall = evaluation(a.results, a.variants.split(","), a.data_dir, a.images)
    text = "\n".join([
        f"# Corruption sweep cost ({a.images:,} test images)", "",
        f"Machine: {cpu_name()}, TensorFlow's Keras, fp32 as the runs trained.", "",
        "## Generating the 75 corrupted sets (in one process)", "",
        gen.to_markdown(index=False, floatfmt=".1f"), "",
        "## `ablation evaluate` per run (the first run's time includes generating)", "",
        runs.to_markdown(index=False, floatfmt=".1f"), "",
        f"The whole command: {wall:.0f} s.", ""])
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
