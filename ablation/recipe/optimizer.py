"""The optimizer and the loss a recipe asks for, built from Keras' own.

* SGD (momentum, Nesterov), Adam, AdamW, Nadam, RMSprop and Lion, with the recipe's
  betas and epsilon where it sets them (else Keras' defaults), `global_clipnorm` for
  `grad_clip`, and Keras' `use_ema` for `ema` (the averaged weights are what the test
  set sees: `keras.callbacks.SwapEMAWeights`, and what the saved model holds).
* Weight decay: as L2 in the loss (`decay = "l2"`: the blog's, a kernel regularizer on
  every conv, depthwise and dense kernel, built into the model), or decoupled
  (`decoupled`, AdamW's: the optimizer shrinks the weights by lr·wd a step), on the
  same kernels: biases and the scales and offsets of normalisation layers (variables
  named bias, gamma, beta) are never decayed.
* The loss: categorical cross-entropy on the softmax output, with the recipe's label
  smoothing.
"""

from __future__ import annotations

from typing import Any

from ablation.recipe import OPTIMIZER_SPECS, Recipe

# variable names decoupled decay leaves alone: biases, normalisation scales and offsets,
# and (0.6, timm's rule) the token models' position embedding and class token
NOT_DECAYED = ["bias", "gamma", "beta", "position_embedding", "class_token"]
NEVER_DECAYED = ["position_embedding", "class_token"]  # with bias_decay on too


def l2(recipe: Recipe) -> float:
    """The L2 coefficient the model's kernels carry: the weight decay, unless the
    optimizer decays them itself."""
    return 0.0 if recipe.decoupled else recipe.weight_decay


def optimizer(recipe: Recipe, keras_module: Any, learning_rate: Any = None) -> Any:
    """The recipe's Keras optimizer. `learning_rate`: a schedule (training), else the
    recipe's lr as a number (the saved model's copy, which must load in plain Keras)."""
    spec = OPTIMIZER_SPECS[recipe.optimizer]
    kw: dict[str, Any] = {"learning_rate": recipe.lr if learning_rate is None
                          else learning_rate}
    for name in spec.settings:  # its own settings the recipe sets (else Keras' defaults)
        if getattr(recipe, name) is not None:
            kw[name] = getattr(recipe, name)
    kw["weight_decay"] = recipe.weight_decay if recipe.decoupled else None
    if recipe.grad_clip:
        kw["global_clipnorm"] = recipe.grad_clip
    if recipe.ema:
        kw.update(use_ema=True, ema_momentum=recipe.ema)
    opt = getattr(keras_module.optimizers, spec.keras)(**kw)
    if recipe.decoupled:
        opt.exclude_from_weight_decay(
            var_names=NEVER_DECAYED if recipe.bias_decay else NOT_DECAYED)
    return opt


def loss(recipe: Recipe, keras_module: Any) -> Any:
    if not recipe.label_smoothing:
        return "categorical_crossentropy"  # the blog's, by name (what tf_keras takes too)
    return keras_module.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)


def compile_model(model: Any, recipe: Recipe, keras_module: Any, learning_rate: Any = None,
                  **compile_args: Any) -> Any:
    """Compile with the recipe's optimizer and loss, on Keras 3 or on the baseline's
    tf_keras; `compile_args` (jit_compile, steps_per_execution) change speed, never the
    numbers."""
    model.compile(optimizer=optimizer(recipe, keras_module, learning_rate),
                  loss=loss(recipe, keras_module), metrics=["accuracy"], **compile_args)
    return model
