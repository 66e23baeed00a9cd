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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
