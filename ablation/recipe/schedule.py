"""The learning rate of every training step, inside the optimizer.

`RecipeSchedule` is a Keras `LearningRateSchedule`: the optimizer evaluates it at its
own step counter, in the compiled step, so a continuous schedule (cosine, linear, a
linear warm-up) changes every step however many steps run per host sync, and a resumed
job, whose step counter comes back with its snapshot, continues where it stopped. It
evaluates the recipe's one formula (`ablation.recipe.lr_formula`, which `Recipe.lr_at`
evaluates on numbers) on float32 tensors.
"""

from __future__ import annotations

import keras

from ablation.recipe import Recipe, lr_formula


class _KerasOps:
    """`lr_formula`'s array API on float32 tensors (keras.ops)."""

    @staticmethod
    def cast(x, dtype: str):
        return keras.ops.cast(keras.ops.convert_to_tensor(x), "float32" if dtype == "float"
                              else dtype)

    @staticmethod
    def full_like(x, v: float):
        return keras.ops.full_like(x, v)

    def __getattr__(self, name: str):  # where, cos, clip, take
        return getattr(keras.ops, name)


_KERAS_OPS = _KerasOps()


class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The recipe's warm-up and schedule as a function of the optimizer's step."""

    def __init__(self, recipe: Recipe, steps_per_epoch: int):
        self.recipe, self.steps_per_epoch = recipe, int(steps_per_epoch)

    def __call__(self, step):
        s = keras.ops.cast(step, "float32")
        return lr_formula(self.recipe, s, self.steps_per_epoch, _KERAS_OPS)

    def get_config(self) -> dict:
        return {"recipe": self.recipe.to_dict(), "steps_per_epoch": self.steps_per_epoch}

    @classmethod
    def from_config(cls, config: dict) -> RecipeSchedule:
        return cls(Recipe.from_dict(config["recipe"]), config["steps_per_epoch"])
