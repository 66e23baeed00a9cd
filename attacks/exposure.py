"""Exposure (Carlini et al. 2019, "The Secret Sharer") of canaries with a secret from a known
space, here the d-digit strings.

The attacker knows the canary's prefix and the space R of possible secrets and ranks every
candidate by the model's likelihood of it after the prefix (teacher-forced, see
`attacks.likelihood`). With rank 1 for the most likely candidate,

    exposure = log2 |R| - log2 rank(true secret)

so a secret the model prefers over every other candidate has the maximum exposure log2 |R|,
and one ranked in the middle about 1 bit. When R is too large to enumerate, exposure is
estimated from the log-perplexities (-log2 p) of a uniform sample of candidates: a
distribution is fitted to them and exposure = -log2 F(log-perplexity of the secret), F the
fitted CDF (the fraction of R expected to be at least as likely). `ESTIMATORS` holds the
paper's skew-normal fit and a Gaussian kernel density (scipy). With a BPE tokenizer that
merges digit runs, candidates differ in token count and their log-perplexities are
multi-modal, which a skew-normal fits poorly (README, the audit, gives measured errors).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from transformers import PreTrainedTokenizerBase

from attacks.likelihood import continuation_logprobs


def digit_space(digits: int) -> int:
    return 10**digits


def digit_candidates(digits: int) -> list[str]:
    """Every d-digit string, zero-padded: the whole space R in order."""
    return [f"{i:0{digits}d}" for i in range(digit_space(digits))]


def sample_candidates(digits: int, n: int, seed: int) -> list[str]:
    """`n` distinct d-digit strings drawn uniformly (all of them when n >= |R|)."""
    space = digit_space(digits)
    picks = random.Random(seed).sample(range(space), min(n, space))
    return [f"{i:0{digits}d}" for i in picks]


def rank_of(logprobs: np.ndarray, true_index: int) -> int:
    """1 + the number of candidates strictly more likely than the true one."""
    return 1 + int(np.sum(logprobs > logprobs[true_index]))


def exposure_from_rank(rank: int, space: int) -> float:
    return math.log2(space) - math.log2(rank)


def _skewnorm_log_cdf(sample: np.ndarray, x: float) -> float:
    shape, loc, scale = stats.skewnorm.fit(sample)
    return float(stats.skewnorm.logcdf(x, shape, loc, scale))


def _kde_log_cdf(sample: np.ndarray, x: float) -> float:
    kde = stats.gaussian_kde(sample)
    # The mixture's CDF, in logs so a far tail does not underflow to log(0).
    log_cdfs = stats.norm.logcdf(x, loc=kde.dataset[0], scale=math.sqrt(kde.covariance[0, 0]))
    return float(np.logaddexp.reduce(log_cdfs) - math.log(len(sample)))


# name -> (sample of log-perplexities in bits, x) -> log F(x) of the fitted distribution
ESTIMATORS = {"skewnorm": _skewnorm_log_cdf, "kde": _kde_log_cdf}


def estimated_exposure(
    true_logprob: float, sample_logprobs: Sequence[float], estimator: str = "kde"
) -> float:
    """-log2 of the fitted CDF of the sample's log-perplexities at the secret's. Unbounded
    above: an outlier secret can exceed log2 |R|."""
    perplexities = -np.asarray(sample_logprobs, dtype=np.float64) / math.log(2)
    log_cdf = ESTIMATORS[estimator](perplexities, -true_logprob / math.log(2))
    return float(-log_cdf / math.log(2))


@dataclass(frozen=True)
class ExposureResult:
    canary_id: str
    exposure: float  # bits
    method: str  # "exact" (enumerated) or "estimated" (a distribution fitted to a sample)
    space: int  # |R|
    rank: int | None  # exact rank among all of R (None when estimated)
    candidates: int  # candidates scored


def measure_exposure(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    canary_id: str,
    prefix: str,
    secret: str,
    *,
    max_enumerate: int,
    sample_size: int,
    seed: int,
    estimator: str = "kde",
    batch_size: int = 256,
) -> ExposureResult:
    """Exposure of a digit-string `secret` after `prefix`: exact by enumerating R when
    |R| <= max_enumerate, otherwise estimated from `sample_size` sampled candidates."""
    digits = len(secret)
    if not secret.isdigit():
        raise ValueError(f"canary {canary_id}: secret {secret!r} is not a digit string")
    space = digit_space(digits)
    if space <= max_enumerate:
        logprobs = continuation_logprobs(
            model, tokenizer, prefix, digit_candidates(digits), batch_size
        )
        rank = rank_of(logprobs, int(secret))
        return ExposureResult(
            canary_id, exposure_from_rank(rank, space), "exact", space, rank, space
        )
    sample = [c for c in sample_candidates(digits, sample_size, seed) if c != secret]
    logprobs = continuation_logprobs(model, tokenizer, prefix, [secret, *sample], batch_size)
    exposure = estimated_exposure(float(logprobs[0]), logprobs[1:], estimator)
    return ExposureResult(canary_id, exposure, "estimated", space, None, len(sample))
