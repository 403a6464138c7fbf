"""What happens to a training batch: normalisation, the blog's and the papers'
augmentations (scaled to the image size), and mixup / CutMix.

All numpy, on the batch's float32 copy; every random choice comes from the generator
the stream hands in, a pure function of (seed, epoch, batch)."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray, mean, std) -> np.ndarray:
    """uint8 -> float32 (x - mean) / std per channel, in one float32 buffer (the same
    values, bit for bit, as the float32 cast then the two operations)."""
    out = np.subtract(x, np.asarray(mean, np.float32), dtype=np.float32)
    return np.divide(out, np.asarray(std, np.float32), out=out)


def _shift_axis(x: np.ndarray, shift: np.ndarray, axis: int) -> np.ndarray:
    """Shift each image along `axis` (1 rows, 2 cols) by a real number of pixels:
    out[i] = x[i + shift], bilinear, 0 outside, exactly as ImageDataGenerator does it
    (scipy.ndimage.affine_transform, order=1, mode='constant', cval=0)."""
    n, size = x.shape[0], x.shape[axis]
    base = np.floor(shift).astype(np.int64)
    frac = (shift - base).astype(np.float32)
    pos = np.arange(size)[None, :] + base[:, None]  # (n, size) source index, low side
    # scipy's 'constant' mode: a sample point outside [0, size-1] is cval, not a blend
    sample = pos + frac[:, None]
    inside = (sample >= 0) & (sample <= size - 1)
    out = np.zeros_like(x)
    for off, w in ((0, 1.0 - frac), (1, frac)):
        src = pos + off
        valid = inside & (src >= 0) & (src < size)
        srcc = np.clip(src, 0, size - 1)
        if axis == 1:
            g = x[np.arange(n)[:, None], srcc]  # (n, size, W, C)
            m = (valid * w[:, None])[:, :, None, None]
        else:
            g = x[np.arange(n)[:, None], :, srcc]  # (n, size, H, C) -> move axes back
            g = g.transpose(0, 2, 1, 3)
            m = (valid * w[:, None])[:, None, :, None]
        out += g * m.astype(np.float32)
    return out


def _flip(x: np.ndarray, flip: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Mirror the images `flip` says (None: each at even odds, drawn from `rng`)."""
    if flip is None:
        flip = rng.random(len(x)) < 0.5
    return np.where(flip[:, None, None, None], x[:, :, ::-1], x)


def augment_blog(x: np.ndarray, rng: np.random.Generator, max_shift: float = 0.125,
                 flip: np.ndarray | None = None, pad: int | None = None) -> np.ndarray:
    """The blog's ImageDataGenerator: continuous shifts of up to 12.5% of the size (4 px
    at 32) in each axis, bilinear, zero fill (in normalised space), plus random
    horizontal flips (`flip`: which to flip, when the recipe says so)."""
    n, h, w, _ = x.shape
    dy = rng.uniform(-max_shift, max_shift, n) * h
    dx = rng.uniform(-max_shift, max_shift, n) * w
    x = _flip(x, flip, rng)
    return _shift_axis(_shift_axis(x, dy, 1), dx, 2)


def crop_pad(h: int, w: int) -> int:
    """The papers' padding, scaled with the image: 4 px at 32x32 (an eighth of the size)."""
    return max(1, round(min(h, w) / 8))


def augment_crop(x: np.ndarray, rng: np.random.Generator, pad: int | None = None,
                 flip: np.ndarray | None = None, mode: str = "constant") -> np.ndarray:
    """The papers' augmentation: zero-pad 4 px (at 32x32; `crop_pad`; `pad` when given),
    random crop back to the size, random flip (`flip`: which to flip, when the recipe
    says so). `mode="reflect"` pads by reflection (airbench's translation)."""
    n, h, w, c = x.shape
    pad = crop_pad(h, w) if pad is None else pad
    if mode == "reflect":
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    else:
        padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), x.dtype)
        padded[:, pad:pad + h, pad:pad + w] = x
    oy = rng.integers(0, 2 * pad + 1, n)
    ox = rng.integers(0, 2 * pad + 1, n)
    rows = (oy[:, None] + np.arange(h)[None, :])[:, :, None]
    cols = (ox[:, None] + np.arange(w)[None, :])[:, None, :]
    out = padded[np.arange(n)[:, None, None], rows, cols]
    return _flip(out, flip, rng)


def augment_reflect(x: np.ndarray, rng: np.random.Generator, pad: int | None = None,
                    flip: np.ndarray | None = None) -> np.ndarray:
    """airbench's translation: reflection-pad `pad` px (2 in airbench), random crop back
    to the size (a shift of -pad..pad in each axis), then the flip."""
    return augment_crop(x, rng, pad, flip, mode="reflect")


RRC_SCALE = (0.08, 1.0)  # the crop's share of the image's area (Inception's, torchvision's)
RRC_RATIO = (3 / 4, 4 / 3)  # its aspect ratio, drawn log-uniformly
RRC_TRIES = 10


