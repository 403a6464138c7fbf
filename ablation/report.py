"""`ablation report`: rebuild the blog's six comparisons from the recorded runs.

Nothing here is typed in by hand: every number comes from a run folder's summary.json
and history.csv (timm's results/*.csv lesson). Runs are pooled over seeds only within
one recipe; the report has one block per recipe, the fullest first. The published
numbers of SPEC.md section 4 appear in their own table, never mixed with ours.

The markdown is deterministic: the same results give byte-identical README.md.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablation import registry, results
from ablation.errors import AblationError
from ablation.recipe import Recipe

VGG19_PARAMS = 39_002_738  # the blog's size reference (Keras applications VGG19)


@dataclass(frozen=True)
class Comparison:
    """One of the blog's comparisons, as data: adding one is a few lines."""

    key: str
    title: str
    variants: tuple[str, ...]
    zoom: bool = False  # zoomed test-accuracy plot over the last part of training
    sizes: bool = False  # bar chart of saved .h5 sizes
    vgg_reference: bool = False
    question: str = ""


COMPARISONS = (
    Comparison("resnet32", "ResNet-32 alone", ("resnet32",), vgg_reference=True,
               question="How well does the blog's ResNet-32 train, and how small is it?"),
    Comparison("refactor", "resnet32 vs resnet32_e: one network, two implementations",
               ("resnet32", "resnet32_e"),
               question="Same architecture, different initialisation: the gap is pure noise."),
    Comparison("deeper", "resnet32 vs resnet34: deeper yet smaller", ("resnet32", "resnet34")),
    Comparison("units", "Residual units (a)-(e)",
               ("resnet32_a", "resnet32_b", "resnet32_c", "resnet32_d", "resnet32_e"),
               zoom=True, question="The blog: '(a)-(e) are neck and neck'."),
    Comparison("v2", "Projection reading the block input: d/e vs d/e-v2",
               ("resnet32_d", "resnet32_d_v2", "resnet32_e", "resnet32_e_v2"), sizes=True,
               question="The blog: 'the v2 change makes no visible difference'."),
    Comparison("bottleneck", "ResNet-32 (c) vs bottleneck ResNet-50/101/152",
               ("resnet32_c", "resnet50", "resnet101", "resnet152"), zoom=True, sizes=True),
)

PUBLISHED = [
    ("He et al. 2015, Deep Residual Learning", "ResNet-20", "CIFAR-10 test error", "8.75%"),
    ("He et al. 2015, Deep Residual Learning", "ResNet-32", "CIFAR-10 test error", "7.51%"),
    ("He et al. 2015, Deep Residual Learning", "ResNet-44", "CIFAR-10 test error", "7.17%"),
    ("He et al. 2015, Deep Residual Learning", "ResNet-56", "CIFAR-10 test error", "6.97%"),
    ("He et al. 2015, Deep Residual Learning", "ResNet-110", "CIFAR-10 test error", "6.43%"),
    *[("He et al. 2016, Identity Mappings (median of 5)", f"ResNet-{d} ({u})",
       "CIFAR-10 test error", f"{e}%")
      for d, errs in (("110", (6.61, 8.17, 7.84, 6.71, 6.37)),
                      ("164", (5.93, 6.50, 6.14, 5.91, 5.46)))
      for u, e in zip("abcde", errs, strict=True)],
    ("Public Keras reproduction of this recipe", "ResNet-32, 200 epochs",
     "CIFAR-10 test accuracy", "92.68% (~20 s/epoch, GTX 1080 Ti)"),
]


# --- loading --------------------------------------------------------------------------------


@dataclass
class Run:
    summary: dict
    history: pd.DataFrame
    folder: Path

    @property
    def variant(self) -> str:
        return self.summary["variant"]


