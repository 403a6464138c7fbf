"""The blog's own training path: Keras 2 (`tf_keras`), the network built with Keras 2
layers (the same graph as the registry's: ablation's one builder run on `tf_keras`),
fed by `ImageDataGenerator` with the blog's flip + 4-px shift, SGD 0.1 Nesterov, the
blog's step schedule, categorical cross-entropy.

Deliberately free of ablation's training path (ablation.training, ablation.layers):
it is what that path is compared with. Run as `python -m ablation.baseline`:

* timing (`ablation bench --baseline`): prints one JSON line, {"images_per_second":
  ...}, over `--steps` steady-state steps (a warm-up epoch of the same length is run
  first and not counted);
* training (`--epochs E --out DIR`): the blog's recipe at E epochs on the whole of
  CIFAR-10 (391 steps an epoch, as the blog's `50000 // 128 + 1`), the test set
  evaluated after every epoch as the blog did; DIR gets `history.csv` (Keras 2's own
  CSVLogger) and `summary.json` (the final test accuracy, seed, versions). A finished
  DIR is not trained again. The side-by-side script (benchmarks/parity.py) pairs these
  runs with the harness's, seed by seed.

Needs the optional extra: pip install 'ablation[baseline]'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    from ablation.recipe import DEFAULTS, PRECISION_POLICIES
    from ablation.recipe.optimizer import compile_model

    p = argparse.ArgumentParser(prog="python -m ablation.baseline")
    p.add_argument("--variant", default="resnet32_e")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--precision", choices=list(PRECISION_POLICIES), default="fp32")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, help="train this many epochs of the blog's recipe "
                                              "(with --out) instead of timing steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="the run's folder (with --epochs)")
    p.add_argument("--train-limit", type=int, help="class-balanced subsets (with --epochs; "
                                                   "a smoke test's)")
    p.add_argument("--test-limit", type=int)
    a = p.parse_args()
    try:
        import tf_keras
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        print(json.dumps({"error": "the baseline needs tf_keras: pip install "
                                   "'ablation[baseline]'"}))
        return 2

    from ablation import build_model, data
    from ablation.study import load_builtins

    load_builtins()  # any built-in study's variant
    tf_keras.mixed_precision.set_global_policy(PRECISION_POLICIES[a.precision])
    if a.epochs:
        return train(a, tf_keras, ImageDataGenerator)
    n = a.steps * a.batch_size
    if a.data_dir:
        ds = data.load("cifar10", a.data_dir, train_limit=n, test_limit=10)
    else:
        ds = data.synthetic(n_train=n, n_test=10)
    # the blog: normalise the whole array, then let the generator shift with zero fill
    x = data.normalise(ds.x_train, ds.mean, ds.std)
    y = data.one_hot(ds.y_train, ds.num_classes)
    gen = ImageDataGenerator(width_shift_range=0.125, height_shift_range=0.125,
                             horizontal_flip=True, fill_mode="constant", cval=0.0)
    model = build_model(a.variant, num_classes=ds.num_classes, keras_module=tf_keras)
    compile_model(model, DEFAULTS, tf_keras)  # the blog's recipe, as the blog ran it

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    timer = Timer()
    model.fit(gen.flow(x, y, batch_size=a.batch_size, seed=0), steps_per_epoch=a.steps,
              epochs=2, verbose=0, callbacks=[timer])
    print(json.dumps({"images_per_second": n / timer.seconds, "seconds": timer.seconds,
                      "keras": tf_keras.__version__, "path": "keras2-imagedatagenerator",
                      "variant": a.variant, "precision": a.precision}), flush=True)
    return 0


def train(a, tf_keras, generator) -> int:
    """The blog's whole run at `a.epochs` epochs into `a.out` (see the module's text)."""
    from pathlib import Path

    import numpy as np

    from ablation import build_model, data, environment, results
    from ablation.recipe import DEFAULTS
    from ablation.recipe.optimizer import compile_model

    if not (a.out and a.data_dir):
        print(json.dumps({"error": "--epochs needs --out DIR and --data-dir"}))
        return 2
    out = Path(a.out)
    if (out / "summary.json").is_file():
        print(json.dumps(results.read_json(out / "summary.json")), flush=True)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.csv").unlink(missing_ok=True)  # an unfinished attempt starts again
    recipe = DEFAULTS.replace(epochs=a.epochs, batch_size=a.batch_size)
    tf_keras.utils.set_random_seed(a.seed)
    ds = data.load("cifar10", a.data_dir, train_limit=a.train_limit, test_limit=a.test_limit)
    x = data.normalise(ds.x_train, ds.mean, ds.std)
    y = data.one_hot(ds.y_train, ds.num_classes)
    xt = data.normalise(ds.x_test, ds.mean, ds.std)
    yt = data.one_hot(ds.y_test, ds.num_classes)
    gen = generator(width_shift_range=0.125, height_shift_range=0.125, horizontal_flip=True,
                    fill_mode="constant", cval=0.0)
    model = build_model(a.variant, num_classes=ds.num_classes, keras_module=tf_keras)
    compile_model(model, recipe, tf_keras)
    steps = -(-len(x) // a.batch_size)  # the blog's 50000 // 128 + 1 = 391, where it fits
    t0 = time.time()
    model.fit(gen.flow(x, y, batch_size=a.batch_size, seed=a.seed), steps_per_epoch=steps,
              epochs=a.epochs, validation_data=(xt, yt), verbose=0, callbacks=[
                  tf_keras.callbacks.LearningRateScheduler(
                      lambda epoch: recipe.learning_rate(epoch)),
                  tf_keras.callbacks.CSVLogger(str(out / "history.csv"))])
    probs = model.predict(xt, batch_size=500, verbose=0)
    summary = {**environment.describe(), "variant": a.variant, "seed": a.seed,
               "epochs": a.epochs, "train_images": len(x), "test_images": len(xt),
               "final_test_accuracy": float(np.mean(probs.argmax(1) == ds.y_test)),
               "train_seconds": round(time.time() - t0, 1), "path": "keras2-imagedatagenerator",
               "keras": tf_keras.__version__, "recipe": recipe.to_dict()}
    results.atomic_write_json(out / "summary.json", summary)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
