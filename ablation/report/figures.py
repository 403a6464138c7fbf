"""The report's figures: training curves, zoomed test accuracy, .h5 sizes and layer
responses. Deterministic: fixed colours per variant, no timestamps in the PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablation.report.load import Run


def colours(names: list[str]) -> dict[str, tuple]:
    """One colour per variant of a study, the same in every figure of its report."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]  # the saturated half first, then the pale one
    return {n: cmap((2 * i) % 20 + (2 * i) // 20 % 2) for i, n in enumerate(names)}


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


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def plot_curves(path: Path, groups: dict[str, list[Run]], title: str,
                col: dict[str, tuple]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
    _save(fig, path)


def plot_zoom(path: Path, groups: dict[str, list[Run]], title: str, start: int,
              col: dict[str, tuple]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    for v, runs in groups.items():
        _band(ax, runs, "val_accuracy", col[v], f"{v} (n={len(runs)})", 100, start)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: test accuracy after epoch {start} (zoomed; band = ±1 std)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_sizes(path: Path, sizes: dict[str, float], title: str, col: dict[str, tuple]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    names = list(sizes)
    bars = ax.bar(names, [sizes[n] for n in names], color=[col[n] for n in names])
    ax.bar_label(bars, fmt="%.3f MB", fontsize=8)
    ax.set_ylabel("saved model (.h5, with optimizer state), MB")
    ax.set_title(f"{title}: model file size")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_responses(path: Path, responses: pd.DataFrame, title: str,
                   col: dict[str, tuple]) -> None:
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
        label = f"{v} (n={per_seed.shape[1]})"
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
    _save(fig, path)
