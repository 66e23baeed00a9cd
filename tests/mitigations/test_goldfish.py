"""Goldfish loss: which label positions leave the loss, and that they carry no gradient."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedmem.config import ConfigError, GoldfishConfig, TrainingConfig, build_config
from fedmem.mitigations.goldfish import goldfish_label_mask, goldfish_mask
from fedmem.models.loading import get_trainable_state
from fedmem.training import IGNORE_INDEX, collate, train_local

VOCAB = 64


def random_ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(n)]


def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config)


def test_static_drops_every_kth_position_exactly():
    keep = goldfish_mask(random_ids(1003, 0), k=4, h=13, variant="static")
    assert [i for i, kept in enumerate(keep) if not kept] == list(range(3, 1003, 4))
    assert keep.count(False) == 1003 // 4


def test_hashed_drop_rate_is_close_to_one_in_k():
    for k in (2, 4, 10):
        keep = goldfish_mask(random_ids(20_000, k), k=k, h=13, variant="hashed")
        assert abs(keep.count(False) / len(keep) - 1 / k) < 0.02


def test_hashed_mask_is_identical_for_identical_texts():
    ids = random_ids(200, 1)
    assert goldfish_mask(ids, 4, 13, "hashed") == goldfish_mask(list(ids), 4, 13, "hashed")


def test_hashed_decision_depends_only_on_the_preceding_h_tokens():
    shared, h = random_ids(300, 2), 5
    a = random_ids(7, 3) + shared
    b = random_ids(10, 4) + shared  # offsets 7 and 10 differ mod 4: static would disagree
    keep_a = goldfish_mask(a, 4, h, "hashed")[7 + h :]
    keep_b = goldfish_mask(b, 4, h, "hashed")[10 + h :]
    assert keep_a == keep_b
    assert goldfish_mask(a, 4, h, "static")[7 + h :] != goldfish_mask(b, 4, h, "static")[10 + h :]


def test_hashed_mask_changes_with_the_context_width():
    ids = random_ids(500, 5)
    assert goldfish_mask(ids, 4, 13, "hashed") != goldfish_mask(ids, 4, 3, "hashed")


def test_collate_ignores_dropped_positions_and_pads():
    mask = goldfish_label_mask(GoldfishConfig(enabled=True, k=2, variant="static"))
    batch = collate([[5, 6, 7, 8], [9, 10]], pad_id=0, label_mask=mask)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch.labels.tolist() == [
        [5, IGNORE_INDEX, 7, IGNORE_INDEX],
        [9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_disabled_goldfish_leaves_labels_unchanged():
    assert goldfish_label_mask(GoldfishConfig(enabled=False, variant="static")) is None
    rows = [random_ids(30, 6), random_ids(17, 7)]
    plain = collate(rows, pad_id=0)
    masked = collate(rows, pad_id=0, label_mask=goldfish_label_mask(GoldfishConfig()))
    assert torch.equal(plain.labels, masked.labels)


def test_dropped_labels_get_no_gradient_through_the_models_shifted_loss():
    # HF shifts labels inside the loss: label t is predicted by the logits at t - 1, so a
    # dropped label t must leave the logits at t - 1 without gradient, and a kept one must not.
    ids = random_ids(40, 8)
    keep = goldfish_mask(ids, 4, 3, "hashed")
    batch = collate([ids], pad_id=0, label_mask=lambda _: keep)
    out = tiny_lm()(input_ids=batch.input_ids, labels=batch.labels)
    out.logits.retain_grad()
    out.loss.backward()
    grad_norms = out.logits.grad[0].norm(dim=-1)
    for t in range(1, len(ids)):
        assert (grad_norms[t - 1] == 0) == (not keep[t]), t


def test_train_local_applies_the_label_mask():
    rows = [random_ids(24, s) for s in range(6)]
    cfg = TrainingConfig(batch_size=3, local_steps=2)
    states = []
    for mask in (None, goldfish_label_mask(GoldfishConfig(enabled=True, k=2))):
        model = tiny_lm()
        train_local(model, rows, cfg, pad_id=0, seed=0, label_mask=mask)
        states.append(get_trainable_state(model))
    assert any((a != b).any() for a, b in zip(*states, strict=True))


@pytest.mark.parametrize(
    ("key", "value"), [("k", 1), ("h", 0), ("variant", "random"), ("enabled", "yes")]
)
def test_bad_goldfish_settings_name_their_key(key, value):
    with pytest.raises(ConfigError, match=rf"^goldfish\.{key} = "):
        build_config({"goldfish": {key: value}})
