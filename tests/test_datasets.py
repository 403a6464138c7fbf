"""Any image-classification dataset in a study: an .npz of arrays and a folder of images
made here (coloured squares a small net can learn), greyscale input, content hashes,
statistics, the held-out validation split, and every bad input as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, run_cli, run_dirs

from ablation import data
from ablation.errors import AblationError

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 230], [230, 220, 40]], np.uint8)


def squares(n_per_class: int, size: int = 16, seed: int = 0, grey: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Images of a coloured square (a bright one, in greyscale) on noise, at a random
    place: class c is colour c. Each image differs (its noise), so identity is testable."""
    rng = np.random.default_rng(seed)
    k = len(COLOURS)
    x = rng.integers(0, 60, (n_per_class * k, size, size, 3), dtype=np.uint8)
    y = np.repeat(np.arange(k), n_per_class)
    for i, c in enumerate(y):
        r, col = rng.integers(0, size // 2, 2)
        x[i, r:r + size // 2, col:col + size // 2] = COLOURS[c]
    if grey:
        x = x.mean(-1).astype(np.uint8)
    order = rng.permutation(len(y))
    return x[order], y[order]


def write_npz(path: Path, grey: bool = False, size: int = 16, **extra) -> Path:
    x_tr, y_tr = squares(30, size, 0, grey)
    x_te, y_te = squares(10, size, 1, grey)
    arrays = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te,
              "class_names": np.array(["red", "green", "blue", "yellow"]), **extra}
    np.savez(path, **arrays)
    return path


def write_folder(root: Path, per_class: tuple[int, int] = (12, 4)) -> Path:
    """train/ and test/, a subfolder per class, PNG files of two sizes."""
    from PIL import Image

    for split, n, seed in (("train", per_class[0], 2), ("test", per_class[1], 3)):
        x, y = squares(n, 20, seed)
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            folder = root / split / ["red", "green", "blue", "yellow"][c]
            folder.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(img)
            if i % 3 == 0:
                im = im.resize((24, 18))  # another size: image_size resizes them all
            im.save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_npz(root / "squares.npz")
    write_npz(root / "grey.npz", grey=True, size=28)
    write_folder(root / "images")
    return root


def test_an_npz_loads_with_its_own_statistics_and_class_names(datasets):
    ds = data.load(str(datasets / "squares.npz"))
    assert ds.x_train.shape == (120, 16, 16, 3) and ds.num_classes == 4
    assert ds.class_names == ("red", "green", "blue", "yellow")
    flat = ds.x_train.reshape(-1, 3).astype(np.float64)  # numpy on the same arrays
    np.testing.assert_allclose(ds.mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ds.std, flat.std(0), rtol=1e-9)
    grey = data.load(str(datasets / "grey.npz"))
    assert grey.x_train.shape == (120, 28, 28, 1) and len(grey.mean) == 1


def test_a_folder_loads_resized_and_labelled_by_its_class_folders(datasets):
    with pytest.raises(AblationError, match=r"differ in size .* set image_size"):
        data.load(str(datasets / "images"))
    ds = data.load(str(datasets / "images"), image_size=(20, 20))
    assert ds.x_train.shape == (48, 20, 20, 3) and ds.x_test.shape == (16, 20, 20, 3)
    assert ds.class_names == ("blue", "green", "red", "yellow")  # sorted folder names
    # the labels follow the folders: red images are mostly red
    red = ds.x_train[ds.y_train == ds.class_names.index("red")].reshape(-1, 3).mean(0)
    assert red[0] > red[1] and red[0] > red[2]


def test_greyscale_28x28_input_builds_and_counts_exactly(datasets, isolated_registry):
    """By hand: against the blog's 32x32x3, ten-class resnet32_e, a one-channel stem conv
    has 2·9·16 fewer weights and a four-class head 6·(64 + 1) fewer parameters."""
    import ablation

    f = datasets / "grey.toml"
    f.write_text('name = "grey"\n[recipe]\ndataset = "grey.npz"\n'
                 '[[comparison]]\ntitle = "t"\nvariants = ["resnet32_e"]\n')
    r = run_cli("list", "--study", str(f), "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["params_total"] == 470_218 - 2 * 9 * 16 - 6 * (64 + 1)
    model = ablation.build_model("resnet32_e", num_classes=4, input_shape=(28, 28, 1))
    assert model.count_params() == row["params_total"]
    assert "28x28x1 images of 4 classes" in run_cli("list", "--study", str(f)).stdout


def test_the_content_hash_survives_a_move_and_sees_one_changed_image(datasets, tmp_path):
    from PIL import Image

    here = data.content_hash(data.resolve(str(datasets / "images")))
    moved = shutil.copytree(datasets / "images", tmp_path / "elsewhere" / "renamed")
    assert data.content_hash(data.resolve(str(moved))) == here
    one = next((moved / "train" / "red").glob("*.png"))
    img = np.asarray(Image.open(one)).copy()
    img[0, 0, 0] ^= 1
    Image.fromarray(img).save(one)
    assert data.content_hash(data.resolve(str(moved))) != here
    npz = data.content_hash(data.resolve(str(datasets / "squares.npz")))
    shutil.copy(datasets / "squares.npz", tmp_path / "copy.npz")
    assert data.content_hash(data.resolve(str(tmp_path / "copy.npz"))) == npz


def test_validation_is_held_out_balanced_and_never_trained_on(datasets):
    ds = data.load(str(datasets / "squares.npz"), validation=20, train_limit=40)
    assert np.bincount(ds.y_val, minlength=4).tolist() == [5, 5, 5, 5]
    assert np.bincount(ds.y_train, minlength=4).tolist() == [10, 10, 10, 10]
    trained = {x.tobytes() for x in ds.x_train}
    assert not any(x.tobytes() in trained for x in ds.x_val)  # by image identity
    full = data.load(str(datasets / "squares.npz"))
    assert len({x.tobytes() for x in full.x_train}) == 120  # every image distinct
    # the training stream never yields a held-out image
    stream = data.TrainStream(ds, 8, seed=0, augment="none", epochs=1)
    seen = {np.rint(xb * np.asarray(ds.std) + np.asarray(ds.mean)).astype(np.uint8).tobytes()
            for batch, _ in stream for xb in batch}
    assert seen == trained


def test_the_crop_pads_by_an_eighth_of_the_size():
    assert [data.crop_pad(s, s) for s in (32, 28, 16, 64)] == [4, 4, 2, 8]
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 1)).astype(np.float32) + 5
    out = data.augment_crop(x, np.random.default_rng(1))
    assert out.shape == x.shape and (out == 0).any()


