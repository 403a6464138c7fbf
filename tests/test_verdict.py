"""The verdict rule against known truth, by simulation (no training, seconds).

Simulated final accuracies: a base, a planted true difference per variant, a seed effect
shared by every variant at one seed (what pairing removes), and run noise that is
heavy-tailed (Student t, 3 df) with an occasional diverged seed at 10 % accuracy where a
test says so. Each rate is checked against its nominal value plus three Monte Carlo
standard errors; the measured figures are printed (`pytest -s`) for docs/statistics.md.
"""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from ablation import verdict as V

ALPHA = 0.05
SETTINGS = V.Settings(margin=0.5, alpha=ALPHA)


@pytest.fixture(autouse=True, scope="module")
def _no_full_gc():
    """statsmodels' Holm runs a full gc.collect() per call; freezing the objects already
    alive keeps thousands of draws in seconds (numbers unchanged)."""
    gc.freeze()
    yield
    gc.unfreeze()


def mc_bound(p: float, draws: int) -> float:
    return p + 3 * math.sqrt(p * (1 - p) / draws)


def simulate(rng, draws: int, n: int, means: dict[str, float], shared: float = 0.3,
             noise: float = 0.2, heavy: bool = False, diverge: float = 0.0
             ) -> dict[str, np.ndarray]:
    """Final accuracies in points, shape (draws, seeds), of each variant; means in
    points on top of 92."""
    seed_effect = rng.normal(0, shared, (draws, n))
    out = {}
    for v, mu in means.items():
        e = (rng.standard_t(3, (draws, n)) * noise / math.sqrt(3) if heavy
             else rng.normal(0, noise, (draws, n)))
        acc = 92.0 + mu + seed_effect + e
        out[v] = np.where(rng.random((draws, n)) < diverge, 10.0, acc)
    return out


def as_finals(acc: dict[str, np.ndarray], i: int) -> dict[str, dict[int, float]]:
    """Draw i as recorded runs: {variant: {seed: accuracy fraction}}."""
    return {v: {s: x / 100 for s, x in enumerate(a[i])} for v, a in acc.items()}


def rule(acc, a, b, m=1, alpha=ALPHA):
    """The verdict codes of pair (a, b) in a comparison of m pairs, for every draw."""
    return V.interval_verdicts(acc[a], acc[b], 1 - alpha / m, SETTINGS.margin)


def real(code: np.ndarray) -> np.ndarray:
    return (code == 1) | (code == 2)


def test_the_vectorised_rule_is_the_one_compare_applies():
    rng = np.random.default_rng(0)
    acc = simulate(rng, 40, 5, {"a": 0.4, "b": 0.0, "c": 0.1}, heavy=True, diverge=0.05)
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    codes = {pair: rule(acc, *pair, m=3)[3] for pair in pairs}
    for i in range(40):
        for pr in V.compare(as_finals(acc, i), pairs, SETTINGS):
            assert pr.verdict == V._CODES[int(codes[(pr.a, pr.b)][i])]


def test_a_a_false_positive_rate_per_pair_with_heavy_tails_and_diverged_seeds():
    draws = 20000
    acc = simulate(np.random.default_rng(1), draws, 5, {"a": 0, "b": 0}, heavy=True,
                   diverge=0.03)
    rate = real(rule(acc, "a", "b")[3]).mean()
    print(f"A/A per pair, n=5, t3 noise + 3 % diverged: false positives {rate:.4f}")
    assert rate <= mc_bound(ALPHA, draws)


def test_a_a_false_positive_rate_over_a_comparisons_family():
    draws, names = 20000, ["a", "b", "c", "d"]
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    acc = simulate(np.random.default_rng(2), draws, 4, dict.fromkeys(names, 0.0), heavy=True,
                   diverge=0.02)
    any_fp = np.zeros(draws, bool)
    for pair in pairs:
        any_fp |= real(rule(acc, *pair, m=len(pairs))[3])
    print(f"A/A family of 6 pairs, n=4: family-wise false positives {any_fp.mean():.4f}")
    assert any_fp.mean() <= mc_bound(ALPHA, draws)


def test_uncorrelated_pairs_do_not_raise_false_positives():
    draws = 20000
    acc = simulate(np.random.default_rng(3), draws, 3, {"a": 0, "b": 0}, shared=0.0,
                   noise=0.4)
    rate = real(rule(acc, "a", "b")[3]).mean()
    print(f"A/A, no shared seed effect, n=3: false positives {rate:.4f}")
    assert rate <= mc_bound(ALPHA, draws)


