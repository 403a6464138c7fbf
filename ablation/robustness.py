"""`ablation evaluate`: trained runs on corrupted and extra test sets, without retraining.

For every done run that kept its model.h5 (loaded with `ablation.runs.load_model`):
its own test images (class-balanced, the first of each class: the subset its training
evaluated, or `--images N` of them), clean and under the 15 corruptions of CIFAR-10-C
at each severity (Hendrycks & Dietterich 2019), and every extra test set the study
names (CIFAR-10.1, Recht et al. 2018: an .npz, a folder of class folders, or a
`*_data.npy` beside its `*_labels.npy`). Images are resized and normalised as the run
evaluated them; the accuracy is the plain one (no test-time augmentation).

The corrupted images come from the released CIFAR-10-C files when `corruptions` names
their folder, else from `ablation.data.corruptions`, generated once per test subset
and cached in the results folder (`corruptions/`), so a study's runs see the same
images. Each run's numbers go to its folder's robustness.csv, one row per (test set,
corruption, severity), written atomically after each corruption: Ctrl-C or a crash
loses at most the corruption in progress, and a rerun does only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablation import data, results
from ablation.data import corruptions as defs
from ablation.data import sizes
from ablation.errors import AblationError
from ablation.protocol import Exit, JobState, Terminated
from ablation.runs import load_data, load_model
from ablation.store import MODEL, ROBUSTNESS, Run, RunFolder, load_runs, to_stderr
from ablation.study.robustness import GENERATED, NONE, Settings

CLEAN, CORRUPTED = "clean", "corrupted"
CACHE = "corruptions"  # under the results folder: generated corrupted test sets
BATCH = 500
COLUMNS = ["test_set", "corruption", "severity", "images", "accuracy", "seconds", "source"]


# --- test sets ------------------------------------------------------------------------------


@dataclass
class TestImages:
    """A run's test images as it was evaluated: native uint8, labels, their indices in
    the full test set, and how to turn images into the network's input."""

    x: np.ndarray
    y: np.ndarray
    keys: np.ndarray
    total: int  # images in the full test set
    hw: tuple[int, int]
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_id: str  # names the dataset's content (its hash, else its name)

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return data.normalise(sizes.evaluated(x, self.hw, self.crop_pct), self.mean, self.std)


def _test_images(run: Run, images: int | None, data_dir: str | None, cache: dict
                 ) -> TestImages:
    recipe = run.record.recipe
    n = images or run.record.test_images
    key = (recipe.dataset, recipe.data_hash, data_dir or run.record.data_source, n,
           recipe.image_hw, recipe.crop_pct)
    if key not in cache:
        ds = load_data(run, data_dir, train_limit=1)  # native size: corrupted, then resized
        keys = data.balanced_subset(ds.y_test, n, ds.num_classes, "--images")
        cache[key] = TestImages(
            np.ascontiguousarray(ds.x_test[keys]), ds.y_test[keys], keys, len(ds.y_test),
            tuple(recipe.image_hw or ds.x_test.shape[1:3]), recipe.crop_pct, ds.mean, ds.std,
            recipe.data_hash or recipe.dataset)
    return cache[key]


def read_test_set(path: str | Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """An extra test set's uint8 images (N, H, W, C) and labels: an .npz (x_test/y_test,
    x/y or data/labels), a `*_data.npy` with its `*_labels.npy` (CIFAR-10.1's release),
    or a folder of class folders (classes in name order, as a dataset folder's)."""
    p = Path(path)
    if p.is_dir():
        from ablation.data import folders

        classes = folders.class_folders(p)
        xs, ys = [], []
        for k, files in enumerate(classes.values()):
            for f in files:
                img = folders.open_image(f)
                xs.append(folders.decode(img, img.size[1], img.size[0], 3, f))
                ys.append(k)
        shapes = {a.shape for a in xs}
        if len(shapes) != 1:
            raise AblationError(f"{where} {p}: images of different sizes {sorted(shapes)}")
        return np.stack(xs), np.array(ys, np.int64)
    if not p.is_file():
        raise AblationError(f"{where}: no file or folder {p}")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                for xk, yk in (("x_test", "y_test"), ("x", "y"), ("data", "labels")):
                    if xk in z.files and yk in z.files:
                        x, y = z[xk], z[yk]
                        break
                else:
                    raise AblationError(f"{where} {p}: needs arrays x_test and y_test (or x "
                                        f"and y, data and labels); it has {', '.join(z.files)}")
        elif p.name.endswith("_data.npy"):
            labels = p.with_name(p.name[:-len("_data.npy")] + "_labels.npy")
            if not labels.is_file():
                raise AblationError(f"{where} {p}: no labels file {labels.name} beside it")
            x, y = np.load(p, allow_pickle=False), np.load(labels, allow_pickle=False)
        else:
            raise AblationError(f"{where} {p}: not an .npz, a *_data.npy or a folder")
    except (OSError, ValueError, EOFError) as e:
        raise AblationError(f"{where} {p}: cannot read it ({type(e).__name__}: {e})") from e
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) != len(y):
        raise AblationError(f"{where} {p}: needs uint8 images (N, H, W, C) and N labels, has "
                            f"{x.dtype} {x.shape} and {len(y)} labels")
    return x, np.asarray(y).astype(np.int64).ravel()