def load_runs(results_dir: Path, warn=None) -> list[Run]:
    """Every readable run; damaged or half-written ones are skipped with a warning."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs = []
    for path in results.iter_summaries(results_dir):
        try:
            s = results.read_json(path)
            for key in ("variant", "seed", "recipe_id", "recipe"):
                if key not in s:
                    raise AblationError(f"damaged file {path}: no {key!r}")
            hist_path = path.parent / "history.csv"
            hist = pd.read_csv(hist_path) if hist_path.exists() else pd.DataFrame()
            if len(hist) and not {"epoch", "val_accuracy"} <= set(hist.columns):
                raise AblationError(f"damaged file {hist_path}: missing columns")
        except AblationError as e:
            warn(f"skipping run: {e}")
            continue
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
            warn(f"skipping run {path.parent}: unreadable history.csv ({e})")
            continue
        runs.append(Run(s, hist, path.parent))
    return runs


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run with its summary fields (recipe flattened), for runs.csv."""
    rows = []
    for r in runs:
        s = {k: v for k, v in r.summary.items() if k != "recipe"}
        s.update({f"recipe_{k}": v for k, v in r.summary["recipe"].items()})
        s["run_dir"] = str(r.folder)
        rows.append(s)
    df = pd.DataFrame(rows)
    first = ["recipe_id", "variant", "seed", "status", "epochs_done", "epochs_planned",
             "best_val_accuracy", "final_val_accuracy"]
    cols = [c for c in first if c in df.columns] + sorted(c for c in df.columns
                                                          if c not in first)
    return df[cols].sort_values(["recipe_id", "variant", "seed"], kind="stable")


# --- statistics -----------------------------------------------------------------------------


def mean_std(values: list[float], pct: bool = True) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    k = 100.0 if pct else 1.0
    m = np.mean(vals) * k
    if len(vals) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {np.std(vals, ddof=1) * k:.2f}"


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def pairwise_tests(finals: dict[str, list[float]]) -> list[list[str]]:
    """Welch's t-test on final test accuracy for each pair, Holm-corrected."""
    from scipy import stats

    pairs = list(itertools.combinations(finals, 2))
    rows, testable = [], []
    for a, b in pairs:
        xa, xb = finals[a], finals[b]
        diff = (np.mean(xa) - np.mean(xb)) * 100 if xa and xb else float("nan")
        if len(xa) < 2 or len(xb) < 2:
            rows.append([a, b, _pp(diff), "–", "–", "needs ≥ 2 seeds each"])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = stats.ttest_ind(xa, xb, equal_var=False).pvalue
        if math.isnan(p):  # zero spread on both sides
            p = 0.0 if diff != 0 else 1.0
        testable.append((len(rows), p))
        rows.append([a, b, _pp(diff), f"{p:.3g}", None, None])
    for (i, _), adj in zip(testable, holm([p for _, p in testable]), strict=True):
        rows[i][4] = f"{adj:.3g}"
        rows[i][5] = ("**yes**, beyond seed spread" if adj < 0.05
                      else "no: within seed-to-seed noise")
    return rows


def _pp(diff: float) -> str:
    return "–" if math.isnan(diff) else f"{diff:+.2f} pp"


# --- figures --------------------------------------------------------------------------------


def colours() -> dict[str, tuple]:
    """One colour per registered variant, the same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]  # the saturated half first, then the pale one
    return {n: cmap((2 * i) % 20 + (2 * i) // 20 % 2) for i, n in
            enumerate(registry.variants())}


def _curve(runs: list[Run], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds per epoch (seeds that reached that epoch)."""
    frames = [r.history.set_index("epoch")[column] for r in runs
              if column in r.history.columns and len(r.history)]
    if not frames:
        return np.array([]), np.array([]), np.array([])
    table = pd.concat(frames, axis=1)
    return (table.index.to_numpy() + 1, table.mean(axis=1).to_numpy(),
            table.std(axis=1, ddof=1).fillna(0).to_numpy())


def _band(ax, runs, column, colour, label, scale=1.0, start=0):
    x, m, s = _curve(runs, column)
    keep = x > start
    x, m, s = x[keep], m[keep] * scale, s[keep] * scale
    if not len(x):
        return
    ax.plot(x, m, color=colour, lw=1.6, label=label)
    if len(runs) > 1:
        ax.fill_between(x, m - s, m + s, color=colour, alpha=0.2, lw=0)


