"""The training recipe: every default written once, the step schedule, a stable identity.

airbench's lesson: one table of hyperparameters. The `Recipe` dataclass is that table;
each field's metadata says how the command line parses it and what it means, so the
CLI's flags and defaults, a study's `[recipe]` table and the report's "command to
fill this in" all derive from it and cannot disagree.

Two runs are comparable (poolable over seeds) exactly when their recipes are equal;
the recipe id names the results folder, so a 30-epoch study never overwrites a
200-epoch one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any

from ablation.errors import AblationError

# Keras mixed-precision policy of each precision the recipe accepts.
# fp32 is true float32, as on the blog's GPU; tf32 lets Ampere-and-later GPUs run float32
# matmuls and convolutions as TensorFloat-32 (both backends' default there; ablation.backend)
PRECISION_POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16",
                      "fp16": "mixed_float16"}
PRECISIONS = tuple(PRECISION_POLICIES)
AUGMENTS = ("blog", "crop")
DATASETS = ("cifar10", "cifar100")
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}

# Fields added after the first release: left out of the recipe id while at their
# default, so the ids (and run folders) of earlier runs stay valid.
_ID_OPTIONAL = ("milestones", "warmup_epochs", "warmup_lr")


def _f(default: Any, kind: str, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"kind": kind, "help": help, **extra})


@dataclass(frozen=True)
class Recipe:
    """Everything but the variant and the seed that decides a run's numbers.

    The defaults are the blog's (200 epochs, batch 128, SGD 0.1 Nesterov, lr /10 at
    40.5% and 61% of training, L2 1e-4, flip + 4-px shift).
    """

    dataset: str = _f("cifar10", "choice", "dataset", choices=DATASETS)
    epochs: int = _f(200, "int1", "epochs to train")
    batch_size: int = _f(128, "int1", "images per step")
    lr: float = _f(0.1, "pos", "initial SGD learning rate")
    momentum: float = _f(0.9, "unit", "SGD momentum")
    nesterov: bool = _f(True, "bool", "Nesterov momentum (the papers: off)")
    weight_decay: float = _f(1e-4, "nonneg", "L2 coefficient on every conv and dense kernel")
    augment: str = _f("blog", "choice", "blog: flip + continuous 4-px shift; crop: "
                      "pad 4, random 32x32 crop, flip", choices=AUGMENTS)
    train_limit: int | None = _f(None, "limit", "class-balanced train subset size")
    test_limit: int | None = _f(None, "limit", "class-balanced test subset size")
    precision: str = _f("fp32", "choice", "training precision", choices=PRECISIONS)
    milestones: tuple[float, ...] = _f(
        (0.405, 0.61), "milestones",
        "epochs (0-based) where lr is divided by 10; values below 1 are fractions of "
        "--epochs, rounded up (0.405,0.61: epochs 81 and 122 of 200)")
    warmup_epochs: int = _f(0, "int0", "epochs at --warmup-lr before the schedule starts")
    warmup_lr: float = _f(0.01, "pos", "learning rate during the warm-up epochs")

    def __post_init__(self):
        for f in fields(self):
            _check(f, getattr(self, f.name))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        drops = self.lr_drops()
        if list(drops) != sorted(drops):
            raise AblationError(f"milestones must increase, got {list(self.milestones)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "milestones" else v) for k, v in d.items()
                      if k in known})

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def changed(self) -> dict:
        """The fields that differ from the defaults (what a command line must say)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(DEFAULTS, f.name)}

    @property
    def id(self) -> str:
        """Readable and unique: `cifar10-e200-b128-blog-fp32-3f9a1c`."""
        ident = self.to_dict()
        for name in _ID_OPTIONAL:
            if getattr(self, name) == getattr(DEFAULTS, name):
                del ident[name]
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
        parts = [self.dataset, f"e{self.epochs}", f"b{self.batch_size}", self.augment,
                 self.precision]
        if self.train_limit or self.test_limit:
            parts.append(f"sub{self.train_limit or 'all'}-{self.test_limit or 'all'}")
        return "-".join([*parts, digest.hexdigest()[:6]])

    def lr_drops(self) -> tuple[int, ...]:
        """The first epoch (0-based) of each lr / 10 step: (81, 122) at E = 200.

        Fractions are exact (Fraction("0.405") * 200 = 81, never 81.00000000000001).
        """
        return tuple(math.ceil(Fraction(str(m)) * self.epochs) if m < 1 else int(m)
                     for m in self.milestones)

    def learning_rate(self, epoch: int) -> float:
        """lr at a 0-based epoch: the warm-up lr first, then lr / 10 per milestone."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return self.lr / 10 ** sum(epoch >= d for d in self.lr_drops())

    def describe(self) -> str:
        """One line for reports: the optimiser and its schedule."""
        drops = (f"lr ×0.1 from epochs {' and '.join(map(str, self.lr_drops()))} (0-based)"
                 if self.milestones else "constant lr")
        warm = (f", warm-up {self.warmup_epochs} epoch(s) at lr {self.warmup_lr:g}"
                if self.warmup_epochs else "")
        return (f"{self.epochs} epochs, batch {self.batch_size}, SGD lr {self.lr:g} "
                f"(momentum {self.momentum:g}{', Nesterov' if self.nesterov else ''}), "
                f"{drops}{warm}, L2 {self.weight_decay:g}, "
                f"augmentation `{self.augment}`, precision {self.precision}")


def _check(f: dataclasses.Field, v: Any) -> None:
    """Validate one field by its metadata kind; errors name the field as a flag."""
    kind, flag = f.metadata["kind"], f.name.replace("_", "-")

    def bad(why: str) -> AblationError:
        return AblationError(f"{flag} {why}, got {v!r}")

    is_num = isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "choice" and v not in f.metadata["choices"]:
        raise bad(f"must be one of {', '.join(f.metadata['choices'])}")
    if kind in ("int1", "int0", "limit"):
        if v is None and kind == "limit":
            return
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad("must be an integer")
        if v < (0 if kind == "int0" else 1):
            raise bad(f"must be at least {0 if kind == 'int0' else 1}")
    if kind in ("pos", "nonneg", "unit"):
        if not is_num or not math.isfinite(v):
            raise bad("must be a number")
        if (kind == "pos" and not v > 0) or (kind != "pos" and v < 0) or (
                kind == "unit" and v >= 1):
            raise bad({"pos": "must be positive", "nonneg": "must be >= 0",
                       "unit": "must be in [0, 1)"}[kind])
    if kind == "bool" and not isinstance(v, bool):
        raise bad("must be true or false")
    if kind == "milestones" and not (isinstance(v, list | tuple) and all(
            isinstance(m, int | float) and not isinstance(m, bool) and m > 0
            and (m < 1 or float(m).is_integer()) for m in v)):
        raise bad("must be epochs (integers >= 1) or fractions of the run (0 < x < 1)")


DEFAULTS = Recipe()


def compile_sgd(model: Any, recipe: Recipe, keras_module: Any, **compile_args: Any) -> Any:
    """Compile with the recipe's optimiser and loss (SGD with momentum, categorical
    cross-entropy on the softmax output), on Keras 3 or on the baseline's tf_keras;
    `compile_args` (jit_compile, steps_per_execution) change speed, never the numbers."""
    model.compile(optimizer=keras_module.optimizers.SGD(
        learning_rate=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov),
        loss="categorical_crossentropy", metrics=["accuracy"], **compile_args)
    return model
