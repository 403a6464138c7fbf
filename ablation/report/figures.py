"""The report's figures: training curves, zoomed test accuracy, .h5 sizes and layer
responses. Deterministic: fixed colours per variant, no timestamps in the files. Each is a
PNG for the README, and on request also a PDF or SVG beside it, for a paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablation.results import TEST, Split
from ablation.store import Run


class Palette(dict):
    """How each variant of a study is drawn in every figure of its report: its colour
    (the mapping) and its name in legends, the study's label for it (`name`)."""

    def __init__(self, colours: dict[str, tuple], labels: dict[str, str]):
        super().__init__(colours)
        self.labels = labels

    def name(self, variant: str) -> str:
        return self.labels.get(variant) or variant


def colours(names: list[str], labels: dict[str, str] | None = None) -> Palette:
    """One colour per variant of a study, the same in every figure of its report; the
    legends say each variant's label (`labels`; its name where it has none)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]  # the saturated half first, then the pale one
    return Palette({n: cmap((2 * i) % 20 + (2 * i) // 20 % 2) for i, n in enumerate(names)},
                   labels or {})


def _plain_ticks(ax) -> None:
    """A log axis's tick labels as plain numbers (1.2, 1.5, 2), not 1.25x10^0: a loss
    curve spans a narrow range, where only minor ticks fall."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


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


FORMATS = ("png", "pdf", "svg")  # --figure-format: the README's PNG, and vector for papers
# the metadata each format would stamp with a date or a version: left out, so the same
# runs give the same bytes
_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None,
                                               "CreationDate": None},
             "svg": {"Creator": None, "Date": None}}


def _save(fig, path: Path, also: tuple[str, ...] = ()) -> None:
    """Save `fig` at `path` (a PNG, for the README) and beside it in each format of
    `also` (same name, that suffix), without timestamps."""
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": "ablation", "pdf.compression": 6}):
        for target in [path, *(path.with_suffix(f".{f}") for f in also if f != "png")]:
            fmt = target.suffix[1:]
            fig.savefig(target, dpi=90, format=fmt, metadata=_METADATA[fmt])
    plt.close(fig)


def plot_curves(path: Path, groups: dict[str, list[Run]], title: str,
                col: Palette, split: Split = TEST, also: tuple[str, ...] = ()) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    panels = [("accuracy", "train accuracy (%)", 100), ("loss", "train loss", 1),
              (split.curve, f"{split.name} accuracy (%)", 100),
              (split.loss, f"{split.name} loss", 1)]
    for ax, (column, label, scale) in zip(axes.flat, panels, strict=True):
        for v, runs in groups.items():
            _band(ax, runs, column, col[v], f"{col.name(v)} (n={len(runs)})", scale)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if "loss" in column:
            ax.set_yscale("log")
            _plain_ticks(ax)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{title}\nmean over seeds, band = ±1 std")
    _save(fig, path, also)


MIN_ZOOM_EPOCHS = 2  # a zoom shows lines, never single points


