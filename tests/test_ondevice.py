"""Augmentation inside the training step (`ablation.data.ondevice`): the same maps as the
host path given the same draws, the same distributions (tested against the host's and
the named laws), the same run twice and a resumed run bit for bit (TensorFlow; on JAX
checked by hand, and trained from the command line in test_run.py), and a run from the
command line, on two devices, that says where its augmentation ran."""

from __future__ import annotations

import json

import keras
import numpy as np
from conftest import TINY, history, run_cli, run_dirs
from scipy import stats

from ablation import callbacks, data, registry, training
from ablation.data import augment, ondevice
from ablation.data.stream import LAM_SCALE, device_keys
from ablation.recipe import Recipe
from ablation.registry import Variant

ALPHA = 0.001  # the tests' level: the draws are fixed by their keys, so a pass is a pass


def _draws(k: int, place: int = 0) -> ondevice.Draws:
    return ondevice.Draws(keras.ops.convert_to_tensor(np.array([k, place], np.int32)))


class Given:
    """A numpy generator stand-in that hands the host path prescribed draws."""

    def __init__(self, **draws):
        self.draws = draws

    def uniform(self, lo, hi, n):
        return self.draws["uniform"].pop(0)

    def integers(self, lo, hi, n):
        return self.draws["integers"].pop(0)


def _images(n=6, h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, h, w, 3)).astype(np.float32)


def test_shifts_and_crops_are_the_host_paths_maps_given_the_same_draws():
    x = _images()
    h, w = x.shape[1:3]
    flip = np.array([0, 1, 0, 1, 1, 0], bool)
    # the blog's: bilinear shifts of any real size, zero outside, after the flip
    dy = np.array([-1.5, 0.25, 0, 1.5, 1.2, -0.7], np.float32)
    dx = np.array([1.25, -0.5, 0.75, -1.25, 0, 1.1], np.float32)
    host = augment.augment_blog(x, Given(uniform=[dy / h, dx / w]), flip=flip)
    dev = ondevice.warp(ondevice.mirror(x, flip), ondevice.shift_weights(dy, h),
                        ondevice.shift_weights(dx, w))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dev), host, atol=1e-5)
    # the papers' zero pad and airbench's reflection, then the crop and the flip
    oy, ox = np.array([0, 1, 2, 3, 4, 2]), np.array([4, 3, 2, 1, 0, 2])
    for mode, reflect in (("constant", False), ("reflect", True)):
        host = augment.augment_crop(x, Given(integers=[oy.copy(), ox.copy()]), pad=2,
                                    flip=flip, mode=mode)
        dev = ondevice.mirror(ondevice.warp(
            x, ondevice.shift_weights((oy - 2).astype(np.float32), h, reflect),
            ondevice.shift_weights((ox - 2).astype(np.float32), w, reflect)), flip)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(dev), host, atol=1e-6)


def test_a_resized_crop_is_pils_bilinear_resize():
    from PIL import Image

    x = _images(n=2, h=16, w=16)
    boxes = [(3, 2, 9, 7), (0, 0, 16, 16)]  # (top, left, height, width)
    top, left, bh, bw = (np.array(c, np.float32) for c in zip(*boxes, strict=True))
    dev = keras.ops.convert_to_numpy(ondevice.warp(
        x, ondevice.resize_weights(top, bh, 16), ondevice.resize_weights(left, bw, 16)))
    for i, (t, left_, hh, ww) in enumerate(boxes):
        for c in range(3):
            plane = np.ascontiguousarray(x[i, t:t + hh, left_:left_ + ww, c])
            pil = np.asarray(Image.fromarray(plane).resize((16, 16), Image.BILINEAR))
            np.testing.assert_allclose(dev[i, :, :, c], pil, atol=2e-5)


