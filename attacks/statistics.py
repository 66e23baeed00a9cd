"""Uncertainty for every reported figure: intervals for rates, AUCs, TPRs, exposure and means
over seeds, and paired tests between two runs over the same canaries. Pure numpy/scipy.

What each interval means, and when it is invalid:

- `clopper_pearson(k, n)`: exact binomial interval for a rate such as "5 of 8 canaries
  extracted". It inverts two one-sided binomial tests, so its coverage is at least the stated
  confidence for every true rate (conservative: often wider than needed). It assumes the n
  trials are independent with one common probability; canaries of one replica group are
  treated as exchangeable, which is what the rate per group claims. With n = 0 there is no
  rate: the estimate is nan and the interval is the whole [0, 1].
- `wilson(k, n)`: the score interval; coverage close to the stated confidence on average but
  below it for some true rates, narrower than Clopper-Pearson. Same assumptions, same n = 0 rule.
- `bootstrap_interval(values)`: percentile bootstrap of a statistic (the mean by default) over
  items resampled with replacement, e.g. the mean exposure of a group's canaries. It describes
  how the statistic would vary over other draws of the same number of items from the same
  population. It is too narrow for small samples (below about 20 items it under-covers), is
  unreliable for statistics set by a few extreme items (max, min, high quantiles), and is
  degenerate (zero width, said in the note) when every resample gives the same value, e.g.
  one item or all items equal: zero width then means "no information", not "no uncertainty".
- `auc_interval(members, nonmembers)`: the same bootstrap for the membership AUC, resampling
  members and non-members separately (stratified), so every resample keeps both class sizes.
  The AUC is the Mann-Whitney probability that a random member scores above a random
  non-member, ties counting 1/2 (equal to scikit-learn's roc_auc_score). Under-covers with few
  items of either class and collapses to [1, 1] (or [0, 0]) under perfect separation, where it
  says nothing about how close to 1 the true AUC is.
- `tpr_at_fpr(members, nonmembers, fpr)`: the true-positive rate at the lowest score threshold
  whose false-positive rate on the non-members is at most `fpr` (the most members flagged
  while spending at most floor(fpr * n0) false positives; the point `attacks.membership.roc`
  reports), with a Clopper-Pearson interval over the members at that threshold. The interval
  is conditional on the threshold: it ignores that the threshold itself is set by the few
  highest non-member scores, so at small FPRs it is too narrow. With fewer than
  ceil(1 / fpr) non-members not even one false positive can be spent, the threshold sits at
  FPR = 0 whatever the target, and the answer is `Unresolvable` (reported as n/a) instead of
  a number that looks like a TPR at that FPR.

Paired tests compare two runs (A, B) over the same items, item i of A and of B being the same
canary (`align` pairs them by id). Their p-values are two-sided and assume the items are
independent; they say whether the runs differ on these canaries, not on other canaries.

- `mcnemar_exact(a, b)`: for a yes/no outcome per item ("extracted exactly"). Only discordant
  items (extracted in one run only) carry information; under "no difference" each is equally
  likely to favour A or B, so the p-value is the exact two-sided binomial test of the
  discordant split against 1/2. Concordant items only show up in n. With fewer than 6
  discordant items no split can reach p < 0.05 (the smallest p with 5 is 2 / 2^5 = 0.0625).
- `paired_wilcoxon(a, b)`: Wilcoxon signed-rank test on the differences b - a of a per-item
  number (token accuracy, exposure), via scipy.stats.wilcoxon. Zero differences (an item
  equal in both runs) follow `zero_method`: 'zsplit' (default) keeps them in n with half
  their ranks on each side; 'wilcox' drops them. Keeping them can make p smaller or larger
  than dropping them. The p-value follows scipy's 'auto' rule: exact for n <= 50 without
  zeros or tied |differences|; with them, exact by enumerating all 2^n sign flips for
  n <= 13, and from the normal approximation (with tie correction) above that, as it is for
  n > 50. The test assumes the differences are symmetric about their median; with fewer
  than 6 pairs no outcome reaches p < 0.05.

Across runs:

- `aggregate_seeds(values)`: mean over seeds (one value per seed's run) with a Student t
  interval, mean +- t(1 - alpha/2, n - 1) * s / sqrt(n). It is the uncertainty over seeds
  (initialisation, data order, sampling), not over canaries; it assumes the per-seed values
  are roughly normal and is very wide for 2 or 3 seeds (t = 12.7 for 2), which is honest. It
  is not clipped: a rate's interval may leave [0, 1]. One seed gives the value and no interval
  ('one seed'); seeds that agree exactly give zero width, said in the note.
- `holm(p_values)` / `bonferroni(p_values)`: family-wise error control when one report tests
  many things (every round, every replica group): each adjusted p-value is compared with
  alpha, and the probability of any false "significant" across the family stays <= alpha.
  Holm rejects everything Bonferroni does and possibly more; neither needs independence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval at `confidence`. `low`/`high` are nan when there
    is no interval (one seed); `note` says why an interval is degenerate or absent."""

    estimate: float
    low: float
    high: float
    confidence: float
    method: str
    note: str = ""

    @property
    def resolvable(self) -> bool:
        return True

    def format(self, unit: str = "", digits: int = 1) -> str:
        """'62.5 % [24.5, 91.5]' for unit '%' (values scaled by 100), '3.2 bits [2.1, 4.0]'
        for other units, 'n/a' for a nan estimate; the note, if any, in parentheses."""
        scale = 100.0 if unit == "%" else 1.0
        suffix = f" {unit}" if unit else ""

        def number(x: float) -> str:
            return f"{x * scale:.{digits}f}"

        text = "n/a" if math.isnan(self.estimate) else number(self.estimate) + suffix
        if not (math.isnan(self.low) or math.isnan(self.high)):
            text += f" [{number(self.low)}, {number(self.high)}]"
        return f"{text} ({self.note})" if self.note else text

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict[str, float | str | None]:
        """For JSON reports: nan becomes None."""
        return {
            "estimate": _none_if_nan(self.estimate),
            "low": _none_if_nan(self.low),
            "high": _none_if_nan(self.high),
            "confidence": self.confidence,
            "method": self.method,
            "note": self.note,
        }


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")


