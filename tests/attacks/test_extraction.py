"""Extraction attack: scoring, targets cut from the trained tokenization, batched greedy."""

from __future__ import annotations

import pytest
import torch

from attacks.extraction import (
    DECODERS,
    Decoding,
    ExtractionTarget,
    best_of,
    edit_similarity,
    extract,
    score,
    split_record,
    summarize,
    worst_case,
)
from fedmem.config import ModelConfig
from fedmem.models.tiny_llama import new_tiny_llama, train_tokenizer

RECORD = (
    "Medical Note: MRN 4829-1734\nPatient: Jane Roe, 12 Elm Street, Springfield.\n"
    "DOB 1967-03-12. SSN 123-45-6789. Diagnosis: asthma (J45.909)."
)
SPLIT = RECORD.index("DOB")


def test_score_counts_positions_and_longest_correct_run():
    target = ExtractionTarget("c", (1, 2), (5, 6, 7, 8))
    r = score(target, [5, 6, 0, 8])
    assert (r.exact, r.token_accuracy, r.longest_match) == (False, 0.75, 2)
    assert score(target, [5, 6, 7, 8]).exact
    assert score(target, [9, 6, 7, 8]).longest_match == 0


def test_short_generation_counts_missing_tokens_as_wrong():
    r = score(ExtractionTarget("c", (1,), (5, 6)), [5])
    assert (r.exact, r.token_accuracy) == (False, 0.5)


def test_summary_averages_over_canaries():
    t = ExtractionTarget("a", (1,), (5, 6))
    s = summarize([score(t, [5, 6]), score(t, [0, 0])])
    assert (s.n, s.exact_rate, s.token_accuracy, s.longest_match) == (2, 0.5, 0.5, 1.0)
    assert s.edit_similarity == 0.5


WORDS = {11: "record", 12: "number", 13: "4821", 14: "4827", 15: "blue", 16: "sky"}
SECRET = ExtractionTarget("c", (1,), (11, 12, 13))  # "record number 4821"


def _words(ids) -> str:
    return " ".join(WORDS[i] for i in ids)


def test_summary_counts_bleu_above_the_threshold_by_characters_and_by_tokens():
    # copy: both BLEUs 1; last digit wrong: characters (12/16)^(1/4) = 0.93, tokens
    # (1/6)^(1/3) = 0.55 (tests/attacks/test_approximate.py); unrelated words; nothing.
    guesses = [(11, 12, 13), (11, 12, 14), (15, 16, 15), ()]
    results = [score(SECRET, g, _words) for g in guesses]
    assert [r.char_bleu > 0.75 for r in results] == [True, True, False, False]
    assert [r.token_bleu > 0.75 for r in results] == [True, False, False, False]
    s = summarize(results)
    assert (s.exact_rate, s.approx_char_rate, s.approx_token_rate) == (0.25, 0.5, 0.25)
    assert s.char_bleu == pytest.approx((1 + (12 / 16) ** 0.25 + results[2].char_bleu) / 4)
    assert s.token_bleu == pytest.approx((1 + (1 / 6) ** (1 / 3)) / 4)
    assert summarize(results, bleu_threshold=0.95).approx_char_rate == 0.25


def test_without_a_decode_there_is_no_character_bleu_and_no_character_rate():
    s = summarize([score(SECRET, (11, 12, 13))])
    assert (s.approx_token_rate, s.char_bleu, s.approx_char_rate) == (1.0, None, None)
    assert "approx_char_rate" not in s.as_dict() and s.as_dict()["approx_token_rate"] == 1.0


def test_several_guesses_and_several_prefix_lengths_take_the_best_bleu():
    near, far = score(SECRET, (11, 12, 14), _words), score(SECRET, (15, 16, 15), _words)
    best = best_of(SECRET, [(15, 16, 15), (11, 12, 14)], _words)
    assert (best.char_bleu, best.token_bleu) == (near.char_bleu, near.token_bleu)
    worst = worst_case([[far], [near]])[0]
    assert (worst.char_bleu, worst.token_bleu) == (near.char_bleu, near.token_bleu)


def _tokenizer():
    return train_tokenizer([RECORD, "Patient notes and diagnoses. " * 20], vocab_size=300)


