"""A packed dataset: image records in ArrayRecord shards, read by index, and the manifest
that says what they hold.

A packed dataset is a folder made by `ablation data pack` (`ablation.data.pack`):

* `manifest.json`: the format, the classes, each split's count, how the images are
  stored (`raw`: uint8 pixels of one shape; `encoded`: the image files' own JPEG/PNG
  bytes, decoded when read), the content hash, the normalisation statistics, and each
  shard's file, record count and size;
* `labels.npz`: the integer labels of both splits (held in memory: 8 bytes an image);
* `train-NNNNN.array_record`, `test-NNNNN.array_record`: one record an image, written
  with `group_size:1`, so any record is read without its neighbours (what Grain's
  `ArrayRecordDataSource` asks of its files too).

`PackedImages` is one split as an array of uint8 images (N, H, W, C) that reads only the
images it is indexed with: a training stream's batch gathers its images from the shards,
so a job's memory does not grow with the dataset. The batches are the same, bit for bit,
as the same images held in memory: the stream indexes both the same way.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.data import folders
from ablation.data.sizes import centre_crop, resized
from ablation.errors import AblationError

FORMAT = "ablation-packed"
VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.npz"
SPLITS = ("train", "test")
RAW, ENCODED = "raw", "encoded"
WRITER_OPTIONS = "group_size:1,uncompressed"  # random access by record; pixels compress little


def is_packed(folder: Path) -> bool:
    """Whether a folder is a packed dataset (it has a manifest; a pack that was killed
    never has one)."""
    return (Path(folder) / MANIFEST).is_file()


def record_reader():
    """ArrayRecord's random-access reader class, or one line saying how to install it."""
    try:
        from array_record.python.array_record_data_source import ArrayRecordDataSource
    except ImportError as e:
        raise AblationError("packed datasets need the array-record package (pip install "
                            f"array-record; Linux and macOS): {e}") from e
    return ArrayRecordDataSource