def test_confidence_interval_coverage_is_nominal():
    draws = 20000
    acc = simulate(np.random.default_rng(4), draws, 4, {"a": 0.7, "b": 0.0})
    _, lo, hi, _ = rule(acc, "a", "b")
    rate = ((lo <= 0.7) & (hi >= 0.7)).mean()
    print(f"95 % interval coverage, n=4: {rate:.4f}")
    assert abs(rate - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / draws)


def test_equivalence_at_a_true_difference_of_one_margin_is_rare_and_possible_at_zero():
    draws, rng = 20000, np.random.default_rng(5)
    at_margin = (rule(simulate(rng, draws, 8, {"a": 0.5, "b": 0.0}), "a", "b")[3] == 3).mean()
    at_zero = (rule(simulate(rng, draws, 8, {"a": 0.0, "b": 0.0}), "a", "b")[3] == 3).mean()
    print(f"'equivalent' at a true difference of δ: {at_margin:.4f}; at 0: {at_zero:.3f} "
          "(n=8, delta sd 0.28)")
    assert at_margin <= mc_bound(ALPHA, draws)
    assert at_zero > 0.5  # the rule can say "equivalent" when it is true


def test_power_at_the_printed_seeds_needed():
    """The seeds-needed figure: with the true spread it gives 80 % power (a little more:
    n is rounded up); from a 3-seed pilot of a six-variant study, its spread pooled and
    taken at its upper 80 % limit, it gives at least that."""
    from statsmodels.stats.power import TTestPower

    rng = np.random.default_rng(6)
    true_sd = 0.2 * math.sqrt(2)  # the deltas' std: run noise 0.2 on each side
    n_true = V.seeds_needed(true_sd, 0.5, ALPHA, 0.8)
    exact = TTestPower().power(0.5 / true_sd, n_true, ALPHA)
    draws = 20000
    hit_true = (rule(simulate(rng, draws, n_true, {"a": 0.5, "b": 0.0}), "a", "b")[3]
                == 1).mean()
    names = [f"v{i}" for i in range(6)]
    pilots = simulate(rng, 300, 3, dict.fromkeys(names, 0.0))
    hits, needs = [], []
    for i in range(300):
        sds = [float(np.std(pilots[x][i] - pilots[y][i], ddof=1))
               for j, x in enumerate(names) for y in names[j + 1:]]
        n = V.seeds_needed(V.pool(sds, [3] * len(sds), len(names)).upper, 0.5, ALPHA, 0.8)
        needs.append(n)
        hits.append((rule(simulate(rng, 50, n, {"a": 0.5, "b": 0.0}), "a", "b")[3]
                     == 1).mean())
    hit_pilot = float(np.mean(hits))
    print(f"power at seeds-needed from the true spread (n={n_true}): {hit_true:.3f} "
          f"(exact {exact:.3f}); from a 3-seed pilot (median n={int(np.median(needs))}): "
          f"{hit_pilot:.3f}")
    assert 0.8 <= exact < 0.9 and abs(hit_true - exact) <= 3 * math.sqrt(0.16 / draws)
    assert 0.8 - 3 * math.sqrt(0.16 / 15000) <= hit_pilot <= 0.99


def test_spending_adds_up_to_alpha_and_looks_end_at_max_seeds():
    alphas = V.spending([3, 5, 8, 12], ALPHA)
    assert sum(alphas) == pytest.approx(ALPHA) and all(a > 0 for a in alphas)
    assert V.looks_for(12) == [3, 5, 8, 12] and V.looks_for(6) == [3, 5, 6]
    assert V.looks_for(3) == [3]


def _seeds_used(state, looks, draws) -> np.ndarray:
    """Seeds per variant, averaged over variants, per draw: a variant runs until the last
    of its pairs is decided (or to the last look)."""
    used: dict[str, np.ndarray] = {}
    last = np.array(looks)
    for (_, (a, b)), (look, _) in state.items():
        n = last[np.where(look == 0, len(looks), look) - 1]
        for v in (a, b):
            used[v] = np.maximum(used.get(v, np.zeros(draws, int)), n)
    return np.mean(list(used.values()), axis=0)


