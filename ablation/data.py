"""CIFAR-10/100: safe loading, class-balanced subsets, the blog's normalisation and
augmentation, and a deterministic batch stream.

Images stay uint8 in memory (150 MB for CIFAR-10 train, once per job); batches are
normalised and augmented on the fly in numpy, so the same code feeds the TensorFlow
and the JAX backend and TensorFlow is never needed to read data.

Every random choice is a pure function of (seed, epoch, batch index): a job resumed
after a crash sees exactly the batches an uninterrupted job would have seen.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.errors import AblationError

# Per-channel train-set statistics on 0..255 pixels, as the blog normalised them.
CIFAR10_MEAN = (125.307, 122.95, 113.865)
CIFAR10_STD = (62.9932, 62.0887, 66.7048)

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "classes": 10,
        "keras": "cifar10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "classes": 100,
        "keras": "cifar100",
    },
}
DATASETS = tuple(_LAYOUT)


@dataclass
class Dataset:
    """uint8 images (N, 32, 32, 3), int labels, and the normalisation to apply."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    def checksum(self) -> str:
        """sha256 over the exact pixels and labels used, for provenance."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR format holds: numpy arrays, lists, str/bytes.

    A pickle can run arbitrary code on load; these files come from the internet.
    """

    _ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, corrupt or hostile
        raise AblationError(f"damaged data file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise AblationError(f"damaged data file {path}: not a CIFAR batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in files:
        d = _read_pickle(folder / fname)
        try:
            x = np.asarray(d["data"], dtype=np.uint8)
            y = np.asarray(d[label_key], dtype=np.int64)
        except KeyError as e:
            raise AblationError(f"damaged data file {folder / fname}: no {e} entry") from None
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise AblationError(f"damaged data file {folder / fname}: shape {x.shape}")
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.concatenate(ys)


def resolve_data_dir(dataset: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder holding the batch files, or None to use keras.datasets' download.

    Accepts the parent of `cifar-10-batches-py` or that folder itself; falls back to
    the ABLATION_DATA_DIR environment variable.
    """
    data_dir = data_dir or os.environ.get("ABLATION_DATA_DIR")
    if not data_dir:
        return None
    layout = _LAYOUT[dataset]
    root = Path(data_dir).expanduser()
    for cand in (root / layout["folder"], root):
        if (cand / layout["test"][0]).is_file():
            return cand
    hint = ("download it with keras.datasets (omit --data-dir) or extract the "
            f"official archive so that {root / layout['folder']} exists")
    if not root.exists():
        raise AblationError(f"data dir {root} does not exist; {hint}")
    raise AblationError(f"no {layout['folder']} found in {root}; {hint}")


def _keras_download(dataset: str) -> Path:
    """Let keras.datasets fetch and cache the archive, then read it with our loader."""
    import keras

    try:
        getattr(keras.datasets, _LAYOUT[dataset]["keras"]).load_data()
    except Exception as e:
        raise AblationError(
            f"could not download {dataset} through keras.datasets ({e}); pass --data-dir "
            "or set ABLATION_DATA_DIR to a folder holding the extracted dataset"
        ) from None
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    found = resolve_data_dir(dataset, base) if base.exists() else None
    if found is None:
        for cand in base.glob(f"**/{_LAYOUT[dataset]['folder']}"):
            return cand
        raise AblationError(f"keras.datasets downloaded {dataset} but it is not under {base}")
    return found


def check(dataset: str, folder: Path) -> None:
    """Read the test split once, so missing or damaged data stops `ablation run` before
    any job is queued rather than failing every job the same way."""
    layout = _LAYOUT[dataset]
    try:
        _read_split(Path(folder), layout["test"], layout["label_key"])
        missing = [f for f in layout["train"] if not (Path(folder) / f).is_file()]
    except FileNotFoundError as e:
        missing = [Path(e.filename).name]
    if missing:
        raise AblationError(f"incomplete dataset in {folder}: missing {', '.join(missing)}; "
                            "re-extract the official archive there")


def balanced_subset(y: np.ndarray, limit: int | None, num_classes: int) -> np.ndarray:
    """Indices of a deterministic, class-balanced subset: the first images of each class.

    The remainder of limit / num_classes goes to the lowest class ids.
    """
    if not limit or limit >= len(y):
        return np.arange(len(y))
    per, extra = divmod(limit, num_classes)
    idx = [np.flatnonzero(y == c)[: per + (c < extra)] for c in range(num_classes)]
    return np.sort(np.concatenate(idx))


def load(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
         train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """Load a CIFAR dataset as uint8, optionally a class-balanced subset of it."""
    if dataset not in _LAYOUT:
        raise AblationError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    layout = _LAYOUT[dataset]
    folder = resolve_data_dir(dataset, data_dir) or _keras_download(dataset)
    try:
        x_tr, y_tr = _read_split(folder, layout["train"], layout["label_key"])
        x_te, y_te = _read_split(folder, layout["test"], layout["label_key"])
    except FileNotFoundError as e:
        raise AblationError(f"incomplete dataset in {folder}: missing {Path(e.filename).name}; "
                            "re-extract the official archive there") from None
    if dataset == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:  # its own full train-set statistics, before any subsetting
        flat = x_tr.reshape(-1, 3).astype(np.float64)
        mean = tuple(float(v) for v in flat.mean(0))
        std = tuple(float(v) for v in flat.std(0))
    n = layout["classes"]
    tr = balanced_subset(y_tr, train_limit, n)
    te = balanced_subset(y_te, test_limit, n)
    return Dataset(dataset, x_tr[tr], y_tr[tr], x_te[te], y_te[te], n, mean, std, str(folder))


def synthetic(n_train: int = 256, n_test: int = 128, num_classes: int = 10,
              seed: int = 0) -> Dataset:
    """Random images with learnable labels (class = brightest channel pattern), for
    benchmarks and tests that must not depend on the real data."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=n_train + n_test)
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   num_classes, CIFAR10_MEAN, CIFAR10_STD, "generated")


# --- batches -----------------------------------------------------------------------------


def normalise(x: np.ndarray, mean, std) -> np.ndarray:
    """uint8 -> float32 (x - mean) / std per channel, in one float32 buffer (the same
    values, bit for bit, as the float32 cast then the two operations)."""
    out = np.subtract(x, np.asarray(mean, np.float32), dtype=np.float32)
    return np.divide(out, np.asarray(std, np.float32), out=out)


def _shift_axis(x: np.ndarray, shift: np.ndarray, axis: int) -> np.ndarray:
    """Shift each image along `axis` (1 rows, 2 cols) by a real number of pixels:
    out[i] = x[i + shift], bilinear, 0 outside, exactly as ImageDataGenerator does it
    (scipy.ndimage.affine_transform, order=1, mode='constant', cval=0)."""
    n, size = x.shape[0], x.shape[axis]
    base = np.floor(shift).astype(np.int64)
    frac = (shift - base).astype(np.float32)
    pos = np.arange(size)[None, :] + base[:, None]  # (n, size) source index, low side
    # scipy's 'constant' mode: a sample point outside [0, size-1] is cval, not a blend
    sample = pos + frac[:, None]
    inside = (sample >= 0) & (sample <= size - 1)
    out = np.zeros_like(x)
    for off, w in ((0, 1.0 - frac), (1, frac)):
        src = pos + off
        valid = inside & (src >= 0) & (src < size)
        srcc = np.clip(src, 0, size - 1)
        if axis == 1:
            g = x[np.arange(n)[:, None], srcc]  # (n, size, W, C)
            m = (valid * w[:, None])[:, :, None, None]
        else:
            g = x[np.arange(n)[:, None], :, srcc]  # (n, size, H, C) -> move axes back
            g = g.transpose(0, 2, 1, 3)
            m = (valid * w[:, None])[:, None, :, None]
        out += g * m.astype(np.float32)
    return out


def augment_blog(x: np.ndarray, rng: np.random.Generator, max_shift: float = 0.125) -> np.ndarray:
    """The blog's ImageDataGenerator: continuous shifts of up to 12.5% (4 px) in each
    axis, bilinear, zero fill (in normalised space), plus random horizontal flips."""
    n, h, w, _ = x.shape
    dy = rng.uniform(-max_shift, max_shift, n) * h
    dx = rng.uniform(-max_shift, max_shift, n) * w
    flip = rng.random(n) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return _shift_axis(_shift_axis(x, dy, 1), dx, 2)


def augment_crop(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """The papers' augmentation: zero-pad 4 px, random 32x32 crop, random flip."""
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    oy = rng.integers(0, 2 * pad + 1, n)
    ox = rng.integers(0, 2 * pad + 1, n)
    rows = (oy[:, None] + np.arange(h)[None, :])[:, :, None]
    cols = (ox[:, None] + np.arange(w)[None, :])[:, None, :]
    out = padded[np.arange(n)[:, None, None], rows, cols]
    flip = rng.random(n) < 0.5
    return np.where(flip[:, None, None, None], out[:, :, ::-1], out)


AUGMENTATIONS = {"blog": augment_blog, "crop": augment_crop, "none": None}


def mix(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, mixup: float = 0.0,
        cutmix: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) on one batch of images and
    one-hot labels, with the batch itself in a random order as the partner.

    One weight lam ~ Beta(alpha, alpha) per batch. Mixup blends the images,
    lam·x + (1 − lam)·x[perm]; CutMix pastes a box of area about (1 − lam) of the image
    from x[perm], and the labels take the box's exact share. With both on, each batch
    takes one of the two, at even odds (timm's rule). Labels are mixed with the same
    weights, so each row still sums to 1. Keras' MixUp and CutMix layers are not used:
    their randomness comes from a seed generator's state, and this pipeline's must be a
    pure function of (seed, epoch, batch) so that a resumed job sees the same batches.
    """
    if not (mixup or cutmix):
        return x, y
    use_cutmix = bool(cutmix) and (not mixup or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    perm = rng.permutation(len(x))
    if not use_cutmix:
        return (lam * x + (1 - lam) * x[perm]).astype(x.dtype, copy=False), \
            (lam * y + (1 - lam) * y[perm]).astype(y.dtype, copy=False)
    h, w = x.shape[1:3]
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    out = x.copy()
    out[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the labels' weight: the exact share
    return out, (kept * y + (1 - kept) * y[perm]).astype(y.dtype, copy=False)


class TrainStream:
    """Finite, resumable stream of augmented training batches, epochs start..epochs-1.

    Epoch e uses permutation rng(seed, e) and batch b of it augmentation rng(seed, e, b),
    so starting at `start_epoch` reproduces an uninterrupted run exactly. Batches are
    prepared on `threads` threads (numpy releases the GIL), two per thread ahead; the
    executor sizes `threads` to the host's cores and the jobs sharing them.

    The stream is finite on purpose: TensorFlow's `from_generator` can hang when an
    iterator over a generator is destroyed mid-sequence, so the generator must be
    exhausted by the end of `fit`; `stop()` ends it early (NaN loss).

    As in the blog (steps = N // batch + 1), an epoch is ceil(N / batch) batches, the
    last one smaller.
    """

    def __init__(self, ds: Dataset, batch_size: int, seed: int, augment: str = "blog",
                 start_epoch: int = 0, epochs: int = 1, threads: int = 2,
                 dtype: str = "float32", mixup: float = 0.0, cutmix: float = 0.0):
        if augment not in AUGMENTATIONS:
            raise AblationError(f"unknown augmentation {augment!r}; choose blog or crop")
        self.mixup, self.cutmix = mixup, cutmix
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.augment = AUGMENTATIONS[augment]
        self.start_epoch, self.epochs = start_epoch, epochs
        self.threads = max(1, int(threads))
        self.prefetch = 2 * self.threads
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)
        self.dtype = dtype
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
        x = normalise(self.ds.x_train[idx], self.ds.mean, self.ds.std)
        if self.augment is not None:
            x = self.augment(x, np.random.default_rng([self.seed, epoch, step]))
        y = one_hot(self.ds.y_train[idx], self.ds.num_classes)
        if self.mixup or self.cutmix:  # its own stream: the augmentation's is unchanged
            x, y = mix(x, y, np.random.default_rng([self.seed, epoch, step, 1]), self.mixup,
                       self.cutmix)
        return x.astype(self.dtype, copy=False), y

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        keys = ((e, s) for e in range(self.start_epoch, self.epochs)
                for s in range(self.steps_per_epoch))
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


def test_batches(ds: Dataset, batch_size: int, dtype: str = "float32"):
    """The whole test set as a keras PyDataset: normalised on the fly, no randomness."""
    import keras

    class _Test(keras.utils.PyDataset):
        def __len__(self) -> int:
            return -(-len(ds.y_test) // batch_size)

        def __getitem__(self, i: int):
            sl = slice(i * batch_size, (i + 1) * batch_size)
            x = normalise(ds.x_test[sl], ds.mean, ds.std).astype(dtype, copy=False)
            return x, one_hot(ds.y_test[sl], ds.num_classes)

    return _Test()
