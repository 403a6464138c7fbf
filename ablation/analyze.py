"""`ablation analyze`: the layer responses of trained networks (He et al. 2015, Fig. 7).

For every done run that kept its model.h5, loaded with plain `keras.models.load_model`
(no training code), N test images (the first N/10 of each class, in test-set order:
the subset `--test-limit N` uses; normalised as in training) go through the network,
and each 3x3 convolution's response is summarised by its standard deviation over
images, positions and channels. The response is the paper's: the layer's output
after its BN, before ReLU or addition; where a 3x3 convolution feeds anything but a
BN (conv2 of the (b), (d) and (e) units feeds the addition), its own output.

3x3 convolutions are found from the graph (kernel size), never from layer names, so
a user's unit is analysed like the built-ins. One model at a time, activations in
batches; the results go to the run folder's responses.csv, written atomically.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ablation import data
from ablation.errors import AblationError
from ablation.models import layer_inputs
from ablation.protocol import Exit, JobState
from ablation.runs import load_data, load_model
from ablation.store import MODEL, RESPONSES, Run, RunFolder, load_runs

AFTER_BN, CONV_OUTPUT = "after BN", "conv output"
BATCH = 100


def _consumers(model) -> dict[str, list[str]]:
    """layer name -> names of the layers that read its output."""
    out: dict[str, list[str]] = {}
    for layer, sources in layer_inputs(model).items():
        for src in sources:
            out.setdefault(src, []).append(layer)
    return out


def response_points(model) -> list[tuple[str, str, str]]:
    """(conv layer, layer whose output is measured, AFTER_BN | CONV_OUTPUT) for each 3x3
    convolution, in network order."""
    import keras

    consumers = _consumers(model)
    points = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (3, 3):
            users = consumers.get(layer.name, [])
            if len(users) == 1 and isinstance(model.get_layer(users[0]),
                                              keras.layers.BatchNormalization):
                points.append((layer.name, users[0], AFTER_BN))
            else:
                points.append((layer.name, layer.name, CONV_OUTPUT))
    return points


def _where(name: str) -> tuple[int | None, int | None]:
    """Stage and block from the builder's layer names (s2b3_conv1; the stem is stage 0,
    block 0); None where a user's unit named its layers otherwise."""
    m = re.match(r"s(\d+)b(\d+)_", name)
    if m:
        return int(m.group(1)), int(m.group(2))
    return (0, 0) if name.startswith("stem") else (None, None)


def measure(h5: Path, x: np.ndarray) -> pd.DataFrame:
    """The response std of each 3x3 layer of the saved model over images x."""
    import keras

    model = load_model(h5)
    points = response_points(model)
    if not points:  # a token model (ViT, MLP-Mixer): it loads, and has nothing to measure
        return pd.DataFrame(columns=["index", "layer", "stage", "block", "kernel", "point",
                                     "measured_at", "std", "images"])
    probe = keras.Model(model.inputs[0], [model.get_layer(p[1]).output for p in points])
    n = np.zeros(len(points))
    mean = np.zeros(len(points))
    m2 = np.zeros(len(points))
    for start in range(0, len(x), BATCH):
        outs = probe(x[start:start + BATCH], training=False)
        outs = outs if isinstance(outs, list | tuple) else [outs]
        for i, out in enumerate(outs):
            a = np.asarray(out, dtype=np.float64).ravel()
            # Chan et al.'s pairwise update: exact, and stable over many batches
            nb, mb = a.size, float(a.mean())
            m2b = float(((a - mb) ** 2).sum())
            delta = mb - mean[i]
            total = n[i] + nb
            mean[i] += delta * nb / total
            m2[i] += m2b + delta ** 2 * n[i] * nb / total
            n[i] = total
    rows = []
    for i, (conv, measured, point) in enumerate(points):
        stage, block = _where(conv)
        rows.append({"index": i, "layer": conv, "stage": stage, "block": block,
                     "kernel": "3x3", "point": point, "measured_at": measured,
                     "std": math.sqrt(m2[i] / n[i]), "images": len(x)})
    del probe, model
    keras.backend.clear_session()
    return pd.DataFrame(rows)


def _images(run: Run, images: int, data_dir: str | None, cache: dict) -> np.ndarray:
    """The first `images` test images of the run's data (class-balanced; all of them when
    the test split is smaller), normalised as the run trained."""
    recipe = run.record.recipe
    key = (recipe.dataset, recipe.data_hash, data_dir or run.record.data_source, images)
    if key not in cache:
        test = data.describe(data.resolve(recipe.dataset), recipe.image_hw).test or images
        ds = load_data(run, data_dir, train_limit=1, test_limit=min(images, test),
                       image_size=recipe.image_hw, crop_pct=recipe.crop_pct)
        cache[key] = data.normalise(ds.x_test, ds.mean, ds.std)
    return cache[key]


def main(results_dir: Path, variants: list[str], images: int = 1000, force: bool = False,
         data_dir: str | None = None, recipe: str | None = None, out=sys.stdout) -> int:
    """Analyse the done runs of `variants`; one line per run. Exit 1 if any failed."""
    if not Path(results_dir).is_dir():
        raise AblationError(f"no results folder {results_dir}; run `ablation run` first")
    runs = [r for r in load_runs(Path(results_dir)) if r.variant in variants
            and (not recipe or r.record.recipe_id.startswith(recipe))]
    done = [r for r in runs if r.record.status == JobState.DONE]
    if not done:
        raise AblationError(f"no done runs of {', '.join(variants)} in {results_dir}; "
                            "train them with `ablation run` first")
    done.sort(key=lambda r: (r.record.recipe_id, r.variant, r.seed))
    cache: dict = {}
    failed = 0
    for k, r in enumerate(done, 1):
        name = f"[{k}/{len(done)}] {r.variant} s{r.seed} ({r.record.recipe_id})"
        folder = RunFolder(r.folder)
        h5, csv_path = folder.file(MODEL), folder.file(RESPONSES)
        if not h5.is_file():
            print(f"{name}: skipped, no model.h5 (trained with --no-keep-model)", file=out,
                  flush=True)
            continue
        if not force and r.responses is not None and len(r.responses) and \
                (r.responses.get("images") == images).all():
            print(f"{name}: already analysed with {images} images (--force redoes it)",
                  file=out, flush=True)
            continue
        try:
            x = _images(r, images, data_dir, cache)
            df = measure(h5, x)
        except AblationError as e:
            failed += 1
            print(f"{name}: FAILED: {e}", file=sys.stderr, flush=True)
            continue
        if not len(df):
            print(f"{name}: loaded; no 3x3 convolution, nothing to measure", file=out,
                  flush=True)
            continue
        folder.write_responses(df)
        print(f"{name}: {len(df)} 3x3 layers, response std {df['std'].iloc[0]:.3g} (first) "
              f"to {df['std'].iloc[-1]:.3g} (last); written to {csv_path}", file=out,
              flush=True)
    return Exit.FAILED if failed else Exit.DONE
