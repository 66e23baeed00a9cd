"""Exposure (Secret Sharer): exact rank by batched enumeration, skew-normal estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from attacks.exposure import (
    ESTIMATORS,
    digit_candidates,
    estimated_exposure,
    exposure_from_rank,
    measure_exposure,
    rank_of,
)
from attacks.likelihood import continuation_logprobs
from tests.support.attack_models import memorize, tiny_model, tokenizer

PREFIX = "Pharmacy refill PIN for Jane Roe, MRN 4829-1734:"


def _model(tok, secret: str, steps: int):
    model = tiny_model(tok, seed=0)
    memorize(model, [tok(f"{PREFIX} {secret}")["input_ids"]], steps=steps)
    return model


def _brute_force_logprob(model, tok, candidate: str) -> float:
    """One unbatched forward over the whole text; sum log p of the tokens past the prefix."""
    enc = tok(PREFIX + " " + candidate, return_offsets_mapping=True)
    ids = enc["input_ids"]
    cut = sum(1 for _, end in enc["offset_mapping"] if end <= len(PREFIX) + 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(cut, len(ids))))


def test_exposure_is_log_space_minus_log_rank():
    assert exposure_from_rank(1, 1000) == pytest.approx(math.log2(1000))
    assert exposure_from_rank(1000, 1000) == 0.0
    assert rank_of(np.array([-1.0, -3.0, -0.5, -3.0]), 1) == 3  # ties do not push it down


def test_exact_rank_equals_brute_force_ranking():
    tok = tokenizer()
    model = _model(tok, "42", steps=15)
    brute = np.array([_brute_force_logprob(model, tok, c) for c in digit_candidates(2)])
    for secret in ("42", "07", "90"):
        r = measure_exposure(
            model, tok, "e", PREFIX + " ", secret, max_enumerate=100, sample_size=50, seed=0
        )
        expected = 1 + int(np.sum(brute > brute[int(secret)] + 1e-9))
        assert (r.method, r.space, r.rank) == ("exact", 100, expected)


def test_memorized_secret_reaches_the_maximum_exposure():
    tok = tokenizer()
    model = _model(tok, "517", steps=80)
    r = measure_exposure(
        model, tok, "e", PREFIX + " ", "517", max_enumerate=1000, sample_size=10, seed=0
    )
    assert r.rank == 1 and r.exposure == pytest.approx(math.log2(1000))


@pytest.mark.parametrize("steps", [5, 10])
def test_estimated_exposure_is_within_one_bit_of_the_exact_one(steps):
    """On the 1000 three-digit secrets, secrets at ranks 5..500 (exposure 7.6 to 1 bit),
    the kernel-density estimate from 500 sampled candidates. (Rank 1-2 is left out: 500
    samples seldom hold a candidate more likely than those, so sampling noise dominates.)"""
    tok = tokenizer()
    model = _model(tok, "517", steps=steps)
    logprobs = continuation_logprobs(model, tok, PREFIX + " ", digit_candidates(3))
    order = np.argsort(-logprobs, kind="stable")
    for rank in (5, 10, 50, 250, 500):
        secret = f"{order[rank - 1]:03d}"
        exact = measure_exposure(
            model, tok, "e", PREFIX + " ", secret, max_enumerate=1000, sample_size=10, seed=0
        )
        est = measure_exposure(
            model, tok, "e", PREFIX + " ", secret, max_enumerate=999, sample_size=500, seed=1
        )
        assert est.method == "estimated" and est.rank is None
        assert abs(est.exposure - exact.exposure) < 1.0, (rank, exact.exposure, est.exposure)


def _check_estimate(dist_cdf, sample_bits, estimator, points, tol):
    sample_logprobs = -np.asarray(sample_bits) * math.log(2)
    for x in points:
        got = estimated_exposure(-x * math.log(2), sample_logprobs, estimator)
        assert got == pytest.approx(-math.log2(dist_cdf(x)), abs=tol), x


def test_skew_normal_estimate_is_minus_log2_of_the_cdf_it_was_sampled_from():
    dist = stats.skewnorm(4.0, loc=20.0, scale=3.0)
    sample = dist.rvs(size=4000, random_state=np.random.default_rng(0))
    _check_estimate(dist.cdf, sample, "skewnorm", dist.ppf([0.01, 0.1, 0.5]), tol=0.25)


def test_kernel_density_estimate_follows_a_two_mode_distribution():
    """Candidates of two token counts give two modes of log-perplexity."""
    low, high = stats.norm(12.0, 1.0), stats.norm(20.0, 1.5)
    rng = np.random.default_rng(0)
    sample = np.concatenate([low.rvs(1000, random_state=rng), high.rvs(3000, random_state=rng)])

    def cdf(x):
        return 0.25 * low.cdf(x) + 0.75 * high.cdf(x)

    _check_estimate(cdf, sample, "kde", [11.0, 12.0, 16.0, 20.0], tol=0.5)
    assert set(ESTIMATORS) == {"kde", "skewnorm"}
