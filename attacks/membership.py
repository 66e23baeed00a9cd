"""Membership inference: score each text, higher = more likely a training member.

Scores (each a function of the text's teacher-forced token scores, `attacks.likelihood`):

- `loss`: the mean token log-probability, i.e. minus the loss (Yeom et al. 2018).
- `zlib`: minus the mean token loss over the zlib-compressed length of the text in bytes
  (Carlini et al. 2021): texts that are easy for the model but not for zlib stand out.
- `min_k`: mean log-probability of the k% least likely tokens (Shi et al. 2024).
- `min_k_plus_plus`: min-k% over log-probabilities standardized by the mean and standard
  deviation of log p(z) under the model's own next-token distribution (Zhang et al. 2025).
- `reference`: minus the loss, plus the loss under a reference model (here the model before
  fine-tuning): how much fine-tuning lowered the text's loss (Carlini et al. 2021/2022).
- `rmia`: RMIA, offline with the reference model as its one reference (Zarifzadeh et al.
  2024): the fraction of population texts (non-members of the same kind) whose likelihood
  ratio the text's beats; unlike the others it scores a text against other texts, so it is
  `rmia_scores` over arrays rather than an entry of `SCORES`.

The number of tokens k% takes is max(1, floor(k * scored tokens)), as in the min-k% code.
`roc` turns scores and labels into AUC, TPR at fixed FPRs and the ROC points (scikit-learn).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from attacks.likelihood import TokenScores
from attacks.statistics import tpr_at_fpr

FPR_TARGETS = (0.01, 0.001)
_EPS = 1e-12


@dataclass(frozen=True)
class Sample:
    """What a score may look at for one text."""

    text: str
    scores: TokenScores  # under the audited model (with moments)
    reference: TokenScores | None = None  # under the reference model


def _smallest_mean(values: torch.Tensor, fraction: float) -> float:
    k = max(1, math.floor(fraction * len(values)))
    return float(torch.sort(values).values[:k].mean())


def loss_score(s: Sample, k: float) -> float:
    return float(s.scores.logprob.mean())


def zlib_score(s: Sample, k: float) -> float:
    loss = -float(s.scores.logprob.mean())
    return -loss / len(zlib.compress(s.text.encode("utf-8")))


def min_k_score(s: Sample, k: float) -> float:
    return _smallest_mean(s.scores.logprob, k)


def min_k_plus_plus_score(s: Sample, k: float) -> float:
    z = (s.scores.logprob - s.scores.mean) / s.scores.std.clamp(min=_EPS)
    return _smallest_mean(z, k)


def reference_score(s: Sample, k: float) -> float:
    if s.reference is None:
        raise ValueError("the reference score needs the reference model's token scores")
    return float(s.scores.logprob.mean() - s.reference.logprob.mean())


# name -> (sample, k fraction) -> score, higher = more likely a member
SCORES: dict[str, Callable[[Sample, float], float]] = {
    "loss": loss_score,
    "zlib": zlib_score,
    "min_k": min_k_score,
    "min_k_plus_plus": min_k_plus_plus_score,
    "reference": reference_score,
}

RMIA_OFFLINE_A = 0.3  # the paper's offline default
RMIA_GAMMA = 1.0


def rmia_log_ratios(
    target: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    offline_a: float = RMIA_OFFLINE_A,
) -> np.ndarray:
    """log LR(x) = log Pr(x|θ) - log Pr(x) for each text, from its mean token log-probability
    under the audited model (`target`) and under the reference model (`reference`).

    Pr(x|θ) = exp(mean token log-prob), not the sequence likelihood: a per-token geometric
    mean, so texts of different lengths compare on one scale. Pr(x) is the paper's offline
    approximation from one OUT reference model: Pr(x) = ½((1 + a)·Pr(x|ref) + (1 − a)), i.e.
    the mean of Pr(x)_OUT = Pr(x|ref) and Pr(x)_IN ≈ a·Pr(x|ref) + (1 − a). a = 1 takes
    Pr(x) = Pr(x|ref) (the `reference` score's ratio); a = 0.3 is the paper's offline default.
    (`a·Pr(x|ref) + (1 − a)` as the whole of Pr(x) is this form with a' = (1 + a) / 2.)
    The same Pr(·) serves x and the population z. Written from the paper; ML Privacy Meter's
    offline RMIA (the same formula for x and z) was read as a reference only.
    Computed in log space (logaddexp), so tiny likelihoods do not underflow."""
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"rmia: offline_a = {offline_a!r}: must be in [0, 1]")
    tgt = np.asarray(target, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if tgt.shape != ref.shape or tgt.ndim != 1:
        raise ValueError(f"rmia: target {tgt.shape} and reference {ref.shape}: need equal 1-d")
    with np.errstate(divide="ignore"):  # log 0 = -inf at a = 1: logaddexp takes it
        log_px = np.logaddexp(np.log((1 + offline_a) / 2) + ref, np.log((1 - offline_a) / 2))
    return tgt - log_px


def rmia_scores(
    target: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    population: Sequence[bool] | np.ndarray,
    groups: Sequence[Hashable] | None = None,
    *,
    offline_a: float = RMIA_OFFLINE_A,
    gamma: float = RMIA_GAMMA,
) -> np.ndarray:
    """RMIA score of each text (Zarifzadeh et al., ICML 2024, offline, one reference model):
    the fraction of population texts z with LR(x) / LR(z) > gamma, LR from `rmia_log_ratios`.

    target, reference: each text's mean token log-probability under the audited and the
    reference model. population: which texts may serve as z (known non-members). groups:
    each text's kind; x is compared only with population texts of its own group (all texts
    one group when None). Leave-one-out: a population text is never in its own population,
    so a non-member's score is over the other n - 1. A text whose group has no other
    population text raises ValueError. Pure and deterministic; adding a constant to every
    target log-probability leaves every score unchanged (it scales all LRs alike)."""
    if not gamma > 0.0:
        raise ValueError(f"rmia: gamma = {gamma!r}: must be > 0")
    log_lr = rmia_log_ratios(target, reference, offline_a)
    pop = np.asarray(population, dtype=bool)
    if pop.shape != log_lr.shape:
        raise ValueError(f"rmia: population {pop.shape} vs {log_lr.shape} texts")
    keys = [0] * len(log_lr) if groups is None else list(groups)
    if len(keys) != len(log_lr):
        raise ValueError(f"rmia: {len(keys)} groups vs {len(log_lr)} texts")
    log_gamma = math.log(gamma)
    out = np.empty(len(log_lr), dtype=np.float64)
    for key in dict.fromkeys(keys):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        zs = idx[pop[idx]]
        # beats[i, j]: text idx[i] beats population text zs[j]; no text beats itself
        beats = (log_lr[idx][:, None] - log_lr[zs][None, :]) > log_gamma
        beats &= idx[:, None] != zs[None, :]
        n = len(zs) - pop[idx]  # leave-one-out: a population text leaves itself out
        if (n < 1).any():
            raise ValueError(f"rmia: group {key!r} has no population text to compare with")
        out[idx] = beats.sum(axis=1) / n
    return out


@dataclass(frozen=True)
class Roc:
    auc: float
    # FPR target -> TPR at the largest ROC point with FPR <= it; None where the non-members
    # are too few to resolve the target (fewer than ceil(1 / target)).
    tpr_at: dict[float, float | None]
    fpr: list[float]
    tpr: list[float]
    nonmembers: int

    def summary(self) -> dict[str, float | int | None]:
        return {
            "auc": self.auc,
            **{f"tpr_at_fpr_{f:g}": t for f, t in self.tpr_at.items()},
            "nonmembers": self.nonmembers,
        }


def roc(scores: Sequence[float], members: Sequence[bool]) -> Roc:
    """ROC of `scores` separating members (True) from non-members; needs both classes.

    The TPR at each FPR target is `attacks.statistics.tpr_at_fpr`'s: None with fewer than
    ceil(1 / target) non-members, where not one false positive fits under the target."""
    labels = np.asarray(members, dtype=bool)
    if labels.all() or not labels.any():
        raise ValueError("roc: needs at least one member and one non-member")
    values = np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(labels, values)
    tpr_at = {f: _resolved_tpr(values[labels], values[~labels], f) for f in FPR_TARGETS}
    auc = float(roc_auc_score(labels, values))
    return Roc(auc, tpr_at, fpr.tolist(), tpr.tolist(), int((~labels).sum()))


def _resolved_tpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float | None:
    result = tpr_at_fpr(members, nonmembers, fpr)
    return float(result.estimate) if result.resolvable else None
