"""attacks.statistics, as a specification: known values from textbooks (Newcombe 1998) and
closed forms written out here, scipy as an independent second implementation, and
properties every interval and test must have whatever the data (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from attacks import statistics
from attacks.membership import roc
from attacks.statistics import (
    Interval,
    Unresolvable,
    aggregate_seeds,
    align,
    auc_interval,
    bonferroni,
    bootstrap_interval,
    clopper_pearson,
    holm,
    mann_whitney_auc,
    mcnemar_exact,
    min_nonmembers_for_fpr,
    paired_wilcoxon,
    tpr_at_fpr,
    wilson,
)

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


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_of_two_values_by_hand():
    # Means of resamples of {0, 1} are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 2.5 %
    # and 97.5 % quantiles are 0 and 1.
    ci = bootstrap_interval([0.0, 1.0], resamples=4000)
    assert (ci.estimate, ci.low, ci.high) == (0.5, 0.0, 1.0)
    assert ci.method == "percentile bootstrap (mean)" and ci.note == ""


def test_bootstrap_of_the_mean_matches_normal_theory_on_a_large_sample():
    # For n = 400 the percentile interval of the mean is close to mean +- z * sd / sqrt(n),
    # sd the plug-in (ddof = 0) standard deviation.
    x = np.random.default_rng(1).normal(3.0, 2.0, 400)
    ci = bootstrap_interval(x, resamples=4000, seed=2)
    half = stats.norm.ppf(0.975) * x.std() / math.sqrt(x.size)
    assert ci.estimate == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(3).exponential(1.0, 60)
    ours = bootstrap_interval(x, np.median, resamples=5000, seed=4)
    ref = stats.bootstrap((x,), np.median, method="percentile", n_resamples=5000, rng=5)
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.15 * width)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.15 * width)
    assert ours.method == "percentile bootstrap (median)"


def test_bootstrap_is_seeded_and_chunking_does_not_change_it(monkeypatch):
    x = np.random.default_rng(6).normal(size=300)
    first = bootstrap_interval(x, seed=7)
    assert bootstrap_interval(x, seed=7) == first
    assert bootstrap_interval(x, seed=8) != first
    monkeypatch.setattr(statistics, "_CHUNK_CELLS", 1000)  # many small chunks
    assert bootstrap_interval(x, seed=7) == first


def test_a_single_item_or_equal_items_give_a_degenerate_interval_that_says_so():
    for x in ([3.0], [2.0, 2.0, 2.0]):
        ci = bootstrap_interval(x)
        assert ci.low == ci.high == ci.estimate and ci.note == statistics.DEGENERATE


@pytest.mark.parametrize("x", [[], [1.0, math.nan], [math.inf]])
def test_bootstrap_refuses_empty_or_non_finite_values(x):
    with pytest.raises(ValueError):
        bootstrap_interval(x)


# --- AUC -------------------------------------------------------------------------------------


def test_auc_by_hand_with_a_tie():
    # Pairs (member, non-member): 0.9 and 0.8 beat both (4), 0.5 ties 0.5 (1/2) and beats 0.3.
    assert mann_whitney_auc([0.9, 0.8, 0.5], [0.5, 0.3]) == 5.5 / 6


scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=40)


@PROPERTIES
@given(scores, scores)
def test_auc_is_scikit_learns_and_the_mann_whitney_u(members, nonmembers):
    labels = [1] * len(members) + [0] * len(nonmembers)
    auc = mann_whitney_auc(members, nonmembers)
    assert auc == pytest.approx(roc_auc_score(labels, members + nonmembers), abs=1e-12)
    u = stats.mannwhitneyu(members, nonmembers).statistic
    assert auc == pytest.approx(u / (len(members) * len(nonmembers)), abs=1e-12)


def test_auc_interval_is_stratified_and_covers_the_true_auc():
    # Members ~ N(1, 1), non-members ~ N(0, 1): true AUC = Phi(1 / sqrt(2)).
    rng = np.random.default_rng(9)
    members, nonmembers = rng.normal(1, 1, 150), rng.normal(0, 1, 300)
    ci = auc_interval(members, nonmembers, resamples=2000, seed=10)
    assert ci.low < stats.norm.cdf(1 / math.sqrt(2)) < ci.high
    assert ci.estimate == mann_whitney_auc(members, nonmembers)
    assert 0.05 < ci.high - ci.low < 0.15
    assert ci.method == "stratified percentile bootstrap (Mann-Whitney AUC)"


def test_auc_interval_under_perfect_separation_is_degenerate_and_says_so():
    # Stratified resampling keeps both classes in every resample, so every AUC is 1.
    ci = auc_interval([5.0, 6.0, 7.0], [1.0, 2.0])
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)
    assert ci.note == statistics.DEGENERATE
    assert ci.format(digits=2) == "1.00 [1.00, 1.00] (" + statistics.DEGENERATE + ")"


def test_auc_interval_is_seeded_and_chunking_does_not_change_it(monkeypatch):
    rng = np.random.default_rng(11)
    members, nonmembers = rng.normal(0.5, 1, 40), rng.normal(0, 1, 70)
    first = auc_interval(members, nonmembers, seed=3)
    monkeypatch.setattr(statistics, "_CHUNK_CELLS", 500)
    assert auc_interval(members, nonmembers, seed=3) == first


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        auc_interval([], [1.0])
    with pytest.raises(ValueError):
        mann_whitney_auc([1.0], [])


# --- TPR at a fixed FPR -----------------------------------------------------------------------


@pytest.mark.parametrize("fpr, needed", [(0.01, 100), (0.001, 1000), (0.3, 4), (1.0, 1)])
def test_an_fpr_needs_ceil_one_over_fpr_non_members(fpr, needed):
    assert min_nonmembers_for_fpr(fpr) == needed


def test_too_few_non_members_is_unresolvable_not_a_number():
    result = tpr_at_fpr([1.0, 2.0], np.arange(999.0), 0.001)
    assert isinstance(result, Unresolvable) and not result.resolvable
    assert result.format("%") == str(result) == "n/a (needs ≥ 1000 non-members)"
    assert result.as_dict()["estimate"] is None
    assert tpr_at_fpr([1.0, 2.0], np.arange(1000.0), 0.001).resolvable
    assert isinstance(tpr_at_fpr([1.0], [], 0.01), Unresolvable)
    with pytest.raises(ValueError):
        tpr_at_fpr([1.0], [math.nan], 0.01)


def test_tpr_at_one_percent_by_hand():
    # 100 non-members scoring 0..99: one false positive may be spent, so the threshold sits
    # just above the second-highest non-member (98); members above 98 are flagged, a member
    # tied with it is not. 2 of 4 members: TPR 50 % with its Clopper-Pearson interval.
    result = tpr_at_fpr([99.5, 98.5, 98.0, 50.0], np.arange(100.0), 0.01)
    cp = clopper_pearson(2, 4)
    assert (result.estimate, result.low, result.high) == (0.5, cp.low, cp.high)
    assert (
        result.method == "Clopper-Pearson at FPR <= 0.01 (1 of 100 non-members above the threshold)"
    )
    assert result.format("%") == "50.0 % [6.8, 93.2]"


@PROPERTIES
@given(
    st.lists(st.integers(0, 30).map(float), min_size=1, max_size=60),
    st.lists(st.integers(0, 30).map(float), min_size=100, max_size=400),
    st.sampled_from([0.01, 0.02, 0.05, 0.001]),
)
def test_tpr_at_fpr_is_the_point_membership_roc_reports(members, nonmembers, fpr):
    result = tpr_at_fpr(members, nonmembers, fpr)
    assert result.resolvable == (len(nonmembers) >= min_nonmembers_for_fpr(fpr))
    if result.resolvable:
        labels = [True] * len(members) + [False] * len(nonmembers)
        reported = roc(members + nonmembers, labels)
        assert result.estimate == pytest.approx(_roc_tpr_at(members, nonmembers, fpr), abs=1e-12)
        assert result.estimate == pytest.approx(reported.tpr_at.get(fpr, result.estimate))
        assert reported.auc == pytest.approx(mann_whitney_auc(members, nonmembers), abs=1e-12)


def test_where_the_non_members_cannot_resolve_the_fpr_roc_and_the_interval_say_n_a():
    members, nonmembers = [5.0, 6.0], list(np.arange(200.0) / 100)
    assert roc(members + nonmembers, [True] * 2 + [False] * 200).tpr_at[0.001] is None
    assert str(tpr_at_fpr(members, nonmembers, 0.001)) == "n/a (needs ≥ 1000 non-members)"


def _roc_tpr_at(members: list[float], nonmembers: list[float], fpr: float) -> float:
    """From every ROC point: the curve `roc` stores for plotting drops collinear points
    (scikit-learn's drop_intermediate), which can be the one at the target."""
    labels = [True] * len(members) + [False] * len(nonmembers)
    f, t, _ = roc_curve(labels, members + nonmembers, drop_intermediate=False)
    return float(t[f <= fpr + 1e-12].max())


def test_tpr_at_fpr_reads_a_roc_point_the_plotted_curve_drops():
    # (0.02, 0), (0.04, 0.5), (0.06, 1) are collinear: the plotted curve keeps only the ends.
    members, nonmembers = [1.0, 2.0], [0.0] * 94 + [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert tpr_at_fpr(members, nonmembers, 0.05).estimate == 0.5
    assert _roc_tpr_at(members, nonmembers, 0.05) == 0.5


# --- paired tests ----------------------------------------------------------------------------


def _runs(only_a: int, only_b: int, both: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_mcnemar_exact_by_hand():
    # 10 canaries extracted only in A, 2 only in B: under "no difference" the 12 discordant
    # split like a fair coin, so p = 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * 79 / 4096.
    a, b = _runs(only_a=10, only_b=2, both=5, neither=15)
    t = mcnemar_exact(a, b)
    assert t.p_value == pytest.approx(2 * (1 + 12 + 66) / 2**12, rel=1e-12)
    assert (t.statistic, t.n, t.direction) == (2.0, 32, -1)
    assert t.describe() == "B < A, p = 0.039 (McNemar exact, 12 discordant of 32)"
    assert t.describe("full", "LoRA").startswith("LoRA < full, p = 0.039")
    assert t.significant() and not t.significant(alpha=0.01)


def test_mcnemar_without_discordant_pairs_is_p_one():
    t = mcnemar_exact(*_runs(0, 0, 4, 4))
    assert (t.p_value, t.direction) == (1.0, 0)
    assert t.describe() == "B = A, p = 1.000 (McNemar exact, 0 discordant of 8)"


def test_mcnemar_needs_six_discordant_pairs_to_reach_five_percent():
    assert mcnemar_exact(*_runs(5, 0, 0, 0)).p_value == 2 / 2**5
    assert mcnemar_exact(*_runs(6, 0, 0, 0)).p_value == 2 / 2**6


@PROPERTIES
@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30), st.integers(0, 30))
def test_mcnemar_properties(only_a, only_b, both, neither):
    if only_a + only_b + both + neither == 0:
        return
    a, b = _runs(only_a, only_b, both, neither)
    t, swapped = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert swapped.p_value == t.p_value and swapped.direction == -t.direction
    # Concordant items change n, never the p-value.
    assert mcnemar_exact(*_runs(only_a, only_b, 1, 0)).p_value == t.p_value
    assert 0.0 < t.p_value <= 1.0


def test_mcnemar_refuses_unpaired_or_non_boolean_outcomes():
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])
    with pytest.raises(ValueError):
        mcnemar_exact([0.3, 1.0], [1.0, 0.0])
    assert mcnemar_exact([1, 0], [0, 0]).direction == -1  # 0/1 is fine