def test_the_draws_follow_the_host_paths_laws():
    """Over 200 batches of 128 (fixed keys, so the verdicts are fixed): the shifts are
    uniform in +-4 px, the crop offsets uniform on 0..8, the flips at even odds, the
    random-resized crops' share and ratio distributed as the host's, mixup's weight
    Beta(alpha, alpha) and CutMix's label weight the host's; a wrong law is rejected."""
    n, batches = 128, 200
    dy, oy, flips, boxes, host_boxes = [], [], [], [], []
    rng = np.random.default_rng(0)
    for b in range(batches):
        keys = device_keys(0, 0, b, None, n)
        u = ondevice.ImageDraws(keras.ops.convert_to_tensor(keys), n, n)
        dy.append(keras.ops.convert_to_numpy(ondevice.shifts(u(ondevice.SHIFT_Y, 2),
                                                             32, 32)[0]))
        oy.append(keras.ops.convert_to_numpy(ondevice.crop_offsets(u(ondevice.SHIFT_Y, 2),
                                                                   4)[0]) + 4)
        flips.append(keras.ops.convert_to_numpy(ondevice.flips(u(ondevice.FLIP, 1)[:, 0],
                                                               keys)))
        if b < 20:
            drawn = ondevice.rrc_boxes(u(ondevice.SHARE, 10), u(ondevice.RATIO, 10),
                                       u(ondevice.PLACE, 2), 32, 32)
            boxes.append(np.stack([keras.ops.convert_to_numpy(v) for v in drawn], 1))
            host_boxes.append(augment.rrc_boxes(np.tile([32, 32], (n, 1)), rng))
    dy, oy, flips = np.concatenate(dy), np.concatenate(oy), np.concatenate(flips)
    assert stats.kstest(dy, stats.uniform(-4, 8).cdf).pvalue > ALPHA
    assert stats.kstest(dy, stats.uniform(-3.5, 7).cdf).pvalue < ALPHA  # it has power
    assert set(np.unique(oy)) == set(range(9))
    assert stats.chisquare(np.bincount(oy.astype(int), minlength=9)).pvalue > ALPHA
    assert stats.binomtest(int(flips.sum()), len(flips)).pvalue > ALPHA
    boxes, host_boxes = np.concatenate(boxes), np.concatenate(host_boxes)
    for f in (lambda b: b[:, 2] * b[:, 3], lambda b: b[:, 3] / b[:, 2], lambda b: b[:, 0]):
        assert stats.ks_2samp(f(boxes), f(host_boxes)).pvalue > ALPHA
    # the mix: one weight per batch, drawn on the host as the host path draws it
    lams = [device_keys(0, 0, b, None, 8, mixup=0.4)[0, 3] / LAM_SCALE for b in range(300)]
    assert stats.kstest(lams, stats.beta(0.4, 0.4).cdf).pvalue > ALPHA
    assert stats.kstest(lams, stats.beta(1.0, 1.0).cdf).pvalue < ALPHA
    both = [device_keys(0, 0, b, None, 8, mixup=0.4, cutmix=1.0)[0, 4] for b in range(300)]
    assert stats.binomtest(int(sum(both)), 300).pvalue > ALPHA
    dev_cut, host_cut = [], []
    for b in range(300):
        keys = keras.ops.convert_to_tensor(device_keys(0, 0, b, None, 8, cutmix=1.0))
        plan = ondevice.mix_plan(keys, _draws(b), 8, 32, 32)
        dev_cut.append(float(keras.ops.convert_to_numpy(plan["cut_label"])))
        y = np.eye(8, dtype=np.float32)
        _, ym = augment.mix(np.zeros((8, 32, 32, 3), np.float32), y,
                            np.random.default_rng(b), 0, 1.0)
        host_cut.append(float(np.diag(ym).min()))  # an image given another's box
    assert stats.ks_2samp(dev_cut, host_cut).pvalue > ALPHA


def test_a_share_of_a_batch_draws_what_the_whole_batch_draws_for_its_images():
    """A device given images 8..15 of a batch of 16 (data parallel) draws their numbers
    as one device given all 16 does; the last, smaller batch draws a full batch's first
    numbers."""
    keys = keras.ops.convert_to_tensor(device_keys(3, 1, 2, None, 16))
    whole = keras.ops.convert_to_numpy(ondevice.ImageDraws(keys, 16, 16)(ondevice.FLIP, 3))
    share = keras.ops.convert_to_numpy(ondevice.ImageDraws(keys[8:], 8, 16)(ondevice.FLIP, 3))
    np.testing.assert_array_equal(share, whole[8:])
    last = keras.ops.convert_to_numpy(ondevice.ImageDraws(keys[:5], 5, 16)(ondevice.FLIP, 3))
    np.testing.assert_array_equal(last, whole[:5])


def test_mixed_labels_are_the_pasted_share_and_sum_to_one():
    d = _draws(7)
    x, y = _images(n=8, h=32, w=32), np.eye(8, dtype=np.float32)[:, :8]
    for mixup, cutmix in ((0.5, 0), (0, 1.0), (0.5, 1.0)):
        keys = device_keys(1, 0, 3, None, 8, mixup, cutmix)
        plan = ondevice.mix_plan(keras.ops.convert_to_tensor(keys), d, 8, 32, 32)
        ym = keras.ops.convert_to_numpy(ondevice.mix_labels(y, plan))
        np.testing.assert_allclose(ym.sum(1), 1, rtol=1e-6)
        if cutmix and bool(keras.ops.convert_to_numpy(plan["use_cut"])):
            box = keras.ops.convert_to_numpy(plan["box"])
            mixed = keras.ops.convert_to_numpy(ondevice.mix_images(x, plan))
            perm = keras.ops.convert_to_numpy(plan["perm"])
            np.testing.assert_array_equal(mixed[:, box[0, :, :, 0] > 0],
                                          x[perm][:, box[0, :, :, 0] > 0])
            np.testing.assert_allclose(np.diag(ym[:, :8])[perm != np.arange(8)],
                                       1 - box.mean(), rtol=1e-6)


