"""Inference speed (ablation.inference) and the Pareto frontier: the timing's
arithmetic on a known clock, which runs time a network, the frontier on known points.
(A study timed and reported end to end from the CLI: tests/test_ops.py's designs.)"""

from __future__ import annotations

import numpy as np
import pytest

from ablation import inference
from ablation.report.stats import frontier


class FakeDevice:
    """A device whose calls take `per_image` seconds an image plus `overhead` a call,
    the n-th call `wobble[n % len]` times longer, on its own clock."""

    def __init__(self, per_image, overhead, wobble=(1.0,)):
        self.now, self.calls = 0.0, 0
        self.per_image, self.overhead, self.wobble = per_image, overhead, wobble

    def clock(self) -> float:
        return self.now

    def predict(self, x) -> None:
        factor = self.wobble[self.calls % len(self.wobble)]
        self.now += factor * (self.overhead + self.per_image * len(x))
        self.calls += 1


def test_the_timing_reports_the_device_speed_its_spread_and_latency():
    images = np.zeros((10, 4, 4, 3), np.float32)  # fewer than a batch: cycled
    steady = FakeDevice(per_image=1e-3, overhead=0.0)
    got = inference.measure(steady.predict, images, batch=64, repeats=5, seconds=0.2,
                            clock=steady.clock)
    assert got["infer_images_per_second"] == pytest.approx(1000, rel=1e-6)
    assert got["infer_images_per_second_low"] == pytest.approx(1000, rel=1e-6)
    assert got["infer_latency_ms"] == pytest.approx(1.0) == got["infer_latency_p90_ms"]
    assert got["infer_batch"] == 64
    # each repeat lasts at least `seconds`: 5 repeats of >= 0.2 s, then the latency calls
    assert steady.now >= 5 * 0.2 + 0.2
    # a device whose every third call is twice as slow: the spread and the 90th
    # percentile show it, the median does not move from the usual call
    noisy = FakeDevice(per_image=0.0, overhead=1e-2, wobble=(1.0, 1.0, 2.0))
    got = inference.measure(noisy.predict, images, batch=8, repeats=5, seconds=0.05,
                            clock=noisy.clock)
    assert got["infer_latency_ms"] == pytest.approx(10.0)
    assert got["infer_latency_p90_ms"] == pytest.approx(20.0)
    # a device that slows as it warms: the repeats differ, the median between them
    warming = FakeDevice(per_image=1e-3, overhead=0.0)
    warming.wobble = [1 + n / 1000 for n in range(10_000)]
    got = inference.measure(warming.predict, images, batch=8, repeats=5, seconds=0.05,
                            clock=warming.clock)
    assert got["infer_images_per_second_low"] < got["infer_images_per_second"] \
        < got["infer_images_per_second_high"]


def test_the_frontier_holds_the_points_nothing_beats():
    #            cheap+bad  mid+good  dear+good  dear+best  cheap+worse than 0
    costs = [1.0, 2.0, 3.0, 4.0, 1.0, float("nan")]
    accs = [0.5, 0.8, 0.8, 0.9, 0.4, 0.99]
    assert frontier(costs, accs) == [True, True, False, True, False, False]
    # a speed: higher is better, so the fastest accurate point leads
    speeds = [100.0, 50.0, 50.0, 10.0]
    assert frontier(speeds, [0.7, 0.7, 0.9, 0.95], lower_is_better=False) == \
        [True, False, True, True]
    assert frontier([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties: neither beats the other


def _record(run_dir, device="GPU A", precision="fp32", timed=False, network="h1"):
    from ablation.protocol import RunRecord
    from ablation.recipe import Recipe
    from ablation.store import RunFolder

    recipe = Recipe(precision=precision)
    record = RunRecord(variant="v", seed=int(run_dir.name[-1]), recipe_id=recipe.id,
                       recipe=recipe, status="done", definition_hash=network, device=device,
                       backend="tensorflow", jit_compile=True, input_shape=[32, 32, 3],
                       **({"infer_images_per_second": 1000.0} if timed else {}))
    run_dir.mkdir(parents=True)
    RunFolder(run_dir).write_record(record)
    return record


def test_a_network_is_timed_once_per_device_kind_and_precision(tmp_path):
    """`measured_before`: another seed, or another recipe, of the same network at the
    same precision on the same device has the figure; a different device, precision or
    network does not; an untimed or damaged sibling is no figure."""
    runs = tmp_path / "results" / "runs"
    mine = _record(runs / "r1" / "v-s1")
    assert inference.measured_before(runs / "r1" / "v-s1", mine) is None
    _record(runs / "r1" / "v-s2")  # finished, not timed
    (runs / "r1" / "v-s3").mkdir()
    (runs / "r1" / "v-s3" / "summary.json").write_text("{damaged")
    _record(runs / "r9" / "v-s4", device="GPU B", timed=True)  # another device
    _record(runs / "r8" / "v-s5", precision="bf16", timed=True)  # another precision
    _record(runs / "r7" / "v-s6", network="h2", timed=True)  # another definition
    assert inference.measured_before(runs / "r1" / "v-s1", mine) is None
    _record(runs / "r2" / "v-s0", timed=True)  # the same network elsewhere: timed
    assert inference.measured_before(runs / "r1" / "v-s1", mine) == runs / "r2" / "v-s0"