BAD = {
    "unknown name": ("svhn", "is not one of cifar10, cifar100, mnist, fashion_mnist"),
    "tfds": ("tfds:svhn_cropped", "tensorflow-datasets sources are not supported"),
    "no train folder": ("empty_dir", "has no train/ folder"),
    "empty class": ("empty_class", "holds no images"),
    "test class not in train": ("stray_class", "has class 'purple', which train/ lacks"),
    "unreadable image": ("broken_image", "cannot read image"),
    "labels out of range": ("labels.npz", "y_test holds label 7, outside 0..3"),
    "mismatched lengths": ("lengths.npz", "x_train has 120 images but y_train 119 labels"),
    "not uint8": ("floats.npz", "x_train must be uint8 images"),
    "channels first": ("channels_first.npz", "x_train looks channels-first (120 x 3 x 16 x 16):"
                       " store images as N x H x W x C"),
    "labels from 1": ("from_one.npz", "y_train has no image of class 0 (labels run 1..4): "
                      "number the classes 0..K-1, or give class_names"),
    "one-hot labels": ("one_hot.npz", "y_train looks one-hot (120 x 4): store integer class "
                       "ids"),
    "labels short of the names": ("named_gap.npz", "y_train has no image of class 4 (labels "
                                    "run 0..3), one of its 5 class names"),
    "a plain file": ("notes.txt", "a file must be an .npz"),
}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, datasets) -> Path:
    root = tmp_path_factory.mktemp("bad")
    (root / "empty_dir").mkdir()
    shutil.copytree(datasets / "images", root / "empty_class")
    for p in (root / "empty_class" / "train" / "red").glob("*"):
        p.unlink()
    shutil.copytree(datasets / "images", root / "stray_class")
    shutil.copytree(root / "stray_class" / "test" / "red", root / "stray_class" / "test" /
                    "purple")
    shutil.copytree(datasets / "images", root / "broken_image")
    next((root / "broken_image" / "test" / "blue").glob("*.png")).write_bytes(b"not a png")
    x, y = squares(30)
    xt, yt = squares(10, seed=1)
    np.savez(root / "labels.npz", x_train=x, y_train=y, x_test=xt, y_test=yt + 4 * (yt == 3),
             class_names=np.array(["a", "b", "c", "d"]))
    np.savez(root / "lengths.npz", x_train=x, y_train=y[:-1], x_test=xt, y_test=yt)
    np.savez(root / "floats.npz", x_train=x.astype(np.float32), y_train=y, x_test=xt,
             y_test=yt)
    np.savez(root / "channels_first.npz", x_train=np.moveaxis(x, -1, 1), y_train=y,
             x_test=np.moveaxis(xt, -1, 1), y_test=yt)
    np.savez(root / "from_one.npz", x_train=x, y_train=y + 1, x_test=xt, y_test=yt + 1)
    np.savez(root / "one_hot.npz", x_train=x, y_train=np.eye(4, dtype=np.int64)[y], x_test=xt,
             y_test=np.eye(4, dtype=np.int64)[yt])
    np.savez(root / "named_gap.npz", x_train=x, y_train=y, x_test=xt, y_test=yt,
             class_names=np.array(["a", "b", "c", "d", "e"]))
    (root / "notes.txt").write_text("hello")
    return root


