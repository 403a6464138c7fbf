"""Successive halving, asynchronous (ASHA: Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning"), over a `[tune]` space: the promotion rule, free of
any run, so the same code decides on real runs and on the planted curves of the tests.

Rungs sit at declared epochs (`Halving.rungs`: min_epochs · factor^k, up to the run's
epochs). Every setting starts at rung 0; whenever a slot is free, the rule looks from the
highest rung down for a setting in the top 1 / factor of those that completed that rung
(by validation accuracy at the rung's epoch, the mean over its tuning seeds) and not yet
sent further, and promotes the best one to the next rung; with none to promote, it
starts a new setting, while the budget (in epochs) allows. Nobody waits for a rung to
fill: a slot never idles while a promotion or a new setting is possible. When nothing is
running, nothing is promotable and no setting is left, the best setting of the highest
rung reached goes on, so the search always ends with a setting trained to the full
epochs, the one the comparison then uses.

A promoted setting continues from its own snapshot (the runner's resume), and its
learning-rate schedule is the full run's: a setting stopped at a rung has trained the
first epochs of the full run, so rungs compare like with like. Why not Ray Tune's ASHA
or Optuna's pruners: docs/studies.md ("Tuning on a budget").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Halving:
    """`[tune]`'s `halving`: the reduction factor, the first rung's epochs (None: the
    run's epochs / factor², so three rungs), and `reserve`, the share of each rung's
    promotions held until every setting has reached the rung (0: ASHA, promotions as
    soon as a setting ranks in the top 1 / factor of those done, no slot ever waits for
    a rung; 1: synchronous successive halving, which waits, and promotes fewer wrong
    settings: docs/studies.md gives the measured trade-off)."""

    factor: int = 3
    min_epochs: int | None = None
    reserve: float = 0.0

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which settings are compared: min_epochs · factor^k below the
        run's epochs, then the run's epochs (the last rung: a full run)."""
        first = self.min_epochs or max(1, round(epochs / self.factor ** 2))
        out, e = [], first
        while e < epochs:
            out.append(e)
            e *= self.factor
        return [*out, epochs]


@dataclass
class Trial:
    """One setting of one variant, as the rule sees it: the epochs all its seeds have
    trained (`done`), whether any of them is training now, its validation accuracy at
    each epoch all its seeds reached (the mean over seeds), and whether it failed."""

    key: str
    done: int = 0
    running: bool = False
    curve: dict[int, float] = field(default_factory=dict)
    failed: bool = False
    target: int = 0  # the epoch it was last sent to (0: never started)

    def at(self, epoch: int) -> float | None:
        return self.curve.get(epoch)


def quotas(settings: int, rungs: list[int], factor: int) -> list[int]:
    """How many settings each rung may send on: 1 / factor of those that reach it, as
    synchronous successive halving would (at least 1, so the search reaches the top).
    Asynchronous promotion alone can send more (a setting promoted early stays promoted
    when later ones outrank it); the quotas keep the cost at most synchronous halving's."""
    out, n = [], settings
    for _ in rungs[:-1]:
        n = max(1, n // factor)
        out.append(n)
    return out


def decide(trials: list[Trial], rungs: list[int], factor: int, free: int,
           budget: int | None = None, spent: int = 0, seeds: int = 1,
           reserve: float = 0.0) -> list[tuple[str, int]]:
    """What to run next with `free` slots: [(setting key, epoch to train it to)],
    promotions first (from the highest rung down), then new settings (in the order
    given), while `budget` epochs (over all seeds) allow. `spent`: epochs already
    trained or sent."""
    out: list[tuple[str, int]] = []
    by_key = {t.key: t for t in trials}
    busy = {t.key for t in trials if t.running}

    def affordable(epochs: int) -> bool:
        return budget is None or spent + epochs * seeds <= budget

    for _ in range(free):
        pick = _unfinished(trials, rungs, busy)  # a setting stopped between rungs first
        if pick is None:
            pick = _promotion(trials, rungs, factor, busy, reserve)
        if pick is not None and not affordable(pick[1] - by_key[pick[0]].done):
            pick = None
        if pick is None:
            fresh = next((t for t in trials if t.target == 0 and t.done == 0
                          and t.key not in busy and not t.failed), None)
            if fresh is not None and affordable(rungs[0]):
                pick = (fresh.key, rungs[0])
        if pick is None:
            break
        key, target = pick
        spent += (target - by_key[key].done) * seeds
        busy.add(key)
        by_key[key].target = target
        out.append(pick)
    if not out and not busy and not _at_top(trials, rungs):
        # the end of the search: nothing to promote, nothing new; the best of the highest
        # rung reached goes on, so one setting is trained in full
        pick = _best_of_highest(trials, rungs)
        if pick is not None:
            out.append(pick)
    return out


def _unfinished(trials: list[Trial], rungs: list[int], busy: set[str]
                ) -> tuple[str, int] | None:
    """A setting that stopped between rungs (a crash, a kill: not running, its epochs
    on no rung): it goes on to the rung it was sent to."""
    for t in trials:
        if t.key not in busy and not t.failed and 0 < t.done < rungs[-1] and \
                t.done not in rungs:
            return t.key, next(r for r in rungs if r > t.done)
    return None


def _completed(trials: list[Trial], epoch: int) -> list[Trial]:
    return [t for t in trials if not t.failed and t.done >= epoch and t.at(epoch) is not None]


def _promotion(trials: list[Trial], rungs: list[int], factor: int, busy: set[str],
               reserve: float = 0.0) -> tuple[str, int] | None:
    """The best setting in the top 1 / factor of a rung, not yet sent beyond it, from
    the highest rung down (ASHA's get_job), while the rung's quota lasts; `reserve` of
    the quota waits for the rung to be complete, then goes to its best."""
    quota = quotas(len(trials), rungs, factor)
    reach = [len(trials), *quota]  # how many settings reach each rung
    for k in range(len(rungs) - 2, -1, -1):
        sent = sum(1 for t in trials if max(t.done, t.target) > rungs[k] or
                   (t.key in busy and t.target > rungs[k]))
        if sent >= quota[k]:
            continue
        here = sorted(_completed(trials, rungs[k]), key=lambda t: (-t.at(rungs[k]), t.key))
        complete = len(here) >= reach[k]
        if not complete and sent >= math.ceil(quota[k] * (1 - reserve)):
            continue  # the rest of the quota waits for every setting to reach the rung
        top = here[:quota[k]] if complete else here[:math.floor(len(here) / factor)]
        for t in top:
            if t.key not in busy and t.done == rungs[k] and t.target <= rungs[k]:
                return t.key, rungs[k + 1]
    return None


def _at_top(trials: list[Trial], rungs: list[int]) -> bool:
    return any(not t.failed and t.done >= rungs[-1] for t in trials)


def _best_of_highest(trials: list[Trial], rungs: list[int]) -> tuple[str, int] | None:
    for k in range(len(rungs) - 2, -1, -1):
        here = sorted(_completed(trials, rungs[k]), key=lambda t: (-t.at(rungs[k]), t.key))
        if here:
            return here[0].key, rungs[k + 1]
    return None


def grid_epochs(settings: int, epochs: int, seeds: int = 1) -> int:
    """What the full grid costs: every setting, every tuning seed, every epoch."""
    return settings * epochs * seeds


def theoretical_fraction(rungs: list[int], factor: int) -> float:
    """The share of the full grid's epochs successive halving spends when every rung
    promotes exactly 1 / factor of its settings: sum_k (r_k − r_{k−1}) / factor^k / r_K."""
    total, before = 0.0, 0
    for k, r in enumerate(rungs):
        total += (r - before) / factor ** k
        before = r
    return total / rungs[-1]