# Darwin's Zea mays data as in scipy.stats.wilcoxon's documentation: height differences
# (cross- minus self-fertilized, eighths of an inch) of 15 pairs.
DARWIN = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def _exact_signed_rank_p(w: int, n: int) -> float:
    """Two-sided exact p: 2 P(W <= w), W the sum of a random subset of the ranks 1..n."""
    ways = [1] + [0] * (n * (n + 1) // 2)  # ways[s]: subsets of the ranks summing to s
    for r in range(1, n + 1):
        for s in range(len(ways) - 1, r - 1, -1):
            ways[s] += ways[s - r]
    return min(1.0, 2 * sum(ways[: w + 1]) / 2**n)


def test_wilcoxon_on_darwins_data_is_the_exact_null_distribution():
    t = paired_wilcoxon([0.0] * 15, DARWIN)
    # The negative differences (-48, -67) have ranks 10 and 14: W- = 24 = min(W+, W-).
    assert t.statistic == 24.0
    assert t.p_value == pytest.approx(_exact_signed_rank_p(24, 15), rel=1e-12)
    assert t.p_value == pytest.approx(0.041259765625, rel=1e-12)
    assert t.direction == 1 and t.n == 15
    assert t.describe() == (
        "B > A, p = 0.041 (Wilcoxon signed-rank (zsplit), 15 pairs, 0 zero differences)"
    )


def test_zero_differences_follow_the_zero_method():
    a, b = [0.0] * 17, DARWIN + [0, 0]
    for method in ("zsplit", "wilcox", "pratt"):
        ours = paired_wilcoxon(a, b, zero_method=method)
        ref = stats.wilcoxon(b, zero_method=method)
        assert (ours.statistic, ours.p_value) == (ref.statistic, ref.pvalue)
        assert ours.n == 17 and ours.detail == "17 pairs, 2 zero differences"
    # Keeping the two zeros (zsplit) moves p below the drop-them value here.
    assert paired_wilcoxon(a, b).p_value < paired_wilcoxon(a, b, zero_method="wilcox").p_value


def test_no_difference_at_all_is_p_one():
    t = paired_wilcoxon([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
    assert (t.p_value, t.direction) == (1.0, 0) and not t.significant()


@PROPERTIES
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=5))
def test_five_pairs_can_never_be_significant(differences):
    t = paired_wilcoxon([0.0] * len(differences), differences)
    assert t.p_value >= 0.0625 and not t.significant()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=40))
