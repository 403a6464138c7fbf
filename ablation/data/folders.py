"""A folder of image files, in the layouts labs keep on disk, and the one way an image
file becomes uint8 pixels.

Three layouts are read, each as a training and a test split of class-labelled files:

* the harness's own and ImageNet's: `train/` and `test/` (or ImageNet's and Imagenette's
  `val/`), one subfolder of images per class;
* Tiny-ImageNet's: `train/<wnid>/images/*`, and `val/images/*` labelled by
  `val/val_annotations.txt` (file name, tab, class).

Classes are `train/`'s subfolders, sorted. Whether a folder is read into memory
(`read_folder`) or packed into shards (`ablation.data.packed`), each image is decoded by
`decode`, so the two give the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.errors import AblationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
                  ".tiff")
GREY_MODES = ("L", "1", "I;16", "I", "F")
TEST_FOLDERS = ("test", "val")  # the held-out split's folder: ours, then ImageNet's
TINY_ANNOTATIONS = "val_annotations.txt"


@dataclass(frozen=True)
class Layout:
    """A folder dataset's files: class names, and for each split ("train", "test") the
    image files of each class, in the order every reader takes them."""

    root: Path
    names: list[str]
    splits: dict[str, dict[str, list[Path]]]
    test_folder: str  # "test" or "val": where the held-out split lies

    def files(self, split: str) -> list[tuple[int, Path]]:
        """(class id, file) of a split, class by class, each class's files sorted."""
        return [(self.names.index(cls), p) for cls, ps in self.splits[split].items()
                for p in ps]

    def count(self, split: str) -> int:
        return sum(len(ps) for ps in self.splits[split].values())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class: files} of `folder`'s subfolders; Tiny-ImageNet's `<class>/images/` too."""
    classes = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        inner = d / "images"
        files = _images_in(inner if inner.is_dir() and not _images_in(d) else d)
        if not files:
            raise AblationError(f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        classes[d.name] = files
    return classes


def _annotated(folder: Path) -> dict[str, list[Path]]:
    """Tiny-ImageNet's `val/`: images in `images/`, each file's class in the annotations."""
    table = folder / TINY_ANNOTATIONS
    classes: dict[str, list[Path]] = {}
    for n, line in enumerate(table.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise AblationError(f"{table} line {n}: expected a file name, a tab and a class, "
                                f"got {line[:80]!r}")
        path = folder / "images" / parts[0]
        if not path.is_file():
            raise AblationError(f"{table} line {n} names {parts[0]}, which {folder / 'images'} "
                                "lacks")
        classes.setdefault(parts[1], []).append(path)
    return {c: sorted(ps) for c, ps in sorted(classes.items())}


def folder_layout(root: Path) -> Layout:
    """The class names and each split's files of a folder dataset, in whichever layout it
    has; every mistake is one line naming the folder."""
    root = Path(root)
    # Tiny-ImageNet's labelled val/ before its unlabelled test/
    test = ("val" if (root / "val" / TINY_ANNOTATIONS).is_file() else
            next((t for t in TEST_FOLDERS if (root / t).is_dir()), None))
    if not (root / "train").is_dir() or test is None:
        missing = "train/" if not (root / "train").is_dir() else "test/ (or val/)"
        raise AblationError(f"{root} has no {missing} folder: a folder dataset holds train/ "
                            "and test/ (or ImageNet's val/), each with one subfolder of "
                            "images per class")
    train = class_folders(root / "train")
    held = (_annotated(root / test) if (root / test / TINY_ANNOTATIONS).is_file()
            else class_folders(root / test))
    names = list(train)
    if not names:
        raise AblationError(f"{root / 'train'} has no class folders")
    if len(names) < 2:
        raise AblationError(f"{root / 'train'} has one class folder ({names[0]}): a "
                            "classifier needs two or more (every accuracy would be 100 %)")
    stray = [c for c in held if c not in train]
    if stray:
        raise AblationError(f"{root / test} has class {stray[0]!r}, which train/ lacks")
    return Layout(root, names, {"train": train, "test": held}, test)


def hash_file(h, split: str, cls: str, path: Path, content: bytes) -> None:
    """Add one image file to a folder's content hash (`h`, a sha256): its split, class
    and name, then its bytes' own sha256. Its one definition, so a folder read in place
    and the same folder packed carry the same hash."""
    import hashlib

    h.update(f"{split}/{cls}/{path.name}\0".encode())
    h.update(hashlib.sha256(content).digest())


def open_image(path: Path | str, content: bytes | None = None):
    """A PIL image with its header read (a bad file fails here, in one line naming it);
    from `content` when the caller holds the file's bytes."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(content) if content is not None else path)
        img.size  # noqa: B018  (reads the header now, so a bad file fails here)
        return img
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise AblationError(f"cannot read image {path}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''}") from e


def decode(img, h: int, w: int, c: int, where: Path | str) -> np.ndarray:
    """An opened image as uint8 (h, w, c): greyscale or RGB, resized bilinearly (PIL)
    when its size differs: the one decoding of an image file, in memory or from shards."""
    from PIL import Image

    try:
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        return np.asarray(img, np.uint8).reshape(h, w, c)
    except (OSError, ValueError) as e:
        raise AblationError(f"cannot read image {where}: {type(e).__name__}: {e}") from e


def scan(layout: Layout, progress=None) -> tuple[set[tuple[int, int]], bool]:
    """Every image's size (W, H), from its header, and whether every image is grey;
    `progress(n)` is told of each class folder's n files read."""
    sizes, grey = set(), True
    for files in (f for cls in layout.splits.values() for f in cls.values()):
        for p in files:
            img = open_image(p)
            sizes.add(img.size)
            grey = grey and img.mode in GREY_MODES
        if progress is not None:
            progress(len(files))
    return sizes, grey


def folder_shape(layout: Layout, image_size, scanned=None) -> tuple[int, int, int]:
    """(H, W, C) the folder's images are read at: `image_size` (H, W) or their one size
    (images of several sizes need an `image_size`); C 1 when every image is grey."""
    sizes, grey = scanned or scan(layout)
    if image_size is None and len(sizes) > 1:
        (w1, h1), (w2, h2) = sorted(sizes)[:2]
        raise AblationError(f"the images of {layout.root} differ in size ({h1}x{w1} and "
                            f"{h2}x{w2}, H x W): set image_size (--image-size N) to resize them "
                            "all")
    h, w = (image_size if image_size is not None else next(iter(sizes))[::-1])
    return h, w, 1 if grey else 3


def read_folder(root: Path, image_size: tuple[int, int] | None) -> tuple[np.ndarray, ...]:
    """Decode every image into memory (resized to `image_size` (H, W) when given;
    greyscale when every image is, else RGB), labels by class folder."""
    layout = folder_layout(root)
    h, w, c = folder_shape(layout, image_size)
    out = []
    for split in ("train", "test"):
        files = layout.files(split)
        x = np.empty((len(files), h, w, c), np.uint8)
        for i, (_, p) in enumerate(files):
            x[i] = decode(open_image(p), h, w, c, p)
        out += [x, np.array([k for k, _ in files], np.int64)]
    return (*out, layout.names)
