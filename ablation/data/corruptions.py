"""The 15 common corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations") at 5 severities,
generated from a test set's uint8 images; and the released files' layout, read.

The constants of each corruption and severity are the paper's CIFAR ones (its released
`make_cifar_c.py`); the operations are written here on numpy, SciPy and Pillow, for a
batch of images at once, because the package that once held them no longer runs with
today's scikit-image and SciPy and the original needs ImageMagick and OpenCV. What
differs from the released files, and why (docs/robustness.md):

* the random draws: each image's come from its own generator, seeded by (seed,
  corruption, severity, the image's index in the test set), so an image is corrupted
  the same way whichever subset is evaluated, in whatever batch; the released files are
  one unseeded run, so no reimplementation reproduces their pixels, only their
  distribution;
* motion blur (and the snow layer's) follows ImageMagick's MotionBlurImage as its
  source defines it: a one-sided Gaussian along the angle, edge pixels repeated;
* glass blur copies each pixel from a neighbour, as the released script does: its
  "swap" of two numpy views assigns one to the other;
* frost overlays photographs of frost that the paper's repository ships; they are not
  ours to ship, so `frost_images` (a folder of them) gives the published definition,
  and without it the overlay is a procedural ice texture of similar brightness
  (`PROCEDURAL`), which a report says.

Images are 32x32 RGB (the constants are CIFAR's); `check_shape` refuses anything else.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ablation.errors import AblationError

NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
         "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
         "elastic_transform", "pixelate", "jpeg_compression")
FAMILIES = {"noise": NAMES[0:3], "blur": NAMES[3:7], "weather": NAMES[7:11],
            "digital": NAMES[11:15]}
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 32
VERSION = 1  # of the definitions here: a cached set made by another version is remade
PROCEDURAL = "frost"  # the corruption whose generated form differs without frost_images

# The paper's CIFAR constants, one entry per severity 1-5
_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": ((1, 1.06), (1, 1.11), (1, 1.16), (1, 1.21), (1, 1.26)),  # arange, step .01
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (displacement, its smoothing sigma, the affine jitter), in units of the image size
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}


def check_shape(shape: tuple[int, ...], where: str) -> None:
    """The corruptions' constants are CIFAR's: 32x32 RGB images only."""
    if tuple(shape[-3:]) != (SIZE, SIZE, 3):
        raise AblationError(
            f"{where}: the CIFAR-10-C corruptions are defined for 32x32 RGB images, these "
            f"are {'x'.join(map(str, shape[-3:]))}; evaluate on an extra test set instead")


def check_name(name: str) -> str:
    if name not in NAMES:
        raise AblationError(f"unknown corruption {name!r} (known: {', '.join(NAMES)})")
    return name


# --- per-image random draws ----------------------------------------------------------------


def _generators(seed: int, name: str, severity: int, keys: np.ndarray) -> list:
    """One generator per image, from (seed, corruption, severity, image index)."""
    k = NAMES.index(name)
    return [np.random.default_rng([int(seed), k, int(severity), int(i)]) for i in keys]


def _each(gens: list, draw: Callable) -> np.ndarray:
    return np.stack([np.asarray(draw(g)) for g in gens])


# --- shared operations ----------------------------------------------------------------------


def _blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0
          ) -> np.ndarray:
    """A Gaussian blur over each image's rows and columns (never across images or
    channels): scikit-image's `gaussian` on one image, as the script called it."""
    from scipy import ndimage

    if sigma == 0:
        return x
    sig = [0.0] * x.ndim
    sig[1], sig[2] = sigma, sigma
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _zoom(x: np.ndarray, size: int) -> np.ndarray:
    """Images (N, h, h, ...) resized to `size` bilinearly, output pixel j reading input
    position j * (h - 1) / (size - 1): SciPy's `ndimage.zoom` at order 1, done as two
    gathers, which is twenty times faster on a batch."""
    h = x.shape[1]
    pos = np.arange(size) * ((h - 1) / (size - 1))
    lo = np.minimum(np.floor(pos).astype(np.int64), h - 2)
    frac = (pos - lo).astype(x.dtype)
    shape = (1, size) + (1,) * (x.ndim - 2)
    f = frac.reshape(shape)
    x = x[:, lo] * (1 - f) + x[:, lo + 1] * f
    f = frac.reshape((1, 1, size) + (1,) * (x.ndim - 3))
    return x[:, :, lo] * (1 - f) + x[:, :, lo + 1] * f


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre of each image zoomed by `factor` (bilinear), cropped back to its size."""
    h = x.shape[1]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    out = _zoom(x[:, top:top + ch, top:top + ch], round(float(ch * factor)))
    trim = (out.shape[1] - h) // 2
    return out[:, trim:trim + h, trim:trim + h]


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick's motion-blur weights: a one-sided Gaussian over 2*ceil(radius)+1 taps."""
    width = int(2 * math.ceil(radius) + 1)
    k = np.exp(-np.arange(width) ** 2 / (2.0 * sigma * sigma))
    return k / k.sum()


