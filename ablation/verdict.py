"""Verdicts: is variant A better than, worse than, or equivalent to variant B, and how sure?

The decision rule of every report and of `ablation run --until-decided`; the reasons are
in docs/statistics.md. In short, per pair of variants of a comparison, per recipe:

- **Paired** over the seeds both variants have: at one seed every variant sees the same
  data order and augmentation, so the per-seed deltas A − B (in points of final
  accuracy) remove what the two runs share. The test is the paired t-test (SciPy's
  `ttest_rel`): exact for normal deltas, conservative for heavy-tailed ones.
- **Two claims, one family.** With m pairs in the comparison, a *directional* claim
  (`better` / `worse`) needs the two-sided interval at 1 − α/m to exclude 0; an
  *equivalence* claim (`equivalent`) needs the interval at 1 − 2α/m to lie inside
  ±margin, which is the TOST at α/m. Each pair errs with probability at most α/m
  whichever claim it makes, so a comparison's verdicts hold together at α (tested by
  simulation for both kinds at once). `undecided` otherwise; "no difference" is only
  ever said of `equivalent`.
- **Zero spread** is a spread below the test set's resolution (one image, 100/N points):
  deltas that all agree to within half an image leave the test undefined, whatever the
  float noise; the pair is undecided, never "real".
- **Seeds needed** for an undecided pair: the smallest n (a search over integers, each
  power from the noncentral t; no solver that can fail) at which *both* a true
  difference of one margin is found (directional, power `power`) and a true difference of
  0 is found equivalent (power `power`), from the spread pooled over the recipe's pairs
  (diverged runs left out) at its upper 80 % confidence limit.
- **Looks** (`--until-decided`): the same two claims at fixed seed counts, against
  O'Brien–Fleming-type boundaries (Lan & DeMets 1983 spending) computed from the looks'
  joint distribution (correlation √(n_j/n_k)), not a union bound: little α is spent at
  the early looks, so the last look keeps nearly a fixed design's power. A pair's
  interval at the look that decided it is a repeated confidence interval (Jennison &
  Turnbull): its level holds whatever the stopping, and is labelled so. 0.4's designs
  (Pocock-type spending, union bound) replay as they were recorded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np

from ablation.errors import AblationError

BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
VERDICTS = (BETTER, WORSE, EQUIVALENT, UNDECIDED)
LOOKS = (3, 5, 8, 12)  # seed counts at which --until-decided looks, by default
RELIABLE_N = 10  # P(A>B) from fewer matched seeds is marked unreliable
SEEDS_CAP = 10_000
FLOAT_NOISE = 1e-9  # points: deltas closer than this are equal when the resolution is unknown
SPENDINGS = ("obf", "pocock")  # 0.5's designs; 0.4's (replayed as recorded)


@dataclass(frozen=True)
class Settings:
    """What a study's `[analysis]` table sets (and `--margin` overrides): written once."""

    margin: float = field(default=0.5, metadata={
        "help": "equivalence margin in points of test accuracy: a smaller true difference "
                "counts as none"})
    alpha: float = field(default=0.05, metadata={
        "help": "error rate of a comparison's verdicts (family-wise)"})
    power: float = field(default=0.8, metadata={
        "help": "power that seeds-needed aims for, at one margin and at none"})

    def __post_init__(self):
        for name, lo, hi in (("margin", 0.0, 100.0), ("alpha", 0.0, 0.5), ("power", 0.5, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo < v < hi:
                raise AblationError(f"{name} must be a number between {lo:g} and {hi:g} "
                                    f"(exclusive), got {v!r}")
        object.__setattr__(self, "margin", float(self.margin))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "power", float(self.power))

    def replace(self, **kw) -> Settings:
        return Settings(**{**asdict(self), **{k: v for k, v in kw.items() if v is not None}})


SETTINGS_KEYS = tuple(f.name for f in fields(Settings))


def level_words(level: float) -> str:
    """A confidence level as a report says it: 0.98333 -> '98.3 %'."""
    return f"{100 * level:.4g} %"


@dataclass
class Pair:
    """The verdict on one pair, A against B (delta = A − B, in points)."""

    a: str
    b: str
    n: int  # matched seeds (converged runs of both)
    unmatched: int  # seeds only one of the two has (left out)
    delta: float = math.nan
    sd: float = math.nan  # std of the per-seed deltas
    ci_low: float = math.nan  # the directional interval, at ci_level
    ci_high: float = math.nan
    ci_level: float = math.nan
    eq_low: float = math.nan  # the equivalence interval, at eq_level (TOST at α/m)
    eq_high: float = math.nan
    eq_level: float = math.nan
    p: float = math.nan  # paired t-test, two-sided
    p_adjusted: float = math.nan  # Holm, within the comparison (and the look)
    p_equivalence: float = math.nan  # TOST against ±margin (statsmodels), unadjusted
    correlation: float = math.nan  # Pearson r of A's and B's accuracies over matched seeds
    p_a_beats_b: float = math.nan  # share of matched seeds where A > B (ties count half)
    verdict: str = UNDECIDED
    seeds_needed: int | None = None
    look: int | None = None  # 1-based look that decided it (sequential designs)
    design: str = "fixed"  # or "sequential": judged by the looks of --until-decided
    note: str = ""
    a_diverged: int = 0  # diverged seeds of A, B: left out of the verdict
    b_diverged: int = 0


def deltas(a: dict[int, float], b: dict[int, float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Matched accuracies (in points) of A and B over their common seeds, in seed order,
    and how many seeds only one of them has. A seed without a finite accuracy is no seed
    (it never counts as a win or a loss)."""
    a = {s: x for s, x in a.items() if x is not None and math.isfinite(x)}
    b = {s: x for s, x in b.items() if x is not None and math.isfinite(x)}
    common = sorted(set(a) & set(b))
    xa = np.array([100.0 * a[s] for s in common])
    xb = np.array([100.0 * b[s] for s in common])
    return xa, xb, len(set(a) ^ set(b))


def _holm(pvalues: list[float]) -> list[float]:
    from statsmodels.stats.multitest import multipletests

    if len(pvalues) < 2:
        return list(pvalues)
    return [float(p) for p in multipletests(pvalues, method="holm")[1]]


_CODES = {0: UNDECIDED, 1: BETTER, 2: WORSE, 3: EQUIVALENT}


def fixed_criticals(n, alpha_pair: float) -> tuple[np.ndarray, np.ndarray]:
    """t critical values at n matched seeds (array-like) of a fixed design: the
    directional interval's at 1 − α/m, the equivalence interval's at 1 − 2α/m."""
    from scipy import stats

    df = np.maximum(np.asarray(n, float) - 1, 1)
    return stats.t.ppf(1 - alpha_pair / 2, df), stats.t.ppf(1 - alpha_pair, df)


def rule(d: np.ndarray, crit_dir, crit_eq, margin: float, resolution: float = 0.0
         ) -> tuple[np.ndarray, ...]:
    """The decision on deltas `d` (points; seeds on the last axis, NaN where a seed is
    missing), vectorised over leading axes: mean, sd, n, both intervals and the verdict
    code (`_CODES`). Fewer than two seeds, or deltas that all agree to within half of
    `resolution` (one test image, in points: real deltas are multiples of it, so what is
    left is float noise), leave the intervals NaN and the verdict undecided. The range,
    not the sd, is compared: nine equal deltas and one a single image away are a spread."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        n = np.sum(~np.isnan(d), axis=-1)
        mean = np.nanmean(d, axis=-1)
        sd = np.nanstd(d, axis=-1, ddof=1)
        se = sd / np.sqrt(n)
        spread = np.nanmax(d, axis=-1) - np.nanmin(d, axis=-1)
        flat = (n < 2) | ~(spread > max(resolution / 2, FLOAT_NOISE))
        lo, hi = mean - crit_dir * se, mean + crit_dir * se
        elo, ehi = mean - crit_eq * se, mean + crit_eq * se
    lo, hi, elo, ehi = (np.where(flat, np.nan, x) for x in (lo, hi, elo, ehi))
    return mean, sd, n, lo, hi, elo, ehi, verdict_code(lo, hi, elo, ehi, margin)


def verdict_code(lo, hi, elo, ehi, margin: float) -> np.ndarray:
    """The decision rule itself (`_CODES`), on the directional interval [lo, hi] and the
    equivalence interval [elo, ehi], vectorised: better when the interval is above 0,
    worse when below, equivalent when the equivalence interval lies within ±margin,
    else undecided (a NaN interval decides nothing)."""
    lo, hi, elo, ehi = (np.asarray(x, dtype=float) for x in (lo, hi, elo, ehi))
    return np.select([lo > 0, hi < 0, (-margin < elo) & (ehi < margin)], [1, 2, 3], 0)


def compare(finals: dict[str, dict[int, float]], pairs: list[tuple[str, str]],
            settings: Settings = Settings(), alpha: float | None = None,
            resolution: float = 0.0, criticals=None) -> list[Pair]:
    """Verdicts for the pairs of one comparison. `finals` maps variant -> {seed: final
    accuracy (fraction)}; `alpha` is this analysis's error budget (default settings.alpha),
    split over the comparison's m pairs (all of them, so a pair's interval does not move
    when another variant's runs come in); `resolution` the smallest spread (points) the
    test set tells apart; `criticals(n, m)` -> (directional, equivalence) critical values
    (default: a fixed design's; a sequential look's boundaries otherwise)."""
    from statsmodels.stats.weightstats import ttost_paired

    alpha = settings.alpha if alpha is None else alpha
    m = max(1, len(pairs))
    criticals = criticals or (lambda n, _m: fixed_criticals(n, alpha / m))
    out: list[Pair] = []
    for a, b in pairs:
        xa, xb, unmatched = deltas(finals.get(a, {}), finals.get(b, {}))
        pr = Pair(a, b, len(xa), unmatched)
        d = xa - xb
        if len(d):
            pr.delta = float(d.mean())
            pr.p_a_beats_b = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))
        if len(d) >= 2:
            pr.sd = float(d.std(ddof=1))
        if len(d) >= 3 and xa.std() > 0 and xb.std() > 0:
            pr.correlation = float(np.corrcoef(xa, xb)[0, 1])
        if len(d) < 2:
            pr.note = "needs 2 or more matched seeds"
        elif not np.ptp(d) > max(resolution / 2, FLOAT_NOISE):  # as `rule` decides
            pr.note = ("the deltas do not vary beyond the test set's resolution: the test "
                       "is undefined")
        else:
            from scipy import stats

            crit_dir, crit_eq = criticals(len(d), m)
            _, _, _, lo, hi, elo, ehi, code = rule(d, crit_dir, crit_eq, settings.margin,
                                                   resolution)
            pr.ci_low, pr.ci_high, pr.eq_low, pr.eq_high = (float(x) for x in
                                                            (lo, hi, elo, ehi))
            df = len(d) - 1
            pr.ci_level = float(1 - 2 * stats.t.sf(crit_dir, df))
            pr.eq_level = float(1 - 2 * stats.t.sf(crit_eq, df))
            pr.verdict = _CODES[int(code)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pr.p = float(stats.ttest_rel(xa, xb).pvalue)
                pr.p_equivalence = float(ttost_paired(xa, xb, -settings.margin,
                                                      settings.margin)[0])
        out.append(pr)
    # Holm over the comparison's m pairs; one that cannot be tested counts as p = 1
    adjusted = _holm([1.0 if math.isnan(pr.p) else pr.p for pr in out])
    for pr, q in zip(out, adjusted, strict=True):
        if not math.isnan(pr.p):
            pr.p_adjusted = q
    return out


# --- seeds needed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The spread of per-seed deltas pooled over a recipe's pairs."""

    sd: float  # pooled point estimate
    df: int  # its degrees of freedom, about (variants − 1)(seeds − 1)
    upper: float  # its upper 80 % confidence limit: what seeds-needed uses


def pool(sds: list[float], ns: list[int], variants: int) -> Spread | None:
    """Pooled std of deltas from pairs' stds and matched-seed counts (df-weighted), with
    its upper 80 % confidence limit. Pairs share variants, so their deltas are not
    independent: the degrees of freedom are those of a variant x seed table,
    (variants − 1)(seeds − 1), seeds the median count."""
    from scipy import stats

    use = [(sd, n) for sd, n in zip(sds, ns, strict=True) if n >= 2 and math.isfinite(sd)]
    if not use:
        return None
    var = sum((n - 1) * sd ** 2 for sd, n in use) / sum(n - 1 for _, n in use)
    df = max(1, (variants - 1) * (int(np.median([n for _, n in use])) - 1))
    sd = math.sqrt(var)
    return Spread(sd, df, sd * math.sqrt(df / stats.chi2.ppf(0.2, df)))


def pooled_spread(pairs: list[Pair]) -> Spread | None:
    """The spread of the deltas pooled over `pairs` (a recipe's, over its comparisons);
    their diverged runs are already out of them."""
    usable = [p for p in pairs if p.n >= 2 and math.isfinite(p.sd)]
    return pool([p.sd for p in usable], [p.n for p in usable],
                len({v for p in usable for v in (p.a, p.b)}))


_NODES = np.polynomial.legendre.leggauss(256)  # Gauss–Legendre over (0, 1), for E over S


def _over_sd(df: int, inner) -> float:
    """E[inner(S)] over S = sample sd / true sd with df degrees of freedom (df·S² is
    chi-square), by quadrature on its quantiles: stable for any effect, n or level."""
    from scipy import stats

    x, w = _NODES
    u = (x + 1) / 2
    sd = np.sqrt(stats.chi2.ppf(u, df) / df)
    return float(np.sum(w / 2 * inner(sd)))


def power_directional(n: int, effect: float, alpha: float) -> float:
    """P(the two-sided interval at 1 − alpha excludes 0) at n paired seeds when the true
    difference is `effect` deltas' sds (the noncentral t: P(|Z + effect·√n| > c·S))."""
    from scipy import stats

    c = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    return _over_sd(n - 1, lambda sd: stats.norm.cdf(nc - c * sd)
                    + stats.norm.cdf(-nc - c * sd))


def power_equivalence(n: int, effect: float, alpha: float) -> float:
    """P(the TOST at alpha says equivalent, i.e. the 1 − 2alpha interval lies inside the
    margin) at n paired seeds when the truth is 0 and the margin is `effect` deltas' sds:
    P(|Z| < effect·√n − c·S)."""
    from scipy import stats

    c = stats.t.ppf(1 - alpha, n - 1)
    room = effect * math.sqrt(n)
    return _over_sd(n - 1, lambda sd: np.maximum(0.0, 2 * stats.norm.cdf(room - c * sd) - 1))


@lru_cache(maxsize=256)
def _needed(effect: float, alpha: float, power: float) -> int:
    def enough(n: int) -> bool:
        return (power_directional(n, effect, alpha) >= power
                and power_equivalence(n, effect, alpha) >= power)

    if enough(2):
        return 2
    hi = 4
    while hi < SEEDS_CAP and not enough(hi):
        hi *= 2
    if hi >= SEEDS_CAP and not enough(SEEDS_CAP):
        return SEEDS_CAP
    lo = hi // 2  # not enough at lo, enough at hi: both powers grow with n
    hi = min(hi, SEEDS_CAP)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def seeds_needed(sd: float, margin: float, alpha: float, power: float = 0.8) -> int:
    """Seeds per variant at which both claims are in reach with probability `power`: a
    true difference of `margin` makes the two-sided interval at 1 − alpha exclude 0, and a
    true difference of 0 makes the TOST at alpha say equivalent. Finite for every spread
    (2 when it is 0), at most SEEDS_CAP."""
    if not sd > 0:
        return 2
    return _needed(float(f"{margin / sd:.6g}"), alpha, power)


def fill_seeds_needed(pairs: list[Pair], spread: Spread | None, settings: Settings,
                      m: int) -> None:
    """Seeds needed for each undecided pair of a comparison of m pairs that has runs of
    both variants: at least one more than it has."""
    if spread is None:
        return
    for p in pairs:
        if p.verdict == UNDECIDED and p.n:
            need = seeds_needed(spread.upper, settings.margin, settings.alpha / max(1, m),
                                settings.power)
            p.seeds_needed = max(need, p.n + 1)


# --- sequential looks ----------------------------------------------------------------------


def looks_for(max_seeds: int, looks: tuple[int, ...] = LOOKS) -> list[int]:
    """The fixed looks up to max_seeds (which is always the last look)."""
    if max_seeds < looks[0]:
        raise AblationError(f"--max-seeds must be at least {looks[0]} (the first look)")
    return [n for n in looks if n < max_seeds] + [max_seeds]


def pocock_spending(looks: tuple[int, ...] | list[int], alpha: float) -> list[float]:
    """0.4's designs: a Pocock-type spending function (Lan & DeMets 1983),
    α·ln(1 + (e − 1)·t) at information fraction t = seeds / last look's seeds, as
    increments; by the union bound the looks together hold α."""
    last = looks[-1]
    spent = [alpha * math.log(1 + (math.e - 1) * n / last) for n in looks]
    return [s - prev for s, prev in zip(spent, [0.0, *spent[:-1]], strict=True)]


def obf_spent(t: float, alpha: float) -> float:
    """O'Brien–Fleming-type spending (Lan & DeMets 1983), two-sided: the α spent by
    information fraction t, 2 − 2Φ(z_{1−α/2} / √t)."""
    from scipy import stats

    return float(2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))


def spending(looks: tuple[int, ...] | list[int], alpha: float, kind: str = "obf"
             ) -> list[float]:
    """The α each look may spend (increments adding up to α)."""
    if kind == "pocock":
        return pocock_spending(looks, alpha)
    spent = [obf_spent(n / looks[-1], alpha) for n in looks]
    return [s - prev for s, prev in zip(spent, [0.0, *spent[:-1]], strict=True)]


def _crossing(c: float, look: int, t: np.ndarray, prev: tuple | None) -> float:
    """P(first crossing at `look`) for the boundary c (z scale), given `prev`, the
    sub-density of the paths that stayed inside every earlier look: the recursive numerical
    integration of group-sequential designs (Armitage, McPherson & Rowe 1969). The score
    S_k = Z_k·√t_k is Brownian motion at information times t: independent increments."""
    from scipy import stats

    if prev is None:
        return float(2 * stats.norm.sf(c))
    u, mass = prev
    b, sd = c * math.sqrt(t[look]), math.sqrt(t[look] - t[look - 1])
    return float(np.sum(mass * (stats.norm.cdf((-b - u) / sd) + stats.norm.sf((b - u) / sd))))


def _inside(c: float, look: int, t: np.ndarray, prev: tuple | None) -> tuple:
    """The sub-density (grid, probability mass per grid point, trapezoid weights in) of
    the paths inside the boundary c at `look`, for the next look's crossing."""
    from scipy import stats

    b = c * math.sqrt(t[look])
    grid = np.linspace(-b, b, 801)
    weights = np.full(len(grid), grid[1] - grid[0])
    weights[[0, -1]] /= 2
    if prev is None:
        return grid, stats.norm.pdf(grid, scale=math.sqrt(t[look])) * weights
    u, mass = prev
    sd = math.sqrt(t[look] - t[look - 1])
    return grid, (stats.norm.pdf((grid[:, None] - u[None, :]) / sd) / sd @ mass) * weights


@lru_cache(maxsize=128)
def boundaries(looks: tuple[int, ...], alpha: float, kind: str = "obf",
               fixed: tuple[float, ...] = ()) -> tuple[float, ...]:
    """Two-sided critical values on the z scale, one per look, so that the probability of
    first crossing at look k under no difference is look k's share of α: from the looks'
    joint distribution (Z_j, Z_k correlated √(n_j/n_k)), not a union bound. `fixed`: the
    boundaries of looks already analysed (a design extended after them keeps them, and
    spends what α is left over the new looks). Pocock-type (0.4): the union bound's."""
    from scipy import optimize, stats

    inc = spending(looks, alpha, kind)
    if kind == "pocock":
        return tuple(float(stats.norm.ppf(1 - a / 2)) for a in inc)
    t = np.array(looks, float) / looks[-1]
    out: list[float] = []
    prev, spent = None, 0.0
    for k in range(len(looks)):
        if k < len(fixed):
            c = fixed[k]
        else:
            if k == len(fixed) and fixed:  # an extension: what is left, in OBF's shape
                base = obf_spent(t[k - 1], alpha)
                share = [(obf_spent(t[j], alpha) - base) / (alpha - base) * (alpha - spent)
                         for j in range(k, len(looks))]
                inc = [*inc[:k], *(x - y for x, y in zip(share, [0.0, *share[:-1]],
                                                          strict=True))]
            target = inc[k]

            def excess(c: float, k=k, prev=prev, target=target) -> float:
                return _crossing(c, k, t, prev) - target

            c = float(optimize.brentq(excess, 0.3, 15.0, xtol=1e-9))
        spent += _crossing(c, k, t, prev)
        prev = _inside(c, k, t, prev)
        out.append(c)
    return tuple(out)


def look_criticals(looks: list[int], k: int, alpha: float, kind: str, m: int,
                   fixed: dict | None = None):
    """The t critical values of look k (0-based) for a pair of a comparison of m pairs:
    directional (α/m) and equivalence (2α/m, the TOST at α/m), as functions of the
    matched seeds n. Pocock-type (0.4): one interval at the look's share of α/m for both."""
    from scipy import stats

    alpha_pair = alpha / max(1, m)
    if kind == "pocock":
        a_k = spending(looks, alpha_pair, "pocock")[k]
        return lambda n, _m: (stats.t.ppf(1 - a_k / 2, np.maximum(np.asarray(n) - 1, 1)),) * 2
    fixed = fixed or {}
    z_dir = boundaries(tuple(looks), alpha_pair, "obf", tuple(fixed.get("dir", ())))[k]
    z_eq = boundaries(tuple(looks), min(2 * alpha_pair, 0.999), "obf",
                      tuple(fixed.get("eq", ())))[k]

    def crit(n, _m):
        df = np.maximum(np.asarray(n, float) - 1, 1)
        return (stats.t.ppf(stats.norm.cdf(z_dir), df), stats.t.ppf(stats.norm.cdf(z_eq), df))
    return crit


def sequential_rule(acc: dict[str, np.ndarray], comparisons: dict[str, list[tuple[str, str]]],
                    looks: list[int], settings: Settings = Settings(), kind: str = "obf",
                    pending: dict[str, np.ndarray] | None = None, fixed: dict | None = None,
                    resolution: float = 0.0
                    ) -> tuple[dict[tuple[str, tuple[str, str]], tuple[np.ndarray, ...]], int]:
    """The looks, vectorised over draws: `acc[v]` holds accuracies in points, shape
    (draws, seeds), NaN where a seed gave no accuracy (failed, diverged, or not run);
    `pending[v]` (same shape, default: where acc is NaN) marks the seeds not run yet. At
    look k each comparison's open pairs are judged on their first looks[k] seeds against
    the look's boundaries; a pair keeps the first look that decides it. A look whose seeds
    are not all run for some open pair ends the replay (a failed seed does not: it is run,
    and left out). `resolution`: one test image in points, as `rule` takes it. Returns
    {(comparison, pair): (deciding look, 0 = none; verdict code; the directional interval
    at that look)} and the number of looks analysed."""
    draws = next(iter(acc.values())).shape[0] if acc else 1
    state = {(c, p): (np.zeros(draws, int), np.zeros(draws, int), np.full(draws, np.nan),
                      np.full(draws, np.nan))
             for c, ps in comparisons.items() for p in ps}
    pending = pending if pending is not None else {v: np.isnan(a) for v, a in acc.items()}
    done = 0
    for k, n in enumerate(looks, 1):
        open_ = {key: st[0] == 0 for key, st in state.items()}
        if not any(o.any() for o in open_.values()):
            break

        def first(v: str, n=n) -> np.ndarray:
            x = acc.get(v)
            if x is None or x.shape[1] < n:
                return np.full((draws, n), np.nan)
            return x[:, :n]

        def waiting(v: str, n=n) -> np.ndarray:
            p = pending.get(v)
            if p is None or p.shape[1] < n:
                return np.ones((draws, 1), bool)
            return p[:, :n]

        if any(waiting(a)[o].any() or waiting(b)[o].any()
               for (_, (a, b)), o in open_.items() if o.any()):
            break
        done = k
        for c, ps in comparisons.items():
            crit = look_criticals(looks, k - 1, settings.alpha, kind, len(ps),
                                  (fixed or {}).get(str(len(ps))))
            for pair in ps:
                o = open_[(c, pair)]
                if not o.any():
                    continue
                d = first(pair[0]) - first(pair[1])
                nn = np.sum(~np.isnan(d), axis=-1)
                cd, ce = crit(nn, len(ps))
                _, _, _, lo, hi, _, _, code = rule(d, cd, ce, settings.margin, resolution)
                look, codes, los, his = state[(c, pair)]
                new = o & (code != 0)
                look[new], codes[new], los[new], his[new] = k, code[new], lo[new], hi[new]
    return state, done


@dataclass
class Sequential:
    """The state of a sequential design after replaying its looks on the runs."""

    looks: list[int]
    pairs: dict[str, list[Pair]]  # comparison -> its pairs, as decided or at the last look
    looks_done: int  # looks whose seeds were all run
    open_variants: list[str]  # variants of pairs still undecided
    beyond: dict[str, int] = field(default_factory=dict)  # variant -> seeds past the last look

    @property
    def finished(self) -> bool:
        return not self.open_variants or self.looks_done == len(self.looks)


def sequential(finals: dict[str, dict[int, float]],
               comparisons: dict[str, list[tuple[str, str]]], looks: list[int],
               settings: Settings = Settings(), kind: str = "obf",
               ended: dict[str, set[int]] | None = None, fixed: dict | None = None,
               resolution: float = 0.0) -> Sequential:
    """`sequential_rule` on recorded runs (one draw), each pair then described at the look
    that decided it (or the last look analysed) by `compare` with that look's boundaries:
    its interval a repeated confidence interval. `ended[v]`: the seeds of v whose runs
    ended, finished or not (a failed or diverged seed is run: it is left out, and the
    looks go on); default: the seeds in `finals`."""
    ended = ended if ended is not None else {v: set(f) for v, f in finals.items()}
    width = max([looks[-1], *(max(s) + 1 for s in ended.values() if s),
                 *(max(f) + 1 for f in finals.values() if f)])
    acc, pending = {}, {}
    for v in set(finals) | set(ended):
        row = np.full((1, width), np.nan)
        for s_, a in finals.get(v, {}).items():
            if a is not None and math.isfinite(a):
                row[0, s_] = 100.0 * a
        acc[v] = row
        run = np.zeros((1, width), bool)
        run[0, sorted(ended.get(v, set()))] = True
        pending[v] = ~run
    state, done = sequential_rule(acc, comparisons, looks, settings, kind, pending, fixed,
                                  resolution)
    out: dict[str, list[Pair]] = {}
    for c, ps in comparisons.items():
        at = {p: int(state[(c, p)][0][0]) or done for p in ps}
        judged: dict[int, list[Pair]] = {}  # look -> the comparison judged at that look
        for k in sorted(set(at.values())):
            n = looks[k - 1] if k else looks[0]
            cut = {v: {s_: a for s_, a in f.items() if s_ < n} for v, f in finals.items()}
            crit = look_criticals(looks, (k or 1) - 1, settings.alpha, kind, len(ps),
                                  (fixed or {}).get(str(len(ps))))
            judged[k] = compare(cut, ps, settings, resolution=resolution, criticals=crit)
        out[c] = []
        for i, pair in enumerate(ps):
            k = at[pair]
            pr = judged[k][i]
            if not k:
                pr.verdict, pr.note = UNDECIDED, f"look 1 ({looks[0]} seeds) not complete"
            pr.look, pr.design = k or None, "sequential"
            if kind == "obf" and not math.isnan(pr.ci_low):
                # a repeated confidence interval: what holds whatever the stopping is the
                # design's level over all its looks, not the look's own
                pr.ci_level = 1 - settings.alpha / max(1, len(ps))
                pr.eq_level = 1 - 2 * settings.alpha / max(1, len(ps))
            out[c].append(pr)
    open_v = sorted({v for ps in out.values() for p in ps if p.verdict == UNDECIDED
                     for v in (p.a, p.b)})
    beyond = {v: len([s_ for s_ in f if s_ >= looks[-1]]) for v, f in finals.items()}
    return Sequential(list(looks), out, done, open_v, {v: n for v, n in beyond.items() if n})
