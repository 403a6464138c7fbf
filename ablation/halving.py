"""Successive halving over a `[tune]` space (Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning"): the promotion rule, free of any run, so the same code
decides on real runs and on the planted curves of the tests.

Rungs sit at declared epochs (`Halving.rungs`: min_epochs · factor^k, up to the run's
epochs). Every setting starts at rung 0, in the order it is given (`ablation.policies.
tuned` gives a seeded random order, never the grid's); from each rung the best
1 / factor (by validation accuracy at the rung's epoch, the mean over its tuning seeds)
go on to the next. When promotion happens is the rule that matters:

* **synchronous** at a rung with more settings than the executor has slots (one worker,
  or fewer workers than the rung's settings): every setting reaches the rung, or fails,
  before any goes on. Asynchrony buys nothing there (the slots are busy with the rung
  anyway) and would let run order decide: the settings that finish first would take the
  promotions;
* **asynchronous** (ASHA) at a rung with at least as many slots as settings: a setting
  goes on as soon as it ranks in the top 1 / factor of those done, so no slot waits;
  `reserve` holds that share of the rung's promotions until the rung is complete.

A setting that failed or diverged is never promoted and never chosen. When nothing is
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
    run's epochs / factor², so three rungs), and `reserve`, the share of an asynchronous
    rung's promotions held until every setting has reached it (0: ASHA; 1: synchronous
    at every rung; a rung with more settings than slots is synchronous whatever it says:
    docs/studies.md gives the measured trade-off)."""

    factor: int = 3
    min_epochs: int | None = None
    reserve: float = 0.0

    def rungs(self, epochs: int, annealed: int | None = None) -> list[int]:
        """The epochs at which settings are compared: min_epochs · factor^k below the
        run's epochs, then the run's epochs (the last rung: a full run). Without
        min_epochs the first rung is the run's epochs / factor², or, given `annealed`
        (the first epoch a step schedule has dropped the lr by), not before it: a rung
        before any annealing compares settings at their peak lr, which favours small
        learning rates that the first drop then overtakes (the short-horizon bias)."""
        first = self.min_epochs or max(1, round(epochs / self.factor ** 2), annealed or 1)
        if first >= epochs:
            return [epochs]
        out, e = [], first
        while e < epochs:
            out.append(e)
            e *= self.factor
        return [*out, epochs]


@dataclass
class Trial:
    """One setting of one variant, as the rule sees it: the epochs all its seeds have
    trained (`done`), whether any of them is training now, the epoch it was last sent to
    (`target`: 0, never started), its validation accuracy at each epoch all its seeds
    reached (the mean over seeds), and whether it failed or diverged."""

    key: str
    done: int = 0
    running: bool = False
    curve: dict[int, float] = field(default_factory=dict)
    failed: bool = False
    target: int = 0
    distance: float = 0.0  # from the variant's own recipe: a tie at a rung goes nearest

    def at(self, epoch: int) -> float | None:
        return self.curve.get(epoch)


