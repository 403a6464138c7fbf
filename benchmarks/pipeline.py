"""Input-pipeline throughput: images/s that `data.TrainStream` prepares per thread (one
thread calling `batch()` back to back) and in all (its own thread pool), per augmentation.

    python benchmarks/pipeline.py [--threads 1 2] [--batches 60]

At GPU speed one ResNet-32 job consumes 10-20k img/s, and a packed GPU runs several
jobs from one host, so this is the number that says how many loader threads a job needs
(`ablation run --loader-threads`). Uses generated images: no data needed.
"""

from __future__ import annotations

import argparse
import inspect
import time

from ablation import data


def per_thread(stream: data.TrainStream, batches: int) -> float:
    stream.batch(0, 0)  # warm-up
    t0 = time.perf_counter()
    n = 0
    for b in range(batches):
        x, _ = stream.batch(0, b % stream.steps_per_epoch)
        n += len(x)
    return n / (time.perf_counter() - t0)


def pooled(ds: data.Dataset, augment: str, threads: int, batches: int) -> float:
    kw = ({"threads": threads} if "threads" in inspect.signature(data.TrainStream).parameters
          else {"prefetch": 2 * threads})
    stream = data.TrainStream(ds, 128, seed=0, augment=augment, epochs=1_000, **kw)
    it = iter(stream)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(next(it)[0]) for _ in range(batches))
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--images", type=int, default=50_000)
    a = p.parse_args()
    ds = data.synthetic(n_train=a.images, n_test=10)
    for augment in ("blog", "crop"):
        stream = data.TrainStream(ds, 128, seed=0, augment=augment)
        line = f"{augment}: {per_thread(stream, a.batches):,.0f} img/s per thread"
        for t in a.threads:
            line += f"; {t} thread(s) pooled {pooled(ds, augment, t, a.batches):,.0f} img/s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