def test_targets_are_cut_from_the_whole_record_tokenization():
    tok = _tokenizer()
    target = split_record(tok, "c", RECORD, SPLIT, prefix_tokens=1000, suffix_tokens=1000)
    assert list(target.prefix_ids) + list(target.suffix_ids) == tok(RECORD)["input_ids"]
    assert tok.decode(list(target.suffix_ids)).lstrip().startswith("DOB")


def test_prefix_and_suffix_windows_are_clipped_at_the_split():
    tok = _tokenizer()
    full = split_record(tok, "c", RECORD, SPLIT, 1000, 1000)
    short = split_record(tok, "c", RECORD, SPLIT, prefix_tokens=4, suffix_tokens=3)
    assert short.prefix_ids == full.prefix_ids[-4:]
    assert short.suffix_ids == full.suffix_ids[:3]


def _memorize(model, ids: list[int], steps: int) -> None:
    batch = torch.tensor([ids])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_extraction_is_complete_after_memorizing_and_near_zero_before():
    tok = _tokenizer()
    shape = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = new_tiny_llama(shape, tok, seed=0)
    # The whole known header as prompt: a tiny model memorizes a record at its row's start.
    target = split_record(tok, "c", RECORD, SPLIT, prefix_tokens=1000, suffix_tokens=24)
    pad = tok.pad_token_id
    before = extract(model, [target], pad)[0]
    assert not before.exact and before.token_accuracy < 0.2
    _memorize(model, tok(RECORD)["input_ids"], steps=150)
    after = extract(model, [target], pad)[0]
    assert after.exact and after.token_accuracy == 1.0 and after.longest_match == 24


def test_batched_left_padded_extraction_equals_one_prompt_at_a_time():
    tok = _tokenizer()
    shape = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = new_tiny_llama(shape, tok, seed=1)
    _memorize(model, tok(RECORD)["input_ids"], steps=60)
    targets = [
        split_record(tok, f"c{n}", RECORD, SPLIT, prefix_tokens=n, suffix_tokens=12)
        for n in (3, 8, 20)
    ]
    batched = extract(model, targets, tok.pad_token_id, batch_size=8)
    single = [extract(model, [t], tok.pad_token_id)[0] for t in targets]
    assert [r.generated_ids for r in batched] == [r.generated_ids for r in single]


def test_edit_similarity_is_one_for_an_exact_match_and_falls_with_each_edit():
    truth = (5, 6, 7, 8, 9, 10)
    assert edit_similarity(truth, truth) == 1.0
    one = edit_similarity(truth, (5, 6, 0, 8, 9, 10))
    two = edit_similarity(truth, (5, 6, 0, 8, 0, 10))
    assert 1.0 > one > two > edit_similarity(truth, (0,) * 6) == 0.0
    assert one == pytest.approx(1 - 1 / 6)  # unit: tokens, normalized by the longer length
    # A shifted copy keeps most of its similarity, while position-wise accuracy drops to 0.
    shifted = score(ExtractionTarget("c", (1,), truth), (4, 5, 6, 7, 8, 9))
    assert shifted.token_accuracy == 0.0 and shifted.edit_similarity == pytest.approx(4 / 6)


def test_best_of_several_guesses_is_exact_if_any_guess_is():
    target = ExtractionTarget("c", (1,), (5, 6, 7))
    r = best_of(target, [[0, 0, 0], [5, 6, 7], [5, 0, 0]])
    assert r.exact and r.generated_ids == (5, 6, 7) and r.token_accuracy == 1.0


def test_worst_case_over_prefix_lengths_takes_each_canarys_best_length():
    a, b = ExtractionTarget("a", (1,), (5, 6)), ExtractionTarget("b", (1,), (5, 6))
    short = [score(a, [5, 6]), score(b, [0, 0])]
    long = [score(a, [0, 0]), score(b, [5, 0])]
    worst = worst_case([short, long])
    assert [r.exact for r in worst] == [True, False]
    assert [r.token_accuracy for r in worst] == [1.0, 0.5]
    assert all(r.char_bleu is None for r in worst)  # scored without a decode


