"""Verdicts: is variant A better than, worse than, or equivalent to variant B, and how sure?

The decision rule of every report and of `ablation run --until-decided`; the reasons are
in docs/statistics.md. In short, per pair of variants of a comparison, per recipe:

- **Paired** over the seeds both variants have: at one seed every variant sees the same
  data order and augmentation, so the per-seed deltas A − B (in points of final test
  accuracy) remove what the two runs share. The test is the paired t-test (SciPy's
  `ttest_rel`; its `confidence_interval`): exact for normal deltas, and conservative for
  the heavy-tailed ones of a diverged seed (tested by simulation).
- **One interval per pair**, two-sided at the level 1 − α/m (Bonferroni over the m pairs of
  the comparison), so all of a comparison's intervals hold at once with probability
  ≥ 1 − α. The verdict is read off that interval: `better` / `worse` when it excludes 0
  (then Holm's adjusted p, reported beside it, is below α too), `equivalent` when it lies
  inside ±margin (a TOST at α/2m: statsmodels' `ttost_paired` p is reported), `undecided`
  otherwise. "No difference" is only ever said of `equivalent`.
- **Seeds needed** for an undecided pair: the seeds per variant at which a true difference
  of one margin would make the interval exclude 0 with 80 % power (statsmodels'
  `TTestPower`), from the spread of the deltas pooled over the recipe's pairs and taken
  at its upper 80 % confidence limit (a single pair's spread at 3 seeds is too noisy).
- **Looks** (`--until-decided`): the same rule at fixed seed counts, with α spent over the
  looks by a Pocock-type spending function and turned into per-look levels by the union
  bound, which holds α whatever the looks' correlation. A pair decided at a look keeps its
  verdict; the analysis of a look uses only the seeds below its count, so replaying the
  looks from the run folders gives the same decisions every time.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ablation.errors import AblationError

BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
VERDICTS = (BETTER, WORSE, EQUIVALENT, UNDECIDED)
LOOKS = (3, 5, 8, 12)  # seed counts at which --until-decided looks, by default
RELIABLE_N = 10  # P(A>B) from fewer matched seeds is marked unreliable
SEEDS_CAP = 10_000


@dataclass(frozen=True)
class Settings:
    """What a study's `[analysis]` table sets (and `--margin` overrides): written once."""

    margin: float = field(default=0.5, metadata={
        "help": "equivalence margin in points of test accuracy: a smaller true difference "
                "counts as none"})
    alpha: float = field(default=0.05, metadata={
        "help": "error rate of a comparison's verdicts (family-wise)"})
    power: float = field(default=0.8, metadata={
        "help": "power at one margin that seeds-needed aims for"})

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


@dataclass
class Pair:
    """The verdict on one pair, A against B (delta = A − B, in points)."""

    a: str
    b: str
    n: int  # matched seeds
    unmatched: int  # seeds only one of the two has (left out)
    delta: float = math.nan
    sd: float = math.nan  # std of the per-seed deltas
    ci_low: float = math.nan
    ci_high: float = math.nan
    ci_level: float = math.nan
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


