"""The training recipe: every field declared once, with its type, bounds, default, flag
help; the schedule, optimizer and loss it makes (`schedule`, `optimizer`); a stable id.

airbench's lesson: one table of hyperparameters. The `Recipe` dataclass is that table.
Each field's annotation is its schema (pydantic validates it: the type, the bounds),
its metadata says how the command line parses it and what it means. So the CLI's flags
and defaults, a study's `[recipe]` table, a variant's `recipe` and the report's recipe
line all derive from it and cannot disagree; a bad value is one line naming the field,
wherever it came from.

Two runs are comparable (poolable over seeds) exactly when their recipes are equal; the
recipe id names the results folder, so a 30-epoch study never overwrites a 200-epoch
one. Fields added after the first release are left out of the id while at their
defaults, so the blog's and the papers' recipe ids (and run folders) never change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, ConfigDict, Field

from ablation.errors import AblationError, did_you_mean, validation_line

# Keras mixed-precision policy of each precision the recipe accepts.
# fp32 is true float32, as on the blog's GPU; tf32 lets Ampere-and-later GPUs run float32
# matmuls and convolutions as TensorFloat-32 (both backends' default there; ablation.backend)
PRECISION_POLICIES = {"fp32": "float32", "tf32": "float32", "bf16": "mixed_bfloat16",
                      "fp16": "mixed_float16"}
PRECISIONS = tuple(PRECISION_POLICIES)
AUGMENTS = ("blog", "crop", "reflect", "rrc")
FLIPS = ("random", "alternate", "none")
TTAS = ("none", "flip", "flip_translate")
AUGMENT_ON = ("host", "device")
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}


@dataclass(frozen=True)
class OptimizerSpec:
    """What the recipe knows of an optimizer, in one place: its Keras class (also how a
    report writes it), the recipe fields it takes besides lr and weight decay (passed to
    Keras when set; the others are refused with it), and whether it decays weights
    decoupled by definition."""

    keras: str
    settings: tuple[str, ...]
    decoupled: bool = False
    slots: int = 1  # optimizer state per weight, kept in a saved model (SGD: its momentum)


_BETAS = ("beta_1", "beta_2", "epsilon")
OPTIMIZER_SPECS = {
    "sgd": OptimizerSpec("SGD", ("momentum", "nesterov")),
    "adam": OptimizerSpec("Adam", _BETAS, slots=2),
    "adamw": OptimizerSpec("AdamW", _BETAS, decoupled=True, slots=2),
    "nadam": OptimizerSpec("Nadam", _BETAS, slots=2),
    "rmsprop": OptimizerSpec("RMSprop", ("epsilon",)),
    "lion": OptimizerSpec("Lion", ("beta_1", "beta_2"), decoupled=True),
}
OPTIMIZERS = tuple(OPTIMIZER_SPECS)
DECAYS = ("auto", "l2", "decoupled")
SCHEDULES = ("step", "cosine", "linear", "constant")
WARMUPS = ("constant", "linear")

# bounds a user would expect (docs/studies.md): past them a value is a typo, not a plan
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_LIMIT = 100_000_000


# --- the schema's pieces ---------------------------------------------------------------------


def _rule(check, why: str) -> AfterValidator:
    def validate(v):
        if not check(v):
            raise ValueError(why)
        return v
    return AfterValidator(validate)


def _finite(v) -> bool:
    return math.isfinite(v)


Number = int | float  # kept as given (a TOML 0 stays 0: the recipe id is the same as before)
Int1 = Annotated[int, _rule(lambda v: v >= 1, "must be at least 1")]
Int0 = Annotated[int, _rule(lambda v: v >= 0, "must be at least 0")]
Pos = Annotated[Number, _rule(lambda v: _finite(v) and v > 0, "must be a positive number")]
NonNeg = Annotated[Number, _rule(lambda v: _finite(v) and v >= 0, "must be >= 0")]
Unit = Annotated[Number, _rule(lambda v: _finite(v) and 0 <= v < 1, "must be in [0, 1)")]
Beta = Annotated[Number, _rule(lambda v: _finite(v) and 0 < v < 1, "must be in (0, 1)")]
Share = Annotated[Number, _rule(lambda v: _finite(v) and 0 < v <= 1, "must be in (0, 1]")]


def _at_most(top: int) -> AfterValidator:
    return _rule(lambda v: v is None or max(v if isinstance(v, list) else [v]) <= top,
                 f"must be at most {top:,}")


def _milestone(m) -> bool:
    return (isinstance(m, int | float) and not isinstance(m, bool) and m > 0
            and (m < 1 or float(m).is_integer()))


Milestones = Annotated[tuple[Number, ...], pydantic.Field(strict=False), _rule(
    lambda v: all(_milestone(m) for m in v),
    "must be epochs (integers >= 1) or fractions of the run (0 < x < 1)")]

# what a type mistake says, by the field's kind (the bounds say their own)
_TYPE_WORDS = {"int": "must be an integer", "number": "must be a number",
               "bool": "must be true or false", "milestones": "must be a list of numbers",
               "text": "must be a string", "size": "must be N or [H, W], positive integers",
               "internal": "must be a string"}


def _f(default: Any, kind: str, help: str, **extra: Any) -> Any:
    """A recipe field: its default, how a flag parses it (`kind`), what it means."""
    return field(default=default, metadata={"kind": kind, "help": help, **extra})


def _choice(default: str, choices: tuple[str, ...], help: str) -> Any:
    return _f(default, "choice", help, choices=choices)


@dataclass(frozen=True)
class Recipe:
    """Everything but the variant and the seed that decides a run's numbers.

    The defaults are the blog's (200 epochs, batch 128, SGD 0.1 Nesterov, lr /10 at
    40.5% and 61% of training, L2 1e-4, flip + 4-px shift). Fields from `optimizer` on
    were added in 0.5 (modern recipes); at their defaults they change nothing.
    """

    dataset: Annotated[str, _rule(lambda v: bool(v.strip()), "must not be empty")] = _f(
        "cifar10", "text", "cifar10, cifar100, mnist, fashion_mnist, or the path of an .npz "
        "(x_train, y_train, x_test, y_test), of a folder of images (train/ and test/ or "
        "val/, a subfolder per class) or of a packed dataset (`ablation data pack`)")
    epochs: Annotated[Int1, _at_most(MAX_EPOCHS)] = _f(200, "int", "epochs to train")
    batch_size: Annotated[Int1, _at_most(MAX_BATCH)] = _f(128, "int", "images per step")
    lr: Pos = _f(0.1, "number", "peak learning rate (after any warm-up)")
    momentum: Unit = _f(0.9, "number", "SGD momentum")
    nesterov: bool = _f(True, "bool", "Nesterov momentum for SGD (the papers: off)")
    weight_decay: NonNeg = _f(1e-4, "number", "weight decay: an L2 coefficient on every conv "
                              "and dense kernel, or decoupled (see --decay)")
    augment: Literal[AUGMENTS] = _choice("blog", AUGMENTS, "blog: flip + continuous 4-px "
                                         "shift; crop: zero-pad 4, random crop back, flip; "
                                         "reflect: reflection-pad, random crop back, flip "
                                         "(airbench's translation); rrc: ImageNet's "
                                         "random-resized crop (8-100 % of the area, ratio "
                                         "3/4-4/3) back to the size, flip")
    train_limit: Annotated[Int1, _at_most(MAX_LIMIT)] | None = _f(
        None, "int", "class-balanced train subset size")
    test_limit: Annotated[Int1, _at_most(MAX_LIMIT)] | None = _f(
        None, "int", "class-balanced test subset size")
    precision: Literal[PRECISIONS] = _choice("fp32", PRECISIONS, "training precision")
    milestones: Milestones = _f(
        (0.405, 0.61), "milestones",
        "epochs (0-based) where the step schedule divides lr by 10; values below 1 are "
        "fractions of --epochs, rounded up (0.405,0.61: epochs 81 and 122 of 200)")
    warmup_epochs: Int0 = _f(0, "int", "warm-up epochs before the schedule starts")
    warmup_lr: Pos = _f(0.01, "number", "learning rate of a constant warm-up, or where a "
                        "linear warm-up starts")
    # --- modern recipes (CHANGELOG.md: when)
    optimizer: Literal[OPTIMIZERS] = _choice(
        "sgd", OPTIMIZERS, "sgd (momentum, Nesterov), adam, adamw, nadam, rmsprop or lion "
        "(Keras' optimizers)")
    beta_1: Beta | None = _f(None, "number", "first-moment decay of adam/adamw/nadam/lion "
                             "(default: Keras')")
    beta_2: Beta | None = _f(None, "number", "second-moment decay of adam/adamw/nadam/lion "
                             "(default: Keras')")
    epsilon: Pos | None = _f(None, "number", "epsilon of adam/adamw/nadam/rmsprop (default: "
                             "Keras')")
    decay: Literal[DECAYS] = _choice(
        "auto", DECAYS, "weight decay as L2 in the loss (l2) or decoupled from the gradient "
        "(decoupled); auto: decoupled for adamw and lion, l2 otherwise")
    schedule: Literal[SCHEDULES] = _choice(
        "step", SCHEDULES, "lr after the warm-up: step (/10 at --milestones, per epoch), "
        "cosine or linear (to --min-lr, per step), constant")
    warmup: Literal[WARMUPS] = _choice(
        "constant", WARMUPS, "warm-up at --warmup-lr (constant) or rising per step from "
        "--warmup-lr to --lr (linear)")
    min_lr: NonNeg = _f(0, "number", "where cosine and linear schedules end")
    label_smoothing: Unit = _f(0, "number", "label smoothing of the cross-entropy")
    mixup: NonNeg = _f(0, "number", "mixup alpha (0: off): batches mixed with a "
                       "Beta(alpha, alpha) weight")
    cutmix: NonNeg = _f(0, "number", "cutmix alpha (0: off); with mixup, each batch takes "
                        "one of the two at random")
    ema: Unit = _f(0, "number", "momentum of an exponential moving average of the weights "
                   "(0: off); test accuracy is then measured on the averaged weights")
    grad_clip: NonNeg = _f(0, "number", "clip gradients to this global norm (0: off)")
    # --- any dataset (CHANGELOG.md: when)
    image_size: Annotated[Int1 | Annotated[list[Int1], Field(min_length=2, max_length=2)],
                          _at_most(4096)] | None = _f(
        None, "size", "resize the dataset's images to this size (N, or H,W), bilinear")
    validation: Annotated[Int0, _at_most(MAX_LIMIT)] = _f(
        0, "int", "class-balanced images held out of the training split, never trained on; "
        "each epoch records their accuracy and loss beside the test set's (0: none)")
    # the content hash of a dataset given by path, set by `ablation run` (never by hand):
    # it, not the path, names the data in the recipe id
    data_hash: str | None = _f(None, "internal", "content hash of a path dataset")
    # --- the papers' recipes (Wide ResNets, Bag of Tricks) (CHANGELOG.md: when)
    lr_drop: Beta = _f(0.1, "number", "what the step schedule multiplies lr by at each "
                       "milestone (0.1: ÷10; the Wide ResNets' 0.2)")
    bias_decay: bool = _f(False, "bool", "weight decay on biases and normalisation scales "
                          "and offsets too (the papers' baselines; off: only conv and dense "
                          "kernels, the blog's and Bag of Tricks' no-bias-decay)")
    # --- the parts of airbench's recipe (Jordan 2024) (CHANGELOG.md: when)
    pad: Annotated[Int1, _at_most(64)] | None = _f(
        None, "int", "pixels of padding the crop and reflect augmentations pad by before "
        "the random crop (default: an eighth of the image, 4 at 32x32)")
    flip: Literal[FLIPS] = _choice(
        "random", FLIPS, "horizontal flips in augmentation: random (each image, each epoch, "
        "at even odds), alternate (each image flipped at random once, then every other "
        "epoch: airbench's), or none")
    tta: Literal[TTAS] = _choice(
        "none", TTAS, "test-time augmentation of a final evaluation, recorded apart from the "
        "plain test accuracy: flip (the image and its mirror), flip_translate (and both "
        "shifted one pixel up-left and down-right, reflected: airbench's 6 views)")
    bn_bias_lr: Pos = _f(1, "number", "learning-rate factor of batch-norm offsets, not of "
                         "their weight decay (airbench's 64)")
    lookahead: Unit = _f(0, "number", "airbench's lookahead (0: off; its 0.95): every "
                         "lookahead-every steps the weights and batch-norm statistics move "
                         "to an average that trails them, at this decay per step ramped up "
                         "as (step / last step)^3; the model takes the average at the end "
                         "of every epoch")
    lookahead_every: Int1 = _f(5, "int", "steps between the lookahead's updates")
    lookahead_start: Int0 = _f(0, "int", "epochs trained before the lookahead starts "
                               "averaging (airbench's 3)")
    whiten_bias_epochs: Int1 | None = _f(
        None, "int", "epochs the whitening layer's bias trains before it is frozen "
        "(airbench's 3; default: it trains throughout)")
    # --- ImageNet-class data (CHANGELOG.md: when)
    crop_pct: Share = _f(1, "number", "evaluation images (test, validation) resized to "
                         "image_size / crop_pct, then centre-cropped to image_size: "
                         "ImageNet's 0.875 (224 from 256); 1: resized only")
    # --- feeding the accelerator (CHANGELOG.md: when)
    augment_on: Literal[AUGMENT_ON] = _choice(
        "host", AUGMENT_ON, "where augmentation and mixing run: host (numpy, on loader "
        "threads, float32 batches) or device (inside the compiled training step, on uint8 "
        "batches and stateless keys: the same distributions, other draws)")

    def __post_init__(self):
        values = _validate({f.name: getattr(self, f.name) for f in fields(self)})
        object.__setattr__(self, "milestones", tuple(values["milestones"]))
        self._check_together()

    def _check_together(self) -> None:
        """Rules between fields; each broken one is one line naming the flags."""
        drops = self.lr_drops()
        if list(drops) != sorted(drops):
            raise AblationError(f"milestones must increase, got {list(self.milestones)}")
        if self.schedule == "step":
            late = [m for m in self.milestones if m >= 1 and m >= self.epochs]
            if late:
                raise AblationError(f"milestones: epoch {late[0]:g} is not before the last "
                                    f"epoch (epochs {self.epochs}); give epochs below it, or "
                                    "fractions")
        elif self.milestones != DEFAULTS_MILESTONES:
            raise AblationError(f"milestones go with the step schedule, not {self.schedule}")
        if self.warmup_epochs >= self.epochs:
            raise AblationError(f"warmup-epochs {self.warmup_epochs} leaves no epoch of the "
                                f"schedule (epochs {self.epochs})")
        if self.warmup == "linear" and not self.warmup_epochs:
            raise AblationError("a linear warm-up needs warmup-epochs")
        if self.warmup == "linear" and self.warmup_lr >= self.lr:
            raise AblationError(f"a linear warm-up rises from warmup-lr to lr: give a "
                                f"warmup-lr below lr {self.lr:g} (got {self.warmup_lr:g})")
        if self.min_lr and self.schedule not in ("cosine", "linear"):
            raise AblationError(f"min-lr is where a cosine or linear schedule ends; the "
                                f"{self.schedule} schedule has none")
        if self.min_lr and self.min_lr >= self.lr:
            raise AblationError(f"min-lr {self.min_lr:g} must be below lr {self.lr:g}")
        spec = OPTIMIZER_SPECS[self.optimizer]
        if self.decay == "l2" and spec.decoupled:
            raise AblationError(f"{self.optimizer} decays weights decoupled by definition; "
                                "for L2 in the loss use adam (or sgd)")
        for name in ("momentum", "nesterov"):  # SGD's, at their defaults for the others
            if name not in spec.settings and getattr(self, name) != getattr(DEFAULTS, name):
                raise AblationError(f"{name} is SGD's setting; {self.optimizer} takes "
                                    "beta-1 and beta-2")
        if self.pad is not None and self.augment not in ("crop", "reflect"):
            raise AblationError(f"pad is what the crop and reflect augmentations pad by; "
                                f"augment {self.augment} pads nothing")
        if self.lookahead and self.ema:
            raise AblationError("ema and lookahead both average the weights: give one")
        if self.lookahead_start and not self.lookahead:
            raise AblationError("lookahead-start is when the lookahead starts; give "
                                "lookahead too")
        if self.whiten_bias_epochs is not None and self.whiten_bias_epochs >= self.epochs:
            raise AblationError(f"whiten-bias-epochs {self.whiten_bias_epochs} freezes "
                                f"nothing (epochs {self.epochs}): give it below epochs, "
                                "or leave it out")
        if self.lookahead_start >= self.epochs:
            raise AblationError(f"lookahead-start {self.lookahead_start} leaves no epoch of "
                                f"lookahead (epochs {self.epochs})")
        allowed = [n for n in spec.settings if n in _BETAS]
        for name in _BETAS:
            if getattr(self, name) is not None and name not in spec.settings:
                raise AblationError(f"{name.replace('_', '-')} is not a setting of "
                                    f"{self.optimizer}" + (f" (it takes {', '.join(allowed)})"
                                                           if allowed else ""))

    # --- identity and plain data

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """`to_dict`'s plain data (a run record's, a job's config) as a recipe; an unknown
        key or a bad value is one line naming it."""
        try:
            return _RECIPE.validate_python(d)
        except pydantic.ValidationError as e:
            raise AblationError(_message(e)) from e

    @classmethod
    def parse(cls, table: dict, allowed: tuple[str, ...] | None = None,
              base: Recipe | None = None) -> Recipe:
        """A recipe from a TOML table (`allowed`: the keys it may set; `base`: what it
        starts from). Unknown keys and bad values raise one line naming the key."""
        names = [f.name for f in fields(cls)]
        if allowed is None:  # a study file: every field but those the runner fills in
            allowed = tuple(f.name for f in fields(cls) if f.metadata["kind"] != "internal")
        extra = sorted(set(table) - set(allowed))
        if extra:  # a typo gets a hint; a field this table may not set, the list
            hint = "" if extra[0] in names else did_you_mean(extra[0], allowed, n=1)
            raise AblationError(f"unknown key {extra[0]!r}{hint} (allowed: "
                                f"{', '.join(sorted(allowed))})")
        return (base or DEFAULTS).replace(**table)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def overlay(self, changes: dict) -> Recipe:
        """`replace` for a variant's own fields on top of a run's recipe: a variant that
        sets another schedule than the step one, and no milestones, leaves the run's
        milestones behind (a study's steps never refuse its cosine variant)."""
        changes = dict(changes)
        if changes.get("schedule", "step") != "step" and "milestones" not in changes:
            changes["milestones"] = DEFAULTS_MILESTONES
        return self.replace(**changes)

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
        if self.schedule != "step":
            ident.pop("milestones", None)  # a continuous schedule has none
        data = self.dataset
        if self.data_hash:  # a path dataset: its content names it, not where it lies
            ident["dataset"] = data = f"data-{self.data_hash[:8]}"
            ident["data_hash"] = self.data_hash
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode())
        parts = [data, f"e{self.epochs}", f"b{self.batch_size}", self.augment,
                 self.precision]
        if self.train_limit or self.test_limit:
            parts.append(f"sub{self.train_limit or 'all'}-{self.test_limit or 'all'}")
        return "-".join([*parts, digest.hexdigest()[:6]])

    # --- the schedule

    def lr_drops(self) -> tuple[int, ...]:
        """The first epoch (0-based) of each lr / 10 step: (81, 122) at E = 200.

        Fractions are exact (Fraction("0.405") * 200 = 81, never 81.00000000000001).
        """
        return tuple(math.ceil(Fraction(str(m)) * self.epochs) if m < 1 else int(m)
                     for m in self.milestones)

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of training step `step` (0-based): the warm-up, then the
        schedule (`lr_formula`, the one definition, here on float64 numbers)."""
        import numpy as np

        return float(lr_formula(self, np.float64(step), steps_per_epoch, _NumpyOps))

    def learning_rate(self, epoch: int, steps_per_epoch: int = 1) -> float:
        """lr at the first step of a 0-based epoch (the whole epoch's, for the step
        schedule and a constant warm-up)."""
        return self.lr_at(epoch * steps_per_epoch, steps_per_epoch)

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """`image_size` as (H, W); None: the images' own."""
        if self.image_size is None:
            return None
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def state_slots(self) -> int:
        """Values the optimizer (and an EMA) keeps per weight, saved with the model."""
        spec = OPTIMIZER_SPECS[self.optimizer]
        slots = spec.slots if self.optimizer != "sgd" or self.momentum else 0
        return slots + (1 if self.ema else 0)

    @property
    def decoupled(self) -> bool:
        """Weight decay is applied by the optimizer, not as L2 in the loss."""
        return self.decay == "decoupled" or (self.decay == "auto"
                                             and OPTIMIZER_SPECS[self.optimizer].decoupled)

    def describe(self) -> str:
        """One line for reports: every field that shapes training, in words."""
        opt = f"{OPTIMIZER_SPECS[self.optimizer].keras} lr {self.lr:g}"
        if self.optimizer == "sgd":
            opt += f" (momentum {self.momentum:g}{', Nesterov' if self.nesterov else ''})"
        betas = [f"{k.replace('_', ' ')} {getattr(self, k):g}"
                 for k in _BETAS if getattr(self, k) is not None]
        if betas:
            opt += f" ({', '.join(betas)})"
        wd = (f"wd {self.weight_decay:g} decoupled" if self.decoupled
              else f"L2 {self.weight_decay:g}")
        if self.bias_decay:
            wd += " (biases and normalisation layers too)"
        if self.schedule == "step":
            sched = (f"lr ×{self.lr_drop:g} from epochs {' and '.join(map(str, self.lr_drops()))}"
                     " (0-based)"
                     if self.milestones else "constant lr")
        elif self.schedule == "constant":
            sched = "constant lr"
        else:
            sched = f"{self.schedule} to {self.min_lr:g} (per step)"
        if self.warmup_epochs:
            sched += (f" after {self.warmup_epochs} warm-up epoch(s) at lr {self.warmup_lr:g}"
                      if self.warmup == "constant" else
                      f" after {self.warmup_epochs} linear warm-up epoch(s) from lr "
                      f"{self.warmup_lr:g}")
        extras = [text for on, text in (
            (self.label_smoothing, f"label smoothing {self.label_smoothing:g}"),
            (self.mixup, f"mixup {self.mixup:g}"), (self.cutmix, f"cutmix {self.cutmix:g}"),
            (self.ema, f"EMA {self.ema:g} (test accuracy on the averaged weights)"),
            (self.grad_clip, f"gradients clipped to norm {self.grad_clip:g}"),
            (self.validation, f"{self.validation:,} training images held out for "
                              "validation"),
            (self.image_size, f"images resized to {'x'.join(map(str, self.image_hw or ()))}"),
            (self.crop_pct != 1, f"evaluated on centre crops of {self.crop_pct:g} of the "
                                 "image"),
            (self.bn_bias_lr != 1, f"batch-norm offsets at {self.bn_bias_lr:g}x the lr"),
            (self.tta != "none", f"test-time augmentation {self.tta} (recorded apart)"),
            (self.lookahead, f"lookahead {self.lookahead:g} every {self.lookahead_every} "
                             "steps" + (f" from epoch {self.lookahead_start + 1}"
                                        if self.lookahead_start else "")),
            (self.whiten_bias_epochs, f"the whitening bias frozen after "
                                      f"{self.whiten_bias_epochs} epoch(s)"),
        ) if on]
        aug = f"augmentation `{self.augment}`" + (f" (pad {self.pad})" if self.pad else "") \
            + ("" if self.flip == "random" else f", flip {self.flip}")
        return ", ".join([f"{self.epochs} epochs", f"batch {self.batch_size}", opt, wd, sched,
                          *extras, aug, f"precision {self.precision}"])


