"""The federated attackers' math: the leakage matrix's counts, the participant's model
without its own share, and the difference scores."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.federated import (
    difference_scores,
    fedavg_weights,
    leakage_counts,
    others_counts,
    split_scores,
    without_own_share,
)

# a: client 0's; b: client 1's; c: held by clients 0 and 2; d: client 2's
HOLDERS = {"a": frozenset({0}), "b": frozenset({1}), "c": frozenset({0, 2}), "d": frozenset({2})}
EXTRACTED = {
    0: {"a": True, "b": False, "c": True, "d": True},
    1: {"a": True, "b": True, "c": False, "d": True},
    2: {"a": False, "b": False, "c": False, "d": False},
}


def test_the_diagonal_counts_a_participants_own_canaries():
    m = leakage_counts(EXTRACTED, HOLDERS, [0, 1, 2])
    assert m[0][0] == (2, 2)  # a and c, both extracted
    assert m[1][1] == (1, 1)  # b
    assert m[2][2] == (0, 2)  # c and d, none extracted


def test_off_the_diagonal_only_records_the_participant_does_not_hold_count():
    m = leakage_counts(EXTRACTED, HOLDERS, [0, 1, 2])
    assert m[1][0] == (1, 2)  # a (extracted) and c (not)
    assert m[1][2] == (1, 2)  # c (not) and d (extracted)
    assert m[0][2] == (1, 1)  # d only: participant 0 holds c itself
    assert m[2][0] == (0, 1)  # a only: participant 2 holds c itself
    assert m[0][1] == (0, 1)


def test_others_counts_each_canary_once_however_many_others_hold_it():
    assert others_counts(EXTRACTED[1], HOLDERS, 1) == (2, 3)  # a, c, d; c not extracted
    assert others_counts(EXTRACTED[0], HOLDERS, 0) == (1, 2)  # b, d
    assert others_counts(EXTRACTED[2], HOLDERS, 2) == (0, 2)  # a, b


def test_without_own_share_is_the_previous_model_plus_the_others_weighted_updates():
    previous = [np.array([1.0, 1.0]), np.array([[0.0]])]
    returned = {0: [np.array([3.0, 1.0]), np.array([[2.0]])],
                1: [np.array([1.0, 5.0]), np.array([[-4.0]])]}
    weights = fedavg_weights({0: 30, 1: 10})
    assert weights == {0: 0.75, 1: 0.25}
    aggregate = [sum(weights[c] * returned[c][k] for c in returned) for k in range(2)]
    got = without_own_share(aggregate, returned[0], previous, weights[0])
    others = [previous[k] + weights[1] * (returned[1][k] - previous[k]) for k in range(2)]
    for g, o in zip(got, others, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, o, rtol=1e-6)
    np.testing.assert_allclose(got[0], [1.0, 2.0])  # a wrong sign would give [0.5, 2.0]


def test_without_own_share_refuses_mismatched_states_and_weights():
    with pytest.raises(ValueError, match="do not match"):
        without_own_share([np.zeros(1)], [np.zeros(1), np.zeros(1)], [np.zeros(1)], 0.5)
    with pytest.raises(ValueError, match="outside"):
        without_own_share([np.zeros(1)], [np.zeros(1)], [np.zeros(1)], 1.5)
    with pytest.raises(ValueError, match="no examples"):
        fedavg_weights({0: 0})


def test_difference_is_how_much_the_update_lowered_each_secrets_loss():
    scores = difference_scores({"a": 3.0, "b": 2.0}, {"a": 1.0, "b": 2.5})
    assert scores == {"a": 2.0, "b": -0.5}
    assert split_scores(scores, {"a"}, {"b"}) == ([2.0], [-0.5])
    with pytest.raises(ValueError, match="different canaries"):
        difference_scores({"a": 1.0}, {"b": 1.0})