def _no_trials(confidence: float, method: str) -> Interval:
    return Interval(math.nan, 0.0, 1.0, confidence, method, "n = 0: no trials, no rate")


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Exact (Clopper-Pearson) interval for the rate successes / n, from beta quantiles."""
    alpha = _check_confidence(confidence)
    _check_counts(successes, n)
    if n == 0:
        return _no_trials(confidence, "Clopper-Pearson")
    k = successes
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return Interval(k / n, low, high, confidence, "Clopper-Pearson")


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for the rate successes / n."""
    alpha = _check_confidence(confidence)
    _check_counts(successes, n)
    if n == 0:
        return _no_trials(confidence, "Wilson")
    p = successes / n
    z2 = float(stats.norm.ppf(1 - alpha / 2)) ** 2
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2 * p * (1 - p) / n + z2 * z2 / (4 * n * n)) / (1 + z2 / n)
    # At k = 0 and k = n the limits are exactly 0 and 1; the formula leaves rounding there.
    low = 0.0 if successes == 0 else center - half
    high = 1.0 if successes == n else center + half
    return Interval(p, low, high, confidence, "Wilson")


# Resamples are drawn in chunks of at most this many cells (resamples x items), so memory stays
# near 32 MiB per array whatever the sample size.
_CHUNK_CELLS = 1 << 22
DEGENERATE = "degenerate: every resample gave the same value"


def _finite_1d(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{what}: needs at least one value")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: values must be finite")
    return array


