"""The local training loop: seeded, padded rows, steps or epochs, loss goes down."""

from __future__ import annotations

import torch

from fedmem.config import TrainingConfig, build_config
from fedmem.models.loading import build_model, get_trainable_state, load_tokenizer
from fedmem.training import (
    IGNORE_INDEX,
    StepVariant,
    collate,
    encode_samples,
    length_groups,
    mean_token_loss,
    train_local,
)

TEXTS = ["Question: what treats asthma?\nAnswer: albuterol", "Question: code for flu?\nAnswer: J11"]


def test_collate_pads_right_and_masks_pads_out_of_the_loss():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_encoded_samples_end_with_eos_and_respect_max_len(tiny_raw):
    tok = load_tokenizer(build_config(tiny_raw))
    rows = encode_samples(tok, TEXTS, max_len=8)
    assert all(len(r) <= 8 for r in rows)
    long = encode_samples(tok, TEXTS, max_len=512)
    assert all(r[-1] == tok.eos_token_id for r in long)


def test_local_steps_override_epochs(tiny_raw):
    cfg = build_config(tiny_raw)
    tok = load_tokenizer(cfg)
    rows = encode_samples(tok, TEXTS * 10, 64)
    model = build_model(cfg)
    result = train_local(
        model, rows, TrainingConfig(batch_size=4, local_steps=3), tok.pad_token_id, 0
    )
    assert result.steps == 3 and result.examples == 12
    result = train_local(
        model, rows, TrainingConfig(batch_size=4, local_epochs=2), tok.pad_token_id, 0
    )
    assert result.steps == 10 and result.examples == 40


def test_training_is_deterministic_for_a_seed(tiny_raw):
    cfg = build_config(tiny_raw)
    tok = load_tokenizer(cfg)
    rows = encode_samples(tok, TEXTS * 4, 64)
    states = []
    for _ in range(2):
        model = build_model(cfg)
        train_local(model, rows, TrainingConfig(batch_size=3, local_steps=4), tok.pad_token_id, 7)
        states.append(get_trainable_state(model))
    assert all((a == b).all() for a, b in zip(*states, strict=True))


def test_training_lowers_the_loss_on_its_data(tiny_raw):
    cfg = build_config(tiny_raw)
    tok = load_tokenizer(cfg)
    rows = encode_samples(tok, TEXTS, 64)
    model = build_model(cfg)
    before = mean_token_loss(model, rows, 4, tok.pad_token_id)
    train_local(
        model, rows, TrainingConfig(batch_size=2, local_steps=30, lr=3e-3), tok.pad_token_id, 0
    )
    assert mean_token_loss(model, rows, 4, tok.pad_token_id) < before * 0.5


def test_mean_token_loss_ignores_padding(tiny_raw):
    cfg = build_config(tiny_raw)
    tok = load_tokenizer(cfg)
    rows = encode_samples(tok, TEXTS, 64)
    model = build_model(cfg)
    together = mean_token_loss(model, rows, 2, tok.pad_token_id)
    apart = [mean_token_loss(model, [r], 1, tok.pad_token_id) for r in rows]
    n = [len(r) - 1 for r in rows]
    expected = sum(loss * k for loss, k in zip(apart, n, strict=True)) / sum(n)
    assert abs(together - expected) < 1e-4
    assert torch.is_grad_enabled()


def test_length_groups_pad_least_and_keep_every_row_once():
    lengths = [120, 40, 44, 130, 38, 41, 125, 45]
    groups = length_groups(lengths, overhead=64)
    assert sorted(i for g in groups for i in g) == list(range(8))
    short, long = ([lengths[i] for i in g] for g in groups)
    assert (sorted(short), sorted(long)) == ([38, 40, 41, 44, 45], [120, 125, 130])
    assert length_groups([50] * 8) == [list(range(8))]  # equal rows: one pass
    assert len(length_groups([10, 500], overhead=10_000)) == 1  # a pass dearer than its padding


def test_a_batch_computed_in_length_groups_has_the_whole_batch_gradient(tiny_raw):
    cfg = build_config(tiny_raw)
    tok = load_tokenizer(cfg)
    rows = encode_samples(tok, [TEXTS[0] * 6, TEXTS[1], TEXTS[0], TEXTS[1] * 5], 128)
    assert len({len(r) for r in rows}) == 4
    grads = []
    for groups in ([[0, 1, 2, 3]], [[1, 2], [0, 3]]):
        model = build_model(cfg)
        steps = StepVariant(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, TrainingConfig())
        loss = steps.backward([collate([rows[i] for i in g], tok.pad_token_id) for g in groups])
        grads.append((loss, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (whole_loss, whole), (grouped_loss, grouped) = grads
    assert abs(whole_loss - grouped_loss) < 1e-5
    assert (whole - grouped).norm() < 1e-5 * whole.norm()