def deltas(a: dict[int, float], b: dict[int, float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Matched accuracies (in points) of A and B over their common seeds, in seed order,
    and how many seeds only one of them has."""
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


def interval_verdicts(xa: np.ndarray, xb: np.ndarray, level: float, margin: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rule itself, vectorised over leading axes (seeds on the last): the paired
    t-test's p, its interval at `level`, and the verdict code (see `_CODES`). Deltas
    without spread, or with a missing seed (NaN), give NaN and `undecided`."""
    from scipy import stats

    d = xa - xb
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(xa, xb, axis=-1)
        ci = res.confidence_interval(confidence_level=level)
        flat = ~(np.nanstd(d, axis=-1) > 0) | np.isnan(d).any(axis=-1)
    p = np.where(flat, np.nan, res.pvalue)
    lo, hi = np.where(flat, np.nan, ci.low), np.where(flat, np.nan, ci.high)
    return p, lo, hi, _code(lo, hi, margin)


def _code(lo, hi, margin: float) -> np.ndarray:
    """The verdict codes intervals give (vectorised): excludes 0 -> better/worse;
    inside ±margin -> equivalent; otherwise (or NaN) undecided."""
    return np.select([lo > 0, hi < 0, (-margin < lo) & (hi < margin)], [1, 2, 3], 0)


def classify(ci_low: float, ci_high: float, margin: float) -> str:
    """The verdict one interval gives, as a word."""
    return _CODES[int(_code(ci_low, ci_high, margin))]


def compare(finals: dict[str, dict[int, float]], pairs: list[tuple[str, str]],
            settings: Settings = Settings(), alpha: float | None = None) -> list[Pair]:
    """Verdicts for the pairs of one comparison. `finals` maps variant -> {seed: final
    test accuracy (fraction)}; `alpha` is this analysis's error budget (default
    settings.alpha; a look of a sequential design spends less). The intervals are at
    1 − alpha/m, m the comparison's pairs (all of them, so an interval does not change
    when another variant's runs come in)."""
    from statsmodels.stats.weightstats import ttost_paired

    alpha = settings.alpha if alpha is None else alpha
    level = 1 - alpha / max(1, len(pairs))
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
        elif not pr.sd > 0:
            pr.note = "the deltas have no spread: the test is undefined"
        else:
            p, lo, hi, code = interval_verdicts(xa, xb, level, settings.margin)
            pr.p, pr.ci_low, pr.ci_high, pr.ci_level = float(p), float(lo), float(hi), level
            pr.verdict = _CODES[int(code)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pr.p_equivalence = float(ttost_paired(xa, xb, -settings.margin,
                                                      settings.margin)[0])
        out.append(pr)
    # Holm over the comparison's m pairs; one that cannot be tested counts as p = 1
    adjusted = _holm([1.0 if math.isnan(pr.p) else pr.p for pr in out])
    for pr, q in zip(out, adjusted, strict=True):
        if not math.isnan(pr.p):
            pr.p_adjusted = q
    return out


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

    use = [(sd, n) for sd, n in zip(sds, ns, strict=True) if n >= 2 and not math.isnan(sd)]
    if not use:
        return None
    var = sum((n - 1) * sd ** 2 for sd, n in use) / sum(n - 1 for _, n in use)
    df = max(1, (variants - 1) * (int(np.median([n for _, n in use])) - 1))
    sd = math.sqrt(var)
    return Spread(sd, df, sd * math.sqrt(df / stats.chi2.ppf(0.2, df)))


def pooled_spread(pairs: list[Pair]) -> Spread | None:
    """The spread of the deltas pooled over `pairs` (a recipe's, over its comparisons)."""
    usable = [p for p in pairs if p.n >= 2 and not math.isnan(p.sd)]
    return pool([p.sd for p in usable], [p.n for p in usable],
                len({v for p in usable for v in (p.a, p.b)}))


def seeds_needed(sd: float, margin: float, alpha: float, power: float = 0.8) -> int:
    """Seeds per variant at which a true difference of `margin` makes the two-sided
    paired interval at level 1 − alpha exclude 0 with probability `power`."""
    from statsmodels.stats.power import TTestPower

    if not sd > 0:
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            n = TTestPower().solve_power(effect_size=margin / sd, alpha=alpha, power=power,
                                         alternative="two-sided")
        except (ValueError, RuntimeError):
            return SEEDS_CAP
    n = float(np.atleast_1d(n)[0])
    return SEEDS_CAP if not math.isfinite(n) else int(min(SEEDS_CAP, max(2, math.ceil(n))))


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


def spending(looks: tuple[int, ...] | list[int], alpha: float) -> list[float]:
    """The α each look may spend: a Pocock-type spending function (Lan & DeMets 1983),
    α·ln(1 + (e − 1)·t) at information fraction t = seeds / last look's seeds, as
    increments. They add up to α, so by the union bound the looks together hold α."""
    last = looks[-1]
    spent = [alpha * math.log(1 + (math.e - 1) * n / last) for n in looks]
    return [s - prev for s, prev in zip(spent, [0.0, *spent[:-1]], strict=True)]


def looks_for(max_seeds: int, looks: tuple[int, ...] = LOOKS) -> list[int]:
    """The fixed looks up to max_seeds (which is always the last look)."""
    if max_seeds < looks[0]:
        raise AblationError(f"--max-seeds must be at least {looks[0]} (the first look)")
    return [n for n in looks if n < max_seeds] + [max_seeds]


def sequential_rule(acc: dict[str, np.ndarray], comparisons: dict[str, list[tuple[str, str]]],
                    looks: list[int], settings: Settings = Settings()
                    ) -> tuple[dict[tuple[str, tuple[str, str]], tuple[np.ndarray, np.ndarray]],
                               int]:
    """The looks, vectorised over draws: `acc[v]` holds accuracies in points, shape
    (draws, seeds), NaN where a seed is missing. At look k (1-based) each comparison's
    pairs are judged on their first looks[k-1] seeds at 1 − α_k/m; a pair keeps the first
    look that decides it. A look whose seeds are not all in for some open pair ends the
    replay. Returns {(comparison, pair): (deciding look, 0 = none; verdict code)} and the
    number of looks analysed."""
    alphas = spending(looks, settings.alpha)
    draws = next(iter(acc.values())).shape[0] if acc else 1
    state = {(c, p): (np.zeros(draws, int), np.zeros(draws, int))
             for c, ps in comparisons.items() for p in ps}
    done = 0
    for k, (n, a_k) in enumerate(zip(looks, alphas, strict=True), 1):
        open_ = {key: look == 0 for key, (look, _) in state.items()}
        if not any(o.any() for o in open_.values()):
            break
        missing = np.full((draws, n), np.nan)

        def first(v: str, n=n, missing=missing) -> np.ndarray:
            x = acc.get(v)
            if x is None or x.shape[1] < n:
                return missing
            return x[:, :n]

        if any(np.isnan(first(a)[o]).any() or np.isnan(first(b)[o]).any()
               for (_, (a, b)), o in open_.items() if o.any()):
            break
        done = k
        for c, ps in comparisons.items():
            level = 1 - a_k / max(1, len(ps))
            for pair in ps:
                o = open_[(c, pair)]
                if not o.any():
                    continue
                code = interval_verdicts(first(pair[0]), first(pair[1]), level,
                                         settings.margin)[3]
                look, codes = state[(c, pair)]
                new = o & (code != 0)
                look[new], codes[new] = k, code[new]
    return state, done


@dataclass
class Sequential:
    """The state of a sequential design after replaying its looks on the runs."""

    looks: list[int]
    pairs: dict[str, list[Pair]]  # comparison -> its pairs, as decided or at the last look
    looks_done: int  # looks whose seeds were all in
    open_variants: list[str]  # variants of pairs still undecided

    @property
    def finished(self) -> bool:
        return not self.open_variants or self.looks_done == len(self.looks)


def sequential(finals: dict[str, dict[int, float]],
               comparisons: dict[str, list[tuple[str, str]]], looks: list[int],
               settings: Settings = Settings()) -> Sequential:
    """`sequential_rule` on recorded runs (one draw), each pair then described at the look
    that decided it (or the last look analysed) by `compare` at that look's α."""
    width = max([looks[-1], *(max(f) + 1 for f in finals.values() if f)])
    acc = {}
    for v, f in finals.items():
        row = np.full((1, width), np.nan)
        for s_, a in f.items():
            row[0, s_] = 100.0 * a
        acc[v] = row
    state, done = sequential_rule(acc, comparisons, looks, settings)
    alphas = spending(looks, settings.alpha)
    out: dict[str, list[Pair]] = {}
    for c, ps in comparisons.items():
        at = {p: int(state[(c, p)][0][0]) or done for p in ps}
        judged: dict[int, list[Pair]] = {}  # look -> the comparison judged at that look
        for k in sorted(set(at.values())):
            n = looks[k - 1] if k else looks[0]
            cut = {v: {s_: a for s_, a in f.items() if s_ < n} for v, f in finals.items()}
            judged[k] = compare(cut, ps, settings, alpha=alphas[(k or 1) - 1])
        out[c] = []
        for i, pair in enumerate(ps):
            k = at[pair]
            pr = judged[k][i]
            if not k:
                pr.verdict, pr.note = UNDECIDED, f"look 1 ({looks[0]} seeds) not complete"
            pr.look, pr.design = k or None, "sequential"
            out[c].append(pr)
    open_v = sorted({v for ps in out.values() for p in ps if p.verdict == UNDECIDED
                     for v in (p.a, p.b)})
    return Sequential(list(looks), out, done, open_v)
