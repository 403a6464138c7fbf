"""The CIFAR-10-C corruptions (ablation.data.corruptions) against what the paper's
script defines: its constants' effects measured on images whose answer is known, the
operations against SciPy's own, each image's draws independent of its batch, and the
severities ordered as the paper's are. No data, no training: a few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from ablation.data import corruptions as C
from ablation.errors import AblationError

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
# smooth images, so blurs and warps change them by amounts that grow with their strength
_yy, _xx = np.mgrid[0:32, 0:32]
SMOOTH = np.stack([np.stack([(128 + 100 * np.sin(_xx / (2 + k) + c) * np.cos(_yy / (3 + k)))
                             for c in range(3)], -1) for k in range(6)]).astype(np.uint8)
GREY = np.full((4, 32, 32, 3), 128, np.uint8)


def _moved(name: str, severity: int, x=SMOOTH) -> float:
    return float(np.abs(C.corrupt(x, name, severity).astype(float) - x).mean())


@pytest.mark.parametrize("name", C.NAMES)
def test_an_image_is_corrupted_alike_in_any_subset_or_batch(name):
    full = C.corrupt(IMAGES, name, 3, keys=np.arange(10, 16), seed=4)
    part = C.corrupt(IMAGES[[4, 1]], name, 3, keys=np.array([14, 11]), seed=4)
    assert full.dtype == np.uint8 and full.shape == IMAGES.shape
    np.testing.assert_array_equal(part, full[[4, 1]])
    if name in ("gaussian_noise", "glass_blur", "fog", "frost"):  # drawn: another seed differs
        assert not np.array_equal(C.corrupt(IMAGES, name, 3, np.arange(10, 16), 5), full)


def test_noise_constants_as_published():
    grey = np.full((2, 32, 32, 3), 128, np.uint8)  # 0.502: no clipping at these scales
    for s, sd in enumerate((0.04, 0.06, 0.08, 0.09, 0.10), 1):
        out = C.corrupt(np.repeat(grey, 20, 0), "gaussian_noise", s).astype(float) / 255
        assert abs(out.std() - sd) < 0.03 * sd
    for s, c in enumerate((500, 250, 100, 75, 50), 1):  # Poisson(x c) / c: sd sqrt(x / c)
        out = C.corrupt(np.repeat(grey, 20, 0), "shot_noise", s).astype(float) / 255
        assert abs(out.std() - np.sqrt(128 / 255 / c)) < 0.05 * np.sqrt(128 / 255 / c)
    for s, amount in enumerate((0.01, 0.02, 0.03, 0.05, 0.07), 1):  # salt and pepper
        out = C.corrupt(np.repeat(grey, 50, 0), "impulse_noise", s)
        hit = np.isin(out, (0, 255)).mean()
        assert abs(hit - amount) < 0.1 * amount
        assert abs((out == 255).mean() - (out == 0).mean()) < 0.15 * amount


def test_digital_constants_as_published():
    x = SMOOTH.astype(float) / 255
    for s, c in enumerate((0.75, 0.5, 0.4, 0.3, 0.15), 1):  # (x - mean) c + mean
        want = np.clip((x - x.mean(axis=(1, 2), keepdims=True)) * c
                       + x.mean(axis=(1, 2), keepdims=True), 0, 1) * 255
        np.testing.assert_array_equal(C.corrupt(SMOOTH, "contrast", s),
                                      np.floor(want).astype(np.uint8))
    # brightness adds c to HSV's value: a grey image's every channel, by 255 c
    for s, c in enumerate((0.05, 0.1, 0.15, 0.2, 0.3), 1):
        out = C.corrupt(GREY, "brightness", s).astype(int)
        assert np.abs(out - int((128 / 255 + c) * 255)).max() <= 1
    # pixelate: down to int(32 c) pixels a side and back, in boxes
    out = C.corrupt(IMAGES, "pixelate", 5)  # 20 pixels a side
    assert len(np.unique(out[0, :, :, 0].round(-1), axis=0)) < 32
    np.testing.assert_array_equal(C.corrupt(GREY, "pixelate", 5), GREY)
    # JPEG at quality 80 ... 40: lossy, less so at higher quality
    assert _moved("jpeg_compression", 1, IMAGES) < _moved("jpeg_compression", 5, IMAGES)


def test_kernels_as_their_definitions():
    # ImageMagick's motion blur: 2 ceil(radius) + 1 taps of a one-sided Gaussian
    k = C.motion_kernel(6, 1)
    assert len(k) == 13 and abs(k.sum() - 1) < 1e-12 and k[0] > k[1] > k[2]
    np.testing.assert_allclose(k[1] / k[0], np.exp(-0.5))
    # defocus: a disk on 17x17, antialiased by a 3x3 Gaussian; radius 0.3 is one pixel
    for r, blur in ((0.3, 0.4), (1.5, 0.1)):
        d = C.defocus_kernel(r, blur)
        assert d.shape == (17, 17) and abs(d.sum() - 1) < 1e-12
    assert np.count_nonzero(C.defocus_kernel(0.3, 0.4) > 1e-12) == 9
    # a horizontal motion blur of a vertical edge smears it along the row only
    edge = np.zeros((1, 32, 32, 1))
    edge[:, :, 16:] = 255
    out = C.motion_blur_images(edge, 6, 1, np.array([0.0]))
    assert (out[0, :, :, 0] == out[0, :1, :, 0]).all()  # every row alike
    assert 0 < out[0, 0, 15, 0] < 255 and out[0, 0, 14, 0] < out[0, 0, 15, 0]


def test_zoom_is_scipys_and_plasma_spans_zero_to_one():
    from scipy import ndimage

    x = RNG.random((3, 30, 30, 3)).astype(np.float32)
    for f in np.arange(1, 1.26, 0.01):
        ch = int(np.ceil(32 / f))
        want = ndimage.zoom(x[:, :ch, :ch], (1, f, f, 1), order=1)
        np.testing.assert_allclose(C._zoom(x[:, :ch, :ch], want.shape[1]), want, atol=1e-5)
    m = C.plasma(RNG.uniform(-1, 1, (4, C.plasma_draws())), 2.0)
    assert m.shape == (4, 32, 32)
    assert np.allclose(m.min((1, 2)), 0) and np.allclose(m.max((1, 2)), 1)


def test_glass_blur_copies_pixels_as_the_script_did():
    # The script's "swap" of two numpy views copies one pixel onto the other. At sigma
    # 0.05 the blurs are nearly nothing, so a true swap would keep each image's 256
    # bright pixels; copies change their number.
    x = np.zeros((3, 32, 32, 3), np.uint8)
    x[:, ::2, ::2] = 255
    bright = (C.corrupt(x, "glass_blur", 1)[..., 0] > 127).sum(axis=(1, 2))
    assert (bright != 256).any() and (abs(bright - 256) < 64).all(), bright


SEVERE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
          "zoom_blur", "snow", "fog", "brightness", "contrast", "pixelate")


@pytest.mark.parametrize("name", SEVERE)
def test_severity_moves_images_further(name):
    moved = [_moved(name, s) for s in (1, 3, 5)]
    assert moved[0] < moved[1] < moved[2], moved


def test_only_32x32_rgb_and_known_names():
    with pytest.raises(AblationError, match="32x32 RGB"):
        C.corrupt(np.zeros((1, 28, 28, 1), np.uint8), "fog", 1)
    with pytest.raises(AblationError, match="unknown corruption 'rain'"):
        C.corrupt(IMAGES, "rain", 1)
    with pytest.raises(AblationError, match="severity 6"):
        C.corrupt(IMAGES, "fog", 6)
    with pytest.raises(AblationError, match="6 images but 2 keys"):
        C.corrupt(IMAGES, "fog", 1, keys=np.arange(2))
