"""One-run DP audits: attack scores and the epsilon lower bounds they imply.

Record level (DP-SGD): score each audit record by how much more likely the fine-tuned model
finds it than the model before fine-tuning (log-likelihood ratio; plain log-likelihood as the
fallback), then bound epsilon from the scores of included vs excluded records with the one-run
methods of Steinke, Nasr and Jagielski (NeurIPS 2023) and Mahloujifar, Melis and Chaudhuri
(ICML 2025).

Client level (DP-FedAvg), after Andrew et al. (arXiv 2302.03098): canary clients send a fixed
random direction; the statistic is the cosine between each direction and the model's change,
for inserted canaries and for never-inserted directions. Epsilon comes from a Gaussian fit of
the two distributions (their estimate: a point estimate, not a bound) and from a Gaussian-DP
lower bound at the confidence asked (jax-privacy's `epsilon_from_gdp`, made one-sided: see
`gdp_lower_bound`).

Verdicts (`verdict`) weigh a bound against the claim and against the audit's power, its
ceiling: the bound it would give if every guess were right (`one_run_ceilings`,
`gdp_ceiling`). A claim at or above the ceiling cannot be refuted by the audit, so not
refuting it is `inconclusive`, not `consistent`.

The statistics are jax-privacy's `CanaryScoreAuditor` and dp-accounting's Gaussian mechanism
(plus scipy's Clopper-Pearson bound where jax-privacy's GDP bound is unsound), imported when
an audit needs them (about a second each).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from attacks.likelihood import token_logprobs

CONSISTENT, VIOLATION, INCONCLUSIVE = "consistent", "VIOLATION", "inconclusive"


# ----------------------------------------------------------------------- record level


def token_log_probs(
    model: torch.nn.Module, rows: Sequence[list[int]], pad_id: int, batch_size: int = 32
) -> list[np.ndarray]:
    """Per row, the log-probability the model gives each next token ([len(row) - 1] floats)."""
    scores = token_logprobs(model, rows, pad_id, batch_size)
    return [s.logprob.numpy() for s in scores]


def record_scores(
    final: Sequence[np.ndarray],
    base: Sequence[np.ndarray] | None,
    secret: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Higher = more likely trained on. With `base`: the log-likelihood ratio of each record,
    fine-tuned vs before fine-tuning (summed over its tokens); without: its log-likelihood.
    With `secret` (per record, a boolean mask over its next-token positions, as
    `token_log_probs` gives them): summed over the masked positions only, the secret (the
    new-token canaries of Panda et al., ICLR 2025, are scored on their new token alone)."""
    if secret is None:
        secret = [np.ones(len(f), dtype=bool) for f in final]
    if base is None:
        return np.array([f[m].sum() for f, m in zip(final, secret, strict=True)])
    return np.array(
        [f[m].sum() - b[m].sum() for f, b, m in zip(final, base, secret, strict=True)]
    )


@dataclass(frozen=True)
class OneRunBound:
    epsilon: float  # lower bound on epsilon at the significance asked
    guesses: int  # records guessed "included" at the threshold the bound used
    correct: int  # of those, really included


def one_run_bounds(
    in_scores: np.ndarray, out_scores: np.ndarray, delta: float, significance: float
) -> dict[str, OneRunBound]:
    """Epsilon lower bounds from one run, by both methods: `one_run` (Steinke et al.) and
    `one_run_fdp` (Mahloujifar et al.), each holding with probability 1 - significance.
    Thresholds are searched with the library's Bonferroni correction."""
    from jax_privacy.auditing import CanaryScoreAuditor

    auditor = CanaryScoreAuditor(in_scores, out_scores)
    scores = np.concatenate([in_scores, out_scores])
    bounds = {}
    for name, fdp in (("one_run", False), ("one_run_fdp", True)):
        public = (auditor.epsilon_one_run_fdp if fdp else auditor.epsilon_one_run)(
            significance, delta
        )
        # The public methods return epsilon only; the threshold they chose (and so the guess
        # counts) comes from the same search, run again through its internal entry point
        # with the same Bonferroni-corrected significance.
        per_threshold = significance / len(auditor._fn_counts)
        eps, threshold = auditor._epsilon_one_run_all_thresholds(
            per_threshold, delta, True, None, use_fdp=fdp
        )
        if not math.isclose(eps, public, rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"jax-privacy {name}: threshold search differs: {eps} vs {public}")
        guesses = int((scores >= threshold).sum()) if eps > 0 else 0
        correct = int((in_scores >= threshold).sum()) if eps > 0 else 0
        bounds[name] = OneRunBound(float(public), guesses, correct)
    return bounds


