"""The batches training sees: a finite, resumable stream of augmented (and mixed)
training batches, and the evaluation splits as Keras datasets."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ablation.data.augment import (
    AUGMENTATIONS,
    augment_rrc,
    flips,
    mix,
    normalise,
    rrc_as_read,
)
from ablation.errors import AblationError

if TYPE_CHECKING:
    from ablation.data import Dataset


# the keys a batch carries when the step augments it (`ablation.data.ondevice`)
FLIP_DRAWN = 2  # the keys' third column: draw this image's flip on the device
EVAL_KEY = -1  # an evaluation batch's key: normalise only


KEY_COLUMNS = 7
LAM_SCALE = 2 ** 30  # the mix's weight, as an integer in the keys


def device_keys(seed: int, epoch: int, step: int, flip: np.ndarray | None, n: int,
                mixup: float = 0.0, cutmix: float = 0.0,
                size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """The (n, 7) int32 keys of training batch `step` of `epoch`: the batch's key (31
    bits of numpy's generator on (seed, epoch, step, 2), a stream the host path never
    draws from), each image's place in the batch, its flip (`flip`: the recipe's, or
    None: drawn), and the batch's mix as `augment.mix` draws it (on (seed, epoch, step,
    3)): its weight ~ Beta(alpha, alpha) times LAM_SCALE, whether it is CutMix (at even
    odds with both), CutMix's centre (row, column) in an image of `size`."""
    k = int(np.random.default_rng([seed, epoch, step, 2]).integers(0, 2 ** 31 - 1))
    keys = np.zeros((n, KEY_COLUMNS), np.int32)
    keys[:, 0], keys[:, 1] = k, np.arange(n)
    keys[:, 2] = FLIP_DRAWN if flip is None else np.asarray(flip, bool)
    if mixup or cutmix:
        rng = np.random.default_rng([seed, epoch, step, 3])
        use_cutmix = bool(cutmix) and (not mixup or rng.random() < 0.5)
        alpha = cutmix if use_cutmix else mixup
        keys[:, 3] = round(float(rng.beta(alpha, alpha)) * LAM_SCALE)
        keys[:, 4] = use_cutmix
        keys[:, 5], keys[:, 6] = rng.integers(size[0]), rng.integers(size[1])
    return keys


def device_eval_keys(n: int) -> np.ndarray:
    """An evaluation batch's keys (`EVAL_KEY`): the step only normalises."""
    keys = np.zeros((n, KEY_COLUMNS), np.int32)
    keys[:, 0], keys[:, 1] = EVAL_KEY, np.arange(n)
    return keys


