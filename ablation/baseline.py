"""The blog's own training path, for `ablation bench --baseline`: Keras 2 (`tf_keras`),
the network built with Keras 2 layers (the same graph as the registry's: ablation's
one builder run on `tf_keras`), fed by `ImageDataGenerator` with the blog's flip +
4-px shift, SGD 0.1 Nesterov, categorical cross-entropy.

Deliberately free of ablation's training path (ablation.training, ablation.layers):
it is what that path is compared with. Run as `python -m ablation.baseline`; prints
one JSON line, {"images_per_second": ...}, over `--steps` steady-state steps (a
warm-up epoch of the same length is run first and not counted).
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


if __name__ == "__main__":
    sys.exit(main())
