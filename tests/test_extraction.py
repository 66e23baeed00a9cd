"""Extraction attack: scoring, targets cut from the trained tokenization, batched greedy."""

from __future__ import annotations

import torch

from attacks.extraction import (
    ExtractionTarget,
    extract,
    score,
    split_record,
    summarize,
)
from fedmem.config import ModelConfig
from fedmem.models import new_tiny_llama
from fedmem.pretraining import train_tokenizer

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