class TrainStream:
    """Finite, resumable stream of augmented training batches, epochs start..epochs-1.

    Epoch e uses permutation rng(seed, e) and batch b of it augmentation rng(seed, e, b),
    so starting at `start_epoch` (and within it at batch `start_step`, a job resumed from
    a snapshot taken inside an epoch) reproduces an uninterrupted run exactly. Batches are
    prepared on `threads` threads (numpy releases the GIL), two per thread ahead; the
    executor sizes `threads` to the host's cores and the jobs sharing them.

    The stream is finite on purpose: TensorFlow's `from_generator` can hang when an
    iterator over a generator is destroyed mid-sequence, so the generator must be
    exhausted by the end of `fit`; `stop()` ends it early (NaN loss).

    `on_device`: the batches are (uint8 images, their keys) and unmixed labels, the
    augmentation and the mix being the training step's (`ablation.data.ondevice`).

    As in the blog (steps = N // batch + 1), an epoch is ceil(N / batch) batches, the
    last one smaller.
    """

    def __init__(self, ds: Dataset, batch_size: int, seed: int, augment: str = "blog",
                 start_epoch: int = 0, epochs: int = 1, threads: int = 2,
                 dtype: str = "float32", mixup: float = 0.0, cutmix: float = 0.0,
                 pad: int | None = None, flip: str = "random", start_step: int = 0,
                 on_device: bool = False):
        if augment not in AUGMENTATIONS:
            raise AblationError(f"unknown augmentation {augment!r}; choose "
                                f"{', '.join(AUGMENTATIONS)}")
        self.mixup, self.cutmix = mixup, cutmix
        self.pad, self.flip = pad, flip
        # each image's first flip, drawn once per run (an alternating flip's start)
        self.first_flip = (np.random.default_rng([seed, 2 ** 31]).random(len(ds.y_train)) < 0.5
                           if flip == "alternate" else None)
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.augment = AUGMENTATIONS[augment]
        self.start_epoch, self.epochs, self.start_step = start_epoch, epochs, start_step
        self.threads = max(1, int(threads))
        self.prefetch = 2 * self.threads
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)
        self.dtype = dtype
        self.on_device = on_device
        self.steps_per_epoch = -(-len(ds.y_train) // batch_size)
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation, computed once per epoch (threads may race to make
        it: each makes the same one)."""
        cached = self._order
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(
                len(self.ds.y_train)))
            self._order = cached
        return cached[1]

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        order = self.order(epoch)
        idx = order[step * self.batch_size:(step + 1) * self.batch_size]
        which = flips(epoch, self.flip, self.first_flip)
        which = which[idx] if isinstance(which, np.ndarray) else (
            np.zeros(len(idx), bool) if which is False else None)
        if self.on_device:  # uint8 and the batch's keys: the step augments and mixes
            keys = device_keys(self.seed, epoch, step, which, len(idx), self.mixup,
                               self.cutmix, self.ds.input_shape[:2])
            return ((self.ds.x_train[idx], keys),
                    one_hot(self.ds.y_train[idx], self.ds.num_classes))
        rng = np.random.default_rng([self.seed, epoch, step])
        if self.augment is augment_rrc and getattr(self.ds.x_train, "crops_when_read", False):
            # ImageNet's crop from the image file itself, not from it resized whole
            x = rrc_as_read(self.ds.x_train, idx, rng, self.ds.mean, self.ds.std, which)
        else:
            x = normalise(self.ds.x_train[idx], self.ds.mean, self.ds.std)
            extra = {} if self.pad is None and self.flip == "random" else {"pad": self.pad,
                                                                            "flip": which}
            x = self.augment(x, rng, **extra)
        y = one_hot(self.ds.y_train[idx], self.ds.num_classes)
        if self.mixup or self.cutmix:  # its own stream: the augmentation's is unchanged
            x, y = mix(x, y, np.random.default_rng([self.seed, epoch, step, 1]), self.mixup,
                       self.cutmix)
        return x.astype(self.dtype, copy=False), y

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        keys = ((e, s) for e in range(self.start_epoch, self.epochs)
                for s in range(self.start_step if e == self.start_epoch else 0,
                               self.steps_per_epoch))
        pool = ThreadPoolExecutor(self.threads)
        pending: deque = deque()
        try:
            for key in keys:
                pending.append(pool.submit(self.batch, *key))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
                if self._stopped:
                    return
            while pending and not self._stopped:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(y), num_classes), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def test_batches(ds: Dataset, batch_size: int, dtype: str = "float32", split: str = "test",
                 on_device: bool = False):
    """A whole split (the test set; "validation": the held-out images) as a keras
    PyDataset: normalised on the fly, no randomness (`on_device`: uint8 images and
    evaluation keys, which the step only normalises)."""
    import keras

    x_all, y_all = (ds.x_val, ds.y_val) if split == "validation" else (ds.x_test, ds.y_test)

    class _Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return -(-len(y_all) // batch_size)

        def __getitem__(self, i: int):
            sl = slice(i * batch_size, (i + 1) * batch_size)
            if on_device:
                return ((x_all[sl], device_eval_keys(len(y_all[sl]))),
                        one_hot(y_all[sl], ds.num_classes))
            x = normalise(x_all[sl], ds.mean, ds.std).astype(dtype, copy=False)
            return x, one_hot(y_all[sl], ds.num_classes)

    return _Batches()
