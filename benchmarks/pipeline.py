"""Input-pipeline throughput: images/s that `data.TrainStream` prepares per thread (one
thread calling `batch()` back to back) and in all (its own thread pool), per augmentation.

    python benchmarks/pipeline.py [--threads 1 2] [--batches 60]
    python benchmarks/pipeline.py --compare OTHER_CHECKOUT   # before/after, interleaved

At GPU speed one ResNet-32 job would consume on the order of 10-20k img/s (an
estimate, not a measurement), and a packed GPU runs several jobs from one host, so
this is the number that says how many loader threads a job needs (`ablation run
--loader-threads`). Uses generated images: no data needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np

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


def compare(other: Path, batches: int, rounds: int = 5) -> None:
    """Per-thread img/s of another checkout's `ablation/data.py` and this one's, in turns
    in one process (a drift in machine speed hits both alike); their batches must be
    identical."""
    spec = importlib.util.spec_from_file_location("other_data", other / "ablation" / "data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["other_data"] = mod
    spec.loader.exec_module(mod)
    ds = data.synthetic(n_train=50_000, n_test=10)
    ods = mod.Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes,
                      ds.mean, ds.std, ds.source)
    for augment in ("blog", "crop"):
        theirs = mod.TrainStream(ods, 128, 0, augment)
        ours = data.TrainStream(ds, 128, 0, augment)
        same = all(np.array_equal(a, b) for a, b in zip(theirs.batch(1, 3), ours.batch(1, 3),
                                                        strict=True))
        got: dict[str, list[float]] = {"other": [], "this": []}
        for _ in range(rounds):
            for name, stream in (("other", theirs), ("this", ours)):
                got[name].append(per_thread(stream, batches))
        print(f"{augment}: other checkout {statistics.median(got['other']):,.0f} img/s per "
              f"thread, this one {statistics.median(got['this']):,.0f} (median of {rounds}); "
              f"batches {'identical' if same else 'DIFFER'}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--compare", type=Path, help="another checkout of the project")
    a = p.parse_args()
    if a.compare:
        compare(a.compare, a.batches)
        return
    ds = data.synthetic(n_train=a.images, n_test=10)
    for augment in ("blog", "crop"):
        stream = data.TrainStream(ds, 128, seed=0, augment=augment)
        line = f"{augment}: {per_thread(stream, a.batches):,.0f} img/s per thread"
        for t in a.threads:
            line += f"; {t} thread(s) pooled {pooled(ds, augment, t, a.batches):,.0f} img/s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