TINY_NET = Variant.from_dict({**registry.get("resnet32_e").to_dict(), "name": "dev_e",
                              "stages": [[1, 8], [1, 8], [1, 8]]})
RECIPE = Recipe(epochs=2, batch_size=8, train_limit=16, test_limit=8, augment="crop",
                mixup=0.2, cutmix=1.0, augment_on="device")
IDENTITY = {"variant": "dev_e", "seed": 0, "recipe_id": RECIPE.id, "definition_hash": "x"}


def _train(ds, first: int, last: int, backup_root, init: int = 0):
    keras.utils.set_random_seed(init)
    model = training.training_model(TINY_NET, RECIPE, 10, steps_per_epoch=2,
                                    on_device=(list(ds.mean), list(ds.std)))
    backup = callbacks.AtomicBackup(backup_root, IDENTITY)
    assert backup.resume(model, 2) == (first, 0)
    stream = data.TrainStream(ds, 8, seed=0, augment="crop", start_epoch=first, epochs=last,
                              mixup=0.2, cutmix=1.0, on_device=True)
    model.fit(iter(stream), steps_per_epoch=2, epochs=last, initial_epoch=first, verbose=0,
              callbacks=[backup])
    return model


def test_the_same_seed_is_the_same_run_and_a_resumed_one_bit_for_bit(tmp_path):
    ds = data.synthetic(16, 8)
    whole = _train(ds, 0, 2, tmp_path / "a")
    again = _train(ds, 0, 2, tmp_path / "b")
    _train(ds, 0, 1, tmp_path / "c")
    resumed = _train(ds, 1, 2, tmp_path / "c", init=5)
    for a, b, c in zip(whole.get_weights(), again.get_weights(), resumed.get_weights(),
                       strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # the loss sees the labels mixed as the images were (the same keys, the same plan)
    (x, keys), y = data.TrainStream(ds, 8, seed=0, augment="crop", mixup=0.2, cutmix=1.0,
                                    on_device=True).batch(1, 0)
    pred = whole((x, keys), training=True)
    mixed = whole.get_layer("device_augment").labels(keys, y)
    assert not np.allclose(keras.ops.convert_to_numpy(mixed), y)
    loss = whole.compute_loss(x=(x, keys), y=y, y_pred=pred, training=True)
    assert float(loss) == float(keras.Model.compute_loss(whole, x=(x, keys), y=mixed,
                                                         y_pred=pred, training=True))
    # the saved network is the plain one: normalised images in, the trained weights
    net = training.network(whole)
    assert net.input.dtype == "float32" and net.count_params() == whole.count_params()
    # evaluation: the step only normalises, the same numbers as the host's batches
    x, keys = ds.x_test[:8], data.stream.device_eval_keys(8)
    layer = whole.get_layer("device_augment")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer([x, keys])),
                                  data.normalise(x, ds.mean, ds.std))
    host = net.predict_on_batch(data.normalise(x, ds.mean, ds.std))
    np.testing.assert_allclose(whole.predict_on_batch([x, keys]), host, rtol=1e-5, atol=1e-7)


def test_a_run_augmented_on_the_device_says_so(tmp_path, cifar_dir, tiny):
    r = run_cli("run", "tiny8", *tiny, *TINY, "--augment", "crop", "--mixup", "0.2",
                "--augment-on", "device", "--devices-per-job", "2", "--data-dir",
                str(cifar_dir), "--results", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = run_dirs(tmp_path)
    record = json.loads((run / "summary.json").read_text())
    assert record["augment_ran"] == "device" and record["recipe"]["augment_on"] == "device"
    assert record["devices_per_job"] == 2 and record["bn_statistics"] == "synchronised"
    assert record["data_parallel"] == "tf.distribute.MirroredStrategy"
    assert len(history(run)) == 2  # each epoch's steps, the test set evaluated whole
    assert record["status"] == "done" and record["final_test_accuracy"] is not None
    host = Recipe(epochs=2, train_limit=128, test_limit=64, batch_size=32, augment="crop",
                  mixup=0.2)
    assert host.id not in str(run)  # another recipe id than the host path's
    assert host.replace(augment_on="device").id in str(run)
