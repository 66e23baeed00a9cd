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

The number of tokens k% takes is max(1, floor(k * scored tokens)), as in the min-k% code.
`roc` turns scores and labels into AUC, TPR at fixed FPRs and the ROC points (scikit-learn).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
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