def motion_blur_images(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray
                       ) -> np.ndarray:
    """Each image (N, H, W, C) blurred along its own angle (degrees), as ImageMagick's
    MotionBlurImage does: tap i reads the pixel i steps along the angle, rounded to the
    grid; pixels beyond the edge repeat the edge."""
    kernel = motion_kernel(radius, sigma)
    n, h, w = x.shape[:3]
    rad = np.deg2rad(angles)
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x, dtype=np.float64)
    for i, weight in enumerate(kernel):
        dx = np.ceil(i * np.cos(rad) - 0.5).astype(np.int64)[:, None, None]
        dy = np.ceil(i * np.sin(rad) - 0.5).astype(np.int64)[:, None, None]
        out += weight * x[batch, np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    return out


def _gray(x: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, OpenCV's RGB2GRAY), keeping a channel axis."""
    return (x[..., 0:1] * 0.299 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114)


def plasma(draws: np.ndarray, decay: float, size: int = SIZE) -> np.ndarray:
    """Diamond-square height maps (N, size, size) in [0, 1], from N rows of uniform
    draws in [-1, 1) (`plasma_draws` of them): the fog's cloud layer. Each square's and
    diamond's centre is its corners' mean plus noise whose scale falls by `decay` each
    halving of the step."""
    n = draws.shape[0]
    m = np.zeros((n, size, size))
    step, wibble, used = size, 100.0, 0

    def noisy(total):
        nonlocal used
        k = total.shape[1] * total.shape[2]
        u = draws[:, used:used + k].reshape(total.shape)
        used += k
        return total / 4 + wibble * wibble * u

    while step >= 2:
        half = step // 2
        corners = m[:, 0:size:step, 0:size:step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:size:step, half:size:step] = noisy(sq)
        centres = m[:, half:size:step, half:size:step]
        corners = m[:, 0:size:step, 0:size:step]
        lr = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        m[:, 0:size:step, half:size:step] = noisy(lr)
        tb = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        m[:, half:size:step, 0:size:step] = noisy(tb)
        step, wibble = half, wibble / decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def plasma_draws(size: int = SIZE) -> int:
    """How many uniform draws one `plasma` map takes."""
    total, step = 0, size
    while step >= 2:
        total += 3 * (size // step) ** 2
        step //= 2
    return total


# --- the corruptions: x float64 in [0, 1] (N, 32, 32, 3) -> float in [0, 255] ----------------


def _gaussian_noise(x, c, gens, _):
    return np.clip(x + _each(gens, lambda g: g.normal(0, c, x.shape[1:])), 0, 1) * 255


def _shot_noise(x, c, gens, _):
    counts = np.stack([g.poisson(xi * c) for g, xi in zip(gens, x, strict=True)])
    return np.clip(counts / c, 0, 1) * 255


def _impulse_noise(x, c, gens, _):
    hit = _each(gens, lambda g: g.random((2, *x.shape[1:])))
    out = x.copy()
    flipped = hit[:, 0] < c
    salt = hit[:, 1] < 0.5
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return np.clip(out, 0, 1) * 255


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """A disk of `radius` on a 17x17 grid, antialiased by a 3x3 Gaussian of `alias_blur`."""
    from scipy import ndimage

    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2.0 * alias_blur ** 2))
    g /= g.sum()
    return ndimage.correlate(disk, np.outer(g, g), mode="mirror")


def _defocus_blur(x, c, _gens, _):
    from scipy import ndimage

    k = defocus_kernel(*c)[None, :, :, None]
    return np.clip(ndimage.correlate(x, k, mode="mirror"), 0, 1) * 255


def _glass_blur(x, c, gens, _):
    sigma, delta, iterations = c
    y = np.floor(_blur(x, sigma) * 255).astype(np.uint8)
    span = list(range(SIZE - delta, delta, -1))
    moves = _each(gens, lambda g: g.integers(-delta, delta, (iterations, len(span), len(span), 2)))
    batch = np.arange(len(x))
    for it in range(iterations):
        for a, h in enumerate(span):
            for b, w in enumerate(span):
                dx, dy = moves[:, it, a, b, 0], moves[:, it, a, b, 1]
                y[batch, h, w] = y[batch, h + dy, w + dx]  # the script's "swap": a copy
    return np.clip(_blur(y / 255.0, sigma), 0, 1) * 255


def _motion_blur(x, c, gens, _):
    radius, sigma = c
    angles = _each(gens, lambda g: g.uniform(-45, 45))
    img = np.round(x * 255)  # the script blurred the uint8 image and read back uint8
    return np.clip(np.round(motion_blur_images(img, radius, sigma, angles)), 0, 255)


def _zoom_blur(x, c, _gens, _):
    factors = np.arange(c[0], c[1], 0.01)  # the script's np.arange, its float steps kept
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for f in factors:
        out += _clipped_zoom(x, f)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def _snow(x, c, gens, _):
    mean, sd, zoom, threshold, radius, sigma, keep = c
    x = x.astype(np.float32)
    layer = _each(gens, lambda g: g.normal(mean, sd, (SIZE, SIZE)))[..., None]
    angles = _each(gens, lambda g: g.uniform(-135, -45))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255)  # the script's 8-bit grey image
    layer = np.round(motion_blur_images(layer, radius, sigma, angles)) / 255.0
    x = keep * x + (1 - keep) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