def test_beam_search_and_sampling_find_at_least_what_greedy_finds_on_a_memorized_record():
    tok = _tokenizer()
    shape = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = new_tiny_llama(shape, tok, seed=0)
    _memorize(model, tok(RECORD)["input_ids"], steps=150)
    target = split_record(tok, "c", RECORD, SPLIT, prefix_tokens=1000, suffix_tokens=24)
    pad = tok.pad_token_id
    greedy = extract(model, [target], pad)[0]
    assert greedy.exact
    for decoding in (Decoding("beam", num_beams=3), Decoding("sampling", num_samples=4, seed=1)):
        found = extract(model, [target], pad, decoding=decoding)[0]
        assert found.exact and found.token_accuracy >= greedy.token_accuracy, decoding.name


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    tok = _tokenizer()
    shape = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = new_tiny_llama(shape, tok, seed=0)
    target = split_record(tok, "c", RECORD, SPLIT, prefix_tokens=8, suffix_tokens=8)
    decoding = Decoding("sampling", num_samples=2, seed=3)
    torch.manual_seed(0)
    first = extract(model, [target], tok.pad_token_id, decoding=decoding)[0]
    after = torch.rand(1)
    torch.manual_seed(0)
    again = extract(model, [target], tok.pad_token_id, decoding=decoding)[0]
    assert first.generated_ids == again.generated_ids and torch.equal(after, torch.rand(1))
    assert set(DECODERS) == {"greedy", "beam", "sampling"}


# ----------------------------------------------------- EOS: plain greedy, or suppressed


def _stops_early(steps: int = 150):
    """A model that memorized the record's header and the first 4 secret tokens, then EOS;
    and the target: the first 12 secret tokens of the whole record."""
    tok = _tokenizer()
    shape = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = new_tiny_llama(shape, tok, seed=0)
    target = split_record(tok, "c", RECORD, SPLIT, prefix_tokens=1000, suffix_tokens=12)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    _memorize(model, [*target.prefix_ids, *target.suffix_ids[:4], tok.eos_token_id], steps)
    return tok, model, target


def test_greedy_extraction_stops_at_eos_and_a_short_continuation_is_not_exact():
    tok, model, target = _stops_early()
    result = extract(model, [target], tok.pad_token_id)[0]
    assert result.generated_ids == target.suffix_ids[:4]  # then EOS: nothing after it
    assert (result.exact, result.token_accuracy, result.longest_match) == (False, 4 / 12, 4)


def test_suppressing_eos_decodes_the_whole_suffix_length_and_never_eos():
    tok, model, target = _stops_early()
    suppressed = Decoding(suppress_eos=True)
    result = extract(model, [target], tok.pad_token_id, decoding=suppressed)[0]
    assert len(result.generated_ids) == 12 and tok.eos_token_id not in result.generated_ids
    assert result.generated_ids[:4] == target.suffix_ids[:4]
    assert result.token_accuracy >= 4 / 12  # forced tokens can only add hits


def test_batched_extraction_stops_each_prompt_at_its_own_eos():
    """In a batch, a prompt that ends early is padded while others decode on: the padding is
    not part of its continuation, exactly as when it is decoded alone."""
    tok, model, target = _stops_early()
    other = split_record(tok, "d", RECORD, 20, prefix_tokens=1000, suffix_tokens=12)
    batched = extract(model, [target, other], tok.pad_token_id)
    single = [extract(model, [t], tok.pad_token_id)[0] for t in (target, other)]
    assert [r.generated_ids for r in batched] == [r.generated_ids for r in single]
    assert batched[0].generated_ids == target.suffix_ids[:4]


def test_the_audit_decodes_plainly_unless_attack_suppress_eos_is_set():
    from fedmem.audits.extraction import decoding_for
    from fedmem.config import ConfigError, build_config

    assert not decoding_for(build_config({}), "greedy").suppress_eos
    config = build_config({"attack": {"suppress_eos": True}})
    assert all(decoding_for(config, name).suppress_eos for name in DECODERS)
    with pytest.raises(ConfigError, match="attack.suppress_eos"):
        build_config({"attack": {"suppress_eos": "yes"}})
