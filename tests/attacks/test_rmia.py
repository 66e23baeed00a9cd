"""RMIA (Zarifzadeh et al. 2024, offline, one reference model) over hand-made per-text mean
log-likelihoods: the literal computation, separability, leave-one-out, groups, invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attacks.membership import rmia_log_ratios, rmia_scores, roc

TARGET = [-1.0, -2.0, -1.5, -3.0, -2.5]
REFERENCE = [-2.0, -2.1, -1.4, -2.9, -2.0]
POPULATION = [False, False, True, True, True]


def _literal(target, reference, population, a=0.3, gamma=1.0):
    """Straight from the paper, in probabilities, one loop per pair."""
    def lr(i):
        p_ref = math.exp(reference[i])
        return math.exp(target[i]) / ((1 + a) / 2 * p_ref + (1 - a) / 2)

    out = []
    for x in range(len(target)):
        zs = [z for z in range(len(target)) if population[z] and z != x]
        out.append(sum(lr(x) / lr(z) > gamma for z in zs) / len(zs))
    return out


@pytest.mark.parametrize(("a", "gamma"), [(0.3, 1.0), (1.0, 1.0), (0.0, 1.0), (0.6, 1.05)])
def test_rmia_equals_the_literal_computation(a, gamma):
    got = rmia_scores(TARGET, REFERENCE, POPULATION, offline_a=a, gamma=gamma)
    assert got.tolist() == pytest.approx(_literal(TARGET, REFERENCE, POPULATION, a, gamma))


def test_rmia_by_hand():
    # a = 1: log LR = target - reference = [1, 0.1, -0.1, -0.1, -0.5]; population z = 2, 3, 4
    got = rmia_scores(TARGET, REFERENCE, POPULATION, offline_a=1.0)
    # x=0 beats all 3; x=1 beats all 3; x=2 (-0.1) beats 4 only of {3, 4} (ties with 3 lose);
    # x=3 beats 4 of {2, 4}; x=4 beats none of {2, 3}
    assert got.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.0])


def test_offline_approximation_of_pr_x():
    a = 0.3
    expected = [t - math.log((1 + a) / 2 * math.exp(r) + (1 - a) / 2)
                for t, r in zip(TARGET, REFERENCE, strict=True)]
    assert rmia_log_ratios(TARGET, REFERENCE, a).tolist() == pytest.approx(expected)
    # a = 1 is Pr(x) = Pr(x|ref), finite even where exp underflows
    assert rmia_log_ratios([-900.0], [-1000.0], 1.0).tolist() == pytest.approx([100.0])


def test_leave_one_out_a_nonmember_is_not_its_own_population():
    # two population texts: each is scored against the other alone
    got = rmia_scores([-1.0, -2.0, 0.0], [-1.0] * 3, [True, True, False], offline_a=1.0)
    assert got.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="no population text"):
        rmia_scores([-1.0, -2.0], [-1.0] * 2, [True, False])


def test_groups_compare_only_within_their_kind():
    # canaries sit far below QA in likelihood; each is ranked against its own kind's pool
    target = [-5.0, -6.0, -6.5, -1.0, -2.0, -2.5]
    groups = ["canary"] * 3 + ["qa"] * 3
    pop = [False, True, True, False, True, True]
    got = rmia_scores(target, [-3.0] * 6, pop, groups, offline_a=1.0)
    assert got.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    pooled = rmia_scores(target, [-3.0] * 6, pop, offline_a=1.0)
    assert pooled[0] == 0.5  # against all non-members the canary member loses to QA ones


def test_members_with_higher_target_vs_reference_likelihood_rank_above_nonmembers():
    rng = np.random.default_rng(0)
    reference = rng.normal(-3.0, 0.5, 200)
    member = np.arange(200) < 100
    gain = np.where(member, 2.0, rng.uniform(-0.5, 0.5, 200))  # log Pr(x|θ) - log Pr(x|ref)
    # a = 1: log LR = gain. Members beat every non-member by > 1.5, non-members beat each
    # other by < 1.2: with gamma = e^1.2 members score 1, non-members 0
    scores = rmia_scores(reference + gain, reference, ~member, offline_a=1.0, gamma=math.e**1.2)
    assert roc(scores, member).auc == 1.0
    assert set(scores[member]) == {1.0} and set(scores[~member]) == {0.0}
    # gamma = 1: the top non-member beats all the other n - 1 (leave-one-out) and ties the
    # members at 1, so the AUC falls short of 1 by half a non-member
    scores = rmia_scores(reference + gain, reference, ~member, offline_a=1.0)
    assert roc(scores, member).auc == pytest.approx(1 - 0.5 / 100)
    # a = 0.3 on a flat reference: Pr(x) is one constant, so LR orders as the target does
    flat = np.full(200, -3.0)
    scores = rmia_scores(flat + gain, flat, ~member, gamma=math.e**1.2)
    assert roc(scores, member).auc == 1.0
    # identical target and reference models: at a = 1 every LR is 1, every score 0, AUC 0.5;
    # at a = 0.3 LR = p / (0.65 p + 0.35) still grows with p, but p says nothing of membership
    same = rmia_scores(reference, reference, ~member, offline_a=1.0)
    assert set(same) == {0.0} and roc(same, member).auc == 0.5
    same = rmia_scores(reference, reference, ~member)
    assert abs(roc(same, member).auc - 0.5) < 0.12
    # target = reference plus noise unrelated to membership: chance
    noisy = rmia_scores(reference + rng.normal(0, 0.3, 200), reference, ~member)
    assert abs(roc(noisy, member).auc - 0.5) < 0.12


@pytest.mark.parametrize("shift", [-7.0, 0.25, 3.0])
def test_ranking_is_invariant_to_a_constant_shift_of_the_log_likelihoods(shift):
    rng = np.random.default_rng(1)
    target, reference = rng.normal(-2, 1, 40), rng.normal(-2, 1, 40)
    pop = np.arange(40) % 2 == 0
    base = rmia_scores(target, reference, pop)
    # shifting every target log-likelihood scales all LRs alike: scores unchanged, any a
    np.testing.assert_array_equal(rmia_scores(target + shift, reference, pop), base)
    # shifting both models' log-likelihoods cancels in the ratio when a = 1; with a < 1 the
    # (1 - a) floor of Pr(x) is an absolute probability and does not shift
    one = rmia_scores(target, reference, pop, offline_a=1.0)
    np.testing.assert_array_equal(
        rmia_scores(target + shift, reference + shift, pop, offline_a=1.0), one
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offline_a": -0.1}, r"offline_a = -0\.1: must be in \[0, 1\]"),
        ({"offline_a": 1.5}, r"offline_a = 1\.5"),
        ({"gamma": 0.0}, r"gamma = 0\.0: must be > 0"),
        ({"gamma": -1.0}, r"gamma = -1\.0"),
    ],
)
def test_bad_a_and_gamma_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rmia_scores(TARGET, REFERENCE, POPULATION, **kwargs)