def _read(name: str, path: str, read: dict) -> tuple[np.ndarray, np.ndarray]:
    """An extra test set's images and labels, read once per command."""
    if path not in read:
        read[path] = read_test_set(path, f"test set {name!r}")
    return read[path]


def _extra(name: str, path: str, test: TestImages, classes: int, caches: dict
           ) -> tuple[np.ndarray, np.ndarray]:
    """An extra set as the run's inputs, checked against its channels and classes."""
    cache = caches.setdefault("extra", {})
    key = (name, path, test.hw, test.crop_pct, test.mean)
    if key not in cache:
        where = f"test set {name!r}"
        x, y = _read(name, path, caches.setdefault("read", {}))
        if x.shape[-1] != test.x.shape[-1]:
            raise AblationError(f"{where}: {x.shape[-1]} channel(s), the runs' images have "
                                f"{test.x.shape[-1]}")
        if y.min() < 0 or y.max() >= classes:
            raise AblationError(f"{where}: labels {int(y.min())}..{int(y.max())}, the runs "
                                f"know {classes} classes")
        cache[key] = (test.inputs(x), y)
    return cache[key]


# --- corrupted images -----------------------------------------------------------------------


def _released(folder: Path, name: str, severity: int, test: TestImages) -> np.ndarray:
    """The released file's images of `severity` at the test subset's indices: each
    file holds the test set once per severity, in order (`labels.npy` beside them)."""
    path = folder / f"{name}.npy"
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as e:
        raise AblationError(f"corruptions folder {folder}: no {Path(e.filename).name} (the "
                            "released CIFAR-10-C files: <corruption>.npy and labels.npy)"
                            ) from e
    except (OSError, ValueError) as e:
        raise AblationError(f"corruptions folder {folder}: cannot read {path.name}: {e}") from e
    t = test.total
    if arr.shape[0] != 5 * t or len(labels) != 5 * t or arr.shape[1:] != test.x.shape[1:]:
        raise AblationError(f"{path}: holds {arr.shape[0]:,} images {arr.shape[1:]}, the "
                            f"runs' test set needs 5 x {t:,} of {test.x.shape[1:]}")
    start = (severity - 1) * t
    if not np.array_equal(np.asarray(labels[start + test.keys]), test.y):
        raise AblationError(f"{folder}: its labels differ from the runs' test set: not "
                            "corruptions of these images")
    return np.asarray(arr[start + test.keys])


def _generated(cache_dir: Path, name: str, severity: int, test: TestImages,
               settings: Settings) -> np.ndarray:
    """The generated images, made once per (definitions, seed, dataset, subset) and
    kept under the results folder."""
    digest = hashlib.sha256(json.dumps(
        [defs.VERSION, settings.seed, test.data_id, settings.frost_images,
         hashlib.sha256(test.keys.tobytes()).hexdigest()]).encode()).hexdigest()[:12]
    path = cache_dir / f"{len(test.keys)}-{digest}" / f"{name}-{severity}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass  # half-written by a disk that filled: made again
    out = defs.corrupt(test.x, name, severity, test.keys, settings.seed,
                              Path(settings.frost_images) if settings.frost_images else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, out)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise results.disk_error(e, path) from e
    return out


# --- evaluation -----------------------------------------------------------------------------


