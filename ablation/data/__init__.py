"""Data: any image-classification dataset, held as uint8 arrays; class-balanced subsets
and a held-out validation split; normalisation statistics; the batches training sees.

* `sources`: CIFAR-10/100 (safe pickles), the other `keras.datasets` image sets, an
  `.npz` of arrays, a folder of images or a packed dataset, and a path dataset's
  content hash;
* `folders`: the image-folder layouts (ours, ImageNet's, Tiny-ImageNet's) and decoding;
* `sizes`: resizing, and the evaluation's centre crop;
* `packed`: a packed dataset's manifest and its images read from shards by index;
  `pack`: making one (`ablation data pack`);
* `augment`: normalisation, the blog's and the papers' augmentations, mixup and CutMix;
* `stream`: the resumable training stream and the evaluation splits.

Images stay uint8 in memory (150 MB for CIFAR-10 train, once per job), or on disk in a
packed dataset's shards, read a batch at a time (`packed.PackedImages`); batches are
normalised and augmented on the fly in numpy, so the same code feeds the TensorFlow
and the JAX backend and TensorFlow is never needed to read data. Every random choice
is a pure function of (seed, epoch, batch index): a job resumed after a crash sees
exactly the batches an uninterrupted job would have seen.

A dataset given by path is prepared once by the runner (`prepare`): its content hash
(which names its recipe id, so runs of different data never pool), its statistics and
shape, and for a folder its decoded arrays cached in the results folder, so a job
reads arrays, not thousands of image files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.data import folders, packed, sizes, sources
from ablation.data.augment import (
    AUGMENTATIONS,
    _shift_axis,
    augment_blog,
    augment_crop,
    crop_pad,
    mix,
    normalise,
    tta_views,
)
from ablation.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    NAMED,
    check,
    content_hash,
    describe,
    is_path,
    resolve,
    resolve_data_dir,
)
from ablation.data.stream import TrainStream, one_hot, test_batches
from ablation.errors import AblationError

__all__ = ["AUGMENTATIONS", "CIFAR10_MEAN", "CIFAR10_STD", "DATASETS", "Dataset", "Moments",
           "TrainStream", "_shift_axis", "augment_blog", "augment_crop", "balanced_subset",
           "check", "content_hash", "crop_pad", "describe", "is_path", "load", "mix",
           "normalise", "one_hot", "prepare", "resolve", "resolve_data_dir", "shape_of",
           "synthetic", "test_batches", "tta_views"]

DATASETS = NAMED  # 0.4's name for the named datasets, kept for scripts that read it
MEMORY_SHARE = 0.5  # a dataset's uint8 images may take at most this share of free memory
CACHE = "datasets"  # under the results folder: decoded folder datasets, by content hash


@dataclass
class Dataset:
    """uint8 images (N, H, W, C), int labels, the normalisation to apply, and the held-out
    validation split when the recipe asks for one."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    content_hash: str | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def checksum(self) -> str:
        """sha256 over the exact pixels and labels used, for provenance; for images
        streamed from a packed dataset, over its content hash and the indices taken
        (reading every image of an ImageNet to name it would take longer than a run)."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(a.digest().encode() if isinstance(a, packed.PackedImages)
                     else np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


# --- subsets ---------------------------------------------------------------------------------


def balanced_subset(y: np.ndarray, limit: int | None, num_classes: int,
                    what: str = "") -> np.ndarray:
    """Indices of a deterministic, class-balanced subset: the first images of each class.

    The remainder of limit / num_classes goes to the lowest class ids. With `what` (the
    flag, for the message) a limit above the split's size, or a class with fewer images
    than its share, is an error, never a silent imbalance (a limit above the split's
    size is `check_sizes`'s).
    """
    if not limit or limit >= len(y):
        return np.arange(len(y))
    per, extra = divmod(limit, num_classes)
    idx = []
    for c in range(num_classes):
        have = np.flatnonzero(y == c)
        want = per + (c < extra)
        if what and len(have) < want:
            raise AblationError(f"{what} {limit:,} asks {want:,} images of class {c}, which "
                                f"has {len(have):,}; give a smaller {what}")
        idx.append(have[:want])
    return np.sort(np.concatenate(idx))


def check_sizes(dataset: str, train: int | None, test: int | None, validation: int = 0,
                train_limit: int | None = None, test_limit: int | None = None) -> None:
    """The one rule for subsets and the validation split against a dataset's sizes (None:
    not known), whether `ablation run` checks it before queueing or a job as it loads:
    one line naming the flag."""
    if validation and train is not None and validation > train:
        raise AblationError(f"validation {validation:,} is more than the {train:,} training "
                            f"images of {dataset}")
    if validation and train is not None and validation == train:
        raise AblationError(f"validation {validation:,} leaves no training image (the "
                            f"training split of {dataset} has {train:,})")
    left = None if train is None else train - validation
    if train_limit and left is not None and train_limit > left:
        raise AblationError(f"train-limit {train_limit:,} is more than the {left:,} training "
                            f"images of {dataset}" + (" left after the validation split"
                                                      if validation else ""))
    if test_limit and test is not None and test_limit > test:
        raise AblationError(f"test-limit {test_limit:,} is more than the {test:,} test images "
                            f"of {dataset}")


def check_recipe_sizes(recipe, record: dict | None = None) -> None:
    """`check_sizes` for a recipe: the sizes of a path dataset as `prepare` recorded
    them, else of a named dataset (known without reading it)."""
    if record is None:
        shape = describe(resolve(recipe.dataset), recipe.image_hw)
        record = {"train_images": shape.train, "test_images": shape.test}
    check_sizes(recipe.dataset, record["train_images"], record["test_images"],
                recipe.validation, recipe.train_limit, recipe.test_limit)


def held_out(y: np.ndarray, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices: `n` class-balanced images held out, the last of
    each class (the remainder of n / classes to the lowest class ids), so the training
    images a `train_limit` takes (the first of each class) are the same with or without a
    validation split as long as the class has room."""
    per, extra = divmod(n, num_classes)
    val = []
    for c in range(num_classes):
        have = np.flatnonzero(y == c)
        want = per + (c < extra)
        if want and len(have) <= want:
            raise AblationError(f"validation {n:,} asks {want:,} images of class {c}, which "
                                f"has {len(have):,} in the training split; give a smaller "
                                "validation")
        val.append(have[len(have) - want:])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val_idx), val_idx


