"""Recorded runs as tidy frames: one row per run (runs.csv), one row per (run, epoch),
one row per (run, layer) of layer responses. The runs themselves are read by
`ablation.runs`."""

from __future__ import annotations

import pandas as pd

from ablation.store import Run

# the test set's numbers in a run record (and 0.5's names for them)
TEST_KEYS = ("final_test_accuracy", "best_test_accuracy", "final_test_loss",
             "final_val_accuracy", "best_val_accuracy", "final_val_loss", "best_epoch")


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run with its summary fields and the recipe it trained with, flattened,
    for runs.csv."""
    rows = []
    for r in runs:
        s = {k: v for k, v in r.record.to_json().items()
             if k not in ("recipe", "definition", "train_recipe")}
        # what the run trained with: the variant's own fields on top of the queued recipe
        # (whose id names the folder)
        s.update({f"recipe_{k}": v for k, v in r.record.trained.to_dict().items()})
        if r.record.phase == "tune":  # a tuning run chooses on validation: no test numbers
            for k in TEST_KEYS:
                s.pop(k, None)
        s["run_dir"] = str(r.folder)
        rows.append(s)
    df = pd.DataFrame(rows)
    first = ["recipe_id", "variant", "seed", "status", "epochs_done", "epochs_planned",
             "best_test_accuracy", "final_test_accuracy"]
    cols = [c for c in first if c in df.columns] + sorted(c for c in df.columns
                                                          if c not in first)
    return df[cols].sort_values(["recipe_id", "variant", "seed"], kind="stable")


def per_run_frame(runs: list[Run], table: str, columns: list[str]) -> pd.DataFrame:
    """One run folder table of each run (`Run.<table>`: its responses, its robustness)
    stacked, with the run's variant and seed; empty, with `columns`, where none has it."""
    parts = [getattr(r, table).assign(variant=r.variant, seed=r.seed) for r in runs
             if getattr(r, table) is not None and len(getattr(r, table))]
    if not parts:
        return pd.DataFrame(columns=["variant", "seed", *columns])
    return pd.concat(parts, ignore_index=True)


def responses_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per (run, 3x3 layer): variant, seed, index, layer, std."""
    return per_run_frame(runs, "responses", ["index", "layer", "std"])
