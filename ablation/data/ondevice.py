"""Augmentation inside the compiled training step: the host sends uint8 images and a few
integers per image, the device normalises, augments and mixes.

The same augmentations as `ablation.data.augment` (the blog's flip + bilinear shift, the
papers' pad-and-crop, airbench's reflect-and-crop, the random-resized crop, mixup and
CutMix), drawn from the same distributions, as Keras ops, so they run on TensorFlow and
on JAX and compile into the step (`jit_compile`, XLA). Every shift, crop and resize is
a linear map of rows and of columns: one (size x size) weight matrix per image and axis,
applied as two batched matrix products, so a bilinear shift, a zero or reflecting pad
and a resized crop are one code path, and the weights follow the host path's rules
exactly (scipy's `constant` rule for the shift, numpy's `reflect`, PIL's bilinear
resize with its pixel centres).

Randomness is stateless: each batch carries a key, a pure function of (seed, epoch,
batch) computed on the host (`stream.device_keys`), and every per-image draw is the
backend's stateless generator on that key (TensorFlow's `stateless_*` ops; JAX's
threefry), folded with a number per kind of draw. A batch's own few numbers (the mix's
weight, mixup or CutMix, CutMix's centre) are drawn on the host by numpy, as the host
path draws them, and travel in the keys: TensorFlow's Beta sampler has no XLA kernel.
The same seed gives the same run, bit for bit, and a job resumed inside an epoch sees
the same batches. The per-image draws are not the host path's numbers (another
generator): the run records where augmentation ran (`augment_ran`), and the recipe's
`augment_on` is part of its id.

The keys travel as an (n, 7) int32 input beside the images: the batch's key, the
image's place in the batch, its flip (0 no, 1 yes, 2 drawn here: a recipe's `alternate`
and `none` flips are decided on the host, which knows each image's index), and the
batch's mix (its weight times 2^30, CutMix or not, CutMix's centre row and column).
Each image's draws are the numbers of a full batch (the recipe's batch size: a static
shape, as XLA needs) at its place, so a device given a share of the batch (TensorFlow's
MirroredStrategy; JAX compiles one program for the global batch) draws what one device
would for those images. Mixup and
CutMix pair images within each device's share on TensorFlow, its mix keyed by the
share's first place. Evaluation batches carry the key -1: images are only normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from ablation.data.augment import RRC_RATIO, RRC_SCALE, RRC_TRIES, crop_pad
from ablation.data.stream import EVAL_KEY, FLIP_DRAWN, KEY_COLUMNS, LAM_SCALE

# one number per kind of draw, folded into the batch's key
FLIP, SHIFT_Y, SHARE, RATIO, PLACE, PERM = range(6)
class Draws:
    """Stateless draws on one key (two int32: the batch's, the first image's place), one
    stream per kind of draw."""

    def __init__(self, key: Any):
        self.key = key
        self.backend = keras.backend.backend()
        if self.backend not in ("tensorflow", "jax"):
            raise ValueError(f"augmentation on the device runs on TensorFlow or JAX, not "
                             f"{self.backend}")

    def _stream(self, kind: int) -> Any:
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.random.experimental.stateless_fold_in(tf.cast(self.key, tf.int32), kind)
        import jax

        base = jax.random.wrap_key_data(jax.numpy.asarray(self.key).astype("uint32"))
        return jax.random.fold_in(base, kind)

    def uniform(self, kind: int, shape: tuple[int, ...] | list) -> Any:
        """Uniform float32 in [0, 1)."""
        key = self._stream(kind)
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.random.stateless_uniform(shape, seed=key, dtype=tf.float32)
        import jax

        return jax.random.uniform(key, tuple(shape), "float32")


class ImageDraws:
    """Each image's uniform draws for one batch: the numbers of a full batch (keyed by
    the batch alone, a static shape) at the places of the images this device holds."""

    def __init__(self, keys: Any, n: Any, batch_size: int):
        self.keys, self.n, self.batch_size = keys, n, batch_size
        self.d = Draws(ops.stack([keys[0, 0], ops.zeros_like(keys[0, 0])]))

    def __call__(self, kind: int, cols: int) -> Any:
        """(n, cols) uniform float32 in [0, 1)."""
        whole = self.d.uniform(kind, (self.batch_size, cols))
        return ops.take(whole, ops.arange(self.n) + self.keys[0, 1], axis=0)


# --- the augmentations' parameters, drawn as the host path draws them --------------------


def flips(u: Any, keys: Any) -> Any:
    """Which images to mirror (`u`: (n,) uniforms): the host's choice, or even odds."""
    given = keys[:, 2]
    return ops.where(given == FLIP_DRAWN, u < 0.5, given == 1)


