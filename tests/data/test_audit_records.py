"""Audit records: each in the training data once with probability 1/2, only in DP runs."""

from __future__ import annotations

from collections import Counter

from fedmem.config import build_config
from fedmem.data.audit_records import make_audit_records
from fedmem.data.federated import build_federated_data
from fedmem.models.loading import load_tokenizer


def test_each_record_is_included_with_probability_one_half_independently():
    records = make_audit_records(2000, num_clients=3, seed=0)
    assert len({r.text for r in records}) == 2000
    assert 0.46 < sum(r.included for r in records) / 2000 < 0.54
    assert set(Counter(r.client for r in records)) == {0, 1, 2}
    assert make_audit_records(50, 3, seed=0) == records[:50]  # seeded, prefix-stable


def test_included_records_are_one_row_of_their_client_and_excluded_ones_never_appear(tiny_raw):
    config = build_config({**tiny_raw, "dp_sgd": {"enabled": True}})
    data = build_federated_data(config, load_tokenizer)
    assert len(data.audit_records) == config.dp_audit.records
    rows = Counter((c, t) for c, texts in enumerate(data.client_texts) for t in texts)
    for record in data.audit_records:
        copies = sum(n for (c, t), n in rows.items() if t == record.text)
        assert copies == (1 if record.included else 0)
        if record.included:
            assert rows[(record.client, record.text)] == 1


def test_runs_without_dp_carry_no_audit_records_and_unchanged_data(tiny_raw):
    plain = build_federated_data(build_config(tiny_raw), load_tokenizer)
    assert plain.audit_records == ()
    dp_config = build_config({**tiny_raw, "dp_sgd": {"enabled": True}})
    dp = build_federated_data(dp_config, load_tokenizer)
    without_records = [
        [t for t in texts if not t.startswith("audit ")] for texts in dp.client_texts
    ]
    assert without_records == [list(t) for t in plain.client_texts]