def test_wilcoxon_direction_and_symmetry(differences):
    t = paired_wilcoxon([0.0] * len(differences), differences)
    flipped = paired_wilcoxon(differences, [0.0] * len(differences))
    assert flipped.p_value == pytest.approx(t.p_value) and flipped.direction == -t.direction
    if all(d > 0 for d in differences):
        assert t.direction == 1


def test_align_pairs_runs_by_canary_id():
    a, b = align({"c1": True, "c2": False}, {"c2": True, "c1": True})
    assert (a, b) == ([True, False], [True, True])
    with pytest.raises(ValueError, match="different items"):
        align({"c1": 1.0}, {"c2": 1.0})


# --- seeds and multiple testing ---------------------------------------------------------------


def test_mean_over_three_seeds_with_its_t_interval():
    # mean 0.625, s = 0.125, t(0.975, df = 2) = 4.3027 (the textbook table value).
    ci = aggregate_seeds([0.5, 0.75, 0.625])
    half = 4.302652729749464 * 0.125 / math.sqrt(3)
    assert ci.estimate == 0.625
    assert (ci.low, ci.high) == pytest.approx((0.625 - half, 0.625 + half), rel=1e-12)
    ref = stats.t.interval(0.95, 2, loc=0.625, scale=stats.sem([0.5, 0.75, 0.625]))
    assert (ci.low, ci.high) == pytest.approx(ref, rel=1e-12)
    assert ci.method == "t-interval over 3 seeds" and ci.note == ""