def zoom_start(drops: tuple[int, ...], epochs: int) -> tuple[int, str] | None:
    """Where the zoomed figure starts (epochs after it are shown) and why: after the last
    lr drop of a step schedule; under a schedule with no drop (cosine, linear, constant),
    or one whose last drop leaves too few epochs, the last third of training. None when
    that leaves fewer than MIN_ZOOM_EPOCHS epochs: then there is no zoom to draw."""
    if drops and epochs - drops[-1] >= MIN_ZOOM_EPOCHS:
        start, why = drops[-1], "after the last lr drop"
    else:
        start, why = epochs - max(MIN_ZOOM_EPOCHS, epochs // 3), "the last third of training"
    if epochs - start < MIN_ZOOM_EPOCHS or start < 0:
        return None
    return start, why


def plot_zoom(path: Path, groups: dict[str, list[Run]], title: str, start: int,
              col: Palette, split: Split = TEST, also: tuple[str, ...] = (),
              why: str = "") -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    for v, runs in groups.items():
        _band(ax, runs, split.curve, col[v], f"{col.name(v)} (n={len(runs)})", 100,
              start)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{split.name} accuracy (%)")
    ax.set_title(f"{title}: {split.name} accuracy after epoch {start}"
                 + (f", {why}" if why else "") + " (zoomed; band = ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path, also)


def plot_sizes(path: Path, sizes: dict[str, float], title: str, col: Palette,
               also: tuple[str, ...] = ()) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    names = list(sizes)
    bars = ax.bar([col.name(n) for n in names], [sizes[n] for n in names],
                  color=[col[n] for n in names])
    ax.bar_label(bars, fmt="%.3f MB", fontsize=8)
    ax.set_ylabel("saved model (.h5, with optimizer state), MB")
    ax.set_title(f"{title}: model file size")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, also)


# the Pareto figure's cost axes: (summary column, axis label, lower is better)
COST_AXES = (("params_total", "parameters", True),
             ("macs", "multiply-adds per image", True),
             ("infer_images_per_second", "inference images/s", False))


def plot_pareto(path: Path, summary: pd.DataFrame, title: str, col: Palette,
                split_name: str = "test", also: tuple[str, ...] = ()
                ) -> dict[str, list[str]]:
    """Final accuracy (mean ± std over seeds) against each cost the variants have
    (parameters, multiply-adds, inference speed; log axes where a cost spans a decade),
    the Pareto frontier joined
    and ringed. Returns each drawn axis' frontier (its label -> variants, cheapest
    first); draws nothing and returns {} when no axis has two variants."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from ablation.report.stats import frontier

    acc = 100 * summary["final_mean"].astype(float)
    err = 100 * summary["final_std"].astype(float).fillna(0)
    axes = [(c, label, low) for c, label, low in COST_AXES
            if c in summary and pd.to_numeric(summary[c], errors="coerce").notna().sum() > 1]
    if not axes or acc.notna().sum() < 2:
        return {}
    fig, axs = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 4), squeeze=False,
                            constrained_layout=True)
    fronts = {}
    for ax, (column, label, low) in zip(axs[0], axes, strict=True):
        cost = pd.to_numeric(summary[column], errors="coerce").astype(float)
        on = frontier(cost.tolist(), acc.tolist(), low)
        for i, v in enumerate(summary["variant"]):
            if np.isnan(cost[i]) or np.isnan(acc[i]):
                continue
            ax.errorbar(cost[i], acc[i], yerr=err[i], fmt="o", color=col[v], capsize=3,
                        label=col.name(v))
            if on[i]:
                ax.plot(cost[i], acc[i], "o", mfc="none", mec="black", ms=12)
        idx = sorted((i for i in range(len(on)) if on[i]), key=lambda i: cost[i],
                     reverse=not low)
        ax.plot(cost[idx], acc[idx], "--", color="black", lw=1, alpha=0.6)
        fronts[label] = [summary["variant"].iloc[i] for i in idx]
        span = cost.max() / cost.min() if cost.min() > 0 else 1.0
        if span >= 10:  # a log axis where costs span a decade or more
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels would collide
        ax.margins(x=0.1, y=0.1)
        ax.set_xlabel(label + ("" if low else " (higher is better)")
                      + (", log" if span >= 10 else ""))
        ax.set_ylabel(f"final {split_name} accuracy, %")
        ax.grid(alpha=0.3)
    axs[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: accuracy against cost (ringed: the Pareto frontier)")
    _save(fig, path, also)
    return fronts


def plot_spaces(path: Path, errors: dict[str, np.ndarray], weights: dict[str, np.ndarray],
                title: str, split_name: str = "test", also: tuple[str, ...] = ()) -> None:
    """Each design space's error EDF (the share of its models at or below an error);
    beside it the complexity-normalised EDF when `weights` are given."""
    import matplotlib.pyplot as plt

    from ablation.report.stats import edf

    panels = [("models, equally weighted", None)] + (
        [("normalised for complexity", weights)] if weights else [])
    fig, axs = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False,
                            constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    for ax, (label, w) in zip(axs[0], panels, strict=True):
        for i, (space, e) in enumerate(errors.items()):
            x, y = edf(e, None if w is None else w[space])
            ax.step(np.r_[x[0], x], np.r_[0.0, y], where="post", color=cmap(i % 10),
                    label=f"{space} ({len(e)} models)")
        ax.set_xlabel(f"final {split_name} error, %")
        ax.set_ylabel("share of models at or below")
        ax.set_ylim(0, 1.02)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("design spaces' error distributions", fontsize=11)
    _save(fig, path, also)


def plot_responses(path: Path, responses: pd.DataFrame, title: str,
                   col: Palette, also: tuple[str, ...] = ()) -> None:
    """He et al. 2015, Fig. 7 style: top, the std of each 3x3 layer's response in
    network order; bottom, the same values sorted in descending order. One line per
    variant (mean over seeds), band = ±1 std over seeds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    for v, g in responses.groupby("variant", sort=False):
        per_seed = g.pivot_table(index="index", columns="seed", values="std")
        m = per_seed.mean(axis=1).to_numpy()
        s = per_seed.std(axis=1, ddof=1).fillna(0).to_numpy()
        x = per_seed.index.to_numpy() + 1
        label = f"{col.name(v)} (n={per_seed.shape[1]})"
        top.plot(x, m, color=col[v], lw=1.4, marker=".", label=label)
        order = np.argsort(-m, kind="stable")
        bottom.plot(np.arange(1, len(m) + 1), m[order], color=col[v], lw=1.4, marker=".",
                    label=label)
        if "point" in g.columns:  # raw conv outputs (feeding an addition) as crosses
            raw = g[g["point"] == "conv output"]["index"].unique()
            keep = np.isin(per_seed.index.to_numpy(), raw)
            top.plot(x[keep], m[keep], ls="none", marker="x", ms=7, color=col[v])
        if per_seed.shape[1] > 1:
            top.fill_between(x, m - s, m + s, color=col[v], alpha=0.2, lw=0)
            bottom.fill_between(np.arange(1, len(m) + 1), (m - s)[order], (m + s)[order],
                                color=col[v], alpha=0.2, lw=0)
    top.set_xlabel("3x3 layer index (network order)")
    bottom.set_xlabel("3x3 layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std of the layer response")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{title}: layer responses\n(after BN, before ReLU or addition; "
                  "x: a conv feeding anything but a BN, its own output)", fontsize=10)
    _save(fig, path, also)


def plot_tuning(path: Path, points: dict[str, dict[str, dict[int, float]]],
                settings: dict[str, dict], tuned, col: Palette, also: tuple[str, ...] = (),
                chosen: dict[str, str] | None = None) -> None:
    """Validation accuracy (mean over the tuning seeds) against each tuned field, for
    every setting tried at every epoch it was compared at (`points`: variant -> setting
    key -> {epoch: accuracy}; under successive halving each rung, so settings stopped at
    a rung are drawn too): a line per variant and epoch, the last epoch's solid (with
    several fields, each value's best over the others); for two grid fields, a heat map
    per variant of each setting's last epoch reached. Each variant's chosen setting
    (`chosen`: variant -> setting key) is marked: a star on its line, a box round its
    cell."""
    chosen = chosen or {}
    import matplotlib.pyplot as plt

    axes_ = list(tuned.axes)
    variants = list(points)
    epochs = sorted({e for v in variants for p in points[v].values() for e in p})
    top = epochs[-1] if epochs else 0
    grid2 = len(axes_) == 2 and not any(a.is_range for a in axes_)
    if grid2:
        fig, panels = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 4),
                                   constrained_layout=True, squeeze=False)
        a, b = axes_
        for ax, v in zip(panels[0], variants, strict=True):
            grid = np.full((len(a.values), len(b.values)), np.nan)
            at = {}
            for k, by_epoch in points[v].items():
                if not by_epoch:
                    continue
                s = settings[k]
                last = max(by_epoch)
                i, j = a.values.index(s[a.name]), b.values.index(s[b.name])
                grid[i, j], at[i, j] = 100 * by_epoch[last], last
            im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
            ax.set_xticks(range(len(b.values)), [f"{x:g}" for x in b.values])
            ax.set_yticks(range(len(a.values)), [f"{x:g}" for x in a.values])
            ax.set_xlabel(b.name)
            ax.set_ylabel(a.name)
            ax.set_title(col.name(v))
            if chosen.get(v) in settings:
                s = settings[chosen[v]]
                i, j = a.values.index(s[a.name]), b.values.index(s[b.name])
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5,
                                           ec="red", label="chosen"))
            for (i, j), last in at.items():
                ax.text(j, i, f"{grid[i, j]:.1f}" + ("" if last == top else f"\n@e{last}"),
                        ha="center", va="center", fontsize=8, color="w")
            fig.colorbar(im, ax=ax, label="validation accuracy (%)")
    else:
        fig, panels = plt.subplots(1, len(axes_), figsize=(5.5 * len(axes_), 4),
                                   constrained_layout=True, squeeze=False)
        for ax, axis in zip(panels[0], axes_, strict=True):
            numeric = all(isinstance(s[axis.name], int | float) for s in settings.values())
            xs_all = sorted({s[axis.name] for s in settings.values()},
                            key=lambda x: (str(type(x)), x))
            for v in variants:
                for e in epochs:
                    best: dict = {}
                    for k, by_epoch in points[v].items():
                        if e in by_epoch:
                            x = settings[k][axis.name]
                            best[x] = max(best.get(x, -1.0), by_epoch[e])
                    if not best:
                        continue
                    xs = [x for x in xs_all if x in best]
                    pos = xs if numeric else [xs_all.index(x) for x in xs]
                    last = e == top
                    ax.plot(pos, [100 * best[x] for x in xs], marker="o" if last else ".",
                            color=col[v], ls="-" if last else ":", alpha=1 if last else 0.5,
                            label=col.name(v) + ("" if len(epochs) == 1 else f", epoch {e}"))
                k = chosen.get(v)
                if k in points[v] and top in points[v][k]:
                    x = settings[k][axis.name]
                    ax.plot(x if numeric else xs_all.index(x), 100 * points[v][k][top],
                            marker="*", ms=16, color=col[v], mec="black", ls="none",
                            label=f"{col.name(v)}: chosen")
            if not numeric:
                ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
            if numeric and (axis.log or _spread(settings, axis.name)):
                ax.set_xscale("log")
            ax.set_xlabel(axis.name + (" (best over the other fields)" if len(axes_) > 1
                                       else ""))
            ax.set_ylabel("validation accuracy (%)")
            ax.grid(alpha=0.3)
        panels[0][0].legend(fontsize=7)
    fig.suptitle("tuning: validation accuracy, mean over the tuning seeds"
                 + (f"\nat epochs {', '.join(map(str, epochs))} (each setting as far as it "
                    "was trained)" if len(epochs) > 1 else ""), fontsize=10)
    _save(fig, path, also)


