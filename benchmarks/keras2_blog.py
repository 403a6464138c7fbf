"""The blog's own training path, for `ablation bench --baseline`: Keras 2 (`tf_keras`),
the ResNet-32 built with Keras 2 layers (the same graph as the registry's, by running
ablation's one builder on tf_keras layers), fed by `ImageDataGenerator` with the blog's
flip + 4-px shift, SGD 0.1 Nesterov, categorical cross-entropy.

Prints one JSON line: {"images_per_second": ...} over `--steps` steady-state steps
(a warm-up epoch of the same length is run first and not counted).
Needs the optional extra: pip install -e '.[baseline]'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="resnet32_e")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--data-dir")
    a = p.parse_args()
    try:
        import tf_keras
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        print(json.dumps({"error": "the baseline needs tf_keras: pip install -e '.[baseline]'"}))
        return 2

    from ablation import data, models, registry

    policy = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    tf_keras.mixed_precision.set_global_policy(policy[a.precision])
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
    v = registry.get(a.variant)
    inputs = tf_keras.Input(shape=(32, 32, 3))
    outputs = models._network(models.KerasOps(keras_module=tf_keras), v, inputs,
                              ds.num_classes)
    model = tf_keras.Model(inputs, outputs)
    model.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.1, momentum=0.9,
                                                    nesterov=True),
                  loss="categorical_crossentropy", metrics=["accuracy"])

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