def frost_texture(draws: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """A procedural frost overlay (N, 32, 32, 3) in [0, 255]: a fine plasma (`plasma`'s
    draws) crossed by bright needles (`lines`: N x 16 x (x, y, angle, length) in [0, 1)),
    tinted pale blue. Not the paper's photographs (see the module's docstring)."""
    n = len(draws)
    base = plasma(draws, 1.4)
    needles = np.zeros((n, SIZE, SIZE))
    t = np.linspace(0, 1, 24)
    batch = np.arange(n)[:, None]
    for j in range(lines.shape[1]):
        x0, y0 = lines[:, j, 0] * SIZE, lines[:, j, 1] * SIZE
        ang, length = lines[:, j, 2] * np.pi, 4 + 10 * lines[:, j, 3]
        px = np.clip((x0[:, None] + np.cos(ang)[:, None] * length[:, None] * t), 0, SIZE - 1)
        py = np.clip((y0[:, None] + np.sin(ang)[:, None] * length[:, None] * t), 0, SIZE - 1)
        needles[batch, py.astype(int), px.astype(int)] = 1.0
    needles = _blur(needles[..., None], 0.6)[..., 0]
    needles /= np.maximum(needles.max(axis=(1, 2), keepdims=True), 1e-9)
    tex = np.clip(0.35 + 0.35 * base + 0.5 * needles, 0, 1)
    return 255 * tex[..., None] * np.array([0.82, 0.9, 1.0])


def frost_pictures(folder: Path) -> list[np.ndarray]:
    """The paper's frost photographs (the first five files by name, as its script drew
    from five), each scaled to a fifth as it did, RGB float."""
    from PIL import Image

    if not Path(folder).is_dir():
        raise AblationError(f"frost_images: no folder {folder} (the paper's frost pictures)")
    files = sorted(p for p in Path(folder).iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:5]
    if len(files) < 5:
        raise AblationError(f"frost_images {folder}: needs the paper's five frost pictures "
                            f"(frost1.png ... frost5.jpg), found {len(files)}")
    from ablation.data.folders import open_image

    out = []
    for f in files:
        with open_image(f) as img:
            w, h = img.size
            small = img.convert("RGB").resize((round(w * 0.2), round(h * 0.2)),
                                              Image.BILINEAR)
            if min(small.size) <= SIZE:
                raise AblationError(f"frost picture {f}: {w}x{h}, at a fifth too small for "
                                    f"a {SIZE}x{SIZE} crop")
            out.append(np.asarray(small, np.float64))
    return out


def _frost(x, c, gens, frost_images):
    if frost_images is None:
        draws = _each(gens, lambda g: g.uniform(-1, 1, plasma_draws()))
        lines = _each(gens, lambda g: g.random((16, 4)))
        layer = frost_texture(draws, lines)
    else:
        pics = frost_pictures(frost_images)
        layer = np.empty(x.shape)
        for i, g in enumerate(gens):
            pic = pics[int(g.integers(5))]
            r, q = int(g.integers(0, pic.shape[0] - SIZE)), int(g.integers(0, pic.shape[1] - SIZE))
            layer[i] = pic[r:r + SIZE, q:q + SIZE]
    return np.clip(c[0] * x * 255 + c[1] * layer, 0, 255)


def _fog(x, c, gens, _):
    strength, decay = c
    top = x.max(axis=(1, 2, 3), keepdims=True)
    cloud = plasma(_each(gens, lambda g: g.uniform(-1, 1, plasma_draws())), decay)
    x = x + strength * cloud[..., None]
    return np.clip(x * top / (top + strength), 0, 1) * 255


def _brightness(x, c, _gens, _):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def _contrast(x, c, _gens, _):
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 affine map taking three (x, y) points `src` to `dst`."""
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def _elastic_transform(x, c, gens, _):
    from scipy import ndimage

    alpha, sigma, jitter = (SIZE * v for v in c)
    x = x.astype(np.float32)
    centre, half = SIZE // 2, SIZE // 3
    pts = np.float32([[centre + half, centre + half], [centre + half, centre - half],
                      [centre - half, centre - half]])
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    out = np.empty_like(x)
    for i, g in enumerate(gens):
        moved = pts + g.uniform(-jitter, jitter, pts.shape).astype(np.float32)
        m = np.vstack([_affine(pts.astype(np.float64), moved.astype(np.float64)), [0, 0, 1]])
        inv = np.linalg.inv(m)  # where each output pixel comes from (x = column, y = row)
        sx = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
        sy = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
        warped = np.stack([ndimage.map_coordinates(x[i, ..., ch], [sy, sx], order=1,
                                                   mode="mirror") for ch in range(3)], -1)
        dx = ndimage.gaussian_filter(g.uniform(-1, 1, (SIZE, SIZE)), sigma, mode="reflect",
                                     truncate=3) * alpha
        dy = ndimage.gaussian_filter(g.uniform(-1, 1, (SIZE, SIZE)), sigma, mode="reflect",
                                     truncate=3) * alpha
        out[i] = np.stack([ndimage.map_coordinates(warped[..., ch], [rows + dy, cols + dx],
                                                   order=1, mode="reflect")
                           for ch in range(3)], -1)
    return np.clip(out, 0, 1) * 255


def _pil_each(x, fn) -> np.ndarray:
    from PIL import Image

    img = np.round(x * 255).astype(np.uint8)
    return np.stack([np.asarray(fn(Image.fromarray(im)), np.uint8) for im in img])


def _pixelate(x, c, _gens, _):
    from PIL import Image

    small = int(SIZE * c)
    return _pil_each(x, lambda im: im.resize((small, small), Image.BOX)
                     .resize((SIZE, SIZE), Image.BOX))


def _jpeg_compression(x, c, _gens, _):
    from PIL import Image

    def jpeg(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=c)
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert("RGB")

    return _pil_each(x, jpeg)


_OPS = {name: globals()[f"_{name}"] for name in NAMES}


def corrupt(images: np.ndarray, name: str, severity: int, keys: np.ndarray | None = None,
            seed: int = 0, frost_images: Path | None = None) -> np.ndarray:
    """`images` (uint8, N x 32 x 32 x 3) under corruption `name` at `severity` (1-5), as
    uint8 (truncated, as the released files were). `keys`: each image's index in its
    test set (default 0..N-1), which seeds its draws with `seed`."""
    check_name(name)
    if severity not in SEVERITIES:
        raise AblationError(f"severity {severity} is not one of {SEVERITIES}")
    check_shape(images.shape, "corrupt")
    keys = np.arange(len(images)) if keys is None else np.asarray(keys)
    if keys.shape != (len(images),):
        raise AblationError(f"corrupt: {len(images)} images but {keys.size} keys")
    gens = _generators(seed, name, severity, keys)
    x = images.astype(np.float64) / 255.0
    out = _OPS[name](x, _C[name][severity - 1], gens, frost_images)
    return np.clip(out, 0, 255).astype(np.uint8)
