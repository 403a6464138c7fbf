"""An image's size: resizing uint8 images (PIL's bilinear, as a folder's images are
decoded), and the evaluation's centre crop (the recipe's `crop_pct`). Pure numpy and
PIL: the in-memory path (`ablation.data`) and the packed one (`ablation.data.packed`)
both size their images here, so the two give the same pixels."""

from __future__ import annotations

import math

import numpy as np


def resized(x: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    """uint8 images (N, H, W, C) at `image_size` (H, W), bilinear as a folder's are
    decoded (PIL); the same array when they already are (or no size is asked)."""
    if image_size is None or tuple(x.shape[1:3]) == tuple(image_size):
        return x
    from PIL import Image

    h, w = image_size
    c = x.shape[-1]
    out = np.empty((len(x), h, w, c), np.uint8)
    for i, img in enumerate(x):
        pic = Image.fromarray(img[..., 0] if c == 1 else img)
        out[i] = np.asarray(pic.resize((w, h), Image.BILINEAR), np.uint8).reshape(h, w, c)
    return out


def eval_size(hw: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """The size evaluation images are resized to before their centre crop of `hw`:
    floor(size / crop_pct) (timm's rule; 256 for 224 at 0.875)."""
    return tuple(math.floor(v / crop_pct + 1e-9) for v in hw)


def centre_crop(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The centre (H, W) of uint8 images (N, H', W', C), placed as torchvision's
    CenterCrop places it."""
    h, w = hw
    top = round((x.shape[1] - h) / 2.0)
    left = round((x.shape[2] - w) / 2.0)
    return np.ascontiguousarray(x[:, top:top + h, left:left + w])


def evaluated(x: np.ndarray, hw: tuple[int, int], crop_pct: float) -> np.ndarray:
    """Evaluation images as the recipe reads them: resized to `hw`, or with a
    `crop_pct` below 1 resized to `eval_size` and centre-cropped to `hw`."""
    if crop_pct == 1:
        return resized(x, hw)
    return centre_crop(resized(x, eval_size(hw, crop_pct)), hw)