def _chunks(resamples: int, items: int) -> list[int]:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    size = max(1, min(resamples, _CHUNK_CELLS // max(1, items)))
    return [min(size, resamples - start) for start in range(0, resamples, size)]


def _percentile_interval(
    estimate: float, replicates: np.ndarray, confidence: float, method: str
) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    note = DEGENERATE if replicates.min() == replicates.max() else ""
    return Interval(estimate, float(low), float(high), confidence, method, note)


def bootstrap_interval(
    values: ArrayLike,
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of `statistic` over `values` (one per item).

    `statistic` is a numpy-style reduction called as statistic(array, axis=-1) on a
    [resamples, items] array (np.mean, np.median, ...). Deterministic for a given seed."""
    _check_confidence(confidence)
    data = _finite_1d(values, "bootstrap_interval")
    rng = np.random.default_rng(seed)
    replicates = np.concatenate(
        [
            np.asarray(statistic(data[rng.integers(0, data.size, (c, data.size))], axis=-1))
            for c in _chunks(resamples, data.size)
        ]
    )
    estimate = float(statistic(data, axis=-1))
    name = getattr(statistic, "__name__", "statistic")
    return _percentile_interval(estimate, replicates, confidence, f"percentile bootstrap ({name})")


def mann_whitney_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """P(member score > non-member score) + 1/2 P(equal): the ROC AUC, higher = member."""
    members = _finite_1d(member_scores, "members")
    nonmembers = _finite_1d(nonmember_scores, "non-members")
    return float(_auc_rows(members[None, :], nonmembers[None, :])[0])


def _auc_rows(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """AUC of each row pair from midranks of the pooled row (Mann-Whitney U / n1 n0)."""
    n1, n0 = members.shape[1], nonmembers.shape[1]
    ranks = stats.rankdata(np.concatenate([members, nonmembers], axis=1), axis=1)
    u = ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def auc_interval(
    member_scores: ArrayLike,
    nonmember_scores: ArrayLike,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Mann-Whitney AUC with a stratified percentile bootstrap interval: members and
    non-members are resampled separately, each with its own size."""
    _check_confidence(confidence)
    members = _finite_1d(member_scores, "members")
    nonmembers = _finite_1d(nonmember_scores, "non-members")
    n1, n0 = members.size, nonmembers.size
    # One stream per class, so the draws do not depend on how resamples are chunked.
    rng_members, rng_nonmembers = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2)
    )
    replicates = np.concatenate(
        [
            _auc_rows(
                members[rng_members.integers(0, n1, (c, n1))],
                nonmembers[rng_nonmembers.integers(0, n0, (c, n0))],
            )
            for c in _chunks(resamples, n1 + n0)
        ]
    )
    estimate = mann_whitney_auc(members, nonmembers)
    return _percentile_interval(
        estimate, replicates, confidence, "stratified percentile bootstrap (Mann-Whitney AUC)"
    )


@dataclass(frozen=True)
class Unresolvable:
    """A TPR at an FPR that the non-member count cannot resolve; formats as n/a."""

    fpr: float
    nonmembers: int
    needed: int

    @property
    def resolvable(self) -> bool:
        return False

    def format(self, unit: str = "", digits: int = 1) -> str:
        return f"n/a (needs ≥ {self.needed} non-members)"

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict[str, float | str | None]:
        return {
            "estimate": None,
            "low": None,
            "high": None,
            "fpr": self.fpr,
            "nonmembers": self.nonmembers,
            "needed": self.needed,
            "note": self.format(),
        }


# Float slack so that e.g. 0.001 * 1000 counts as one false positive and 1 / 0.001 as 1000.
_SLACK = 1e-9


def min_nonmembers_for_fpr(fpr: float) -> int:
    """ceil(1 / fpr): the fewest non-members with which one false positive fits under fpr."""
    if not 0.0 < fpr <= 1.0:
        raise ValueError(f"fpr must be in (0, 1], got {fpr}")
    return math.ceil(1.0 / fpr - _SLACK)


def tpr_at_fpr(
    member_scores: ArrayLike,
    nonmember_scores: ArrayLike,
    fpr: float,
    confidence: float = 0.95,
) -> Interval | Unresolvable:
    """TPR at the lowest threshold (score >= threshold flags a member) with FPR <= `fpr`,
    with a Clopper-Pearson interval over the members; `Unresolvable` with too few
    non-members. Higher scores mean "more likely a member"."""
    _check_confidence(confidence)
    needed = min_nonmembers_for_fpr(fpr)
    members = _finite_1d(member_scores, "members")
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if not np.isfinite(nonmembers).all():
        raise ValueError("non-members: values must be finite")
    if nonmembers.size < needed:
        return Unresolvable(fpr, int(nonmembers.size), needed)
    spend = math.floor(fpr * nonmembers.size + _SLACK)  # false positives allowed
    if spend >= nonmembers.size:
        flagged, false_positives = members.size, nonmembers.size
    else:
        # Flag scores strictly above the (spend + 1)-th highest non-member score.
        bar = np.sort(nonmembers)[::-1][spend]
        flagged, false_positives = int((members > bar).sum()), int((nonmembers > bar).sum())
    ci = clopper_pearson(flagged, members.size, confidence)
    spent = f"{false_positives} of {nonmembers.size} non-members above the threshold"
    return Interval(
        ci.estimate, ci.low, ci.high, confidence, f"{ci.method} at FPR <= {fpr:g} ({spent})"
    )


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired test of run B against run A over the same `n` items."""

    statistic: float
    p_value: float
    n: int
    method: str
    direction: int  # +1: B above A, -1: B below A, 0: neither
    detail: str  # what the p-value rests on, e.g. "12 discordant of 32"

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value <= alpha

    def describe(self, a: str = "A", b: str = "B") -> str:
        """One line, e.g. 'B < A, p = 0.004 (McNemar exact, 12 discordant of 32)'."""
        sign = {1: ">", -1: "<", 0: "="}[self.direction]
        return f"{b} {sign} {a}, {format_p(self.p_value)} ({self.method}, {self.detail})"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def align(a: Mapping[K, V], b: Mapping[K, V]) -> tuple[list[V], list[V]]:
    """The values of two runs keyed by item (canary id), paired in one order; the two runs
    must hold the same items."""
    if a.keys() != b.keys():
        missing = sorted(map(str, a.keys() ^ b.keys()))[:5]
        raise ValueError(f"align: the runs hold different items, e.g. {missing}")
    keys = list(a)
    return [a[k] for k in keys], [b[k] for k in keys]


def _paired(a: Sequence, b: Sequence, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"{what}: needs two equally long, non-empty sequences")
    return x, y


def _booleans(x: np.ndarray) -> np.ndarray:
    if x.dtype != bool and not np.isin(x, (0, 1)).all():
        raise ValueError("mcnemar_exact: outcomes must be booleans (or 0/1)")
    return x.astype(bool)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact McNemar test: two-sided binomial test of the discordant pairs against 1/2.
    The statistic is the smaller discordant count, as in statsmodels' exact McNemar."""
    x, y = _paired(a, b, "mcnemar_exact")
    x, y = _booleans(x), _booleans(y)
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_b, discordant).pvalue)
    return PairedTest(
        statistic=float(min(only_a, only_b)),
        p_value=p,
        n=int(x.size),
        method="McNemar exact",
        direction=int(np.sign(only_b - only_a)),
        detail=f"{discordant} discordant of {x.size}",
    )