def lr_formula(r: Recipe, step: Any, steps_per_epoch: int, ops: Any) -> Any:
    """The learning rate at optimizer step `step`, written once for both places that
    need it: `Recipe.lr_at` (numbers: history.csv's lr, the report) and, inside the
    compiled train step, `schedule.RecipeSchedule` (tensors). `ops` is the array API
    (numpy's or keras.ops: where, cos, clip, take, full_like, cast).

    The warm-up (constant at warmup_lr, or linear from warmup_lr to lr), then the
    schedule: step (lr / 10 per milestone passed, from a table of lr / 10**k, so each
    epoch's lr is exactly the number a per-epoch scheduler sets), constant, or cosine /
    linear from lr to min_lr over the steps after the warm-up."""
    warm = float(r.warmup_epochs * steps_per_epoch)
    if r.warmup == "constant":
        early = ops.full_like(step, r.warmup_lr)
    else:
        early = r.warmup_lr + (r.lr - r.warmup_lr) * step / max(warm, 1.0)
    if r.schedule == "step":
        drops = [d * steps_per_epoch for d in r.lr_drops()]
        levels = [r.lr / 10 ** k if r.lr_drop == 0.1 else r.lr * r.lr_drop ** k
                  for k in range(len(drops) + 1)]
        k = sum(ops.cast(step >= d, "int32") for d in drops) if drops else 0
        main = ops.take(ops.cast(levels, "float"), k)
    elif r.schedule == "constant":
        main = ops.full_like(step, r.lr)
    else:
        total = max(1.0, r.epochs * steps_per_epoch - warm)
        t = ops.clip((step - warm) / total, 0.0, 1.0)
        if r.schedule == "cosine":
            main = r.min_lr + (r.lr - r.min_lr) * (1 + ops.cos(math.pi * t)) / 2
        else:
            main = r.lr - (r.lr - r.min_lr) * t
    return ops.where(step < warm, early, ops.cast(main, "float"))


