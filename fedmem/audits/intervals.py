"""Intervals as the audits store and show them (the math is attacks/statistics.py).

A metrics row carries an interval as a two-number list beside its estimate, e.g.
`exact_rate_ci: [low, high]` beside `exact_rate`, so existing keys keep their values. The
helpers here make those lists and turn them back into text such as `62.5 % [24.5, 91.5]`.
Not an audit (no AUDIT): the registry skips it. Imports numpy/scipy only when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 1000  # bootstrap resamples per interval: cheap next to a round's audits
# What the brackets of the report's tables and error bars are.
INTERVAL_NOTE = ("95 % t-interval over seeds; one seed: the run's own 95 % interval where its "
                 "audit records one (Clopper-Pearson or bootstrap over canaries and samples)")


def rate_ci(successes: int, n: int) -> list[float]:
    """95 % Clopper-Pearson interval of successes / n as [low, high] (n = 0: [0, 1])."""
    from attacks.statistics import clopper_pearson

    ci = clopper_pearson(successes, n, CONFIDENCE)
    return [ci.low, ci.high]


def mean_ci(values: Sequence[float], seed: int) -> list[float] | None:
    """Percentile bootstrap interval of the mean of `values` as [low, high]; None with fewer
    than two values (one value resamples to itself: a zero width that means no information,
    not certainty). Seeded, so a rerun gives the same interval."""
    from attacks.statistics import bootstrap_interval

    if len(values) < 2:
        return None
    ci = bootstrap_interval(values, confidence=CONFIDENCE, resamples=RESAMPLES, seed=seed)
    return [ci.low, ci.high]


def auc_ci(members: Sequence[float], nonmembers: Sequence[float], seed: int) -> list[float]:
    """Stratified bootstrap interval of the Mann-Whitney AUC as [low, high]. Seeded."""
    from attacks.statistics import auc_interval

    ci = auc_interval(members, nonmembers, CONFIDENCE, RESAMPLES, seed)
    return [ci.low, ci.high]


def formatted(entry: Mapping | None, key: str, unit: str = "", digits: int = 1) -> str | None:
    """entry[key] with entry[key + '_ci'], e.g. '62.5 % [24.5, 91.5]' for unit '%'; the
    estimate alone when the row predates intervals; None when entry lacks the key."""
    from attacks.statistics import Interval

    if not isinstance(entry, Mapping) or entry.get(key) is None:
        return None
    low, high = entry.get(f"{key}_ci") or (float("nan"), float("nan"))
    return Interval(entry[key], low, high, CONFIDENCE, "").format(unit, digits)


def ci_bound(entry: Any, key: str, side: int) -> float | None:
    """entry[key + '_ci'][side] (0: low, 1: high); None where absent."""
    ci = entry.get(f"{key}_ci") if isinstance(entry, Mapping) else None
    return ci[side] if ci else None
