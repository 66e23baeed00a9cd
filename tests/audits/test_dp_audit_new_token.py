"""New-token audit records (Panda et al., ICLR 2025) against the random ones: scored on the
new token alone, and far easier to tell included from excluded after the same short,
non-private training of the tiny model."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from attacks.dp_audit import attack_auroc, record_scores, token_log_probs
from fedmem.audits.dp.run_audit import RunDPAudit, secret_masks
from fedmem.config import build_config
from fedmem.data.federated import build_federated_data
from fedmem.models.loading import build_model, load_tokenizer, new_token_ids
from fedmem.training import encode_samples, train_local

# Little QA so that 60 audit records (about 30 included) are a good share of one epoch.
SHORT_TRAINING = {
    "data": {"num_samples": 40},
    "canaries": {"replica_counts": [1], "per_count": 1, "exposure_per_count": 0},
    "dp_sgd": {"enabled": True},  # the audit's config; the training below adds no noise
}


def _auroc_after_one_epoch(tiny_raw, design: str) -> float:
    raw = copy.deepcopy(tiny_raw) | copy.deepcopy(SHORT_TRAINING)
    raw["training"] = {**raw["training"], "local_epochs": 1, "lr": 1e-2}
    raw["dp_audit"] = {"records": 60, "record_design": design, "client_canaries": 0,
                       "gradient_canaries": 0}
    config = build_config(raw)
    tokenizer = load_tokenizer(config)
    data = build_federated_data(config, load_tokenizer)
    model = build_model(config, seed=0)
    audit = RunDPAudit(config)
    base = token_log_probs(model, audit.rows, tokenizer.pad_token_id)
    rows = encode_samples(tokenizer, data.pooled_texts, config.training.max_seq_len)
    train_local(model, rows, config.training, tokenizer.pad_token_id, seed=1)
    final = token_log_probs(model, audit.rows, tokenizer.pad_token_id)
    scores = record_scores(final, base, audit.secret)
    return attack_auroc(scores[audit.included], scores[~audit.included])


def test_new_token_records_separate_far_better_than_random_ones_after_one_epoch(tiny_raw):
    # Measured at seeds 0, 1, 2: random 0.74, 0.63, 0.67; new token 0.92, 1.00, 0.98.
    random_auroc = _auroc_after_one_epoch(tiny_raw, "random")
    new_token_auroc = _auroc_after_one_epoch(tiny_raw, "new_token")
    assert new_token_auroc >= 0.85
    assert new_token_auroc > random_auroc + 0.1


def test_the_audit_scores_each_new_token_record_on_its_secret_token_only(tiny_raw):
    config = build_config({**tiny_raw, "dp_sgd": {"enabled": True},
                           "dp_audit": {"records": 10, "record_design": "new_token"}})
    audit = RunDPAudit(config)
    ids = new_token_ids(config)
    for i, (row, mask) in enumerate(zip(audit.rows, audit.secret, strict=True)):
        assert mask.sum() == 1 and np.asarray(row[1:])[mask].tolist() == [ids[i]]
    random = RunDPAudit(build_config({**tiny_raw, "dp_sgd": {"enabled": True}}))
    assert random.secret is None  # random records: every token is scored


def test_a_record_cut_before_its_new_token_is_an_error_not_a_silent_zero_score():
    with pytest.raises(ValueError, match="exactly one new token"):
        secret_masks([[5, 6, 7], [5, 99, 1]], [99])
    assert [m.tolist() for m in secret_masks([[5, 99, 1]], [99])] == [[True, False]]
    assert secret_masks([[5, 6]], []) is None