def _spread(settings: dict[str, dict], field: str) -> bool:
    """Whether a field's values span a factor of 4 or more (then a log axis reads best)."""
    xs = [s[field] for s in settings.values() if isinstance(s[field], int | float)]
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 4


def plot_budget(path: Path, curves: dict[str, list[float]], epoch: int,
                col: Palette, also: tuple[str, ...] = ()) -> None:
    """Expected best validation accuracy against the number of settings tried, one line
    per variant (Dodge et al. 2019's figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for v, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), [100 * y for y in ys], marker="o", color=col[v],
                label=col.name(v))
    ax.set_xlabel("settings tried")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"expected best validation accuracy (%), epoch {epoch}")
    ax.set_title("expected best of k settings tried (Dodge et al. 2019)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, also)


def plot_robustness(path: Path, rows: pd.DataFrame, per_corruption: pd.DataFrame, title: str,
                    col: Palette, also: tuple[str, ...] = ()) -> None:
    """Left: accuracy against severity (0 = clean), the mean over corruptions, one line
    per variant (mean over seeds, band = min to max over seeds). Right: each
    corruption's error (mean over severities and seeds), one bar per variant."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True,
                                      gridspec_kw={"width_ratios": [1, 1.5]})
    variants = list(per_corruption.columns)
    for v in variants:
        g = rows[rows["variant"] == v]
        clean = g[g["test_set"] == "clean"].set_index("seed")["accuracy"]
        corr = g[g["test_set"] == "corrupted"].groupby(["seed", "severity"])["accuracy"]
        by = corr.mean().unstack("severity")
        by.insert(0, 0, clean.reindex(by.index))
        x = by.columns.to_numpy()
        m = 100 * by.mean().to_numpy()
        left.plot(x, m, color=col[v], marker="o", lw=1.4,
                  label=f"{col.name(v)} (n={len(by)})")
        if len(by) > 1:
            left.fill_between(x, 100 * by.min().to_numpy(), 100 * by.max().to_numpy(),
                              color=col[v], alpha=0.2, lw=0)
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("severity (0 = clean)")
    left.set_ylabel("accuracy % (mean over corruptions)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    y = np.arange(len(per_corruption))
    h = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        right.barh(y + (i - (len(variants) - 1) / 2) * h, per_corruption[v].to_numpy(), h,
                   color=col[v], label=col.name(v))
    right.set_yticks(y, [n.replace("_", " ") for n in per_corruption.index], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("error % (mean over severities and seeds)")
    right.legend(fontsize=8, loc="lower right")
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}: accuracy under corruption", fontsize=10)
    _save(fig, path, also)
