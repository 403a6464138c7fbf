"""Packed datasets against data in memory: what a job's memory and speed become when it
streams its images from ArrayRecord shards (`ablation data pack`), and how fast packing
and the host's decoding are. The figures in docs/performance.md come from this script.

    python benchmarks/streaming.py --data-dir DIR --work /tmp/streaming

1. Packing speed: CIFAR-10 (raw 32x32) and a generated JPEG folder (encoded).
2. The host's decode + resize, img/s on one thread, at 64, 128 and 224 px, from the
   encoded pack (what a job's loader threads do per image).
3. Peak RSS of a training job (one epoch, a small net at 64x64) on generated sets of
   `--sizes` images, packed against the same .npz in memory (each job's own
   `peak_rss_mb`).
4. Training img/s on CIFAR-10 in memory against its packed copy, alternated
   (A B A B), ResNet-32 (e) on `--cifar-images` images, the second epoch's.

It trains real jobs: about 15-25 minutes on a 2-core CPU. Nothing is downloaded beyond
CIFAR-10 (`--data-dir`); the other images are generated.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ablation.data import pack, packed

STUDY = """name = "streaming"
[[variant]]
name = "small64"
base = "resnet32_e"
stages = [[1, 16], [1, 32], [1, 64]]
"""


def cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "ablation.cli", *args], capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"ablation {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def summary(results: Path) -> dict:
    (path,) = results.glob("runs/*/*/summary.json")
    return json.loads(path.read_text())


def images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images of a bright square on noise, 10 classes by the square's place."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    q = size // 4
    for c in range(10):
        r, col = divmod(c, 4)
        x[y == c, r * q:(r + 1) * q, col * q:(col + 1) * q] = 230
    return x, y


def timed_pack(src: str, dest: Path, **kw) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    m = pack.pack(src, dest, say=lambda s: None, **kw)
    n = m.counts["train"] + m.counts["test"]
    return n / (time.perf_counter() - t0)


def packing(work: Path, data_dir: str) -> dict:
    from PIL import Image

    out = {"cifar10_raw_img_s": timed_pack("cifar10", work / "cifar10.packed",
                                           data_dir=data_dir)}
    folder = work / "jpegs"
    if not folder.exists():
        rng = np.random.default_rng(0)
        x, y = images(1200, 256, 1)
        for i, (img, c) in enumerate(zip(x, y, strict=True)):
            split = "val" if i % 6 == 0 else "train"
            d = folder / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            w, h = (int(v) for v in rng.integers(200, 400, 2))
            Image.fromarray(img).resize((w, h)).save(d / f"{i}.JPEG", quality=90)
    out["jpeg_encoded_img_s"] = timed_pack(str(folder), work / "jpegs.packed")
    return out


def decoding(work: Path) -> dict:
    """One thread: JPEG decode + resize to px (PackedImages), then that plus the
    normalisation and ImageNet's random-resized crop + flip (the `rrc` augmentation)."""
    from ablation.data import augment

    m = packed.read_manifest(work / "jpegs.packed")
    out = {}
    for px in (64, 128, 224):
        x = packed.PackedImages(m, "train", (px, px))
        idx = np.random.default_rng(px).permutation(len(x))[:400]
        x[idx[:20]]  # warm
        t_read = t_aug = 0.0
        for b, start in enumerate(range(0, len(idx), 50)):
            t0 = time.perf_counter()
            batch = x[idx[start:start + 50]]
            t1 = time.perf_counter()
            augment.augment_rrc(augment.normalise(batch, m.mean, m.std),
                                np.random.default_rng([px, b]))
            t2 = time.perf_counter()
            t_read, t_aug = t_read + t1 - t0, t_aug + t2 - t1
        out[f"decode_resize_{px}px_img_s_one_thread"] = len(idx) / t_read
        out[f"decode_resize_rrc_{px}px_img_s_one_thread"] = len(idx) / (t_read + t_aug)
        print(f"  {px} px: decode + resize {len(idx) / t_read:,.0f} img/s, with the crop "
              f"{len(idx) / (t_read + t_aug):,.0f} img/s (one thread)", flush=True)
    return out


def memory(work: Path, sizes: list[int]) -> dict:
    study = work / "streaming.toml"
    study.write_text(STUDY)
    out = {}
    for n in sizes:
        npz = work / f"gen{n}.npz"
        if not npz.exists():
            x, y = images(n, 64, n)
            xt, yt = images(1000, 64, n + 1)
            np.savez(npz, x_train=x, y_train=y, x_test=xt, y_test=yt)
            del x
        dest = work / f"gen{n}.packed"
        out[f"pack_{n}_64px_raw_img_s"] = timed_pack(str(npz), dest)
        for kind, ds in (("packed", dest), ("memory", npz)):
            res = work / f"rss-{kind}-{n}"
            shutil.rmtree(res, ignore_errors=True)
            cli("run", "small64", "--study", str(study), "--dataset", str(ds), "--epochs",
                "1", "--batch-size", "256", "--results", str(res), "--no-keep-model")
            s = summary(res)
            out[f"peak_rss_mb_{kind}_{n}"] = s["peak_rss_mb"]
            print(f"  {kind} {n:,} images: peak RSS {s['peak_rss_mb']:,.0f} MB, "
                  f"{s['images_per_second']:,.0f} img/s", flush=True)
    return out


def speed(work: Path, data_dir: str, n: int, rounds: int) -> dict:
    rates: dict[str, list[float]] = {"memory": [], "packed": []}
    for r in range(rounds):
        for kind, ds in (("memory", "cifar10"), ("packed", str(work / "cifar10.packed"))):
            res = work / f"speed-{kind}-{r}"
            shutil.rmtree(res, ignore_errors=True)
            cli("run", "resnet32_e", "--dataset", ds, "--data-dir", data_dir, "--epochs", "2",
                "--train-limit", str(n), "--test-limit", "1000", "--seeds", "1",
                "--results", str(res), "--no-keep-model")
            (hist,) = res.glob("runs/*/*/history.csv")
            rate = float(list(csv.DictReader(hist.open()))[-1]["images_per_second"])
            rates[kind].append(rate)
            print(f"  round {r + 1} {kind}: {rate:,.0f} img/s", flush=True)
    ratio = statistics.median(p / m for p, m in zip(rates["packed"], rates["memory"],
                                                    strict=True))
    return {"train_img_s_memory": rates["memory"], "train_img_s_packed": rates["packed"],
            "packed_over_memory_median": ratio}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (GBs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--cifar-images", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=["decoding"], help="only this part (its pack made)")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.only == "decoding":
        print(json.dumps(decoding(a.work), indent=1))
        return 0
    found: dict = {}
    print("1. packing", flush=True)
    found.update(packing(a.work, a.data_dir))
    print("2. decoding", flush=True)
    found.update(decoding(a.work))
    print("3. memory", flush=True)
    found.update(memory(a.work, a.sizes))
    print("4. speed", flush=True)
    found.update(speed(a.work, a.data_dir, a.cifar_images, a.rounds))
    print(json.dumps(found, indent=1))
    (a.work / "streaming.json").write_text(json.dumps(found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
