"""Packed datasets (`ablation data pack`): the layouts labs keep on disk packed into
ArrayRecord shards, training that streams from them with the same batches, bit for bit,
as the same data in memory, and every damaged or interrupted pack as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, one_line_error, run_cli, run_dirs
from test_datasets import squares, write_npz

from ablation import data
from ablation.data import folders, pack, packed
from ablation.errors import AblationError

WNIDS = ["n01443537", "n01629819", "n01641577", "n01644900"]


def write_imagenet(root: Path, sizes=((40, 52), (48, 40))) -> Path:
    """ImageNet's and Imagenette's layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, JPEG
    files of several sizes (so they stay encoded when packed)."""
    from PIL import Image

    for split, n, seed in (("train", 8, 4), ("val", 3, 5)):
        x, y = squares(n, 48, seed)
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            folder = root / split / WNIDS[c]
            folder.mkdir(parents=True, exist_ok=True)
            w, h = sizes[i % len(sizes)]
            Image.fromarray(img).resize((w, h)).save(folder / f"{WNIDS[c]}_{i}.JPEG",
                                                     quality=90)
    return root


def write_tiny_imagenet(root: Path) -> Path:
    """Tiny-ImageNet's layout: train/<wnid>/images/*.JPEG beside a boxes file,
    val/images/*.JPEG labelled by val/val_annotations.txt, an unlabelled test/images/."""
    from PIL import Image

    x, y = squares(6, 64, 6)
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        folder = root / "train" / WNIDS[c] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{WNIDS[c]}_{i}.JPEG")
        (folder.parent / f"{WNIDS[c]}_boxes.txt").write_text("")
    x, y = squares(2, 64, 7)
    (root / "val" / "images").mkdir(parents=True)
    (root / "test" / "images").mkdir(parents=True)
    lines = []
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        Image.fromarray(img).save(root / "val" / "images" / f"val_{i}.JPEG")
        Image.fromarray(img).save(root / "test" / "images" / f"test_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    return root


def _train(ds, epochs: int = 2) -> tuple[list, list]:
    """A one-unit-per-stage net trained in this process on `ds`: its losses, weights."""
    import keras

    from ablation import training
    from ablation.recipe import Recipe
    from ablation.registry import Variant

    v = Variant.from_dict({"name": "tiny8", "label": "tiny8", "unit": "e",
                           "stages": [[1, 16], [1, 32], [1, 64]]})
    keras.utils.set_random_seed(0)
    model = training.training_model(v, Recipe(batch_size=16, epochs=epochs), ds.num_classes,
                                    input_shape=ds.input_shape)
    stream = data.TrainStream(ds, 16, seed=0, epochs=epochs, threads=2)
    h = model.fit(iter(stream), steps_per_epoch=stream.steps_per_epoch, epochs=epochs,
                  verbose=0, shuffle=False)
    return h.history["loss"], model.get_weights()


def test_a_packed_copy_trains_as_the_same_data_in_memory_bit_for_bit(tmp_path):
    """An .npz and its packed copy: the same content hash (so their runs share a recipe
    id), statistics, validation split and subsets; every training batch equal, bit for
    bit, under each augmentation and mixing; the same loss curve and weights."""
    npz = write_npz(tmp_path / "squares.npz")
    said: list[str] = []
    m = pack.pack(str(npz), tmp_path / "sq", shard_bytes=20_000, say=said.append)
    assert m.storage == "raw" and len(m.shards["train"]) > 1  # records cross shards
    assert m.content_hash == data.content_hash(data.resolve(str(npz)))
    assert said[-1].startswith("packed 160 images (120 train, 40 test, 4 classes)")
    assert any("(100 %)" in s and "img/s" in s and "ETA" in s for s in said)
    kw = {"validation": 20, "train_limit": 60, "test_limit": 20}
    mem, disk = data.load(str(npz), **kw), data.load(str(tmp_path / "sq"), **kw)
    for crop in ({"crop_pct": 0.875}, {"crop_pct": 0.875, "image_size": (24, 24)}):
        cropped = [data.load(d, **kw, **crop) for d in (str(npz), str(tmp_path / "sq"))]
        for split in ("x_test", "x_val"):  # evaluated alike: resized, centre-cropped
            np.testing.assert_array_equal(*(np.asarray(getattr(c, split)) for c in cropped))
        assert cropped[1].x_test.shape[1:3] == crop.get("image_size", (16, 16))
    assert isinstance(disk.x_train, packed.PackedImages) and disk.input_shape == (16, 16, 3)
    assert (disk.mean, disk.std, disk.class_names) == (mem.mean, mem.std, mem.class_names)
    for x_disk, x_mem in ((disk.x_val, mem.x_val), (disk.x_test, mem.x_test)):
        np.testing.assert_array_equal(np.asarray(x_disk), x_mem)
    np.testing.assert_array_equal(disk.y_train, mem.y_train)
    for aug in ({"augment": "blog", "mixup": 0.4, "cutmix": 1.0},
                {"augment": "crop", "flip": "alternate"}):
        a, b = (data.TrainStream(d, 16, seed=3, epochs=2, **aug) for d in (mem, disk))
        pairs = list(zip(a, b, strict=True))
        assert len(pairs) == 8
        for (xa, ya), (xb, yb) in pairs:
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    loss_mem, w_mem = _train(mem)
    loss_disk, w_disk = _train(disk)
    assert loss_mem == loss_disk
    assert all(np.array_equal(a, b) for a, b in zip(w_mem, w_disk, strict=True))


def test_the_layouts_labs_keep_pack_as_they_read_in_memory(tmp_path):
    """ImageNet's layout (JPEGs of several sizes: kept encoded, decoded when read at the
    recipe's size) and Tiny-ImageNet's (64 px: stored raw): each packed copy reads the
    same pixels and labels, and carries the same content hash, as the folder read in
    memory; the unlabelled test/ of Tiny-ImageNet is not taken for the test split."""
    inet = write_imagenet(tmp_path / "imagenet")
    m = pack.pack(str(inet), tmp_path / "inet.packed", say=lambda s: None)
    assert (m.storage, m.size, m.counts) == ("encoded", None, {"train": 32, "test": 12})
    assert m.classes == tuple(WNIDS)
    with pytest.raises(AblationError, match=r"differ in size .* set image_size"):
        data.load(str(tmp_path / "inet.packed"))
    mem = data.load(str(inet), image_size=(24, 20))
    disk = data.load(str(tmp_path / "inet.packed"), image_size=(24, 20))
    np.testing.assert_array_equal(np.asarray(disk.x_train), mem.x_train)
    np.testing.assert_array_equal(np.asarray(disk.x_test), mem.x_test)
    np.testing.assert_array_equal(disk.y_test, mem.y_test)
    assert m.content_hash == data.content_hash(data.resolve(str(inet)))

    tiny = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    layout = folders.folder_layout(tiny)
    assert (layout.test_folder, layout.count("train"), layout.count("test")) == ("val", 24, 8)
    m = pack.pack(str(tiny), tmp_path / "tiny.packed", say=lambda s: None)
    assert (m.storage, m.size, m.statistics_images) == ("raw", (64, 64), 24)
    mem, disk = data.load(str(tiny)), data.load(str(tmp_path / "tiny.packed"))
    np.testing.assert_array_equal(np.asarray(disk.x_test), mem.x_test)
    np.testing.assert_array_equal(disk.y_test, mem.y_test)
    np.testing.assert_allclose(disk.mean, data.statistics(mem.x_train)[0], rtol=0, atol=0)


def test_pack_and_train_from_the_command_line(tmp_path, tiny):
    """`ablation data pack` of a JPEG folder, then `ablation run --dataset DEST`: a
    one-unit net trains one epoch streaming from the shards; the run records the packed
    data's hash and source; packing onto an existing folder is one line."""
    inet = write_imagenet(tmp_path / "imagenet")
    dest = tmp_path / "packs" / "inet"
    r = run_cli("data", "pack", str(inet), str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "packed 44/44 images (100 %)" in r.stdout and "encoded" in r.stdout
    assert "exists" in one_line_error(run_cli("data", "pack", str(inet), str(dest)))
    res = tmp_path / "results"
    r = run_cli("run", "tiny8", *tiny, "--dataset", str(dest), "--image-size", "16",
                "--epochs", "1", "--batch-size", "16", "--results", str(res))
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = run_dirs(res)
    s = json.loads((run / "summary.json").read_text())
    manifest = json.loads((dest / "manifest.json").read_text())
    assert s["data_hash"] == manifest["content_hash"] and s["input_shape"] == [16, 16, 3]
    assert s["data_source"] == str(dest) and s["final_test_accuracy"] is not None
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["kind"] == "packed" and cfg["data"]["mean"] == manifest["mean"]


KILL_AT_RECORD = """
import os, signal, sys
from ablation.data import pack
real = pack._Shards.write
count = [0]
def write(self, record):
    count[0] += 1
    if count[0] == 50:  # mid-pack, after the first records are on disk
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, record)
pack._Shards.write = write
pack.pack(sys.argv[1], sys.argv[2], say=lambda s: None)
"""


def test_a_killed_pack_leaves_nothing_that_loads_and_the_next_pack_clears_it(tmp_path):
    """kill -9 in the middle of a pack (at a record, not at a moment: no race): DEST does
    not exist, so nothing loads as a dataset; packing again removes the remains and
    completes. An interrupted pack (Ctrl-C) cleans up after itself."""
    npz = write_npz(tmp_path / "squares.npz")
    dest = tmp_path / "sq"
    p = subprocess.run([sys.executable, "-c", KILL_AT_RECORD, str(npz), str(dest)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    (partial,) = tmp_path.glob(".sq.packing-*")
    assert not dest.exists()
    with pytest.raises(AblationError, match="is an unfinished pack"):
        data.load(str(partial))
    assert "does not exist" in one_line_error(
        run_cli("run", "resnet32_e", "--dataset", str(dest), "--dry-run",
                "--results", str(tmp_path / "res")))
    pack.pack(str(npz), dest, say=lambda s: None)
    assert packed.is_packed(dest) and not list(tmp_path.glob(".sq.packing-*"))

    def interrupted(self, record):
        raise KeyboardInterrupt

    again = tmp_path / "again"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pack._Shards, "write", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pack.pack(str(npz), again, say=lambda s: None)
    assert not again.exists() and not list(tmp_path.glob(".again.packing-*"))


@pytest.mark.parametrize("damage, says", [
    ("manifest", "manifest.json is not readable"),
    ("version", "format version 99"),
    ("shard", "train-00000.array_record is 100 bytes, the manifest says"),
    ("missing", "train-00000.array_record is missing"),
    ("labels", "labels.npz holds 3 train labels, the manifest 120"),
    ("no labels", "labels.npz is missing"),
])
def test_a_damaged_packed_dataset_is_one_line(tmp_path, damage, says):
    """Each kind of damage (a bad manifest, a newer format, a shard cut short or gone,
    labels that do not match) stops `ablation run` in one line naming the folder."""
    dest = tmp_path / "sq"
    pack.pack(str(write_npz(tmp_path / "squares.npz")), dest, say=lambda s: None)
    manifest = json.loads((dest / "manifest.json").read_text())
    if damage == "manifest":
        (dest / "manifest.json").write_text("{not json")
    elif damage == "version":
        (dest / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    elif damage == "shard":
        (dest / "train-00000.array_record").write_bytes(b"\0" * 100)
    elif damage == "missing":
        (dest / "train-00000.array_record").unlink()
    elif damage == "labels":
        np.savez(dest / "labels.npz", y_train=np.zeros(3, int), y_test=np.zeros(40, int))
    else:
        (dest / "labels.npz").unlink()
    line = one_line_error(run_cli("run", "resnet32_e", "--dataset", str(dest), "--epochs",
                                  "1", "--results", str(tmp_path / "res")))
    assert str(dest) in line and says in line, line


def test_a_shard_damaged_inside_is_one_line_when_read(tmp_path):
    """Bytes changed inside a shard, its size kept (so the manifest's check passes): the
    job's load, which opens the shards, fails in one line naming the pack, not with the
    record library's own error."""
    dest = tmp_path / "sq"
    pack.pack(str(write_npz(tmp_path / "squares.npz")), dest, say=lambda s: None)
    shard = dest / "train-00000.array_record"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2:len(content) // 2 + 2000] = bytes(2000)
    shard.write_bytes(bytes(content))
    with pytest.raises(AblationError, match=r"damaged packed dataset .*sq: a train shard "
                                            r"cannot be read .*copy or pack it again"):
        np.asarray(data.load(str(dest)).x_train)


def test_packing_mistakes_are_one_line(tmp_path):
    """A packed dataset packed again, a destination inside its source, arrays asked to
    stay encoded, and an unknown source: one line each, nothing written."""
    npz = write_npz(tmp_path / "squares.npz")
    pack.pack(str(npz), tmp_path / "sq", say=lambda s: None)
    for args, says in (([str(tmp_path / "sq"), str(tmp_path / "sq2")], "packed already"),
                       ([str(npz), str(tmp_path / "sq3"), "--store", "encoded"],
                        "holds arrays, not image files"),
                       (["nowhere", str(tmp_path / "sq4")], "does not exist")):
        assert says in one_line_error(run_cli("data", "pack", *args))
    inet = write_imagenet(tmp_path / "imagenet")
    with pytest.raises(AblationError, match="into a folder outside it"):
        pack.pack(str(inet), inet / "packed", say=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet", "sq", "squares.npz"]


def test_an_encoded_pack_crops_and_evaluates_each_image_at_its_own_size(tmp_path):
    """ImageNet's protocol on an encoded pack (PNG files of several shapes): the `rrc`
    training crop is cut from each file at its own size (boxes drawn on the original
    height and width), then resized; the evaluation (crop_pct) resizes each image with
    its aspect kept, the shorter side to image_size / crop_pct, and takes the centre.
    Checked against PIL on the files themselves."""
    from PIL import Image

    from ablation.data import augment

    root = tmp_path / "shapes"
    shapes = [(30, 40), (50, 30), (36, 36)]  # (H, W)
    x, y = squares(6, 48, 8)
    files = {}
    for split, count in (("train", 16), ("test", 8)):
        for i in range(count):
            c, (h, w) = int(y[i]), shapes[i % 3]
            folder = root / split / WNIDS[c]
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:03d}.png"
            Image.fromarray(x[i]).resize((w, h)).save(path)
            files[split, i] = path
    m = pack.pack(str(root), tmp_path / "shapes.packed", say=lambda s: None)
    assert m.storage == "encoded" and m.size is None
    ds = data.load(str(tmp_path / "shapes.packed"), image_size=(24, 24), crop_pct=0.875)
    layout = folders.folder_layout(root)
    originals = {s: [Image.open(p).convert("RGB") for _, p in layout.files(s)]
                 for s in ("train", "test")}
    stream = data.TrainStream(ds, 8, seed=2, augment="rrc", epochs=1)
    xb, _ = stream.batch(0, 1)
    idx = stream.order(0)[8:16]
    rng = np.random.default_rng([2, 0, 1])
    images = [originals["train"][i] for i in idx]
    boxes = augment.rrc_boxes([(im.height, im.width) for im in images], rng)
    flip = rng.random(8) < 0.5
    for k, (im, (top, left, h, w)) in enumerate(zip(images, boxes, strict=True)):
        crop = np.asarray(im.crop((left, top, left + w, top + h)).resize((24, 24),
                                                                         Image.BILINEAR))
        want = augment.normalise(crop[None, :, ::-1] if flip[k] else crop[None], ds.mean,
                                 ds.std)[0]
        np.testing.assert_array_equal(xb[k], want)
    for k, im in enumerate(originals["test"]):  # shorter side 27 (24 / 0.875), centre 24
        s = 27 / min(im.height, im.width)
        big = np.asarray(im.resize((max(27, round(im.width * s)), max(27, round(im.height * s))),
                                   Image.BILINEAR))
        top, left = round((big.shape[0] - 24) / 2), round((big.shape[1] - 24) / 2)
        np.testing.assert_array_equal(ds.x_test[k], big[top:top + 24, left:left + 24])
