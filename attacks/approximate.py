"""Approximate memorization as in the reference study (docs/study.md): a generated
continuation counts as approximately memorized when its sentence BLEU against the true
continuation is above 0.75.

BLEU is sacrebleu's sentence BLEU (4-gram, effective order, 'exp' smoothing: the NIST /
mteval-v13a method that sacrebleu's `sentence_bleu` uses by default, where the k-th n-gram
order with no match counts as a precision of 1 / (2^k * n-grams)), divided by 100 so that
scores are on a 0-1 scale. An exact copy scores 1.0 and an empty generation 0.0; a
generation sharing no unigram with the truth scores exactly 0 (sacrebleu returns 0 when
nothing matches). Generations shorter than the truth pay the brevity penalty
exp(1 - len(truth) / len(generated)).

Two units:

- characters (`sentence_bleu_chars`), as the study's code: sacrebleu's tokenize='char'.
  Whitespace is not a character there (the tokenizer splits on it), so "a b" and "ab" are
  the same text; the n-grams are of the remaining characters.
- tokens (`sentence_bleu_tokens`): the token ids joined by spaces, tokenize='none', so each
  id is one "word". A wrong token costs a whole unit here while at the character level a
  token that is close in spelling costs only its differing characters; the two scores of
  one pair therefore differ, and only the character-level one is the study's measure.

What it cannot say: BLEU counts n-gram overlap in any order and does not know which
characters are the secret; a continuation can clear 0.75 with the secret's digits wrong.
Report it beside exact extraction, not instead of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from sacrebleu.metrics import BLEU

APPROXIMATE_THRESHOLD = 0.75


@cache
def _bleu(tokenize: str) -> BLEU:
    return BLEU(tokenize=tokenize, smooth_method="exp", effective_order=True)


def _sentence_bleu(hypothesis: str, reference: str, tokenize: str) -> float:
    if not reference.strip():
        raise ValueError("BLEU against an empty reference is undefined")
    if not hypothesis.strip():
        return 0.0
    score = _bleu(tokenize).sentence_score(hypothesis, [reference]).score / 100.0
    return min(1.0, score)  # an exact copy computes to 1 + 4e-16


def sentence_bleu_chars(hypothesis: str, reference: str) -> float:
    """Character-level sentence BLEU in [0, 1] (sacrebleu tokenize='char', whitespace
    ignored)."""
    return _sentence_bleu(hypothesis, reference, "char")


def _ids(ids: Sequence[int]) -> str:
    return " ".join(str(int(i)) for i in ids)


def sentence_bleu_tokens(hyp_ids: Sequence[int], ref_ids: Sequence[int]) -> float:
    """Token-level sentence BLEU in [0, 1]: each token id is one unit."""
    return _sentence_bleu(_ids(hyp_ids), _ids(ref_ids), "none")


def bleu(generated: str | Sequence[int], truth: str | Sequence[int]) -> float:
    """Character-level BLEU for two strings (the study's measure), token-level for two
    sequences of token ids."""
    if isinstance(generated, str) and isinstance(truth, str):
        return sentence_bleu_chars(generated, truth)
    if isinstance(generated, str) or isinstance(truth, str):
        raise TypeError("bleu: compare two strings or two token id sequences, not one of each")
    return sentence_bleu_tokens(generated, truth)


def is_approximately_memorized(
    generated: str | Sequence[int],
    truth: str | Sequence[int],
    threshold: float = APPROXIMATE_THRESHOLD,
) -> bool:
    """BLEU strictly above `threshold` (0.75 in the study), by `bleu`'s unit rule."""
    return bleu(generated, truth) > threshold