def one_run_ceilings(
    included: int, excluded: int, delta: float, significance: float
) -> dict[str, float]:
    """The audit's power: what `one_run_bounds` gives, per method, when the scores separate
    perfectly (every included record above every excluded one, so every guess is right).
    No run with these record counts, delta and significance can report a larger bound.
    Computed once per setting (every round of a run asks the same)."""
    return dict(_one_run_ceilings(included, excluded, delta, significance))


@lru_cache(maxsize=16)
def _one_run_ceilings(
    included: int, excluded: int, delta: float, significance: float
) -> tuple[tuple[str, float], ...]:
    in_scores = np.arange(included, dtype=np.float64) + excluded + 1
    out_scores = np.arange(excluded, dtype=np.float64)
    bounds = one_run_bounds(in_scores, out_scores, delta, significance)
    return tuple((name, b.epsilon) for name, b in bounds.items())


def all_correct_epsilon(guesses: int, confidence: float) -> float:
    """Steinke et al.'s pure-DP one-run bound when all `guesses` guesses are right: under
    eps-DP each is right with probability at most p = e^eps / (1 + e^eps), so all right has
    probability p^guesses; the bound is the eps where that equals 1 - confidence. About 5.8
    for 1,000 guesses and 8.1 for 10,000 at 95 % (the paper's figures); 0 with no guesses."""
    if guesses == 0:
        return 0.0
    p = (1.0 - confidence) ** (1.0 / guesses)
    return math.log(p / (1.0 - p))


def attack_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    from jax_privacy.auditing import CanaryScoreAuditor

    return float(CanaryScoreAuditor(in_scores, out_scores).attack_auroc())


# ------------------------------------------------------------ white-box gradient canaries


@dataclass(frozen=True)
class DiracCanaries:
    """Gradient canaries of Nasr et al. (USENIX 2023) and Steinke et al. (NeurIPS 2023): each
    is a designed per-record gradient, `sign` x the clip norm on one coordinate of the
    trainable parameters (flattened in their order), the coordinates distinct."""

    coordinates: np.ndarray  # [k] int64 flat indices into the trainable parameters
    signs: np.ndarray  # [k] +1.0 / -1.0, the canary gradient's direction on its coordinate
    included: np.ndarray  # [k] bool: inserted into training (probability 1/2 each)


def dirac_canaries(dim: int, k: int, seed: int) -> DiracCanaries:
    """`k` Dirac canaries among `dim` trainable parameters, a pure function of the seed."""
    if k > dim:
        raise ValueError(f"{k} gradient canaries need {k} distinct coordinates, model has {dim}")
    rng = np.random.default_rng(seed)
    coordinates = rng.choice(dim, size=k, replace=False).astype(np.int64)
    signs = np.where(rng.random(k) < 0.5, -1.0, 1.0)
    included = rng.random(k) < 0.5
    return DiracCanaries(coordinates, signs, included)