def test_a_bounded_metric_keeps_its_interval_inside_its_range():
    # Two seeds of an AUC: the t-interval (t(0.975, 1) = 12.7) runs far past [0, 1].
    wide = aggregate_seeds([0.55, 0.95])
    assert wide.low < 0 and wide.high > 1
    ci = aggregate_seeds([0.55, 0.95], bounds=(0.0, 1.0))
    assert (ci.estimate, ci.low, ci.high) == (0.75, 0.0, 1.0)
    inside = aggregate_seeds([0.5, 0.75, 0.625], bounds=(0.0, 1.0))
    assert (inside.low, inside.high) == (aggregate_seeds([0.5, 0.75, 0.625]).low,
                                         aggregate_seeds([0.5, 0.75, 0.625]).high)


def test_one_seed_is_the_value_with_no_interval():
    ci = aggregate_seeds([3.2])
    assert ci.estimate == 3.2 and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.format("bits") == "3.2 bits (one seed)"
    assert ci.as_dict()["low"] is None


def test_seeds_that_agree_exactly_say_so():
    ci = aggregate_seeds([1.0, 1.0, 1.0])
    assert (ci.low, ci.high) == (1.0, 1.0) and ci.note == "seeds agree exactly: zero width"
    assert aggregate_seeds([0.1] * 7).note == "seeds agree exactly: zero width"


def test_two_seeds_give_a_wide_interval_and_it_is_not_clipped():
    ci = aggregate_seeds([0.0, 1.0])  # t(0.975, 1) = 12.706
    assert ci.low < -5 and ci.high > 5


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06
    # (running maximum), back in the given order:
    h = holm(p)
    assert h.adjusted == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert h.reject == (True, False, False, True) and h.method == "Holm"
    b = bonferroni(p)
    assert b.adjusted == pytest.approx((0.04, 0.16, 0.12, 0.02))
    assert b.reject == (True, False, False, True)
    assert holm([0.5, 0.9]).adjusted == (1.0, 1.0)  # capped at 1


def test_holm_rejects_what_bonferroni_misses():
    # 0.02 * 2 = 0.04 under Bonferroni but Holm's second step scales 0.03 only by 1.
    assert bonferroni([0.02, 0.03]).reject == (True, False)
    assert holm([0.02, 0.03]).reject == (True, True)


@PROPERTIES
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_is_between_raw_and_bonferroni(p, alpha):
    h, b = holm(p, alpha), bonferroni(p, alpha)
    for raw, hp, bp in zip(p, h.adjusted, b.adjusted, strict=True):
        assert raw <= hp <= bp + 1e-15
    assert all(hr or not br for hr, br in zip(h.reject, b.reject, strict=True))
    ranked = sorted(zip(p, h.adjusted, strict=True))
    assert all(x[1] <= y[1] for x, y in zip(ranked, ranked[1:], strict=False))


def test_corrections_refuse_impossible_p_values():
    with pytest.raises(ValueError):
        holm([1.2])
    with pytest.raises(ValueError):
        bonferroni([0.1], alpha=0)