# --- loading ---------------------------------------------------------------------------------


STATS_CHUNK = 4096  # images per step of `statistics` (a packed dataset's too)


class Moments:
    """Per-channel sums of uint8 pixels in float64, added a chunk of images at a time:
    `statistics` in memory and `ablation data pack` on disk add the same chunks in the
    same order, so the two give the same statistics to the last bit."""

    def __init__(self, channels: int):
        self.total, self.squares, self.n = np.zeros(channels), np.zeros(channels), 0

    def add(self, x: np.ndarray) -> None:
        chunk = x.reshape(-1, len(self.total)).astype(np.float64)
        self.total += chunk.sum(0)
        self.squares += np.square(chunk).sum(0)
        self.n += len(chunk)

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, population std) per channel."""
        mean = self.total / self.n
        std = np.sqrt(np.maximum(self.squares / self.n - mean ** 2, 0.0))
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def statistics(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images over every pixel, in float64,
    a few thousand images at a time (a float64 copy of CIFAR-10 would take 1.2 GB)."""
    moments = Moments(x.shape[-1])
    for start in range(0, len(x), STATS_CHUNK):
        moments.add(x[start:start + STATS_CHUNK])
    return moments.result()


def _check_memory(shape: sources.Shape, where: str) -> None:
    """A dataset whose uint8 images would not fit is one line, before it is read."""
    import psutil

    need = shape.bytes
    free = psutil.virtual_memory().available
    if need is not None and need > MEMORY_SHARE * free:
        raise AblationError(f"{where} needs {need / 2**30:.1f} GiB in memory as uint8 images; "
                            f"this machine has {free / 2**30:.1f} GiB free (at most half of it "
                            "is used for data): set a smaller image_size or use a subset")


def _cache_file(cache: Path, digest: str, image_size) -> Path:
    size = "" if image_size is None else f"-{image_size[0]}x{image_size[1]}"
    return Path(cache) / f"{digest}{size}.npz"