def rrc_boxes(sizes: np.ndarray, rng: np.random.Generator,
              scale: tuple[float, float] = RRC_SCALE,
              ratio: tuple[float, float] = RRC_RATIO) -> np.ndarray:
    """A crop box (top, left, height, width) for each image of `sizes` ((n, 2): height,
    width), as ImageNet's training crop draws them (Szegedy et al. 2015; torchvision's
    RandomResizedCrop): an area share in `scale` and a log-uniform aspect ratio in
    `ratio`, the first of 10 tries that fits the image, at a uniform place; when none
    fits, the whole image's centre, its ratio clamped. The draws are the same whatever
    the sizes, so images read whole (`augment_rrc`) and images cropped as they are
    decoded (a packed dataset's files) take one definition."""
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    n = len(sizes)
    h, w = sizes[:, 0], sizes[:, 1]
    area = (h * w)[:, None]
    share = rng.uniform(*scale, (n, RRC_TRIES))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, RRC_TRIES)))
    cw = np.rint(np.sqrt(area * share * aspect)).astype(np.int64)
    ch = np.rint(np.sqrt(area * share / aspect)).astype(np.int64)
    fits = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    first = np.where(fits.any(1), fits.argmax(1), -1)
    u = rng.random((n, 2))  # the place, drawn for every image
    boxes = np.empty((n, 4), np.int64)
    for i in range(n):
        hi, wi = int(h[i]), int(w[i])
        if first[i] >= 0:
            bh, bw = ch[i, first[i]], cw[i, first[i]]
            top, left = int(u[i, 0] * (hi - bh + 1)), int(u[i, 1] * (wi - bw + 1))
        else:
            if wi / hi < ratio[0]:
                bw, bh = wi, round(wi / ratio[0])
            elif wi / hi > ratio[1]:
                bh, bw = hi, round(hi * ratio[1])
            else:
                bh, bw = hi, wi
            top, left = (hi - bh) // 2, (wi - bw) // 2
        boxes[i] = top, left, bh, bw
    return boxes


def augment_rrc(x: np.ndarray, rng: np.random.Generator, pad: int | None = None,
                flip: np.ndarray | None = None) -> np.ndarray:
    """ImageNet's training crop: a random-resized crop (`rrc_boxes`) back to the image's
    size, then the random flip. It crops the image as it was read (at the recipe's
    `image_size`). Resized by PIL, bilinear, channel by channel in float32 (a crop is
    never larger than the image, so no antialiasing applies): about nine times numpy's
    gathers at 224 px."""
    from PIL import Image

    n, h, w, c = x.shape
    out = np.empty((n, h, w, c), np.float32)
    for i, (top, left, bh, bw) in enumerate(rrc_boxes(np.tile([h, w], (n, 1)), rng)):
        for k in range(c):  # the crop, then its resize (PIL's `box` would read past it)
            plane = np.ascontiguousarray(x[i, top:top + bh, left:left + bw, k], np.float32)
            out[i, :, :, k] = np.asarray(Image.fromarray(plane).resize((w, h),
                                                                       Image.BILINEAR))
    return _flip(out, flip, rng)


def rrc_as_read(images, idx: np.ndarray, rng: np.random.Generator, mean, std,
                flip: np.ndarray | None = None) -> np.ndarray:
    """`augment_rrc` for images cropped as they are decoded: the boxes drawn on each
    image's own size (`images.read_crops`: a packed dataset's image files), each crop
    resized to the size read, then normalised and flipped. The draws are those of
    `augment_rrc`, in its order."""
    crops = images.read_crops(idx, lambda sizes: rrc_boxes(sizes, rng))
    return _flip(normalise(crops, mean, std), flip, rng)


def augment_none(x: np.ndarray, rng: np.random.Generator, pad: int | None = None,
                 flip: np.ndarray | None = None) -> np.ndarray:
    """No augmentation, but the recipe's flips where it asks for them."""
    return x if flip is None else _flip(x, flip, rng)


AUGMENTATIONS = {"blog": augment_blog, "crop": augment_crop, "reflect": augment_reflect,
                 "rrc": augment_rrc, "none": augment_none}


def flips(epoch: int, which: str, base: np.ndarray | None) -> np.ndarray | bool | None:
    """Which images an epoch mirrors: for `alternate` (airbench's), each image's own
    random start (`base`, drawn once per run) flipped on every odd epoch; `none`: none
    (False); `random`: None, each batch draws its own."""
    if which == "alternate":
        return base if epoch % 2 == 0 else ~base
    return False if which == "none" else None


def tta_views(x: np.ndarray, level: str) -> list[tuple[float, np.ndarray]]:
    """airbench's test-time augmentation as (weight, images): `flip`, the image and its
    mirror at 1/2 each; `flip_translate`, those at 1/4 each and, at 1/8 each, both
    shifted one pixel up-left and down-right (reflection padding) and mirrored."""
    views = [(0.5, x), (0.5, x[:, :, ::-1])]
    if level == "flip":
        return views
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    moved = [padded[:, 0:h, 0:w], padded[:, 2:h + 2, 2:w + 2]]
    return [(0.25, v) for _, v in views] + [(0.125, m) for s in moved
                                            for m in (s, s[:, :, ::-1])]


def mix(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, mixup: float = 0.0,
        cutmix: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) on one batch of images and
    one-hot labels, with the batch itself in a random order as the partner.

    One weight lam ~ Beta(alpha, alpha) per batch. Mixup blends the images,
    lam·x + (1 − lam)·x[perm]; CutMix pastes a box of area about (1 − lam) of the image
    from x[perm] (its centre uniform, the box clipped at the border), and the labels take
    the box's exact share. With both on, each batch takes one of the two, at even odds
    (timm's rule). Labels are mixed with the same weights, so each row still sums to 1.
    Keras' MixUp and CutMix layers are not used: their randomness comes from a seed
    generator's state, and this pipeline's must be a pure function of (seed, epoch,
    batch) so that a resumed job sees the same batches.
    """
    if not (mixup or cutmix):
        return x, y
    use_cutmix = bool(cutmix) and (not mixup or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    perm = rng.permutation(len(x))
    if not use_cutmix:
        return (lam * x + (1 - lam) * x[perm]).astype(x.dtype, copy=False), \
            (lam * y + (1 - lam) * y[perm]).astype(y.dtype, copy=False)
    h, w = x.shape[1:3]
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    out = x.copy()
    out[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the labels' weight: the exact share
    return out, (kept * y + (1 - kept) * y[perm]).astype(y.dtype, copy=False)
