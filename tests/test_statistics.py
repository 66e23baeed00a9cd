"""attacks.statistics, as a specification: known values from textbooks (Newcombe 1998) and
closed forms written out here, scipy as an independent second implementation, and
properties every interval and test must have whatever the data (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from attacks.statistics import Interval, clopper_pearson, wilson

PROPERTIES = settings(max_examples=60, deadline=None)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Statistics in Medicine 17:857-872, Table II: exact (Clopper-Pearson) and
# Wilson score limits, to the 4 decimals printed there.
NEWCOMBE = [
    # k, n, exact low, exact high, Wilson low, Wilson high
    (81, 263, 0.2527, 0.3676, 0.2553, 0.3662),
    (15, 148, 0.0578, 0.1617, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1684, 0.0, 0.1611),
    (1, 29, 0.0009, 0.1776, 0.0061, 0.1718),
]


# --- Interval -------------------------------------------------------------------------------


def test_a_rate_formats_as_percent_with_its_interval():
    assert clopper_pearson(5, 8).format("%") == "62.5 % [24.5, 91.5]"


def test_other_units_are_not_scaled_and_a_note_is_shown():
    assert Interval(3.21, 2.1, 4.0, 0.95, "bootstrap").format("bits") == "3.2 bits [2.1, 4.0]"
    assert Interval(0.874, 0.8, 0.93, 0.95, "b").format(digits=2) == "0.87 [0.80, 0.93]"
    one = Interval(3.2, math.nan, math.nan, 0.95, "t", "one seed")
    assert one.format("bits") == "3.2 bits (one seed)"


def test_as_dict_is_json_safe():
    d = clopper_pearson(0, 0).as_dict()
    assert d["estimate"] is None and d["low"] == 0.0 and d["high"] == 1.0
    assert d["method"] == "Clopper-Pearson" and "n = 0" in d["note"]


# --- Clopper-Pearson and Wilson ---------------------------------------------------------------


@pytest.mark.parametrize("k, n, cp_low, cp_high, w_low, w_high", NEWCOMBE)
def test_textbook_values(k, n, cp_low, cp_high, w_low, w_high):
    cp, w = clopper_pearson(k, n), wilson(k, n)
    assert (round(cp.low, 4), round(cp.high, 4)) == (cp_low, cp_high)
    assert (round(w.low, 4), round(w.high, 4)) == (w_low, w_high)
    assert cp.estimate == w.estimate == k / n


def test_clopper_pearson_closed_forms_at_the_edges():
    # k = 0: the upper limit solves (1 - p)^n = alpha / 2; k = n: the lower solves p^n = alpha/2.
    n, alpha = 10, 0.05
    assert clopper_pearson(0, n).high == pytest.approx(1 - (alpha / 2) ** (1 / n), rel=1e-12)
    assert clopper_pearson(n, n).low == pytest.approx((alpha / 2) ** (1 / n), rel=1e-12)
    assert clopper_pearson(0, n).low == 0.0 and clopper_pearson(n, n).high == 1.0


def test_clopper_pearson_limits_are_where_the_binomial_tails_equal_alpha_over_2():
    k, n, alpha = 5, 8, 0.05
    ci = clopper_pearson(k, n)
    assert stats.binom.sf(k - 1, n, ci.low) == pytest.approx(alpha / 2, rel=1e-9)  # P(X >= k)
    assert stats.binom.cdf(k, n, ci.high) == pytest.approx(alpha / 2, rel=1e-9)  # P(X <= k)


def test_wilson_is_the_score_formula():
    k, n, z = 5, 8, stats.norm.ppf(0.975)
    p = k / n
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    w = wilson(k, n)
    assert (w.low, w.high) == pytest.approx((center - half, center + half), rel=1e-12)


def test_no_trials_means_no_rate_and_the_whole_unit_interval():
    for f in (clopper_pearson, wilson):
        ci = f(0, 0)
        assert math.isnan(ci.estimate) and (ci.low, ci.high) == (0.0, 1.0)
        assert ci.format("%") == "n/a [0.0, 100.0] (n = 0: no trials, no rate)"


@pytest.mark.parametrize("k, n, confidence", [(-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0)])
def test_impossible_counts_or_confidence_are_refused(k, n, confidence):
    with pytest.raises(ValueError):
        clopper_pearson(k, n, confidence)
    with pytest.raises(ValueError):
        wilson(k, n, confidence)


@st.composite
def counts(draw):
    n = draw(st.integers(1, 2000))
    return draw(st.integers(0, n)), n


@PROPERTIES
@given(counts(), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_rate_intervals_agree_with_scipy_and_contain_the_rate(kn, confidence):
    k, n = kn
    scipy_ci = stats.binomtest(k, n)
    for ours, method in ((clopper_pearson, "exact"), (wilson, "wilson")):
        ci = ours(k, n, confidence)
        ref = scipy_ci.proportion_ci(confidence_level=confidence, method=method)
        assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), abs=1e-9)
        assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0


@PROPERTIES
@given(counts())
def test_clopper_pearson_is_symmetric_and_nested_in_confidence(kn):
    k, n = kn
    ci, mirror = clopper_pearson(k, n), clopper_pearson(n - k, n)
    assert (ci.low, ci.high) == pytest.approx((1 - mirror.high, 1 - mirror.low), abs=1e-9)
    wider = clopper_pearson(k, n, 0.99)
    assert wider.low <= ci.low and ci.high <= wider.high
