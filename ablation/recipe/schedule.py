"""The learning rate of every training step, inside the optimizer.

`RecipeSchedule` is a Keras `LearningRateSchedule`: the optimizer evaluates it at its
own step counter, in the compiled step, so a continuous schedule (cosine, linear, a
linear warm-up) changes every step however many steps run per host sync, and a resumed
job, whose step counter comes back with its snapshot, continues where it stopped. It
computes exactly `Recipe.lr_at` (the formula; tests/test_recipes.py holds one against
the other at every step), in float32.
"""

from __future__ import annotations

import math

import keras

from ablation.recipe import Recipe


class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The recipe's warm-up and schedule as a function of the optimizer's step.

    A step schedule takes its values from a table of the recipe's own lr / 10**k, so each
    epoch's lr is the float32 of the same number a per-epoch scheduler would set."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int):
        self.recipe, self.steps_per_epoch = recipe, int(steps_per_epoch)
        drops = recipe.lr_drops()
        self.levels = [recipe.lr / 10 ** k for k in range(len(drops) + 1)]
        self.drops = [d * self.steps_per_epoch for d in drops]

    def __call__(self, step):
        ops, r = keras.ops, self.recipe
        s = ops.cast(step, "float32")
        warm = float(r.warmup_epochs * self.steps_per_epoch)
        if r.warmup == "constant":
            early = ops.full_like(s, r.warmup_lr)
        else:
            early = r.warmup_lr + (r.lr - r.warmup_lr) * s / max(warm, 1.0)
        if r.schedule == "step":
            k = sum(ops.cast(s >= d, "int32") for d in self.drops) if self.drops else 0
            main = ops.take(ops.convert_to_tensor(self.levels, "float32"), k)
        elif r.schedule == "constant":
            main = ops.full_like(s, r.lr)
        else:
            total = max(1.0, r.epochs * self.steps_per_epoch - warm)
            t = ops.clip((s - warm) / total, 0.0, 1.0)
            if r.schedule == "cosine":
                main = r.min_lr + (r.lr - r.min_lr) * (1 + ops.cos(math.pi * t)) / 2
            else:
                main = r.lr - (r.lr - r.min_lr) * t
        return ops.where(s < warm, early, ops.cast(main, "float32"))

    def get_config(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "steps_per_epoch": self.steps_per_epoch}

    @classmethod
    def from_config(cls, config: dict) -> RecipeSchedule:
        return cls(Recipe.from_dict(config["recipe"]), config["steps_per_epoch"])