def _read(source: sources.Source, data_dir, image_size, digest: str | None,
          cache: Path | None) -> tuple:
    """The arrays of a source: x_train, y_train, x_test, y_test, class names, where."""
    if source.kind == "cifar":
        *arrays, where = sources.read_cifar(source.name, data_dir)
        return (*arrays, (), where)
    if source.kind == "keras":
        *arrays, where = sources.read_keras(source.name)
        return (*arrays, (), where)
    if source.kind == "folder" and cache is not None and digest:
        cached = _cache_file(cache, digest, image_size)
        if cached.is_file():
            return (*sources.read_npz(cached), str(source.path))
    if source.kind == "npz":
        _check_memory(describe(source), str(source.path))
        content = source.path.read_bytes()
        if digest and content_hash(source, content) != digest:
            raise AblationError(f"{source.path} changed since this job was queued (its "
                                "content hash differs); run `ablation run` again to queue "
                                "the new data")
        return (*sources.read_npz(source.path, content), str(source.path))
    _check_memory(describe(source, image_size), str(source.path))
    x_tr, y_tr, x_te, y_te, names = folders.read_folder(source.path, image_size)
    return x_tr, y_tr, x_te, y_te, names, str(source.path)


def _read_packed(source: sources.Source, image_size, digest: str | None,
                 crop_pct: float) -> tuple:
    """A packed dataset's splits as `PackedImages` (read when indexed) and its labels;
    its statistics as packed; the training split as evaluations read it (for the
    validation split)."""
    m = packed.read_manifest(source.path)
    if digest and m.content_hash != digest:
        raise AblationError(f"{source.path} changed since this job was queued (its content "
                            "hash differs); run `ablation run` again to queue the new data")
    y_tr, y_te = m.labels()
    x_tr = packed.PackedImages(m, "train", image_size)
    hw = x_tr.shape[1:3]
    if crop_pct == 1:
        x_te, x_tr_eval = packed.PackedImages(m, "test", image_size), x_tr
    else:
        at = sizes.eval_size(hw, crop_pct)
        x_tr_eval, x_te = (packed.PackedImages(m, s, at, crop=hw) for s in packed.SPLITS)
    return x_tr, y_tr, x_te, y_te, m.classes, str(source.path), (m.mean, m.std), x_tr_eval


def _take(x, idx: np.ndarray):
    """The images at `idx`: a view for packed images (nothing read), a contiguous copy
    in memory (CIFAR's images arrive as a view of its channel-first rows)."""
    return x.take(idx) if isinstance(x, packed.PackedImages) else np.ascontiguousarray(x[idx])


def load(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None,
         train_limit: int | None = None, test_limit: int | None = None,
         validation: int = 0, image_size: tuple[int, int] | None = None,
         data_hash: str | None = None, cache: Path | None = None,
         stats: tuple | None = None, base: Path | None = None,
         crop_pct: float = 1) -> Dataset:
    """A dataset as uint8 arrays: `validation` class-balanced images held out of the
    training split, then class-balanced `train_limit` / `test_limit` subsets.

    `dataset` is a known name or a path (relative to `base`); `data_hash` the content
    hash the job was queued with (a changed .npz fails); `cache` the folder of decoded
    folder datasets; `stats` (mean, std) the statistics the runner computed; `crop_pct`
    below 1: the test and validation images are resized to `sizes.eval_size`, then
    centre-cropped to the training images' size (the recipe's `crop_pct`)."""
    source = resolve(dataset, base)
    packed_stats = None
    if source.kind == "packed":  # resized as read, a batch at a time
        x_tr, y_tr, x_te, y_te, names, where, packed_stats, x_tr_eval = _read_packed(
            source, image_size, data_hash, crop_pct)
        native = x_tr.shape[1:3]

        def validation_images(idx):
            return _take(x_tr_eval, idx)
    else:
        x_tr, y_tr, x_te, y_te, names, where = _read(source, data_dir, image_size, data_hash,
                                                     cache)
        native = x_tr.shape[1:3]
        hw = tuple(image_size or native)
        x_read = x_tr
        x_tr, x_te = sizes.resized(x_tr, image_size), sizes.evaluated(x_te, hw, crop_pct)

        def validation_images(idx):
            return sizes.evaluated(_take(x_read, idx), hw, crop_pct)
    k = len(names) or (sources._LAYOUT[source.name]["classes"] if source.kind == "cifar"
                       else int(max(y_tr.max(), y_te.max())) + 1)
    if stats is not None:
        mean, std = stats
    elif packed_stats is not None:  # measured as it was packed, at its stored size
        mean, std = packed_stats
    elif dataset in sources.PUBLISHED and x_tr.shape[1:3] == native:
        mean, std = sources.PUBLISHED[dataset]
    else:  # its own full train-split statistics, before any hold-out or subset
        mean, std = statistics(x_tr)
    if any(s == 0 for s in std):
        raise AblationError(f"{where}: a channel has the same value in every training image "
                            "(std 0): it cannot be normalised")
    check_sizes(dataset, len(y_tr), len(y_te), validation, train_limit, test_limit)
    x_val = y_val = None
    if validation:
        keep, val = held_out(y_tr, validation, k)
        x_val, y_val = validation_images(val), y_tr[val]
        x_tr, y_tr = _take(x_tr, keep), y_tr[keep]
    tr = balanced_subset(y_tr, train_limit, k, "train-limit")
    te = balanced_subset(y_te, test_limit, k, "test-limit")
    name = dataset if not source.by_path else f"{source.kind}:{Path(where).name}"
    return Dataset(name, _take(x_tr, tr), y_tr[tr], _take(x_te, te), y_te[te], k,
                   tuple(mean), tuple(std), where, x_val, y_val, tuple(names), data_hash)