class _NumpyOps:
    """`lr_formula`'s array API on float64 numbers (numpy)."""

    @staticmethod
    def cast(x: Any, dtype: str) -> Any:
        import numpy as np

        return np.asarray(x, dtype=np.int64 if dtype == "int32" else np.float64)

    @staticmethod
    def full_like(x: Any, v: float) -> Any:
        import numpy as np

        return np.full_like(x, v, dtype=np.float64)

    def __getattr__(self, name: str) -> Any:  # where, cos, clip, take
        import numpy as np

        return getattr(np, name)


_NumpyOps = _NumpyOps()


# what the run, not the network, decides: the data, its length and its batches; a variant
# may fix any other field for itself (its `recipe`), e.g. ResNet-110's warm-up
RUN_FIELDS = ("dataset", "epochs", "batch_size", "augment", "train_limit", "test_limit",
              "precision", "image_size", "validation", "data_hash", "pad", "crop_pct",
              "augment_on")
VARIANT_FIELDS = tuple(f.name for f in fields(Recipe) if f.name not in RUN_FIELDS)

# Fields added after the first release: left out of the recipe id while at their
# default, so the ids (and run folders) of earlier runs stay valid.
_ID_OPTIONAL = ("milestones", "warmup_epochs", "warmup_lr", "optimizer", "beta_1", "beta_2",
                "epsilon", "decay", "schedule", "warmup", "min_lr", "label_smoothing",
                "mixup", "cutmix", "ema", "grad_clip", "image_size", "validation",
                "data_hash", "lr_drop", "bias_decay", "pad", "flip", "tta", "bn_bias_lr",
                "lookahead", "lookahead_every", "crop_pct", "augment_on",
                "lookahead_start", "whiten_bias_epochs")