@dataclass(frozen=True)
class Manifest:
    """What a packed dataset holds, read from its manifest.json (and checked against its
    files' sizes, cheaply: a shard copied in part is one line, not a wrong image)."""

    path: Path
    classes: tuple[str, ...]
    num_classes: int
    counts: dict[str, int]
    storage: str
    size: tuple[int, int] | None  # (H, W) of every image; None: encoded, of several sizes
    channels: int
    content_hash: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shards: dict[str, list[dict]]
    source: str
    statistics_images: int  # training images the statistics were measured on

    def shape_at(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        """(H, W, C) the images are read at: `image_size` (H, W), else their own size."""
        hw = image_size if image_size is not None else self.size
        if hw is None:
            raise AblationError(f"the images of {self.path} differ in size (packed "
                                "encoded): set image_size (--image-size N) to resize them all")
        return int(hw[0]), int(hw[1]), self.channels

    def shard_paths(self, split: str) -> list[Path]:
        return [self.path / s["file"] for s in self.shards[split]]

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(y_train, y_test), checked against the counts."""
        where = self.path / LABELS
        if not where.is_file():
            raise AblationError(f"damaged packed dataset {self.path}: {LABELS} is missing; "
                                "copy or pack it again")
        try:
            with np.load(where, allow_pickle=False) as z:
                ys = tuple(np.asarray(z[f"y_{s}"], np.int64) for s in SPLITS)
        except (OSError, KeyError, ValueError) as e:
            raise AblationError(f"damaged packed dataset {self.path}: {LABELS} is not "
                                f"readable ({type(e).__name__}); pack it again") from e
        for split, y in zip(SPLITS, ys, strict=True):
            if len(y) != self.counts[split]:
                raise AblationError(f"damaged packed dataset {self.path}: {LABELS} holds "
                                    f"{len(y):,} {split} labels, the manifest "
                                    f"{self.counts[split]:,}; pack it again")
        return ys


def read_manifest(folder: Path) -> Manifest:
    """A packed dataset's manifest, its shards' presence and sizes checked; every fault
    is one line naming the folder."""
    folder = Path(folder)
    where = folder / MANIFEST
    try:
        raw = json.loads(where.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        if raw.get("version") != VERSION:
            raise AblationError(f"{folder} is packed in format version {raw.get('version')}; "
                                f"this ablation reads version {VERSION}: pack it again")
        m = Manifest(folder, tuple(raw["classes"]), int(raw["num_classes"]),
                     {s: int(raw["counts"][s]) for s in SPLITS}, raw["storage"],
                     tuple(raw["size"]) if raw["size"] else None, int(raw["channels"]),
                     raw["content_hash"], tuple(raw["mean"]), tuple(raw["std"]),
                     {s: list(raw["shards"][s]) for s in SPLITS}, raw["source"],
                     int(raw["statistics_images"]))
    except AblationError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AblationError(f"damaged packed dataset {folder}: {MANIFEST} is not readable "
                            f"({type(e).__name__}: {e}); pack it again") from e
    for split in SPLITS:
        if sum(int(s["records"]) for s in m.shards[split]) != m.counts[split]:
            raise AblationError(f"damaged packed dataset {folder}: the {split} shards' "
                                f"records do not add up to {m.counts[split]:,}")
        for shard in m.shards[split]:
            path = folder / shard["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != shard["bytes"]:
                raise AblationError(f"damaged packed dataset {folder}: {shard['file']} is "
                                    + ("missing" if size is None else f"{size:,} bytes, the "
                                       f"manifest says {shard['bytes']:,}")
                                    + "; copy or pack it again")
    return m


class PackedImages:
    """One split of a packed dataset as uint8 images (N, H, W, C), read when indexed.

    Indexing (an int, a slice, an index array) reads those images from the shards and
    returns a numpy array, at `image_size` when one is given (resized bilinearly, as an
    array in memory is), then centre-cropped to `crop` (H, W) when one is given (an
    evaluation's). `take` returns a view of a subset without reading anything: the
    validation split and class-balanced subsets are views.
    """

    def __init__(self, manifest: Manifest, split: str,
                 image_size: tuple[int, int] | None = None,
                 index: np.ndarray | None = None, _source=None,
                 crop: tuple[int, int] | None = None):
        self.manifest, self.split, self.image_size = manifest, split, image_size
        self.crop = crop
        h, w, c = manifest.shape_at(image_size)
        self.read_hw = (h, w)
        h, w = crop or (h, w)
        self.shape = (manifest.counts[split] if index is None else len(index), h, w, c)
        self.index = np.arange(manifest.counts[split]) if index is None else index
        self._source = _source
        self._lock = threading.Lock()

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: np.ndarray) -> PackedImages:
        """The images at `idx`, as a view: nothing is read."""
        return PackedImages(self.manifest, self.split, self.image_size, self.index[idx],
                            self._reader(), self.crop)

    def __getitem__(self, key) -> np.ndarray:
        keys = self.index[key]
        if np.ndim(keys) == 0:
            return self._read(np.array([keys]))[0]
        return self._read(np.asarray(keys))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _reader(self):
        """The split's shards, opened once (readers open lazily, thread-safely)."""
        with self._lock:
            if self._source is None:
                paths = [str(p) for p in self.manifest.shard_paths(self.split)]
                self._source = self._guarded(lambda: record_reader()(paths))
            return self._source

    def _guarded(self, read):
        """`read()`; a shard whose content is damaged (its size right, so `read_manifest`
        passed it) is one line naming the pack, not the record library's error."""
        try:
            return read()
        except (RuntimeError, OSError, ValueError) as e:
            raise AblationError(f"damaged packed dataset {self.manifest.path}: a {self.split} "
                                f"shard cannot be read ({str(e).splitlines()[0][:120]}); "
                                "copy or pack it again") from e

    @property
    def crops_when_read(self) -> bool:
        """Whether a training crop is cut from each image file as decoded, at its own
        size (an encoded pack's training split: `read_crops`)."""
        return self.manifest.storage == ENCODED and self.crop is None

    def read_crops(self, key, boxes_of) -> np.ndarray:
        """The images at `key`, each decoded whole, cropped to its box and resized to the
        size read: `boxes_of(sizes)` gives the boxes (top, left, height, width) for the
        images' own (height, width)."""
        keys = np.asarray(self.index[key]).reshape(-1)
        (h, w), c = self.read_hw, self.shape[3]
        opened = self._opened(keys)
        sizes = np.array([(img.size[1], img.size[0]) for img, _ in opened], np.int64)
        out = np.empty((len(keys), h, w, c), np.uint8)
        for i, ((img, where), (top, left, bh, bw)) in enumerate(
                zip(opened, boxes_of(sizes), strict=True)):
            box = img.crop((int(left), int(top), int(left + bw), int(top + bh)))
            out[i] = folders.decode(box, h, w, c, where)
        return out

    def _records(self, keys: np.ndarray) -> list[bytes]:
        reader = self._reader()
        return self._guarded(lambda: reader.__getitems__([int(k) for k in keys]))

    def _opened(self, keys: np.ndarray) -> list:
        """The records at `keys` as opened image files (headers read), with a name each."""
        if not len(keys):
            return []
        records = self._records(keys)
        out = []
        for k, rec in zip(keys, records, strict=True):
            where = f"{self.manifest.path} ({self.split} record {int(k)})"
            out.append((folders.open_image(where, rec), where))
        return out

    def _read(self, keys: np.ndarray) -> np.ndarray:
        if self.crop is not None and self.manifest.storage == ENCODED:
            return self._evaluated(keys)
        x = self._decoded(keys)
        return x if self.crop is None else centre_crop(x, self.crop)

    def _evaluated(self, keys: np.ndarray) -> np.ndarray:
        """An encoded pack's evaluation images as ImageNet's are: each resized, its aspect
        kept, to cover the size read (the shorter side of a square one), then its centre
        cropped (`crop`)."""
        (eh, ew), c = self.read_hw, self.shape[3]
        out = np.empty((len(keys), *self.shape[1:]), np.uint8)
        for i, (img, where) in enumerate(self._opened(keys)):
            scale = max(eh / img.size[1], ew / img.size[0])
            h, w = max(eh, round(img.size[1] * scale)), max(ew, round(img.size[0] * scale))
            out[i] = centre_crop(folders.decode(img, h, w, c, where)[None], self.crop)[0]
        return out

    def _decoded(self, keys: np.ndarray) -> np.ndarray:
        (h, w), c = self.read_hw, self.shape[3]
        if not len(keys):
            return np.empty((0, h, w, c), np.uint8)
        m = self.manifest
        if m.storage == RAW:
            records = self._records(keys)
            sh, sw = m.size
            x = np.frombuffer(b"".join(records), np.uint8)
            if x.size != len(keys) * sh * sw * c:
                raise AblationError(f"damaged packed dataset {m.path}: a {self.split} record "
                                    f"is not {sh}x{sw}x{c} pixels; pack it again")
            return resized(x.reshape(len(keys), sh, sw, c), self.image_size)
        out = np.empty((len(keys), h, w, c), np.uint8)
        for i, (img, where) in enumerate(self._opened(keys)):
            out[i] = folders.decode(img, h, w, c, where)
        return out

    def digest(self) -> str:
        """What these images are, without reading them: the dataset's content hash, the
        split and the indices taken, and the size read at (for a run's provenance)."""
        import hashlib

        h = hashlib.sha256(f"{self.manifest.content_hash}/{self.split}/{self.read_hw}/"
                           f"{self.shape}".encode())
        h.update(np.ascontiguousarray(self.index, np.int64).tobytes())
        return h.hexdigest()