@pytest.mark.parametrize("case", ["channels first", "labels from 1", "one-hot labels"])
def test_bad_data_is_refused_when_the_command_starts_by_list_and_dry_run(case, bad_data,
                                                                         tmp_path):
    """What a run would refuse, `list` and `--dry-run` refuse too: the data is checked
    when the command starts, once."""
    dataset, says = BAD[case]
    study = tmp_path / "s.toml"
    study.write_text(f'[recipe]\ndataset = "{bad_data / dataset}"\n[[variant]]\nname = "v"\n'
                     'base = "resnet32_e"\n')
    assert says in one_line_error(run_cli("list", "--study", str(study)))
    assert says in one_line_error(run_cli("run", "--study", str(study), "--all", "--dry-run",
                                          "--results", str(tmp_path / "r")))


def test_a_validation_split_as_large_as_the_training_set_is_refused_at_the_start(
        datasets, tmp_path):
    """Before 0.6 the dry run passed and every queued job failed; a [tune] table's split
    is checked the same way, and a [tune] axis of one value is a warning."""
    res = tmp_path / "r"
    r = run_cli("run", "resnet32_e", "--dataset", str(datasets / "squares.npz"),
                "--validation", "120", "--dry-run", "--results", str(res))
    assert "validation 120 leaves no training image" in one_line_error(r)
    study = tmp_path / "t.toml"
    study.write_text(f'[recipe]\ndataset = "{datasets / "squares.npz"}"\n[tune]\nlr = [0.1]\n'
                     'validation = 120\n[[variant]]\nname = "v"\nbase = "resnet32_e"\n'
                     '[[comparison]]\ntitle = "v"\nvariants = ["v", "resnet32_e"]\n')
    r = run_cli("run", "--study", str(study), "--all", "--dry-run", "--results", str(res))
    assert "validation 120 leaves no training image" in one_line_error(r)
    study.write_text(study.read_text().replace("validation = 120", "validation = 40"))
    r = run_cli("run", "--study", str(study), "--all", "--dry-run", "--results", str(res))
    assert r.returncode == 0, r.stderr
    assert ("warning: [tune] lr has one candidate (0.1): nothing is tuned on it; list "
            "several values or give a range") in r.stderr
    assert not res.exists()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_line_and_queues_nothing(case, bad_data, tmp_path):
    dataset, says = BAD[case]
    path = dataset if case in ("unknown name", "tfds") else str(bad_data / dataset)
    size = ["--image-size", "20"] if "class" in case or "image" in case else []
    res = tmp_path / "results"
    r = run_cli("run", "resnet32_e", "--dataset", path, *size, "--epochs", "1",
                "--results", str(res))
    assert says in one_line_error(r)
    assert not (res / "queue.sqlite").exists() and not (res / "runs").exists()


