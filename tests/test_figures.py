"""The report's figures say what they show (no training): the zoom under schedules with
and without lr drops, never an empty figure, plain numbers on log axes, the study's
labels in legends, and each variant's chosen setting on the tuning figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from test_report_logic import make_run

from ablation import report, tune
from ablation.recipe import Recipe
from ablation.report import figures


def test_the_zoom_starts_after_the_last_drop_or_on_the_last_third_and_is_never_empty():
    assert figures.zoom_start((81, 122), 200) == (122, "after the last lr drop")
    assert figures.zoom_start((), 30) == (20, "the last third of training")
    assert figures.zoom_start((), 3) == (1, "the last third of training")  # two epochs shown
    assert figures.zoom_start((2,), 3) == (1, "the last third of training")  # one after it
    assert figures.zoom_start((), 1) is None  # one point per line: nothing to zoom on


@pytest.mark.parametrize("epochs", [3, 1])
def test_a_cosine_studys_zoom_shows_lines_or_says_why_not(tmp_path, epochs):
    res = tmp_path / "results"
    cosine = Recipe(epochs=epochs, schedule="cosine", train_limit=100, test_limit=50)
    for v in ("resnet32_a", "resnet32_b"):  # comparison 4 of the blog zooms
        for seed in range(2):
            make_run(res, v, seed, [0.3 + 0.1 * e + 0.01 * seed for e in range(epochs)],
                     cosine)
    md = report.build(res, tmp_path / "out").read_text()
    zooms = list((tmp_path / "out").rglob("4-*-zoom.png"))
    if epochs == 3:
        assert len(zooms) == 1 and "zoomed test accuracy](" in md
    else:
        assert zooms == [] and "Zoomed test accuracy: not drawn, 1 epoch(s) leave nothing " \
            "to zoom on." in md


def test_log_loss_axes_print_plain_numbers():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1.4, 1.3, 1.2])
    ax.set_yscale("log")
    figures._plain_ticks(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
    plt.close(fig)
    assert labels and all("times" not in t and "^" not in t for t in labels), labels
    assert {"1.2", "1.3", "1.4"} <= set(labels), labels


def test_the_tuning_figure_marks_each_choice_and_legends_say_the_labels(tmp_path,
                                                                         monkeypatch):
    t = tune.parse({"lr": [0.01, 0.1, 1.0]}, Recipe(validation=10), "s")
    settings = {tune.key({"lr": v}): {"lr": v} for v in (0.01, 0.1, 1.0)}
    # each setting's validation accuracy at the epochs it was compared at: here the last
    means = {"a": {tune.key({"lr": 0.01}): {3: 0.5}, tune.key({"lr": 0.1}): {3: 0.7},
                   tune.key({"lr": 1.0}): {3: 0.6}},
             "b": {tune.key({"lr": 0.01}): {3: 0.8}, tune.key({"lr": 0.1}): {3: 0.6},
                   tune.key({"lr": 1.0}): {3: 0.2}}}
    col = figures.colours(["a", "b"], {"a": "(e) + SE", "b": "b"})
    seen = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path, also=(): seen.update(fig=fig))
    figures.plot_tuning(tmp_path / "t.png", means, settings, t, col,
                        chosen={"a": tune.key({"lr": 0.1}), "b": tune.key({"lr": 0.01})})
    ax = seen["fig"].axes[0]
    stars = [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.get_lines() if line.get_marker() == "*"]
    assert stars == [("(e) + SE: chosen", [0.1], [70.0]), ("b: chosen", [0.01], [80.0])]
    assert "(e) + SE" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(seen["fig"])