def dirac_scores(canaries: DiracCanaries, initial: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Higher = more likely inserted: each canary coordinate's change over training against
    its gradient's direction (a descent step moves it by -lr x gradient), from the values of
    the trainable parameters at the canary coordinates before and after training."""
    return canaries.signs * (np.asarray(initial, np.float64) - np.asarray(final, np.float64))


# ----------------------------------------------------------------------- client level


def canary_direction(dim: int, seed: int, index: int) -> np.ndarray:
    """Unit vector, isotropic in `dim` dimensions, a pure function of (seed, index)."""
    v = np.random.default_rng([seed, index]).standard_normal(dim, dtype=np.float32)
    return v / np.float32(np.sqrt(np.sum(v.astype(np.float64) ** 2)))


def cosine(direction: np.ndarray, change: np.ndarray) -> float:
    # Elementwise sums in float64, not BLAS dot/norm: the server calls this from Flower's
    # ServerApp thread, where an OpenBLAS call was seen to spin forever after a resume.
    change = change.astype(np.float64)
    norm = float(np.sqrt(np.sum(change * change)))
    return float(np.sum(direction.astype(np.float64) * change)) / norm if norm > 0 else 0.0


def gaussian_fit_epsilon(in_stats: np.ndarray, out_stats: np.ndarray, delta: float) -> float:
    """Andrew et al.'s estimate: the two statistic distributions fitted as Gaussians, their
    mean gap over the never-inserted spread read as mu-GDP, converted to (epsilon, delta)."""
    import dp_accounting

    mu = (float(np.mean(in_stats)) - float(np.mean(out_stats))) / float(np.std(out_stats, ddof=1))
    if mu <= 0:
        return 0.0
    # mu-GDP is the Gaussian mechanism with sensitivity 1 and noise std 1 / mu.
    return float(dp_accounting.get_epsilon_gaussian(1 / mu, delta))


def gdp_lower_bound(
    in_stats: np.ndarray, out_stats: np.ndarray, delta: float, significance: float
) -> float:
    """A lower bound on epsilon through Gaussian DP, holding with probability 1 - significance:
    at every threshold ("inserted" = statistic >= threshold), Clopper-Pearson upper bounds on
    the false-positive and false-negative rates (Bonferroni over all of them) bound mu from
    below by isf(FPR) - ppf(FNR) (Dong, Roth and Su 2019, eq. 6); the largest is converted.

    This is jax-privacy's `epsilon_from_gdp` made one-sided: in 2.0.0 that method keeps the
    largest |mu|, and a threshold where the two upper bounds sum past 1 (e.g. one that calls
    almost everything inserted) then reads as strong leakage in reverse: on two samples of one
    distribution it reports epsilon 4 to 6 at delta 1e-5 (pinned by a strict xfail test).
    """
    import dp_accounting
    from scipy.stats import beta, norm

    in_stats, out_stats = np.asarray(in_stats), np.asarray(out_stats)
    thresholds = np.unique(np.concatenate([in_stats, out_stats]))
    false_neg = np.searchsorted(np.sort(in_stats), thresholds, side="left")
    false_pos = len(out_stats) - np.searchsorted(np.sort(out_stats), thresholds, side="left")
    alpha = significance / (2 * len(thresholds))

    def upper(k: np.ndarray, n: int) -> np.ndarray:  # Clopper-Pearson, one-sided
        return np.where(k < n, beta.ppf(1 - alpha, k + 1, n - np.minimum(k, n - 1)), 1.0)

    mu = norm.isf(upper(false_pos, len(out_stats))) - norm.ppf(upper(false_neg, len(in_stats)))
    best = float(np.max(mu, initial=0.0))
    if best <= 0:
        return 0.0
    # mu-GDP is the Gaussian mechanism with sensitivity 1 and noise std 1 / mu.
    return float(dp_accounting.get_epsilon_gaussian(1 / best, delta))


def gdp_ceiling(canaries: int, delta: float, significance: float) -> float:
    """The client-level audit's power: `gdp_lower_bound` when the `canaries` inserted and
    as many never-inserted cosines separate perfectly."""
    return gdp_lower_bound(np.ones(canaries), np.zeros(canaries), delta, significance)


# --------------------------------------------------------------------------- claims


def gaussian_composition_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon of `rounds` Gaussian mechanisms of noise `noise_multiplier` x sensitivity
    (DP-FedAvg with every client in every round; sampling would only lower it): exactly
    sqrt(rounds) / noise_multiplier GDP."""
    import dp_accounting

    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return float(dp_accounting.get_epsilon_gaussian(noise_multiplier / math.sqrt(rounds), delta))


def verdict(lower_bounds: Sequence[float], claimed: float, ceiling: float) -> str:
    """`VIOLATION` when a lower bound exceeds the claimed epsilon; else `consistent` only when
    the audit could have refuted the claim (its `ceiling`, the largest bound it can give,
    exceeds the claim), and `inconclusive` when it could not (claim >= ceiling, e.g. an
    audit with no power, ceiling 0)."""
    if max(lower_bounds) > claimed:
        return VIOLATION
    return CONSISTENT if ceiling > claimed else INCONCLUSIVE
