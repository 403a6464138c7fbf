"""Inference speed of a trained network, as architecture papers report it beside accuracy:
images per second at a large batch, and the latency of one image (median and 90th
percentile), on the job's device and at its precision.

A finished job measures its network once it is saved, unless a run of the same variant
(its definition hash) at the same precision on the same device, backend and compilation
already did: one measurement per trained variant and device kind, kept in that run's
record (`summary.json`'s `infer_*` keys) and read by the report.

The network is called through Keras' own `predict_on_batch`, compiled as the job
compiled it, on real test images already normalised in host memory; so a call includes
moving the batch to the device and the answer back, as serving it does (timm's
benchmark keeps the batch on the device: its images/s are an upper bound of these). Each
throughput repeat lasts at least SECONDS (its calls grow until it does); the record keeps
the repeats' median, lowest and highest, so a reader sees the timing's own noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ablation.protocol import RunRecord
from ablation.store import RunFolder

BATCH = 256  # images per throughput call (timm's benchmark default)
REPEATS = 5  # throughput repeats; their median is the figure, lowest and highest kept
SECONDS = 0.25  # each throughput repeat lasts at least this; the latency calls as long
LATENCY_CALLS = (20, 500)  # batch-1 calls timed: at least, at most
WARMUP = 2  # calls at each batch size before any timing (the first compiles)

# the record's keys of a timing (what `measure` returns; the report's summary reads them)
FIELDS = ("infer_batch", "infer_images_per_second", "infer_images_per_second_low",
          "infer_images_per_second_high", "infer_latency_ms", "infer_latency_p90_ms")


def measure(predict: Callable[[np.ndarray], Any], images: np.ndarray, batch: int = BATCH,
            repeats: int = REPEATS, seconds: float = SECONDS,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, float | int]:
    """Time `predict` (one call on a batch, returning when its answer is on the host) on
    `images` (normalised, any number: cycled to fill a batch). The record's `infer_*`
    values."""
    big = np.ascontiguousarray(images[np.arange(batch) % len(images)])
    one = np.ascontiguousarray(images[:1])
    for x in (big, one):
        for _ in range(WARMUP):
            predict(x)

    def rate(calls: int) -> tuple[float, float]:
        start = clock()
        for _ in range(calls):
            predict(big)
        spent = clock() - start
        return calls * batch / spent, spent

    calls, (first, spent) = 1, rate(1)
    while spent < seconds:  # as many calls as fill a repeat
        calls = max(calls + 1, int(calls * seconds / max(spent, 1e-9) * 1.2))
        first, spent = rate(calls)
    rates = [first] + [rate(calls)[0] for _ in range(repeats - 1)]
    latencies, budget_start = [], clock()
    lo, hi = LATENCY_CALLS
    while len(latencies) < hi and (len(latencies) < lo or clock() - budget_start < seconds):
        start = clock()
        predict(one)
        latencies.append(clock() - start)
    ms = np.asarray(latencies) * 1e3
    return {"infer_batch": batch,
            "infer_images_per_second": round(statistics.median(rates), 1),
            "infer_images_per_second_low": round(min(rates), 1),
            "infer_images_per_second_high": round(max(rates), 1),
            "infer_latency_ms": round(float(np.median(ms)), 3),
            "infer_latency_p90_ms": round(float(np.percentile(ms, 90)), 3)}


def same_kind(a: RunRecord, b: RunRecord) -> bool:
    """Whether two runs' inference timings measure the same thing: one network (its
    definition hash) at one precision on one device, backend and compilation."""
    return (a.definition_hash == b.definition_hash and a.device == b.device
            and a.trained.precision == b.trained.precision and a.backend == b.backend
            and a.jit_compile == b.jit_compile and a.input_shape == b.input_shape)


def measured_before(run_dir: Path, record: RunRecord) -> Path | None:
    """A run folder of the same results folder (any recipe, any seed) whose record has
    the timing `record`'s run would measure; None if there is none."""
    runs = run_dir.parent.parent
    prefix = run_dir.name.rsplit("-s", 1)[0]
    for summary in sorted(runs.glob(f"*/{prefix}-s*/summary.json")):
        if summary.parent == run_dir:
            continue
        other = RunFolder(summary.parent).record_or_none()  # damaged: no measurement
        if other is not None and other.infer_images_per_second is not None \
                and same_kind(other, record):
            return summary.parent
    return None