def test_a_class_short_of_its_share_and_a_dataset_too_big_are_one_line(datasets,
                                                                        monkeypatch):
    with pytest.raises(AblationError, match="train-limit 200 is more than"):
        data.load(str(datasets / "squares.npz"), train_limit=200)
    with pytest.raises(AblationError, match="validation 120 leaves no training image"):
        data.load(str(datasets / "squares.npz"), validation=120)  # all 120 of its images
    import psutil

    class Tight:
        available = 100_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    with pytest.raises(AblationError, match=r"needs 0\.0 GiB .* this machine has 0\.0 GiB"):
        data.load(str(datasets / "squares.npz"))


def test_npz_and_folder_studies_train_record_their_data_and_report(datasets, tmp_path):
    """A study says `dataset = "squares.npz"` (relative to its file); a one-unit-per-stage
    net trains one epoch on it, and on the folder (by flag). Runs record the data's hash,
    statistics, shape and classes; the npz recipe holds out a validation split, recorded
    per epoch beside the test columns and reported with --on validation."""
    study = datasets / "squares.toml"
    study.write_text('name = "squares"\n[recipe]\ndataset = "squares.npz"\nepochs = 1\n'
                     'batch_size = 16\n[[variant]]\nname = "sq8"\nbase = "resnet32_e"\n'
                     'stages = [[1, 16], [1, 32], [1, 64]]\n'
                     '[[comparison]]\ntitle = "squares"\nvariants = ["sq8"]\n')
    res = tmp_path / "results"
    r = run_cli("run", "--study", str(study), "--all", "--validation", "20", "--results",
                str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("run", "--study", str(study), "--all", "--dataset", str(datasets / "images"),
                "--image-size", "20", "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decoding the 64 images" in r.stdout
    assert list((res / "datasets").glob("*-20x20.npz"))  # decoded once, for every job
    runs = {json.loads((p / "summary.json").read_text())["recipe"]["validation"]: p
            for p in run_dirs(res)}
    npz, folder = runs[20], runs[0]
    s = json.loads((npz / "summary.json").read_text())
    want = data.load(str(datasets / "squares.npz"))
    assert s["data_hash"] == data.content_hash(data.resolve(str(datasets / "squares.npz")))
    assert s["recipe_id"].startswith(f"data-{s['data_hash'][:8]}-e1-b16-")
    np.testing.assert_allclose(s["data_mean"], want.mean)
    assert (s["input_shape"], s["num_classes"], s["validation_images"]) == ([16, 16, 3], 4,
                                                                            20)
    assert s["final_validation_accuracy"] is not None
    header = (npz / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_accuracy", "validation_accuracy", "validation_loss"} <= set(header)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["data"]["kind"] == "folder" and cfg["data"]["input_shape"] == [20, 20, 3]
    f = json.loads((folder / "summary.json").read_text())
    assert f["class_names"] == ["blue", "green", "red", "yellow"] and f["train_images"] == 48
    out = tmp_path / "report"
    rep = run_cli("report", "--study", str(study), "--results", str(res), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    md = (out / "README.md").read_text()
    assert "squares.npz (sha256" in md and "images (sha256" in md and "20x20x3" in md
    assert "final test acc %" in md and "| sq8 " in md
    rep = run_cli("report", "--study", str(study), "--results", str(res), "--out", str(out),
                  "--on", "validation")
    assert rep.returncode == 0, rep.stderr
    md = (out / "README.md").read_text()
    assert "final validation acc %" in md and "images (sha256" not in md