def shifts(u: Any, h: int, w: int, max_shift: float = 0.125) -> tuple[Any, Any]:
    """The blog's shift in pixels (`u`: (n, 2) uniforms), uniform in +-12.5 % of the size
    (`augment_blog`)."""
    return (u[:, 0] * 2 - 1) * (max_shift * h), (u[:, 1] * 2 - 1) * (max_shift * w)


def crop_offsets(u: Any, pad: int) -> tuple[Any, Any]:
    """The random crop's place in the padded image (`u`: (n, 2) uniforms), 0..2*pad in
    each axis, less the pad: the shift it amounts to (`augment_crop`)."""
    place = ops.floor(u * (2 * pad + 1)) - pad
    return place[:, 0], place[:, 1]


def rrc_boxes(share_u: Any, ratio_u: Any, place_u: Any, h: int,
              w: int) -> tuple[Any, Any, Any, Any]:
    """(top, left, height, width) of ImageNet's random-resized crop for n images of one
    size (uniforms: (n, 10) for the share and the ratio, (n, 2) for the place), by
    `augment.rrc_boxes`' rule: the first of 10 (area share, log-uniform ratio) tries that
    fits, at a uniform place; else the centre, its ratio clamped."""
    area = float(h * w)
    share = RRC_SCALE[0] + share_u * (RRC_SCALE[1] - RRC_SCALE[0])
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = ops.exp(lo + ratio_u * (hi - lo))
    cw = ops.round(ops.sqrt(area * share * aspect))
    ch = ops.round(ops.sqrt(area * share / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ops.expand_dims(ops.argmax(ops.cast(fits, "int32"), axis=1), 1)
    bh = ops.squeeze(ops.take_along_axis(ch, first, axis=1), 1)
    bw = ops.squeeze(ops.take_along_axis(cw, first, axis=1), 1)
    # none fits: the whole image's centre, its ratio clamped (fixed by the size)
    if w / h < RRC_RATIO[0]:
        fh, fw = round(w / RRC_RATIO[0]), w
    elif w / h > RRC_RATIO[1]:
        fh, fw = h, round(h * RRC_RATIO[1])
    else:
        fh, fw = h, w
    any_fit = ops.any(fits, axis=1)
    bh = ops.where(any_fit, bh, float(fh))
    bw = ops.where(any_fit, bw, float(fw))
    u = place_u
    top = ops.where(any_fit, ops.floor(u[:, 0] * (h - bh + 1)), float((h - fh) // 2))
    left = ops.where(any_fit, ops.floor(u[:, 1] * (w - bw + 1)), float((w - fw) // 2))
    return top, left, bh, bw


# --- shifts, crops and resizes as weight matrices ----------------------------------------


def sample_weights(src: Any, size: int) -> Any:
    """(n, out) source positions -> (n, out, size) weights: bilinear between the two
    pixels around each position; a position outside [0, size - 1] weighs nothing
    (scipy's `constant` rule, as `augment._shift_axis`), an integer one picks its pixel."""
    base = ops.floor(src)
    frac = src - base
    inside = ops.cast((src >= 0) & (src <= size - 1), "float32")
    b = ops.cast(base, "int32")
    return (ops.one_hot(b, size) * ops.expand_dims((1 - frac) * inside, -1)
            + ops.one_hot(b + 1, size) * ops.expand_dims(frac * inside, -1))


def shift_weights(shift: Any, size: int, reflect: bool = False) -> Any:
    """out[r] = x[r + shift] as weights; `reflect`: numpy's reflection outside (an
    integer shift of at most size - 1), else 0 there."""
    src = ops.expand_dims(ops.arange(size, dtype="float32"), 0) + ops.expand_dims(shift, 1)
    if reflect:
        src = ops.abs(src)
        src = (size - 1) - ops.abs((size - 1) - src)
    return sample_weights(src, size)


def resize_weights(start: Any, length: Any, size: int) -> Any:
    """The crop [start, start + length) resized to `size`, bilinear with pixel centres
    (PIL's rule when enlarging: positions outside the crop take its edge)."""
    r = ops.expand_dims(ops.arange(size, dtype="float32"), 0)
    src = (r + 0.5) * ops.expand_dims(length / size, 1) - 0.5
    src = ops.clip(src, 0.0, ops.expand_dims(length - 1, 1)) + ops.expand_dims(start, 1)
    return sample_weights(src, size)


def warp(x: Any, rows: Any, cols: Any) -> Any:
    """Each image's rows, then its columns, through its weight matrices."""
    x = ops.einsum("nrs,nswc->nrwc", rows, x)
    return ops.einsum("nqs,nrsc->nrqc", cols, x)


def mirror(x: Any, which: Any) -> Any:
    return ops.where(ops.reshape(which, (-1, 1, 1, 1)), ops.flip(x, axis=2), x)


# --- mixup and CutMix --------------------------------------------------------------------


def mix_plan(keys: Any, d: Draws, n: Any, h: int, w: int) -> dict:
    """One batch's mix: its weight, CutMix or mixup and CutMix's box centre as the host
    drew them (`stream.device_keys`, numpy's Beta, as `augment.mix` draws), the partner
    order drawn here; `cut_label` is CutMix's exact kept share (the labels' weight)."""
    lam = ops.cast(keys[0, 3], "float32") / LAM_SCALE
    cut = ops.sqrt(1.0 - lam)
    ch, cw = ops.floor(h * cut), ops.floor(w * cut)
    cy, cx = ops.cast(keys[0, 5], "float32"), ops.cast(keys[0, 6], "float32")
    y0, y1 = ops.clip(cy - ops.floor(ch / 2), 0, h), ops.clip(cy + ops.floor(ch / 2), 0, h)
    x0, x1 = ops.clip(cx - ops.floor(cw / 2), 0, w), ops.clip(cx + ops.floor(cw / 2), 0, w)
    rows, cols = ops.arange(h, dtype="float32"), ops.arange(w, dtype="float32")
    inside = ops.cast((rows >= y0) & (rows < y1), "float32")[:, None] * \
        ops.cast((cols >= x0) & (cols < x1), "float32")[None, :]
    return {"perm": ops.argsort(d.uniform(PERM, (n,))), "lam": lam,
            "use_cut": keys[0, 4] == 1, "box": ops.reshape(inside, (1, h, w, 1)),
            "cut_label": 1.0 - (y1 - y0) * (x1 - x0) / (h * w)}


def mix_images(x: Any, plan: dict) -> Any:
    partner = ops.take(x, plan["perm"], axis=0)
    pasted = x * (1 - plan["box"]) + partner * plan["box"]
    return ops.where(plan["use_cut"], pasted, plan["lam"] * x + (1 - plan["lam"]) * partner)


def mix_labels(y: Any, plan: dict) -> Any:
    weight = ops.where(plan["use_cut"], plan["cut_label"], plan["lam"])
    return weight * y + (1 - weight) * ops.take(y, plan["perm"], axis=0)


# --- the layer and the model that trains through it --------------------------------------


@keras.saving.register_keras_serializable(package="ablation")
class DeviceAugment(keras.layers.Layer):
    """uint8 images and their keys in, normalised (and, in training, augmented and
    mixed) float32 images out. No weights: the network's counts are unchanged, and the
    saved model (`training.standard_copy`) is the network alone, taking normalised
    images as before."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], batch_size: int,
                 augment: str = "blog", pad: int | None = None, mixup: float = 0.0,
                 cutmix: float = 0.0, **kwargs: Any):
        super().__init__(dtype="float32", autocast=False, **kwargs)
        self.batch_size = int(batch_size)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.augment, self.pad = augment, pad
        self.mixup, self.cutmix = float(mixup), float(cutmix)

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "batch_size": self.batch_size, "augment": self.augment, "pad": self.pad,
                "mixup": self.mixup, "cutmix": self.cutmix}

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[0])

    def normalise(self, images: Any) -> Any:
        """As `augment.normalise`: (x - mean) / std in float32, the same numbers."""
        x = ops.cast(images, "float32")
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        images, keys = inputs
        x = self.normalise(images)
        if not training:
            return x
        return self.augmented(x, keys)

    def augmented(self, x: Any, keys: Any) -> Any:
        """The recipe's augmentation (then mix) of a normalised batch."""
        n = ops.shape(x)[0]
        u = ImageDraws(keys, n, self.batch_size)
        h, w = int(x.shape[1]), int(x.shape[2])
        flip = flips(u(FLIP, 1)[:, 0], keys)
        if self.augment == "blog":
            dy, dx = shifts(u(SHIFT_Y, 2), h, w)
            x = warp(mirror(x, flip), shift_weights(dy, h), shift_weights(dx, w))
        elif self.augment in ("crop", "reflect"):
            pad = crop_pad(h, w) if self.pad is None else self.pad
            sy, sx = crop_offsets(u(SHIFT_Y, 2), pad)
            reflect = self.augment == "reflect"
            x = mirror(warp(x, shift_weights(sy, h, reflect), shift_weights(sx, w, reflect)),
                       flip)
        elif self.augment == "rrc":
            top, left, bh, bw = rrc_boxes(u(SHARE, RRC_TRIES), u(RATIO, RRC_TRIES),
                                          u(PLACE, 2), h, w)
            x = mirror(warp(x, resize_weights(top, bh, h), resize_weights(left, bw, w)), flip)
        else:
            x = mirror(x, flip)
        if self.mixup or self.cutmix:  # keyed by the share: its own pairs
            x = mix_images(x, mix_plan(keys, Draws(keys[0, :2]), n, h, w))
        return x

    def labels(self, keys: Any, y: Any) -> Any:
        """A training batch's labels, mixed as its images were (evaluation batches, key
        -1, unchanged)."""
        if not (self.mixup or self.cutmix):
            return y
        h, w = self.image_hw
        mixed = mix_labels(y, mix_plan(keys, Draws(keys[0, :2]), ops.shape(y)[0], h, w))
        return ops.where(keys[0, 0] == EVAL_KEY, y, mixed)

    def build(self, input_shape: Any) -> None:
        self.image_hw = (int(input_shape[0][1]), int(input_shape[0][2]))
        super().build(input_shape)


class AugmentedModel(keras.Model):
    """The training model when augmentation runs on the device: (uint8 images, keys) ->
    `DeviceAugment` -> the network. Keras' `compute_loss` and `compute_metrics` (public
    hooks for this) see the labels mixed as the images were."""

    def _augment(self) -> DeviceAugment:
        return next(layer for layer in self.layers if isinstance(layer, DeviceAugment))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training and isinstance(x, (tuple, list)):
            y = self._augment().labels(x[1], y)
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(x, (tuple, list)):
            y = self._augment().labels(x[1], y)
        return super().compute_metrics(x, y, y_pred, sample_weight)


def training_graph(net: Any, mean: Sequence[float], std: Sequence[float], batch_size: int,
                   augment: str, pad: int | None, mixup: float,
                   cutmix: float) -> AugmentedModel:
    """The network behind the device's augmentation: the model `fit` trains."""
    shape = tuple(int(s) for s in net.input_shape[1:])
    images = keras.Input(shape, dtype="uint8", name="images")
    keys = keras.Input((KEY_COLUMNS,), dtype="int32", name="keys")
    augment_layer = DeviceAugment(mean, std, batch_size, augment, pad, mixup, cutmix,
                                  name="device_augment")
    x = augment_layer([images, keys])
    return AugmentedModel([images, keys], net(x), name=f"{net.name}_on_device")