def plot_curves(path: Path, groups: dict[str, list[Run]], title: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    col = colours()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    panels = [("accuracy", "train accuracy (%)", 100), ("loss", "train loss", 1),
              ("val_accuracy", "test accuracy (%)", 100), ("val_loss", "test loss", 1)]
    for ax, (column, label, scale) in zip(axes.flat, panels, strict=True):
        for v, runs in groups.items():
            _band(ax, runs, column, col[v], f"{v} (n={len(runs)})", scale)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if "loss" in column:
            ax.set_yscale("log")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{title}\nmean over seeds, band = ±1 std")
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def plot_zoom(path: Path, groups: dict[str, list[Run]], title: str, start: int) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    col = colours()
    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    for v, runs in groups.items():
        _band(ax, runs, "val_accuracy", col[v], f"{v} (n={len(runs)})", 100, start)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: test accuracy after epoch {start} (zoomed; band = ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def plot_sizes(path: Path, sizes: dict[str, float], title: str) -> None:
    import matplotlib.pyplot as plt

    col = colours()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    names = list(sizes)
    bars = ax.bar(names, [sizes[n] for n in names], color=[col[n] for n in names])
    ax.bar_label(bars, fmt="%.3f MB", fontsize=8)
    ax.set_ylabel("saved model (.h5, with optimizer state), MB")
    ax.set_title(f"{title}: model file size")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


# --- markdown -------------------------------------------------------------------------------


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def _mark(value, reference) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{int(value):,}" + (" ✓" if reference is not None and value == reference else "")


def _command(recipe: dict, variants: list[str], seeds: int) -> str:
    flags = []
    defaults = {"dataset": "cifar10", "epochs": 200, "batch_size": 128, "lr": 0.1,
                "weight_decay": 0.0001, "augment": "blog", "precision": "fp32",
                "train_limit": None, "test_limit": None}
    for key, default in defaults.items():
        if recipe.get(key) != default:
            flags.append(f"--{key.replace('_', '-')} {recipe.get(key)}")
    return " ".join(["ablation run", *variants, f"--seeds {max(1, seeds)}", *flags])


def _recipe_header(recipe_id: str, runs: list[Run]) -> list[str]:
    r = runs[0].summary["recipe"]
    seeds = sorted({x.summary["seed"] for x in runs})
    devices = sorted({str(x.summary.get("device", "?")) for x in runs})
    versions = sorted({f"Python {x.summary.get('python', '?')}, Keras "
                       f"{x.summary.get('keras', '?')}, {x.summary.get('backend', '?')} "
                       f"{x.summary.get('backend_version', '')}".strip() for x in runs})
    commits = sorted({(str(x.summary.get("git_commit") or "unknown")[:10]
                       + (" (dirty)" if x.summary.get("git_dirty") else "")) for x in runs})
    lines = [
        f"## Recipe `{recipe_id}`", "",
        f"- **Dataset**: {r['dataset']}, {runs[0].summary.get('train_images', '?')} train / "
        f"{runs[0].summary.get('test_images', '?')} test images"
        + (" — **a subset of the data, not comparable with the blog**"
           if r.get("train_limit") or r.get("test_limit") else ""),
        f"- **Recipe**: {r['epochs']} epochs, batch {r['batch_size']}, SGD lr {r['lr']} "
        f"(momentum {r.get('momentum', 0.9)}, Nesterov), lr ×0.1 from epochs "
        f"{' and '.join(map(str, Recipe.from_dict(r).milestones()))} (0-based), "
        f"L2 {r['weight_decay']}, augmentation `{r['augment']}`, precision {r['precision']}",
        f"- **Runs**: {len(runs)} ({len({x.variant for x in runs})} variants, seeds "
        f"{', '.join(map(str, seeds))})",
        f"- **Hardware**: {'; '.join(devices)}",
        f"- **Software**: {'; '.join(versions)}; code {', '.join(commits)}",
    ]
    partial = sorted(f"{x.variant} s{x.summary['seed']} "
                     f"({x.summary.get('epochs_done', 0)}/{r['epochs']} epochs, "
                     f"{x.summary.get('status', '?')})"
                     for x in runs if (x.summary.get("epochs_done") or 0) < r["epochs"])
    if partial:
        lines.append(f"- **Partial runs** (fewer epochs than planned): {', '.join(partial)}")
    return [*lines, ""]


def _comparison_block(cmp: Comparison, n: int, runs: list[Run], recipe_id: str,
                      fig_dir: Path, rel: str) -> list[str]:
    by_variant = {v: sorted([r for r in runs if r.variant == v and len(r.history)],
                            key=lambda r: r.summary["seed"]) for v in cmp.variants}
    present = {v: rs for v, rs in by_variant.items() if rs}
    recipe = runs[0].summary["recipe"]
    seeds = max((len(rs) for rs in present.values()), default=1)
    out = [f"### {n}. {cmp.title}", ""]
    if cmp.question:
        out += [f"*{cmp.question}*", ""]
    missing = [v for v in cmp.variants if v not in present]
    if not present:
        fill = _command(recipe, list(cmp.variants), seeds)
        return [*out, f"**Pending**: no runs yet. Fill it with `{fill}`", ""]
    if missing:
        out += [f"**Missing**: {', '.join(missing)} — run "
                f"`{_command(recipe, missing, seeds)}`", ""]

    rows = []
    finals: dict[str, list[float]] = {}
    sizes: dict[str, float] = {}
    for v, rs in present.items():
        s0 = rs[0].summary
        ref = registry.get(v).reference_params if v in registry.variants() else None
        ref = ref or (None, None, None)
        h5 = [r.summary.get("h5_bytes") for r in rs if r.summary.get("h5_bytes")]
        if h5:
            sizes[v] = float(np.mean(h5)) / 1e6
        finals[v] = [r.summary["final_val_accuracy"] for r in rs
                     if r.summary.get("final_val_accuracy") is not None]
        done = [r.summary.get("epochs_done", 0) for r in rs]
        ips = [r.summary.get("images_per_second") for r in rs
               if r.summary.get("images_per_second")]
        secs = [r.summary.get("train_seconds") for r in rs if r.summary.get("train_seconds")]
        rows.append({
            "variant": v,
            "blog label": registry.get(v).label if v in registry.variants() else "",
            "params": _mark(s0.get("params_total"), ref[0]),
            "trainable": _mark(s0.get("params_trainable"), ref[1]),
            "non-trainable": _mark(s0.get("params_non_trainable"), ref[2]),
            ".h5 MB": f"{sizes[v]:.3f}" if v in sizes else "–",
            "seeds": str(len(rs)),
            "epochs": f"{min(done)}/{recipe['epochs']}" if min(done) == max(done)
            else f"{min(done)}–{max(done)}/{recipe['epochs']}",
            "best test acc % (picked on test)": mean_std(
                [r.summary.get("best_val_accuracy") for r in rs]),
            "final test acc %": mean_std(finals[v]),
            "train time": _hours(np.mean(secs)) if secs else "–",
            "img/s": f"{np.mean(ips):.0f}" if ips else "–",
        })
    if cmp.vgg_reference:
        rows.append({"variant": "*VGG19 (reference, blog)*", "blog label": "",
                     "params": f"{VGG19_PARAMS:,}", "trainable": "", "non-trainable": "",
                     ".h5 MB": "", "seeds": "", "epochs": "",
                     "best test acc % (picked on test)": "", "final test acc %": "",
                     "train time": "", "img/s": ""})
    out += [_md(pd.DataFrame(rows)), "",
            "✓ = equals the blog's published count. Accuracy: mean ± std over seeds "
            "(sample std). 'Best' is the maximum over epochs of the test accuracy, picked on "
            "the test set as the blog did — optimistic; 'final' is the last epoch.", ""]

    base = f"{n}-{cmp.key}"
    plot_curves(fig_dir / f"{base}-curves.png", present, cmp.title)
    out += [f"![{cmp.title}: curves]({rel}/{base}-curves.png)", ""]
    if cmp.zoom:
        start = Recipe.from_dict(recipe).milestones()[1]  # after the second lr drop
        last = max(len(r.history) for rs in present.values() for r in rs)
        start = start if last > start else max(0, last // 2)
        plot_zoom(fig_dir / f"{base}-zoom.png", present, cmp.title, start)
        out += [f"![{cmp.title}: zoomed test accuracy]({rel}/{base}-zoom.png)", ""]
    if cmp.sizes and sizes:
        plot_sizes(fig_dir / f"{base}-sizes.png", sizes, cmp.title)
        out += [f"![{cmp.title}: .h5 sizes]({rel}/{base}-sizes.png)", ""]
    if len(present) > 1:
        tests = pairwise_tests(finals)
        out += ["Is the difference in final test accuracy larger than the seed-to-seed "
                "spread? (Welch's t-test, Holm-corrected within this comparison)", "",
                _md(pd.DataFrame(tests, columns=["A", "B", "A − B", "p", "p (Holm)",
                                                 "real difference?"])), ""]
    return out


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _recipe_order(item: tuple[str, list[Run]]) -> tuple:
    rid, runs = item
    r = runs[0].summary["recipe"]
    subset = bool(r.get("train_limit") or r.get("test_limit"))
    return (subset, -r["epochs"], -len(runs), rid)


def build(results_dir: Path, out_dir: Path, recipe: str | None = None,
          epochs: int | None = None) -> Path:
    """Write README.md, runs.csv and the figures; return the README's path."""
    import matplotlib

    matplotlib.use("Agg")
    if not Path(results_dir).is_dir():
        raise AblationError(f"no results folder {results_dir}; run `ablation run` first")
    runs = load_runs(Path(results_dir))
    if not runs:
        raise AblationError(f"no readable runs in {results_dir}; run `ablation run` first")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.summary["recipe_id"], []).append(r)
    if recipe:
        groups = {k: v for k, v in groups.items() if k.startswith(recipe)}
    if epochs:
        groups = {k: v for k, v in groups.items() if v[0].summary["recipe"]["epochs"] == epochs}
    if not groups:
        raise AblationError("no runs match the --recipe/--epochs filter")

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise results.disk_error(e, out_dir) from None
    selected = [r for rs in groups.values() for r in rs]
    lines = ["# Ablation report: ResNet variants on CIFAR", "",
             "Rebuilt by `ablation report` from the recorded runs alone; every number below "
             "comes from a run folder. Recipes are never pooled: each has its own block, the "
             "fullest first.", "",
             "| recipe | dataset | epochs | runs | variants |", "|---|---|---|---|---|"]
    ordered = sorted(groups.items(), key=_recipe_order)
    for rid, rs in ordered:
        lines.append(f"| `{rid}` | {rs[0].summary['dataset']} | "
                     f"{rs[0].summary['recipe']['epochs']} | {len(rs)} | "
                     f"{len({r.variant for r in rs})} |")
    lines.append("")
    for rid, rs in ordered:
        fig_dir = out_dir / rid
        fig_dir.mkdir(exist_ok=True)
        lines += _recipe_header(rid, rs)
        for n, cmp in enumerate(COMPARISONS, 1):
            lines += _comparison_block(cmp, n, rs, rid, fig_dir, rid)
    lines += ["## Published numbers (context, not measured here)", "",
              _md(pd.DataFrame(PUBLISHED, columns=["source", "network", "metric", "value"])),
              "", "`runs.csv` beside this file holds one row per run with every summary field.",
              ""]
    runs_frame(selected).to_csv(out_dir / "runs.csv", index=False)
    readme = out_dir / "README.md"
    results.atomic_write_text(readme, "\n".join(lines))
    return readme