class Stop:
    """Ctrl-C and SIGTERM noted by a handler and acted on between batches. Raised from
    the handler itself, a KeyboardInterrupt can land inside a garbage collector's
    callback, where Python prints and ignores it, and the evaluation went on."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> Stop:
        for sig in self.SIGNALS:
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:  # under nohup Ctrl-C stays ignored
                self.previous[sig] = old
                signal.signal(sig, self._note)
        return self

    def _note(self, signum, _frame) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum == signal.SIGTERM:
            raise Terminated()
        if self.signum is not None:
            raise KeyboardInterrupt()

    def __exit__(self, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)


def accuracy(model, x: np.ndarray, y: np.ndarray, check=lambda: None) -> float:
    """Top-1 accuracy of `model` on inputs `x`, in batches (`check` between them)."""
    right = 0
    for start in range(0, len(x), BATCH):
        check()
        out = np.asarray(model.predict_on_batch(x[start:start + BATCH]))
        right += int((out.argmax(-1) == y[start:start + BATCH]).sum())
    return right / len(x)


def _plan(settings: Settings) -> list[tuple[str, str, int]]:
    """(test set, corruption, severity) to evaluate, clean first."""
    out = [(CLEAN, "", 0)]
    if settings.corruptions != NONE:
        out += [(CORRUPTED, c, s) for c in defs.NAMES for s in settings.severities]
    return out + [(name, "", 0) for name, _ in settings.test_sets]


def _sources(settings: Settings) -> dict[str, str]:
    return {CORRUPTED: settings.source(), CLEAN: "",
            **{name: str(Path(p).resolve()) for name, p in settings.test_sets}}


def _key(row: dict) -> tuple[str, str, int]:
    return row["test_set"], row["corruption"], int(row["severity"])


def evaluate_run(run: Run, settings: Settings, images: int | None, results_dir: Path,
                 force: bool, data_dir: str | None, caches: dict, say, stop: Stop
                 ) -> tuple[pd.DataFrame, int, float]:
    """Evaluate one run on what it lacks (`force`: on all that is asked, again); rows
    of sets not asked for are kept. (this command's rows, sets evaluated, seconds)."""
    folder = RunFolder(run.folder)
    test = _test_images(run, images, data_dir, caches.setdefault("test", {}))
    n = len(test.keys)
    sources = _sources(settings)
    have = folder.robustness(to_stderr)
    rows = [] if have is None else have.to_dict("records")
    own = (CLEAN, CORRUPTED)  # on the run's test images; an extra set is all of its own
    current = {_key(r) for r in rows
               if (int(r["images"]) == n or r["test_set"] not in own)
               and str(r["source"] or "") == sources.get(r["test_set"], "")}
    plan = _plan(settings)
    todo = [p for p in plan if force or p not in current]
    t0, last = time.monotonic(), None
    if todo:
        model = load_model(folder.file(MODEL))
        classes = int(model.outputs[0].shape[-1])
    for k, (test_set, name, severity) in enumerate(todo, 1):
        stop.check()
        t = time.monotonic()
        if test_set == CLEAN:
            x, y = test.inputs(test.x), test.y
        elif test_set == CORRUPTED:
            if settings.corruptions == GENERATED:
                raw = _generated(results_dir / CACHE, name, severity, test, settings)
            else:
                raw = _released(Path(settings.corruptions), name, severity, test)
            x, y = test.inputs(raw), test.y
        else:
            x, y = _extra(test_set, dict(settings.test_sets)[test_set], test, classes,
                          caches)
        acc = accuracy(model, x, y, stop.check)
        rows = [r for r in rows if _key(r) != (test_set, name, severity)]
        rows.append({"test_set": test_set, "corruption": name, "severity": severity,
                     "images": len(y), "accuracy": acc,
                     "seconds": round(time.monotonic() - t, 3), "source": sources[test_set]})
        ends_corruption = k == len(todo) or todo[k][1] != name or todo[k][0] != test_set
        if ends_corruption:  # written after each corruption: Ctrl-C loses one at most
            folder.write_robustness(pd.DataFrame(rows, columns=COLUMNS))
            spent = time.monotonic() - t0
            what = f"{name} (severities {', '.join(str(r[2]) for r in todo if r[1] == name)})" \
                if name else test_set
            if last is None or time.monotonic() - last > 5 or k == len(todo):
                say(f"    {what}: {100 * acc:.1f} %  [{k}/{len(todo)}, "
                    f"{results.duration(spent)}, ETA "
                    f"{results.duration(spent / k * (len(todo) - k))}]")
                last = time.monotonic()
    if todo:
        import keras

        del model
        keras.backend.clear_session()
    wanted = set(plan)
    asked = pd.DataFrame([r for r in rows if _key(r) in wanted], columns=COLUMNS)
    return asked, len(todo), time.monotonic() - t0


def summary_line(frame: pd.DataFrame) -> str:
    """A run's robustness on what this command asked, in a few words: clean,
    corrupted (the mean of its sets), each extra set."""
    parts = []
    for name, g in frame.groupby("test_set", sort=False):
        parts.append(f"{name} {100 * g['accuracy'].mean():.1f} %"
                     + (f" (mean of {len(g)} sets)" if len(g) > 1 else ""))
    return ", ".join(parts)


def check(settings: Settings, runs: list[Run], images: int | None, caches: dict) -> None:
    """What would fail every run, refused in one line before any runs: a corruptions
    folder without the released files, a frost folder without the pictures, an extra
    test set that does not read, more images than a test set holds."""
    if settings.corruptions not in (GENERATED, NONE):
        folder = Path(settings.corruptions)
        if not (folder / "labels.npy").is_file():
            raise AblationError(f"corruptions folder {folder}: no labels.npy (the released "
                                "CIFAR-10-C files: <corruption>.npy and labels.npy)")
        missing = [c for c in defs.NAMES if not (folder / f"{c}.npy").is_file()]
        if missing:
            raise AblationError(f"corruptions folder {folder}: no {missing[0]}.npy (of the "
                                f"15: {', '.join(defs.NAMES)})")
    if settings.frost_images and settings.corruptions == GENERATED:
        defs.frost_pictures(Path(settings.frost_images))
    for name, path in settings.test_sets:  # read once: the runs take them from `caches`
        _read(name, path, caches.setdefault("read", {}))
    if images:
        for dataset in {r.record.recipe.dataset for r in runs}:
            try:
                test = data.describe(data.resolve(dataset)).test
            except AblationError:  # not readable from here: each run's load says why
                continue
            if test is not None and images > test:
                raise AblationError(f"--images {images:,} is more than the {test:,} test "
                                    f"images of {dataset}")


def main(results_dir: Path, variants: list[str], settings: Settings,
         images: int | None = None, force: bool = False, data_dir: str | None = None,
         recipe: str | None = None, out=sys.stdout) -> int:
    """Evaluate the done runs of `variants`; a few lines per run. Exit 1 if any failed."""
    if not Path(results_dir).is_dir():
        raise AblationError(f"no results folder {results_dir}; run `ablation run` first")
    runs = [r for r in load_runs(Path(results_dir)) if r.variant in variants]
    if recipe:
        runs = [r for r in runs if r.record.recipe_id.startswith(recipe)]
    done = [r for r in runs if r.record.status == JobState.DONE and r.record.finished]
    if not done:
        which = f" of a recipe id starting {recipe!r}" if recipe else ""
        raise AblationError(f"no finished runs of {', '.join(variants)}{which} in "
                            f"{results_dir}; train them with `ablation run` first")
    done.sort(key=lambda r: (r.record.recipe_id, r.variant, r.seed))
    caches: dict = {}
    check(settings, done, images, caches)
    plan = _plan(settings)
    print(f"{len(done)} run(s), {len(plan)} test set(s) each "
          f"({'no corruptions' if settings.corruptions == NONE else settings.source()}"
          f"{', ' + ', '.join(n for n, _ in settings.test_sets) if settings.test_sets else ''})",
          file=out, flush=True)
    failed = 0
    t0 = time.monotonic()
    with Stop() as stop:
        for k, r in enumerate(done, 1):
            name = f"[{k}/{len(done)}] {r.variant} s{r.seed} ({r.record.recipe_id})"
            folder = RunFolder(r.folder)
            if not folder.file(MODEL).is_file():
                print(f"{name}: skipped, no model.h5 (trained with --no-keep-model)",
                      file=out, flush=True)
                continue
            print(f"{name}:", file=out, flush=True)
            try:
                frame, count, spent = evaluate_run(
                    r, settings, images, Path(results_dir), force, data_dir, caches,
                    lambda s: print(s, file=out, flush=True), stop)
            except AblationError as e:
                failed += 1
                print(f"    FAILED: {e}", file=sys.stderr, flush=True)
                continue
            left = results.duration((time.monotonic() - t0) / k * (len(done) - k))
            if not count:
                print(f"    already evaluated: {summary_line(frame)} (--force redoes it)",
                      file=out, flush=True)
            else:
                print(f"    {summary_line(frame)}; {count} set(s) in "
                      f"{results.duration(spent)}; written to {folder.file(ROBUSTNESS)}  "
                      f"[runs {k}/{len(done)}, ETA {left}]", file=out, flush=True)
    return Exit.FAILED if failed else Exit.DONE
