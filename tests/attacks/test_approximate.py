"""attacks.approximate, as a specification: sentence BLEU (sacrebleu, 'exp' smoothing,
effective order) on a 0-1 scale, with the n-gram precisions of each known pair written out
here as BLEU's definition gives them: (p1 * p2 * p3 * p4)^(1/4) times the brevity penalty."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.approximate import (
    APPROXIMATE_THRESHOLD,
    bleu,
    is_approximately_memorized,
    sentence_bleu_chars,
    sentence_bleu_tokens,
)

PROPERTIES = settings(max_examples=50, deadline=None)
TRUTH = list(range(1000, 1050))  # a 50-token continuation of distinct tokens


def _one_changed(position: int) -> list[int]:
    generated = TRUTH.copy()
    generated[position] = 7  # a token that appears nowhere in the truth
    return generated


def _ngrams_covering(position: int, n: int, length: int = 50) -> int:
    return min(position, length - n) - max(0, position - n + 1) + 1


def test_the_study_threshold():
    assert APPROXIMATE_THRESHOLD == 0.75


def test_an_exact_copy_scores_one():
    assert sentence_bleu_tokens(TRUTH, TRUTH) == 1.0
    assert sentence_bleu_chars("Patient 4821, metformin", "Patient 4821, metformin") == 1.0


@PROPERTIES
@given(st.lists(st.integers(0, 50_000), min_size=1, max_size=60))
def test_any_exact_copy_scores_one(ids):
    assert sentence_bleu_tokens(ids, ids) == 1.0
    text = "".join(chr(65 + i % 26) for i in ids)
    assert sentence_bleu_chars(text, text) == 1.0


def test_an_empty_generation_scores_zero_and_an_empty_truth_is_refused():
    assert sentence_bleu_tokens([], TRUTH) == 0.0
    assert sentence_bleu_chars("", "abc") == 0.0
    with pytest.raises(ValueError):
        sentence_bleu_tokens([1, 2], [])
    with pytest.raises(ValueError):
        sentence_bleu_chars("abc", " ")


def test_one_changed_token_in_the_middle_of_fifty():
    # The 1-, 2-, 3-, 4-grams covering the changed position miss: 1, 2, 3, 4 of them.
    expected = (49 / 50 * 47 / 49 * 45 / 48 * 43 / 47) ** (1 / 4)  # = 0.9476
    assert sentence_bleu_tokens(_one_changed(25), TRUTH) == pytest.approx(expected, rel=1e-12)
    assert is_approximately_memorized(_one_changed(25), TRUTH)


@PROPERTIES
@given(st.integers(0, 49))
def test_one_changed_token_anywhere_stays_above_the_threshold(position):
    precisions = [(51 - n - _ngrams_covering(position, n)) / (51 - n) for n in range(1, 5)]
    expected = math.prod(precisions) ** (1 / 4)
    assert sentence_bleu_tokens(_one_changed(position), TRUTH) == pytest.approx(expected)
    assert expected >= (45 * 43 / (50 * 48)) ** (1 / 4) > APPROXIMATE_THRESHOLD


def test_unrelated_text_scores_near_zero():
    # No shared token at all: sacrebleu returns exactly 0.
    assert sentence_bleu_tokens(list(range(50)), TRUTH) == 0.0
    # Unrelated English shares letters and a few letter pairs, so characters score a little.
    score = sentence_bleu_chars(
        "The quick brown fox jumps over the lazy dog.",
        "Patient record 4821: hypertension, metformin 500 mg.",
    )
    assert 0.0 < score < 0.1


def test_exp_smoothing_and_effective_order_on_a_short_pair():
    # 3 tokens: orders 1-3 only (no 4-grams exist); the unmatched 3-gram counts 1 / (2 * 1).
    assert sentence_bleu_tokens([1, 2, 3], [1, 2, 4]) == pytest.approx(
        (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3), rel=1e-12
    )


def test_a_short_generation_pays_the_brevity_penalty():
    # Every n-gram of [1, 2, 3] is in the truth; BP = exp(1 - 6 / 3).
    assert sentence_bleu_tokens([1, 2, 3], [1, 2, 3, 4, 5, 6]) == pytest.approx(
        math.exp(1 - 6 / 3), rel=1e-12
    )


def test_whitespace_is_not_a_character():
    assert sentence_bleu_chars("a b c", "abc") == 1.0


def test_characters_and_tokens_differ_as_expected_on_a_known_pair():
    # One wrong digit at the end. Characters (spaces dropped): "recordnumber4821", 16 of them,
    # the last 1-, 2-, 3-, 4-gram miss: (15/16 * 14/15 * 13/14 * 12/13)^(1/4) = (12/16)^(1/4).
    generated, truth = "record number 4827", "record number 4821"
    assert sentence_bleu_chars(generated, truth) == pytest.approx((12 / 16) ** (1 / 4))
    # Tokens (one id per word): the whole last token is wrong; 2/3, 1/2, and the single
    # 3-gram unmatched (1 / 2 by exp smoothing): (2/3 * 1/2 * 1/2)^(1/3).
    word_ids = {"record": 11, "number": 12, "4821": 13, "4827": 14}
    gen_ids, truth_ids = ([word_ids[w] for w in s.split()] for s in (generated, truth))
    assert sentence_bleu_tokens(gen_ids, truth_ids) == pytest.approx((1 / 6) ** (1 / 3))
    # So the study's character measure calls it memorized; the token measure does not.
    assert is_approximately_memorized(generated, truth)
    assert not is_approximately_memorized(gen_ids, truth_ids)


@PROPERTIES
@given(
    st.lists(st.integers(0, 9), min_size=1, max_size=30),
    st.lists(st.integers(0, 9), min_size=1, max_size=30),
)
def test_token_bleu_depends_only_on_which_ids_are_equal(generated, truth):
    relabel = {i: 1000 + 37 * i for i in range(10)}
    score = sentence_bleu_tokens(generated, truth)
    assert 0.0 <= score <= 1.0
    assert sentence_bleu_tokens([relabel[i] for i in generated], [relabel[i] for i in truth]) == (
        score
    )


def test_bleu_picks_the_unit_from_the_types():
    assert bleu("record number 4827", "record number 4821") == pytest.approx(0.75**0.25)
    assert bleu([1, 2, 3], [1, 2, 4]) == sentence_bleu_tokens([1, 2, 3], [1, 2, 4])
    with pytest.raises(TypeError):
        bleu("abc", [1, 2, 3])


def test_the_threshold_is_strict_and_can_be_changed():
    generated = _one_changed(25)  # BLEU 0.9476
    assert is_approximately_memorized(generated, TRUTH, threshold=0.9)
    assert not is_approximately_memorized(generated, TRUTH, threshold=0.95)
    assert not is_approximately_memorized(TRUTH, TRUTH, threshold=1.0)
