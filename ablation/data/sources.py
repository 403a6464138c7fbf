"""Where images come from: the CIFAR pickles, the other `keras.datasets` image sets, an
`.npz` of arrays, or a folder of image files (one subfolder per class), each read into
uint8 arrays (N, H, W, C) and integer labels.

A dataset given by path is identified by its content (`content_hash`): moving the files
keeps the identity, changing one image changes it. Its shape and classes can be read
without loading it (`describe`), so `ablation list` counts exactly for its input.
Every mistake in the data is one line naming the file, the key or the folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.data import folders, packed
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
CIFAR = tuple(_LAYOUT)
# the other keras.datasets image sets: shape, classes (downloaded once by Keras)
KERAS = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10)}
NAMED = (*CIFAR, *KERAS)
PUBLISHED = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD)}  # statistics a dataset keeps as published


@dataclass(frozen=True)
class Source:
    """A dataset, resolved: `kind` is cifar, keras, npz, folder or packed (shards made by
    `ablation data pack`); `path` the file or folder given (None for the named
    datasets)."""

    kind: str
    name: str
    path: Path | None = None

    @property
    def by_path(self) -> bool:
        return self.kind in ("npz", "folder", "packed")


def is_path(dataset: str) -> bool:
    """Whether a `dataset` value names a file or folder rather than a known dataset."""
    return dataset not in NAMED and not dataset.startswith("tfds:")


def resolve(dataset: str, base: Path | None = None) -> Source:
    """The source a `dataset` value names; a relative path is read from `base` (a
    study's folder) or the working folder."""
    if dataset in CIFAR:
        return Source("cifar", dataset)
    if dataset in KERAS:
        return Source("keras", dataset)
    if dataset.startswith("tfds:"):
        raise AblationError(f"dataset {dataset!r}: tensorflow-datasets sources are not "
                            "supported; export the data to an .npz (x_train, y_train, "
                            "x_test, y_test) or a folder of images (either can then be "
                            "packed, to stream it: `ablation data pack`)")
    path = Path(dataset).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    path = path.resolve()
    if path.is_dir():
        if packed.is_packed(path):
            return Source("packed", dataset, path)
        if any(path.glob("*.array_record")):  # shards without a manifest: a pack cut short
            raise AblationError(f"dataset {dataset!r} is an unfinished pack (no "
                                f"{packed.MANIFEST}: stopped while packing?); pack it again")
        return Source("folder", dataset, path)
    if path.is_file() and path.suffix == ".npz":
        return Source("npz", dataset, path)
    if path.is_file():
        raise AblationError(f"dataset {dataset!r}: a file must be an .npz of x_train, "
                            "y_train, x_test, y_test")
    raise AblationError(f"dataset {dataset!r} is not one of {', '.join(NAMED)}, nor an .npz "
                        f"file, a folder of images or a packed dataset ({path} does not "
                        "exist)")


# --- CIFAR pickles -----------------------------------------------------------------------


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
        raise AblationError(f"damaged data file {path}: {e}") from e
    if not isinstance(obj, dict):
        raise AblationError(f"damaged data file {path}: not a CIFAR batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images (N, 32, 32, 3) and labels. The images are a view of the files'
    channel-first rows, not a copy: a job takes its subset of them (a copy, contiguous),
    so a subset of a few hundred images never pays for reordering all 60,000 (half a
    second of each tiny job's start)."""
    xs, ys = [], []
    for fname in files:
        d = _read_pickle(folder / fname)
        try:
            x = np.asarray(d["data"], dtype=np.uint8)
            y = np.asarray(d[label_key], dtype=np.int64)
        except KeyError as e:
            raise AblationError(f"damaged data file {folder / fname}: no {e} entry") from e
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise AblationError(f"damaged data file {folder / fname}: shape {x.shape}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.concatenate(ys)


def resolve_data_dir(dataset: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder holding a CIFAR dataset's batch files, or None to use keras.datasets'
    download (None too for any other dataset: it needs no data dir).

    Accepts the parent of `cifar-10-batches-py` or that folder itself; falls back to
    the ABLATION_DATA_DIR environment variable.
    """
    if dataset not in _LAYOUT:
        return None
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
        ) from e
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    found = resolve_data_dir(dataset, base) if base.exists() else None
    if found is None:
        for cand in base.glob(f"**/{_LAYOUT[dataset]['folder']}"):
            return cand
        raise AblationError(f"keras.datasets downloaded {dataset} but it is not under {base}")
    return found


def check(dataset: str, folder: Path) -> None:
    """Read a CIFAR test split once, so missing or damaged data stops `ablation run`
    before any job is queued rather than failing every job the same way."""
    layout = _LAYOUT[dataset]
    try:
        read_split(Path(folder), layout["test"], layout["label_key"])
        missing = [f for f in layout["train"] if not (Path(folder) / f).is_file()]
    except FileNotFoundError as e:
        missing = [Path(e.filename).name]
    if missing:
        raise AblationError(f"incomplete dataset in {folder}: missing {', '.join(missing)}; "
                            "re-extract the official archive there")


def read_cifar(dataset: str, data_dir) -> tuple[np.ndarray, ...]:
    layout = _LAYOUT[dataset]
    folder = resolve_data_dir(dataset, data_dir) or _keras_download(dataset)
    try:
        x_tr, y_tr = read_split(folder, layout["train"], layout["label_key"])
        x_te, y_te = read_split(folder, layout["test"], layout["label_key"])
    except FileNotFoundError as e:
        raise AblationError(f"incomplete dataset in {folder}: missing {Path(e.filename).name}; "
                            "re-extract the official archive there") from e
    return x_tr, y_tr, x_te, y_te, str(folder)


def read_keras(dataset: str) -> tuple[np.ndarray, ...]:
    """mnist, fashion_mnist: through keras.datasets (downloaded once, then cached)."""
    import keras

    try:
        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, dataset).load_data()
    except Exception as e:
        raise AblationError(f"could not load {dataset} through keras.datasets "
                            f"({str(e).splitlines()[0][:200]}); it downloads once, so the "
                            "first run needs a network") from e
    return (*_arrays(x_tr, y_tr, x_te, y_te, f"keras.datasets.{dataset}"),
            f"keras.datasets.{dataset}")


# --- arrays: an .npz ---------------------------------------------------------------------

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _check_images(key: str, shape: tuple, dtype, where: str) -> None:
    """An image array's layout, from its header: uint8, N x H x W (x C), channels last."""
    if dtype != np.uint8:
        raise AblationError(f"{where}: {key} must be uint8 images (0..255), got {dtype}")
    if len(shape) not in (3, 4) or not all(shape[1:]):
        raise AblationError(f"{where}: {key} must be N x H x W (x C) images, got shape "
                            f"{tuple(shape)}")
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] > 4:
        raise AblationError(f"{where}: {key} looks channels-first ({' x '.join(map(str, shape))}"
                            "): store images as N x H x W x C (numpy: "
                            "np.moveaxis(x, 1, -1))")


def check_labels(y_train: np.ndarray, y_test: np.ndarray, names: list[str] | tuple,
                  where: str) -> int:
    """Integer class ids 0..K-1, one per image: K is the class names' count, else the
    largest id + 1, and every class has a training image (labels 1..4 with no class 0
    would train a 5-way network with a class that never occurs). Returns K."""
    ys = []
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        y = np.asarray(y)
        y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim == 2 and y.shape[1] > 1:
            raise AblationError(f"{where}: {key} looks one-hot ({y.shape[0]} x {y.shape[1]}): "
                                "store integer class ids, one per image (numpy: "
                                "y.argmax(1))")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise AblationError(f"{where}: {key} must be integer labels, one per image, got "
                                f"{y.dtype} of shape {y.shape}")
        ys.append(y)
    k = len(names) or int(max((int(y.max()) for y in ys if len(y)), default=0)) + 1
    if not len(ys[0]):
        raise AblationError(f"{where}: y_train is empty: the dataset holds no training "
                            "image")
    if k < 2:
        raise AblationError(f"{where}: one class only: a classifier needs two or more "
                            "(every accuracy would be 100 %)")
    for key, y in zip(("y_train", "y_test"), ys, strict=True):
        bad = y[(y < 0) | (y >= k)]
        if len(bad):
            raise AblationError(f"{where}: {key} holds label {int(bad[0])}, outside 0..{k - 1}"
                                + (f" ({k} class names)" if names else ""))
    missing = sorted(set(range(k)) - set(np.unique(ys[0]).tolist()))
    if missing:
        seen = np.unique(ys[0])
        raise AblationError(
            f"{where}: y_train has no image of class {missing[0]}"
            + (f" (labels run {int(seen.min())}..{int(seen.max())})" if len(seen) else "")
            + (f", one of its {k} class names" if names else
               ": number the classes 0..K-1, or give class_names"))
    return k


def _arrays(x_tr, y_tr, x_te, y_te, where: str, names: list[str] | tuple = ()
            ) -> tuple[np.ndarray, ...]:
    """Check and shape image arrays: uint8 (N, H, W) or (N, H, W, C) channels last,
    integer labels of the same length, classes 0..K-1 each with a training image;
    greyscale gains its channel axis."""
    out = []
    for key, x in (("x_train", x_tr), ("x_test", x_te)):
        x = np.asarray(x)
        _check_images(key, x.shape, x.dtype, where)
        out.append(x[..., None] if x.ndim == 3 else x)
    check_labels(y_tr, y_te, names, where)
    result = []
    for key, x, y in (("x_train", out[0], y_tr), ("x_test", out[1], y_te)):
        y = np.asarray(y).reshape(-1)
        ykey = "y" + key[1:]
        if len(x) != len(y):
            raise AblationError(f"{where}: {key} has {len(x)} images but {ykey} "
                                f"{len(y)} labels")
        if not len(x):
            raise AblationError(f"{where}: {key} holds no images")
        result += [np.ascontiguousarray(x), y.astype(np.int64)]
    if result[0].shape[1:] != result[2].shape[1:]:
        raise AblationError(f"{where}: train images are {result[0].shape[1:]}, test images "
                            f"{result[2].shape[1:]} (H, W, C): they must agree")
    return tuple(result)


def _npz_header(zf: zipfile.ZipFile, key: str, where: str) -> tuple[tuple, np.dtype]:
    try:
        with zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
    except KeyError:
        raise AblationError(f"{where}: no {key} array (it needs {', '.join(NPZ_KEYS)})") \
            from None
    return shape, dtype


def read_npz(path: Path, content: bytes | None = None) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_test, y_test and class names (optional `class_names`) from an
    .npz, without pickles."""
    where = str(path)
    try:
        with np.load(io.BytesIO(content) if content is not None else path,
                     allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise AblationError(f"{where}: no {missing[0]} array (it needs "
                                    f"{', '.join(NPZ_KEYS)})")
            names = [str(n) for n in z["class_names"]] if "class_names" in z.files else []
            arrays = _arrays(*(z[k] for k in NPZ_KEYS), where, names)
    except AblationError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise AblationError(f"{where}: not a readable .npz ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''})") from e
    return (*arrays, names)


# --- what a dataset is, without loading it -----------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A dataset's input shape (H, W, C), classes and sizes, read from headers."""

    input_shape: tuple[int, int, int]
    classes: int
    class_names: tuple[str, ...] = ()
    train: int | None = None
    test: int | None = None

    @property
    def bytes(self) -> int | None:
        """The uint8 images' size in memory (train and test)."""
        if self.train is None or self.test is None:
            return None
        h, w, c = self.input_shape
        return (self.train + self.test) * h * w * c


def _at(shape: tuple[int, int, int], image_size: tuple[int, int] | None
        ) -> tuple[int, int, int]:
    """An input shape at `image_size` (None: as it is)."""
    return shape if image_size is None else (*image_size, shape[-1])


def describe(source: Source, image_size: tuple[int, int] | None = None) -> Shape:
    """The shape, classes and sizes of a source, cheaply (headers, labels, folder names),
    at `image_size` where one is asked."""
    if source.kind == "cifar":
        n = _LAYOUT[source.name]["classes"]
        return Shape(_at((32, 32, 3), image_size), n, (), 50_000, 10_000)
    if source.kind == "keras":
        shape, n = KERAS[source.name]
        return Shape(_at(shape, image_size), n, (), 60_000, 10_000)
    if source.kind == "npz":
        where = str(source.path)
        try:
            with zipfile.ZipFile(source.path) as zf:
                heads = {k: _npz_header(zf, k, where) for k in NPZ_KEYS}
        except zipfile.BadZipFile as e:
            raise AblationError(f"{where}: not a readable .npz ({e})") from e
        with np.load(source.path, allow_pickle=False) as z:
            names = tuple(str(n) for n in z["class_names"]) if "class_names" in z.files else ()
            labels = [z["y_train"], z["y_test"]]
        for key in ("x_train", "x_test"):  # what a run would refuse, refused now
            _check_images(key, *heads[key], where)
        shape = heads["x_train"][0]
        hwc = (*shape[1:3], shape[3] if len(shape) == 4 else 1)
        k = check_labels(*labels, names, where)
        return Shape(_at(hwc, image_size), k, names, shape[0], heads["x_test"][0][0])
    if source.kind == "packed":
        m = packed.read_manifest(source.path)
        check_labels(*m.labels(), m.classes, str(source.path))  # as an .npz's are
        return Shape(m.shape_at(image_size), m.num_classes, m.classes, m.counts["train"],
                     m.counts["test"])
    layout = folders.folder_layout(source.path)
    return Shape(folders.folder_shape(layout, image_size), len(layout.names),
                 tuple(layout.names), layout.count("train"), layout.count("test"))


def content_hash(source: Source, content: bytes | None = None) -> str:
    """sha256 of what a path dataset holds: the .npz's bytes (`content`, if the caller
    has read them already); for a folder, every image file's path under the folder (class
    and split included) and bytes; for a packed dataset, its manifest's (what it was
    packed from: `ablation.data.pack`). Moving the files keeps it; changing one image
    changes it."""
    if source.kind == "npz":
        return hashlib.sha256(content if content is not None
                              else source.path.read_bytes()).hexdigest()
    if source.kind == "packed":
        return packed.read_manifest(source.path).content_hash
    h = hashlib.sha256()
    layout = folders.folder_layout(source.path)
    for split, classes in layout.splits.items():
        for cls, files in classes.items():
            for p in files:
                folders.hash_file(h, split, cls, p, p.read_bytes())
    return h.hexdigest()