def shape_of(dataset: str, image_size: tuple[int, int] | None = None,
             base: Path | None = None) -> tuple[tuple[int, int, int], int]:
    """(input shape, classes) of a dataset, without loading it: what a network for it
    takes and gives."""
    shape = describe(resolve(dataset, base), image_size)
    return shape.input_shape, shape.classes


def prepare(dataset: str, image_size: tuple[int, int] | None, results: Path,
            base: Path | None = None, decode: bool = True, say=print) -> dict | None:
    """What the runner does once for a path dataset before queueing: its absolute path,
    content hash, shape, classes and statistics (recorded in every job's config.json),
    and for a folder the decoded arrays cached under `results/datasets/` (written
    atomically). None for a named dataset. Without `decode` (a dry run) only what the
    headers and the bytes' hash tell, and nothing is written."""
    source = resolve(dataset, base)
    if not source.by_path:
        return None
    shape = describe(source, image_size)
    if source.kind != "packed":  # a packed dataset streams: its size is the disk's concern
        _check_memory(shape, str(source.path))
    content = source.path.read_bytes() if source.kind == "npz" else None  # read once
    digest = content_hash(source, content)
    cache = Path(results) / CACHE
    record = {"path": str(source.path), "kind": source.kind, "content_hash": digest,
              "input_shape": list(shape.input_shape), "classes": shape.classes,
              "class_names": list(shape.class_names), "train_images": shape.train,
              "test_images": shape.test,
              "cache": str(cache) if source.kind == "folder" else None}
    if not decode:
        return record
    if source.kind == "packed":  # its statistics as packed
        m = packed.read_manifest(source.path)
        return {**record, "mean": list(m.mean), "std": list(m.std)}
    if source.kind == "npz":
        x_tr = sizes.resized(sources.read_npz(source.path, content)[0], image_size)
    elif (target := _cache_file(cache, digest, image_size)).is_file():
        x_tr = sources.read_npz(target)[0]
    else:
        say(f"decoding the {shape.train + shape.test:,} images of {source.path} once into "
            f"{target}")
        x_tr, y_tr, x_te, y_te, names = folders.read_folder(source.path, image_size)
        _write_npz(target, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                   class_names=np.array(names))
    mean, std = statistics(x_tr)
    return {**record, "mean": list(mean), "std": list(std)}


def _write_npz(path: Path, **arrays) -> None:
    from ablation import results

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise results.disk_error(e, path) from e


def synthetic(n_train: int = 256, n_test: int = 128, num_classes: int = 10,
              seed: int = 0) -> Dataset:
    """Random images with learnable labels (class = brightest channel pattern), for
    benchmarks and tests that must not depend on the real data."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=n_train + n_test)
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   num_classes, CIFAR10_MEAN, CIFAR10_STD, "generated")
