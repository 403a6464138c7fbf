"""Data: safe loading, subsets, augmentation faithful to ImageDataGenerator, and a
batch stream that a resumed job replays exactly."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import scipy.ndimage as nd

from ablation import data
from ablation.errors import AblationError


def test_real_cifar10_loads_with_the_blog_statistics(cifar_dir):
    ds = data.load("cifar10", cifar_dir)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.y_train[0] == 6 and ds.y_test[0] == 3  # frog, cat: the official files' first labels
    mean = ds.x_train.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, data.CIFAR10_MEAN, atol=0.01)
    # the dataset folder itself is accepted too
    ds2 = data.load("cifar10", cifar_dir / "cifar-10-batches-py", 100, 50)
    assert len(ds2.y_train) == 100 and len(ds2.y_test) == 50


def test_balanced_subset_is_deterministic_and_balanced():
    y = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
    idx = data.balanced_subset(y, 53, 10)
    assert len(idx) == 53
    counts = np.bincount(y[idx], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts[:3].tolist() == [6, 6, 6]
    assert np.array_equal(idx, data.balanced_subset(y, 53, 10))
    assert len(data.balanced_subset(y, None, 10)) == 1000


def test_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [1]}))
    with pytest.raises(AblationError, match="refusing to load"):
        data.check("cifar10", folder)


def test_missing_and_damaged_data_are_one_line_errors(tmp_path):
    with pytest.raises(AblationError, match="does not exist"):
        data.resolve_data_dir("cifar10", tmp_path / "nope")
    with pytest.raises(AblationError, match="no cifar-10-batches-py"):
        data.resolve_data_dir("cifar10", tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(AblationError, match="damaged data file"):
        data.check("cifar10", folder)


def test_blog_shift_matches_scipy_constant_mode():
    """ImageDataGenerator shifts with scipy.ndimage.affine_transform(order=1,
    mode='constant', cval=0); ours must give the same pixels."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 32, 32, 3)).astype(np.float32)
    dy, dx = rng.uniform(-4, 4, 16), rng.uniform(-4, 4, 16)
    ours = data._shift_axis(data._shift_axis(x, dy, 1), dx, 2)
    ref = np.stack([np.stack([nd.affine_transform(x[i, :, :, c], np.eye(2),
                                                  offset=(dy[i], dx[i]), order=1,
                                                  mode="constant", cval=0.0)
                              for c in range(3)], -1) for i in range(16)])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_crop_is_an_exact_window_of_the_padded_image_with_its_flip():
    """Every output is the 32x32 window at some offset (0..8 each way) of the image
    zero-padded by 4, flipped or not; flips and many offsets occur."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 32, 32, 3)).astype(np.float32) + 10  # never 0 inside
    out = data.augment_crop(x, np.random.default_rng(3))
    assert out.shape == x.shape
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    seen = set()
    for i in range(64):
        found = [(oy, ox, flip) for oy in range(9) for ox in range(9) for flip in (0, 1)
                 if np.array_equal(out[i], (lambda w, f: w[:, ::-1] if f else w)(
                     padded[i, oy:oy + 32, ox:ox + 32], flip))]
        assert len(found) == 1, f"image {i} is not one exact crop: {found}"
        seen.add(found[0])
    assert {f for _, _, f in seen} == {0, 1}
    assert len({(oy, ox) for oy, ox, _ in seen}) >= 20


def _labelled(n: int, num_classes: int = 10) -> data.Dataset:
    """Image i is the constant value i (i < 256), its label a fixed shuffle of classes:
    any batch tells which images it holds and whether their labels travelled with them."""
    x = np.repeat(np.arange(n, dtype=np.uint8), 32 * 32 * 3).reshape(n, 32, 32, 3)
    y = np.random.default_rng(9).integers(0, num_classes, n)
    return data.Dataset("ids", x, y, x[:4], y[:4], num_classes, (0.0, 0.0, 0.0),
                        (1.0, 1.0, 1.0), "generated")


@pytest.mark.parametrize("augment", ["blog", "crop", "rrc"])
def test_stream_keeps_labels_with_their_images_and_shows_each_once_per_epoch(augment):
    ds = _labelled(200)
    stream = data.TrainStream(ds, 32, seed=4, augment=augment, epochs=2)
    per_epoch: list[list[int]] = [[], []]
    for k, (xb, yb) in enumerate(stream):
        ids = np.rint(xb[:, 16, 16, 0]).astype(int)  # the centre pixel survives a 4-px shift
        assert np.array_equal(yb.argmax(1), ds.y_train[ids])
        assert np.allclose(yb.sum(1), 1.0)
        per_epoch[k // stream.steps_per_epoch].extend(ids.tolist())
    for ids in per_epoch:
        assert sorted(ids) == list(range(200))  # every image once per epoch
    assert per_epoch[0] != per_epoch[1]  # a new order each epoch


def test_stream_replays_exactly_from_any_epoch():
    ds = data.synthetic(n_train=100, n_test=10)
    full = data.TrainStream(ds, 32, seed=5, start_epoch=0, epochs=3)
    resumed = data.TrainStream(ds, 32, seed=5, start_epoch=2, epochs=3)
    batches = list(full)
    assert len(batches) == 3 * 4 and batches[3][0].shape == (4, 32, 32, 3)  # ceil(100/32)
    for a, b in zip(batches[8:], list(resumed), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = list(data.TrainStream(ds, 32, seed=6, epochs=1))
    assert not np.array_equal(other[0][0], batches[0][0])
    inside = data.TrainStream(ds, 32, seed=5, start_epoch=1, epochs=3, start_step=2)
    for a, b in zip(batches[4 + 2:], list(inside), strict=True):  # from inside epoch 2
        np.testing.assert_array_equal(a[0], b[0])


def test_the_random_resized_crop_is_imagenets():
    """The crop boxes keep ImageNet's bounds (8-100 % of the area, ratio 3/4-4/3, inside
    the image), and each crop is its box resized back, bilinear (against a numpy
    reference written here)."""
    from ablation.data import augment

    boxes = augment.rrc_boxes(np.tile([224, 224], (20_000, 1)), np.random.default_rng(1))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (
        left + w <= 224).all()
    share, ratio = h * w / 224 ** 2, w / h
    assert share.min() >= 0.079 and share.max() <= 1 and 0.45 < share.mean() < 0.6
    assert ratio.min() >= 0.73 and ratio.max() <= 1.37  # 3/4..4/3, to the pixel
    assert np.array_equal(boxes, augment.rrc_boxes(np.tile([224, 224], (20_000, 1)),
                                                  np.random.default_rng(1)))
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 40, 2)).astype(np.float32)
    out = augment.augment_rrc(x, np.random.default_rng(3), flip=np.zeros(64, bool))
    top, left, h, w = augment.rrc_boxes(np.tile([32, 40], (64, 1)), np.random.default_rng(3)).T
    want = _resized_span(_resized_span(x, top, h, 32, 1), left, w, 40, 2)
    np.testing.assert_allclose(out, want, atol=2e-3)


def _resized_span(x, start, length, size: int, axis: int):
    """An independent reference: each image's span [start, start + length) along `axis`
    resampled to `size`, bilinear with half-pixel centres, clamped to the span."""
    pos = start[:, None] + (np.arange(size)[None, :] + 0.5) * (length[:, None] / size) - 0.5
    pos = np.clip(pos, start[:, None], (start + length - 1)[:, None])
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, (start + length - 1)[:, None])
    f = pos - lo
    idx = np.arange(len(x))[:, None]
    if axis == 1:
        return x[idx, lo] + (x[idx, hi] - x[idx, lo]) * f[:, :, None, None]
    a, b = x[idx, :, lo].transpose(0, 2, 1, 3), x[idx, :, hi].transpose(0, 2, 1, 3)
    return a + (b - a) * f[:, None, :, None]


def test_cifar100_layout_and_its_own_statistics(tmp_path):
    """CIFAR-100 is read from `cifar-100-python/{train,test}` with `fine_labels`, and
    normalised with its own train-set statistics (not CIFAR-10's)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 300), ("test", 100)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": list(rng.integers(0, 100, n)), b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    ds = data.load("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.x_train.shape == (300, 32, 32, 3)
    want = ds.x_train.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(ds.mean, want, rtol=1e-9)
    assert not np.allclose(ds.mean, data.CIFAR10_MEAN, atol=1.0)


def test_evaluation_crops_are_timms_size_and_torchvisions_centre():
    """crop_pct: resized to floor(size / crop_pct) (256 for 224 at 0.875), then the centre
    crop of the size, placed as torchvision's CenterCrop places it."""
    from ablation.data import sizes

    assert sizes.eval_size((224, 224), 0.875) == (256, 256)
    assert sizes.eval_size((32, 24), 0.9) == (35, 26)
    x = np.arange(7 * 9).reshape(1, 7, 9, 1)
    np.testing.assert_array_equal(sizes.centre_crop(x, (4, 4))[0, :, :, 0],
                                  x[0, 2:6, 2:6, 0])  # round(1.5) = 2, round(2.5) = 2
    ds = data.synthetic(n_train=20, n_test=10)
    assert sizes.evaluated(ds.x_test, (32, 32), 1) is ds.x_test  # 1: as read
    assert sizes.evaluated(ds.x_test, (32, 32), 0.875).shape == (10, 32, 32, 3)