DEFAULTS_MILESTONES = (0.405, 0.61)

# the schema: one pydantic model made from the dataclass's own annotations
_HINTS = typing.get_type_hints(Recipe, include_extras=True)
_SCHEMA = pydantic.create_model(
    "RecipeSchema", __config__=ConfigDict(strict=True, extra="forbid"),
    **{f.name: (_HINTS[f.name], ...) for f in fields(Recipe)})
_FIELD_ADAPTERS: dict[str, pydantic.TypeAdapter] = {}


def _message(e: pydantic.ValidationError) -> str:
    """A schema error as one line: the field (as its flag is spelled) and what is wrong."""
    def why(key: str, err: dict) -> str:
        return f"{_why(err, key)}, got {err.get('input')!r}"

    return validation_line(e, why=why, spell=lambda key: key.replace("_", "-"))


def _why(err: dict, name: str) -> str:
    """What is wrong with a field's value, in words: its bound's or rule's own sentence,
    the choices, or what its kind of value must be."""
    meta = {f.name: f.metadata for f in fields(Recipe)}.get(name, {})
    if err["type"] == "value_error":
        return str(err.get("ctx", {}).get("error") or err["msg"])
    if meta.get("kind") == "choice":
        return f"must be one of {', '.join(meta['choices'])}"
    return _TYPE_WORDS.get(meta.get("kind", ""), err["msg"])


def _validate(values: dict) -> dict:
    try:
        return _SCHEMA.model_validate(values).model_dump()
    except pydantic.ValidationError as e:
        raise AblationError(_message(e)) from e


def check_field(name: str, value: Any) -> Any:
    """Validate one field's value by the schema (what a command-line flag's parser does);
    a bad value raises AblationError: "must be at least 1" and the like."""
    adapter = _FIELD_ADAPTERS.get(name)
    if adapter is None:
        adapter = _FIELD_ADAPTERS[name] = pydantic.TypeAdapter(
            _HINTS[name], config=ConfigDict(strict=True))
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as e:
        raise AblationError(_why(e.errors(include_url=False)[0], name)) from e


Recipe.__pydantic_config__ = ConfigDict(extra="forbid")
_RECIPE = pydantic.TypeAdapter(Recipe)
DEFAULTS = Recipe()