def quotas(settings: int, rungs: list[int], factor: int) -> list[int]:
    """How many settings each rung sends on: 1 / factor of those that reach it, as
    synchronous successive halving does (at least 1, so the search reaches the top)."""
    out, n = [], settings
    for _ in rungs[:-1]:
        n = max(1, n // factor)
        out.append(n)
    return out


def reach(settings: int, rungs: list[int], factor: int) -> list[int]:
    """How many settings reach each rung when every rung sends on its quota."""
    return [settings, *quotas(settings, rungs, factor)]


def synchronous(settings: int, rungs: list[int], factor: int, slots: int | None) -> list[bool]:
    """Per rung, whether its promotions wait for every setting to reach it: where the
    rung has more settings than the executor has slots (`slots` None: unbounded)."""
    return [slots is not None and slots < n for n in reach(settings, rungs, factor)[:-1]]


def decide(trials: list[Trial], rungs: list[int], factor: int, free: int,
           budget: int | None = None, spent: int = 0, seeds: int = 1,
           reserve: float = 0.0, slots: int | None = None) -> list[tuple[str, int]]:
    """What to run next with `free` slots of the executor's `slots`: [(setting key, epoch
    to train it to)], a setting stopped between rungs first, then promotions (from the
    highest rung down), then new settings (in the order given), while `budget` epochs
    (over all seeds) allow. `spent`: epochs already trained or sent."""
    out: list[tuple[str, int]] = []
    by_key = {t.key: t for t in trials}
    busy = {t.key for t in trials if t.running}
    sync = synchronous(len(trials), rungs, factor, slots)

    def affordable(epochs: int) -> bool:
        return budget is None or spent + epochs * seeds <= budget

    def fresh() -> Trial | None:
        return next((t for t in trials if t.target == 0 and t.done == 0
                     and t.key not in busy and not t.failed), None)

    for _ in range(free):
        waiting = fresh() is not None and affordable(rungs[0])
        pick = _unfinished(trials, rungs, busy)
        if pick is None:
            pick = _promotion(trials, rungs, factor, busy, reserve, sync, waiting)
        if pick is not None and not affordable(pick[1] - by_key[pick[0]].done):
            pick = None
        if pick is None and waiting:
            pick = (fresh().key, rungs[0])
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


def destination(t: Trial, rungs: list[int]) -> int:
    """The epoch a setting is on its way to: where it was sent, else (stopped between
    rungs by a crash or a kill) the next rung, else where it stands."""
    if t.target > t.done:
        return t.target
    if 0 < t.done < rungs[-1] and t.done not in rungs:
        return next(r for r in rungs if r > t.done)
    return t.done


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


def _ranked(trials: list[Trial], epoch: int) -> list[Trial]:
    return sorted(_completed(trials, epoch), key=lambda t: (-t.at(epoch), t.distance, t.key))


def _promoted(trials: list[Trial], rungs: list[int], k: int) -> int:
    """How many settings were sent beyond rung k (those that failed since included:
    they used the rung's quota)."""
    return sum(1 for t in trials if max(t.done, destination(t, rungs)) > rungs[k])


def complete(trials: list[Trial], rungs: list[int], factor: int, k: int,
             waiting: bool = False) -> bool:
    """Whether rung k has every setting it will get: none on its way there, and none
    more to come (no new setting `waiting` to start, for rung 0; below, the rung before
    is complete and has sent on its quota, or has nothing left to send)."""
    if any(not t.failed and t.done < rungs[k] <= max(destination(t, rungs), rungs[0])
           and (t.done or t.target or t.running) for t in trials):
        return False
    if k == 0:
        return not waiting
    if not complete(trials, rungs, factor, k - 1, waiting):
        return False
    left = [t for t in _completed(trials, rungs[k - 1])
            if max(t.done, destination(t, rungs)) <= rungs[k - 1]]
    return _promoted(trials, rungs, k - 1) >= quotas(len(trials), rungs, factor)[k - 1] \
        or not left


def _promotion(trials: list[Trial], rungs: list[int], factor: int, busy: set[str],
               reserve: float, sync: list[bool], waiting: bool) -> tuple[str, int] | None:
    """The best setting in the top 1 / factor of a rung, not yet sent beyond it, from
    the highest rung down, while the rung's quota lasts. A synchronous rung promotes only
    once complete, its best `quota`; an asynchronous one (ASHA's get_job) as settings
    rank in the top 1 / factor of those done, holding `reserve` of its quota for the
    complete rung."""
    quota = quotas(len(trials), rungs, factor)
    for k in range(len(rungs) - 2, -1, -1):
        sent = _promoted(trials, rungs, k)
        if sent >= quota[k]:
            continue
        held = 1.0 if sync[k] else reserve
        done = complete(trials, rungs, factor, k, waiting)
        if not done and sent >= math.ceil(quota[k] * (1 - held)):
            continue  # the rest of the quota waits for every setting to reach the rung
        here = _ranked(trials, rungs[k])
        top = here[:quota[k]] if done else here[:math.floor(len(here) / factor)]
        for t in top:
            if t.key not in busy and t.done == rungs[k] and t.target <= rungs[k]:
                return t.key, rungs[k + 1]
    return None


def _at_top(trials: list[Trial], rungs: list[int]) -> bool:
    return any(not t.failed and t.done >= rungs[-1] for t in trials)


def _best_of_highest(trials: list[Trial], rungs: list[int]) -> tuple[str, int] | None:
    for k in range(len(rungs) - 2, -1, -1):
        here = _ranked(trials, rungs[k])
        if here:
            return here[0].key, rungs[k + 1]
    return None


def passed_over(trials: list[Trial], rungs: list[int]) -> list[tuple[int, Trial]]:
    """(rung epoch, setting) where the leader of a rung below the top was never trained
    beyond it while others were: the search did not follow its own ranking there (an
    asynchronous rung promoted the settings that finished first), so its choice may owe
    something to run order."""
    out = []
    for k, epoch in enumerate(rungs[:-1]):
        here = _ranked(trials, epoch)
        if here and _promoted(trials, rungs, k) and \
                max(here[0].done, destination(here[0], rungs)) <= epoch:
            out.append((epoch, here[0]))
    return out


def grid_epochs(settings: int, epochs: int, seeds: int = 1) -> int:
    """What the full grid costs: every setting, every tuning seed, every epoch."""
    return settings * epochs * seeds


def planned_epochs(settings: int, rungs: list[int], factor: int, seeds: int = 1) -> int:
    """What successive halving spends on a grid of `settings` when every rung sends on
    its quota (each epoch trained once: a promoted setting resumes): sum over rungs of
    the settings reaching it times the epochs since the rung before."""
    before, total = 0, 0
    for n, r in zip(reach(settings, rungs, factor), rungs, strict=True):
        total += n * (r - before)
        before = r
    return total * seeds


def theoretical_fraction(rungs: list[int], factor: int) -> float:
    """The share of the full grid's epochs successive halving spends when every rung
    promotes exactly 1 / factor of its settings: sum_k (r_k − r_{k−1}) / factor^k / r_K."""
    total, before = 0.0, 0
    for k, r in enumerate(rungs):
        total += (r - before) / factor ** k
        before = r
    return total / rungs[-1]
