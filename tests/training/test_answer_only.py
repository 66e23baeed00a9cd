"""Answer-only loss: prompt labels go out of the loss through the same label path as pads
and goldfish; canaries and evaluation keep every token."""

from __future__ import annotations

import torch

from clients.app import client_rows
from fedmem.config import TrainingConfig, build_config
from fedmem.models.loading import build_model, get_trainable_state, load_tokenizer
from fedmem.training import IGNORE_INDEX, collate, encode_answer_rows, train_local

PROMPT = "Closed Question: Aspirin was given to 20 patients.\nDoes aspirin help?\nThe answer is:"
TEXT = PROMPT + " yes"


def test_prompt_tokens_are_exactly_the_prompt(tiny_raw):
    tok = load_tokenizer(build_config(tiny_raw))
    (row,), (prompt,) = encode_answer_rows(tok, [TEXT], [len(PROMPT)], max_len=512)
    assert tok.decode(row[:prompt]) == PROMPT
    assert tok.decode(row[prompt:]) == " yes" + tok.eos_token


def test_a_row_without_prompt_chars_has_no_prompt(tiny_raw):
    tok = load_tokenizer(build_config(tiny_raw))
    _, prompts = encode_answer_rows(tok, [TEXT], [0], max_len=512)
    assert prompts == [0]


def test_too_long_rows_lose_prompt_tokens_from_the_start_and_keep_the_answer(tiny_raw):
    tok = load_tokenizer(build_config(tiny_raw))
    (full,), (full_prompt,) = encode_answer_rows(tok, [TEXT], [len(PROMPT)], max_len=512)
    (row,), (prompt,) = encode_answer_rows(tok, [TEXT], [len(PROMPT)], max_len=8)
    assert row == full[-8:]
    assert prompt == full_prompt - (len(full) - 8)


def test_collate_masks_the_prompt_labels_of_each_row():
    batch = collate([[5, 6, 7, 8], [9, 10]], pad_id=0, prompt_lengths=[3, 1])
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8],
        [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_prompt_mask_and_label_mask_combine():
    def drop_last(ids):
        return [True] * (len(ids) - 1) + [False]

    batch = collate([[5, 6, 7, 8]], pad_id=0, label_mask=drop_last, prompt_lengths=[1])
    assert batch.labels.tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX]]


def test_training_on_prompts_only_changes_nothing(tiny_raw):
    # Every label is prompt: the loss has no targets, so the weights must not move.
    cfg = build_config(tiny_raw)
    tok = load_tokenizer(cfg)
    rows, _ = encode_answer_rows(tok, [TEXT] * 4, [len(TEXT)] * 4, max_len=512)
    prompts = [len(r) for r in rows]
    model = build_model(
        build_config({**tiny_raw, "model": {**tiny_raw["model"], "finetuning": "lora"}})
    )
    before = get_trainable_state(model)
    train_local(
        model,
        rows,
        TrainingConfig(batch_size=2, local_steps=1, lr=1e-2),
        tok.pad_token_id,
        0,
        prompt_lengths=prompts,
    )
    after = get_trainable_state(model)
    assert all(
        torch.equal(torch.from_numpy(a), torch.from_numpy(b))
        for a, b in zip(before, after, strict=True)
    )


def test_clients_get_prompt_lengths_only_under_answer_only_loss(tiny_raw):
    plain = build_config(tiny_raw)
    answer_only = build_config(
        {**tiny_raw, "training": {**tiny_raw["training"], "answer_only_loss": True}}
    )
    assert client_rows(plain, 0)[1] is None
    rows, prompts = client_rows(answer_only, 0)
    assert len(prompts) == len(rows) and any(p > 0 for p in prompts) and 0 in prompts