def paired_wilcoxon(
    a: Sequence[float],
    b: Sequence[float],
    zero_method: Literal["zsplit", "wilcox", "pratt"] = "zsplit",
) -> PairedTest:
    """Wilcoxon signed-rank test on b - a (scipy.stats.wilcoxon, two-sided). The direction
    is the sign of the signed-rank sum W+ - W- (zeros ranked as `zero_method` ranks them)."""
    x, y = _paired(a, b, "paired_wilcoxon")
    d = _finite_1d(y, "paired_wilcoxon") - _finite_1d(x, "paired_wilcoxon")
    zeros = int((d == 0).sum())
    detail = f"{d.size} pairs, {zeros} zero differences"
    if zeros == d.size:
        return PairedTest(0.0, 1.0, int(d.size), f"Wilcoxon signed-rank ({zero_method})", 0, detail)
    result = stats.wilcoxon(d, zero_method=zero_method, alternative="two-sided")
    ranked = d[d != 0] if zero_method == "wilcox" else d
    ranks = stats.rankdata(np.abs(ranked))
    signed = float(ranks[ranked > 0].sum() - ranks[ranked < 0].sum())
    return PairedTest(
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        n=int(d.size),
        method=f"Wilcoxon signed-rank ({zero_method})",
        direction=int(np.sign(signed)),
        detail=detail,
    )


def aggregate_seeds(
    values_per_seed: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> Interval:
    """Mean over seeds with a t-interval; one seed gives the value and no interval. A metric
    with a range (`bounds`, e.g. (0, 1) for an AUC) has its interval cut to that range: the
    true value lies in it, so cutting loses no coverage (with few seeds the t-interval
    otherwise runs past it)."""
    alpha = _check_confidence(confidence)
    x = _finite_1d(values_per_seed, "aggregate_seeds")
    method = f"t-interval over {x.size} seeds"
    if x.size == 1:
        return Interval(float(x[0]), math.nan, math.nan, confidence, method, "one seed")
    mean, sem = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(x.size)
    half = float(stats.t.ppf(1 - alpha / 2, x.size - 1)) * sem
    note = "seeds agree exactly: zero width" if np.ptp(x) == 0 else ""
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, confidence, method, note)


@dataclass(frozen=True)
class Corrected:
    """Multiple-testing verdicts, in the order the p-values were given."""

    p_values: tuple[float, ...]
    adjusted: tuple[float, ...]
    reject: tuple[bool, ...]
    alpha: float
    method: str


def _check_p_values(p_values: Sequence[float], alpha: float) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p-values must lie in [0, 1]")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return p


def _corrected(p: np.ndarray, adjusted: np.ndarray, alpha: float, method: str) -> Corrected:
    return Corrected(
        p_values=tuple(p.tolist()),
        adjusted=tuple(adjusted.tolist()),
        reject=tuple(bool(r) for r in adjusted <= alpha),
        alpha=alpha,
        method=method,
    )


def bonferroni(p_values: Sequence[float], alpha: float = 0.05) -> Corrected:
    """Adjusted p = min(1, m * p); reject where adjusted <= alpha."""
    p = _check_p_values(p_values, alpha)
    return _corrected(p, np.minimum(1.0, p * p.size), alpha, "Bonferroni")


def holm(p_values: Sequence[float], alpha: float = 0.05) -> Corrected:
    """Holm's step-down: the i-th smallest p (from 0) is scaled by m - i, running maxima keep
    the adjusted values monotone; reject where adjusted <= alpha."""
    p = _check_p_values(p_values, alpha)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate(p[order] * (p.size - np.arange(p.size)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, scaled)
    return _corrected(p, adjusted, alpha, "Holm")
