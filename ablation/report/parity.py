"""The blog's code beside the harness: the same network and recipe trained by the
harness's path and by the blog's own Keras-2 + ImageDataGenerator path
(`python -m ablation.baseline --epochs E`), paired by seed, and the mean difference in
final test accuracy with its 95 % interval (a paired t interval, SciPy's).

The harness's runs are ordinary run folders of a results folder; the blog path's runs
lie in its `baseline/<variant>-s<seed>/` (summary.json, history.csv). The table is
rebuilt from those files, never typed (benchmarks/parity.py runs both and writes it).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ablation import results
from ablation.errors import AblationError
from ablation.protocol import JobState
from ablation.report import markdown
from ablation.report.stats import t_interval
from ablation.store import load_runs, quiet

BASELINE = "baseline"  # the blog path's runs, under the results folder


def frame(results_dir: Path, variant: str = "resnet32_e") -> pd.DataFrame:
    """One row per seed both paths finished at the same epochs: the harness's and the
    blog path's final test accuracy (fractions), their difference, each path's time."""
    ours = {}
    for r in load_runs(Path(results_dir), quiet, history=False):
        rec = r.record
        if (r.variant == variant and rec.status == JobState.DONE
                and rec.recipe.augment == "blog" and rec.final_test_accuracy is not None):
            ours[(rec.seed, rec.recipe.epochs)] = rec
    rows = []
    for path in sorted((Path(results_dir) / BASELINE).glob(f"{variant}-s*/summary.json")):
        theirs = results.read_json(path)
        mine = ours.get((theirs.get("seed"), theirs.get("epochs")))
        if mine is None or theirs.get("train_images", 50_000) != mine.train_images:
            continue
        rows.append({"seed": theirs["seed"], "epochs": theirs["epochs"],
                     "harness": float(mine.final_test_accuracy),
                     "blog_path": float(theirs["final_test_accuracy"]),
                     "harness_minutes": (mine.train_seconds or math.nan) / 60,
                     "blog_path_minutes": float(theirs.get("train_seconds") or math.nan) / 60})
    df = pd.DataFrame(rows, columns=["seed", "epochs", "harness", "blog_path",
                                     "harness_minutes", "blog_path_minutes"])
    df["difference"] = df["harness"] - df["blog_path"]
    return df.sort_values("seed").reset_index(drop=True)


def interval(differences, confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean paired difference and its t interval (in the values' units)."""
    d = pd.Series(differences, dtype=float)
    if len(d) < 2:
        raise AblationError("a paired interval needs two seeds or more")
    low, high = t_interval(list(d), confidence)
    return float(d.mean()), low, high


def write(results_dir: Path, out_dir: Path, variant: str = "resnet32_e") -> Path:
    """The side-by-side report (README.md in `out_dir`): the seeds' table and the
    interval."""
    df = frame(results_dir, variant)
    if len(df) < 2:
        raise AblationError(f"{results_dir} holds {len(df)} seed(s) run by both paths at "
                            "the same epochs; a paired interval needs two or more")
    mean, low, high = interval(100 * df["difference"])
    shown = pd.DataFrame({
        "seed": df["seed"], "epochs": df["epochs"],
        "harness %": [f"{100 * v:.2f}" for v in df["harness"]],
        "blog's path %": [f"{100 * v:.2f}" for v in df["blog_path"]],
        "harness − blog (points)": [f"{100 * v:+.2f}" for v in df["difference"]],
        "harness min": [f"{v:.1f}" for v in df["harness_minutes"]],
        "blog's path min": [f"{v:.1f}" for v in df["blog_path_minutes"]]})
    text = "\n".join([
        f"# {variant}: the harness beside the blog's own code", "",
        f"The same network and recipe ({int(df['epochs'].iloc[0])} epochs of the blog's: "
        "SGD 0.1 Nesterov, step schedule, flip + 4-px shift, batch 128, 391 steps an "
        "epoch, the whole of CIFAR-10) trained by the harness and by the blog's own path "
        "(Keras 2 layers and `ImageDataGenerator`: `python -m ablation.baseline`), paired "
        "by seed (the seed names each path's own random start and order; the pairs share "
        "the machine and the hour). Final test accuracy; the time is each run's training.",
        "", markdown.table(shown), "",
        f"**Mean difference, harness − blog's path: {mean:+.2f} points, 95 % interval "
        f"[{low:+.2f}, {high:+.2f}]** (a paired t interval over {len(df)} seeds, SciPy's). "
        + ("The interval holds 0: no difference is shown at this many seeds."
           if low <= 0 <= high else "The interval excludes 0."), "",
        "Rebuilt from the run folders by `python benchmarks/parity.py --report-only`.", ""])
    out_dir = Path(out_dir)
    results.atomic_write_text(out_dir / "README.md", text)
    return out_dir / "README.md"