def test_until_decided_holds_alpha_and_costs_fewer_seeds_than_the_fixed_design():
    rng = np.random.default_rng(7)
    looks, draws = V.looks_for(12), 10000
    acc = simulate(rng, draws, 12, {"a": 0, "b": 0}, heavy=True, diverge=0.02)
    state, _ = V.sequential_rule(acc, {"c": [("a", "b")]}, looks, SETTINGS)
    fp_seq = real(state[("c", ("a", "b"))][1]).mean()
    fp_fixed = real(rule(acc, "a", "b")[3]).mean()
    # a study-like mix: two equal designs, a clear winner, a small real loss
    means = {"a": 0.0, "b": 0.0, "c": 1.5, "d": -0.3}
    pairs = [(x, y) for i, x in enumerate(means) for y in list(means)[i + 1:]]
    mix_draws = 4000
    acc = simulate(rng, mix_draws, 12, means)
    state, _ = V.sequential_rule(acc, {"mix": pairs}, looks, SETTINGS)
    cost = _seeds_used(state, looks, mix_draws).mean()
    wrong = np.zeros(mix_draws, bool)
    for (_, (a, b)), (_, code) in state.items():
        truth = 1 if means[a] > means[b] else 2 if means[a] < means[b] else 0
        wrong |= real(code) & (code != truth)
    decided = np.mean([(look > 0).mean() for look, _ in state.values()])
    print(f"--until-decided (looks {looks}): A/A false positives {fp_seq:.4f} (fixed 12 "
          f"seeds: {fp_fixed:.4f}); mixed study: mean seeds per variant {cost:.2f} against 12 "
          f"fixed, {decided:.1%} of pairs decided, a wrong direction or a false difference "
          f"in {wrong.mean():.4f} of studies")
    assert fp_seq <= mc_bound(ALPHA, draws)
    assert cost < 12
    assert wrong.mean() <= mc_bound(ALPHA, mix_draws)
    # the replay on recorded runs reaches the same decisions as the rule
    for i in range(5):
        seq = V.sequential(as_finals({k: v[i:i + 1] for k, v in acc.items()}, 0),
                           {"mix": pairs}, looks, SETTINGS)
        for pr in seq.pairs["mix"]:
            look, code = state[("mix", (pr.a, pr.b))]
            assert (pr.look or 0) in (look[i], seq.looks_done) and \
                pr.verdict == V._CODES[int(code[i])]


def test_zero_spread_is_undecided_not_real():
    f = {"a": {0: 0.9, 1: 0.9, 2: 0.9}, "b": {0: 0.8, 1: 0.8, 2: 0.8}}
    p = V.compare(f, [("a", "b")], SETTINGS)[0]
    assert p.verdict == V.UNDECIDED and math.isnan(p.p) and "no spread" in p.note
    assert p.delta == pytest.approx(10.0)


def test_unmatched_seeds_are_left_out_and_counted():
    f = {"a": {0: 0.90, 1: 0.91, 2: 0.92, 5: 0.5}, "b": {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.9}}
    p = V.compare(f, [("a", "b")], SETTINGS)[0]
    assert (p.n, p.unmatched) == (3, 2)
    assert p.delta == pytest.approx(np.mean([10, 9, 11]))
    assert p.p_a_beats_b == 1.0


def test_holm_adjusts_within_the_comparison_and_the_interval_matches_the_verdict():
    f = as_finals(simulate(np.random.default_rng(8), 1, 6, {"a": 3.0, "b": 0.0, "c": 0.0}), 0)
    ps = V.compare(f, [("a", "b"), ("a", "c"), ("b", "c")], SETTINGS)
    assert all(p.ci_level == pytest.approx(1 - ALPHA / 3) for p in ps)
    raw = sorted(p.p for p in ps)
    assert min(p.p_adjusted for p in ps) == pytest.approx(min(1, 3 * raw[0]))
    for p in ps:
        assert p.verdict == V.classify(p.ci_low, p.ci_high, 0.5)
        if p.verdict in (V.BETTER, V.WORSE):
            assert p.p_adjusted < ALPHA
    ab = ps[0]
    assert ab.verdict == V.BETTER and ab.delta > 0


def test_settings_reject_bad_values():
    from ablation.errors import AblationError

    for bad in ({"margin": 0}, {"margin": -1}, {"alpha": 0.7}, {"margin": "x"}):
        with pytest.raises(AblationError):
            V.Settings(**bad)
