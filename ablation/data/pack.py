"""`ablation data pack SRC DEST`: any dataset the harness reads (a named set, an .npz, a
folder of images in any layout `ablation.data.folders` knows) written as a packed
dataset (`ablation.data.packed`), for training that streams from disk.

Images of one small size (at most `RAW_MAX` pixels a side, or any size once resized by
`--image-size`) are stored as raw uint8 pixels: reading one is a copy. Larger images, or
images of several sizes, keep their files' own bytes (JPEG, PNG) and are decoded when
read, at the recipe's `image_size`: a JPEG set stays its size on disk.

The pack is written in a hidden folder beside DEST and renamed to DEST when complete, so
an interrupted pack (Ctrl-C, kill -9, a full disk) leaves nothing that loads as a
dataset; the next pack of the same DEST clears it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ablation.data import folders, packed, sizes, sources
from ablation.errors import AblationError

RAW_MAX = 64  # images at most this many pixels a side (of one size) are stored raw
STORES = ("auto", "raw", "encoded")
SHARD_BYTES = 256 * 2**20  # a shard's size, about
CHUNK = 4096  # images a raw pack holds in memory at once (and its statistics' chunk)
STAT_SAMPLE = 10_000  # training images an encoded pack's statistics are measured on


class _Progress:
    """`packed n/N images (p %), img/s, ETA`, every tenth of the way and at the end."""

    def __init__(self, total: int, say: Callable[[str], None], what: str = "packed"):
        self.total, self.say, self.done, self.what = total, say, 0, what
        self.t0, self.next = time.monotonic(), max(1, total // 10)

    def add(self, n: int) -> None:
        from ablation.results import duration

        self.done += n
        if self.done < self.next and self.done < self.total:
            return
        while self.next <= self.done:
            self.next += max(1, self.total // 10)
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        self.say(f"  {self.what} {self.done:,}/{self.total:,} images "
                 f"({100 * self.done / self.total:.0f} %), {rate:,.0f} img/s, ETA "
                 f"{duration((self.total - self.done) / rate if rate else None)}")


class _Shards:
    """A split's ArrayRecord shards, a new one every `SHARD_BYTES`."""

    def __init__(self, folder: Path, split: str, shard_bytes: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.writer_class, self.folder, self.split = ArrayRecordWriter, folder, split
        self.shard_bytes, self.shards, self.writer, self.size = shard_bytes, [], None, 0

    def write(self, record: bytes) -> None:
        if self.writer is None or self.size >= self.shard_bytes:
            self.close()
            name = f"{self.split}-{len(self.shards):05d}.array_record"
            self.writer = self.writer_class(str(self.folder / name), packed.WRITER_OPTIONS)
            self.shards.append({"file": name, "records": 0})
            self.size = 0
        self.writer.write(record)
        self.shards[-1]["records"] += 1
        self.size += len(record)

    def close(self) -> list[dict]:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            last = self.shards[-1]
            last["bytes"] = (self.folder / last["file"]).stat().st_size
        return self.shards


def _arrays(source: sources.Source, data_dir) -> tuple:
    """x_train, y_train, x_test, y_test, class names and the content hash of a source
    read whole (a named set, an .npz)."""
    if source.kind == "npz":
        content = source.path.read_bytes()
        *arrays, names = sources.read_npz(source.path, content)
        return (*arrays, names, hashlib.sha256(content).hexdigest())
    read = sources.read_cifar(source.name, data_dir) if source.kind == "cifar" else \
        sources.read_keras(source.name)
    arrays = read[:4]
    h = hashlib.sha256()  # what `Dataset.checksum` is for the whole set
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return (*arrays, (), h.hexdigest())


def _image_chunks(x: np.ndarray, image_size) -> Iterator[np.ndarray]:
    for start in range(0, len(x), CHUNK):
        yield sizes.resized(x[start:start + CHUNK], image_size)


def _folder_chunks(layout: folders.Layout, split: str, shape, hasher) -> Iterator:
    """A folder split's images decoded at `shape`, CHUNK at a time, on the host's cores
    (PIL decodes without the GIL); each file hashed in order."""
    from concurrent.futures import ThreadPoolExecutor

    h, w, c = shape

    def read(p: Path) -> tuple[bytes, np.ndarray]:
        content = p.read_bytes()
        return content, folders.decode(folders.open_image(p, content), h, w, c, p)

    files = layout.files(split)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in range(0, len(files), CHUNK):
            part = files[start:start + CHUNK]
            x = np.empty((len(part), h, w, c), np.uint8)
            for i, ((k, p), (content, img)) in enumerate(
                    zip(part, pool.map(read, [p for _, p in part]), strict=True)):
                folders.hash_file(hasher, split, layout.names[k], p, content)
                x[i] = img
            yield x


def _write_raw(out: Path, splits: dict[str, Iterator[np.ndarray]], progress,
               shard_bytes: int) -> tuple[dict, tuple, tuple]:
    """Raw records of each split's image chunks; the training images' statistics,
    chunk by chunk as `ablation.data.statistics` measures them."""
    from ablation.data import Moments

    shards, moments = {}, None
    for split, chunks in splits.items():
        writer = _Shards(out, split, shard_bytes)
        for x in chunks:
            if split == "train":
                moments = moments or Moments(x.shape[-1])
                moments.add(x)
            for img in x:
                writer.write(img.tobytes())
            progress.add(len(x))
        shards[split] = writer.close()
    mean, std = moments.result()
    return shards, mean, std


def _write_encoded(out: Path, layout: folders.Layout, channels: int, progress, hasher,
                   shard_bytes: int) -> tuple[dict, tuple, tuple, int]:
    """Each image file's own bytes as a record; statistics of an evenly spaced sample of
    at most STAT_SAMPLE training images, each at its own size."""
    from ablation.data import Moments

    moments, sample, shards = Moments(channels), 0, {}
    for split in packed.SPLITS:
        files = layout.files(split)
        step = max(1, len(files) // STAT_SAMPLE)
        writer = _Shards(out, split, shard_bytes)
        for i, (k, p) in enumerate(files):
            content = p.read_bytes()
            folders.hash_file(hasher, split, layout.names[k], p, content)
            img = folders.open_image(p, content)
            if split == "train" and i % step == 0 and sample < STAT_SAMPLE:
                w, h = img.size
                moments.add(folders.decode(img, h, w, channels, p))
                sample += 1
            writer.write(content)
            progress.add(1)
        shards[split] = writer.close()
    mean, std = moments.result()
    return shards, mean, std, sample


@dataclass
class _Made:
    """What a packer wrote into the pack's folder, for its manifest."""

    shards: dict
    ys: list[np.ndarray]
    names: list[str] | tuple
    storage: str
    size: tuple[int, int] | None
    channels: int
    digest: str
    mean: tuple
    std: tuple
    sample: int  # training images the statistics were measured on
    total: int


def _pack_folder(source, src, dest, out, data_dir, store, image_size, shard_bytes,
                 say) -> _Made:
    """A folder of image files: raw pixels when small and of one size (or resized), else
    the files' own bytes."""
    layout = folders.folder_layout(source.path)
    total = layout.count("train") + layout.count("test")
    say(f"reading the headers of {total:,} images in {source.path}")
    scanned = folders.scan(layout, _Progress(total, say, "read the headers of").add)
    sizes, grey = scanned
    small = len(sizes) == 1 and max(next(iter(sizes))) <= RAW_MAX
    raw = store == "raw" or image_size is not None or (store == "auto" and small)
    shape = folders.folder_shape(layout, image_size if raw else None, scanned) \
        if raw or len(sizes) == 1 else None
    channels = 1 if grey else 3
    ys = [np.array([k for k, _ in layout.files(s)], np.int64) for s in packed.SPLITS]
    sources.check_labels(*ys, layout.names, str(source.path))
    hasher = hashlib.sha256()
    progress = _Progress(total, say)
    say(f"packing {total:,} images of {source.path} into {dest} "
        + (f"as raw {shape[0]}x{shape[1]}x{shape[2]} pixels" if raw else
           "as their files' own bytes (decoded when read)"))
    if raw:
        shards, mean, std = _write_raw(
            out, {s: _folder_chunks(layout, s, shape, hasher) for s in packed.SPLITS},
            progress, shard_bytes)
        sample = layout.count("train")
    else:
        shards, mean, std, sample = _write_encoded(out, layout, channels, progress, hasher,
                                                   shard_bytes)
    return _Made(shards, ys, layout.names, packed.RAW if raw else packed.ENCODED,
                 shape[:2] if shape is not None else None, channels, hasher.hexdigest(),
                 mean, std, sample, total)


def _pack_arrays(source, src, dest, out, data_dir, store, image_size, shard_bytes,
                 say) -> _Made:
    """A named set or an .npz: raw pixels (resized when asked)."""
    x_tr, y_tr, x_te, y_te, names, digest = _arrays(source, data_dir)
    total = len(x_tr) + len(x_te)
    progress = _Progress(total, say)
    say(f"packing {total:,} images of {src} into {dest} as raw pixels")
    shards, mean, std = _write_raw(out, {"train": _image_chunks(x_tr, image_size),
                                         "test": _image_chunks(x_te, image_size)},
                                   progress, shard_bytes)
    if image_size is None and src in sources.PUBLISHED:
        mean, std = sources.PUBLISHED[src]  # as `ablation.data.load` normalises it
    size = tuple(image_size) if image_size is not None else x_tr.shape[1:3]
    return _Made(shards, [y_tr, y_te], names, packed.RAW, size, x_tr.shape[-1], digest,
                 mean, std, len(x_tr), total)


def _clear_partials(dest: Path) -> None:
    for old in dest.parent.glob(f".{dest.name}.packing-*"):
        shutil.rmtree(old, ignore_errors=True)


def pack(src: str, dest: str | os.PathLike, data_dir=None, store: str = "auto",
         image_size: tuple[int, int] | None = None, shard_bytes: int = SHARD_BYTES,
         say: Callable[[str], None] = print) -> packed.Manifest:
    """Pack dataset `src` (a name or path, as `--dataset` takes) into folder `dest`;
    returns its manifest. `store`: auto (raw when small and of one size), raw, encoded;
    `image_size` (H, W): resize every image and store it raw."""
    if store not in STORES:
        raise AblationError(f"unknown store {store!r}; choose {', '.join(STORES)}")
    packed.record_reader()  # installed, or one line now
    dest = Path(dest).expanduser().resolve()
    if dest.exists():
        raise AblationError(f"{dest} exists: pack into a new folder (or delete it first)")
    source = sources.resolve(src)
    if source.kind == "packed":
        raise AblationError(f"{source.path} is packed already")
    if source.path is not None and (dest == source.path or source.path in dest.parents):
        raise AblationError(f"pack {source.path} into a folder outside it, not {dest}")
    if store == "encoded" and source.kind != "folder":
        raise AblationError(f"{src} holds arrays, not image files: it packs raw (--store raw "
                            "or auto)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clear_partials(dest)
    out = dest.parent / f".{dest.name}.packing-{os.getpid()}"
    out.mkdir()
    try:
        packer = _pack_folder if source.kind == "folder" else _pack_arrays
        made = packer(source, src, dest, out, data_dir, store, image_size, shard_bytes, say)
        digest, ys, names, total = made.digest, made.ys, made.names, made.total
        if image_size is not None:  # resized: other pixels, so another identity
            digest = hashlib.sha256(f"{digest}\0{image_size[0]}x{image_size[1]}".encode()
                                    ).hexdigest()
        np.savez(out / packed.LABELS, y_train=ys[0], y_test=ys[1])
        manifest = {
            "format": packed.FORMAT, "version": packed.VERSION, "source": str(src),
            "source_kind": source.kind, "classes": list(names),
            "num_classes": len(names) or int(max(ys[0].max(), ys[1].max())) + 1,
            "counts": {s: len(y) for s, y in zip(packed.SPLITS, ys, strict=True)},
            "storage": made.storage,
            "size": [int(v) for v in made.size] if made.size is not None else None,
            "channels": int(made.channels), "content_hash": digest,
            "mean": [float(v) for v in made.mean], "std": [float(v) for v in made.std],
            "statistics_images": int(made.sample), "shards": made.shards,
            "packed": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (out / packed.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.rename(out, dest)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    m = packed.read_manifest(dest)
    disk = sum(s["bytes"] for split in m.shards.values() for s in split)
    say(f"packed {total:,} images ({m.counts['train']:,} train, {m.counts['test']:,} test, "
        f"{m.num_classes} classes) into {dest}: {disk / 2**20:,.1f} MiB in "
        f"{sum(len(v) for v in m.shards.values())} shard(s), {m.storage}")
    return m


def main(args) -> int:
    """`ablation data pack`'s command."""
    size = args.image_size
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    pack(args.source, args.dest, data_dir=args.data_dir, store=args.store, image_size=hw,
         shard_bytes=int(args.shard_mb * 2**20), say=lambda s: print(s, flush=True))
    return 0

