"""Audit records: each in the training data once with probability 1/2, only in DP runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from fedmem.config import ConfigError, build_config, load_config
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


# ------------------------------------------------ which runs train on them: dp_audit.inject


def _rows(raw: dict) -> tuple[tuple[str, ...], ...]:
    return build_federated_data(build_config(raw), load_tokenizer).client_texts


def test_by_default_only_dp_runs_train_on_audit_records(tiny_raw):
    config = build_config(tiny_raw)
    assert config.dp_audit.inject == "auto"
    assert build_federated_data(config, load_tokenizer).audit_records_in_training == 0
    dp = build_federated_data(build_config({**tiny_raw, "dp_sgd": {"enabled": True}}),
                              load_tokenizer)
    assert dp.audit_records_in_training == sum(r.included for r in dp.audit_records) > 0


def test_inject_always_makes_a_run_without_dp_train_on_the_rows_of_its_dp_runs(tiny_raw):
    always = {**tiny_raw["dp_audit"], "inject": "always"}
    baseline = _rows({**tiny_raw, "dp_audit": always})
    for dp in ({"dp_sgd": {"enabled": True}}, {"client_dp": {"enabled": True}}):
        assert _rows({**tiny_raw, **dp}) == baseline
        assert _rows({**tiny_raw, **dp, "dp_audit": always}) == baseline


def test_inject_never_makes_a_dp_run_train_on_the_rows_of_the_run_without_dp(tiny_raw):
    never = {**tiny_raw["dp_audit"], "inject": "never"}
    dp = build_federated_data(
        build_config({**tiny_raw, "dp_sgd": {"enabled": True}, "dp_audit": never}),
        load_tokenizer,
    )
    assert dp.audit_records == ()  # nothing to audit at record level
    assert dp.client_texts == _rows(tiny_raw)


def test_no_records_means_no_injection_whatever_inject_says(tiny_raw):
    none = {**tiny_raw["dp_audit"], "records": 0, "inject": "always"}
    assert _rows({**tiny_raw, "dp_audit": none}) == _rows(tiny_raw)


def test_inject_takes_auto_always_or_never(tiny_raw):
    with pytest.raises(ConfigError, match="dp_audit.inject"):
        build_config({**tiny_raw, "dp_audit": {"inject": "sometimes"}})


def test_a_run_without_dp_that_trains_on_audit_records_audits_no_epsilon(tiny_raw):
    from fedmem.audits.dp.run_audit import RunDPAudit

    always = {**tiny_raw["dp_audit"], "inject": "always"}
    assert not RunDPAudit(build_config({**tiny_raw, "dp_audit": always})).active


def test_the_dp_baseline_preset_trains_on_the_rows_of_the_dp_presets():
    configs = Path(__file__).resolve().parents[2] / "configs"
    baseline = load_config(configs / "dp-baseline.toml")
    quickstart = load_config(configs / "quickstart.toml")
    assert baseline.dp_audit.inject == "always"
    assert replace(baseline, name=quickstart.name, dp_audit=quickstart.dp_audit) == quickstart
    rows = build_federated_data(baseline, load_tokenizer)
    for preset in ("dp-sgd", "client-dp"):
        dp = build_federated_data(load_config(configs / "mitigations" / f"{preset}.toml"),
                                  load_tokenizer)
        assert dp.client_texts == rows.client_texts, preset
    assert rows.audit_records_in_training > 0
    assert build_federated_data(quickstart, load_tokenizer).audit_records_in_training == 0


def test_a_run_records_how_many_audit_records_it_trained_on(tiny_raw):
    import json

    from fedmem.drivers.centralized import run_centralized
    from fedmem.runs.report import audit_records_line, comparison_table

    tiny_raw |= {"mode": "centralized", "data": {"num_samples": 20}}
    tiny_raw["federation"] = {**tiny_raw["federation"], "rounds": 1}
    always = {**tiny_raw["dp_audit"], "inject": "always"}
    plain = run_centralized(build_config(tiny_raw))
    config = build_config({**tiny_raw, "name": "baseline", "dp_audit": always})
    baseline = run_centralized(config)
    included = sum(r.included for r in build_federated_data(config, load_tokenizer).audit_records)
    assert (plain["audit_records_in_training"], baseline["audit_records_in_training"]) == (
        0,
        included,
    )
    assert json.loads((config.run_dir / "summary.json").read_text()) == baseline
    assert "dp_audit" not in baseline  # no DP: no epsilon to audit
    assert audit_records_line(baseline).startswith(f"training rows include {included} DP audit")
    table = comparison_table(config.run_dir.parent / "tiny", config.run_dir)
    row = table.columns[0]._cells.index("audit records in training")
    assert (table.columns[1]._cells[row], table.columns[2]._cells[row]) == ("0", str(included))


def test_the_run_header_names_the_audit_records_among_the_training_samples():
    from fedmem.drivers.cli import _audit_records_note

    assert _audit_records_note(0) == ""  # the quickstart's header is unchanged
    assert _audit_records_note(97) == ", 97 DP audit records among the training samples"


# ------------------------------------ new-token records: dp_audit.record_design = "new_token"


def test_new_token_records_are_seeded_each_ending_with_its_own_token_included_half_the_time():
    from fedmem.data.audit_records import NEW_TOKEN_TEXT, PREFIX_WORDS

    records = make_audit_records(2000, num_clients=3, seed=0, design="new_token")
    assert make_audit_records(2000, 3, seed=0, design="new_token") == records
    assert make_audit_records(2000, 3, seed=1, design="new_token") != records
    assert 0.46 < sum(r.included for r in records) / 2000 < 0.54
    assert set(Counter(r.client for r in records)) == {0, 1, 2}
    for i, record in enumerate(records):
        prefix, secret = record.text.rsplit(" ", 1)
        assert secret == NEW_TOKEN_TEXT.format(i) and len(prefix.split()) == PREFIX_WORDS


def test_the_new_tokens_occur_in_no_data_and_once_in_their_own_record_only(tiny_raw):
    from fedmem.models.loading import new_token_ids

    config = build_config({**tiny_raw, "dp_sgd": {"enabled": True},
                           "dp_audit": {"records": 40, "record_design": "new_token"}})
    tokenizer = load_tokenizer(config)
    new_ids = new_token_ids(config)
    assert len(new_ids) == 40
    data = build_federated_data(config, load_tokenizer)
    own = {r.text: new_ids[i] for i, r in enumerate(data.audit_records)}
    texts = [t for texts in data.client_texts for t in texts] + list(data.heldout_texts)
    texts += [c.text for c in data.canaries] + [c.text for c in data.exposure_canaries]
    texts += list(own)  # the excluded records too
    for text, ids in zip(texts, tokenizer(texts)["input_ids"], strict=True):
        found = [i for i in ids if i in set(new_ids)]
        assert found == ([own[text]] if text in own else []), text


def test_under_answer_only_loss_a_new_token_record_trains_on_its_new_token_only(tiny_raw):
    from fedmem.training import encode_answer_rows

    raw = {**tiny_raw, "dp_sgd": {"enabled": True},
           "training": {**tiny_raw["training"], "answer_only_loss": True},
           "dp_audit": {"records": 20, "record_design": "new_token"}}
    config = build_config(raw)
    data = build_federated_data(config, load_tokenizer)
    chars = dict(zip(data.pooled_texts, data.pooled_prompt_chars, strict=True))
    included = [r.text for r in data.audit_records if r.included]
    rows, prompts = encode_answer_rows(
        load_tokenizer(config), included, [chars[t] for t in included], 128
    )
    # Prompt: every token before the new token; trained: the new token and the EOS.
    assert [len(row) - p for row, p in zip(rows, prompts, strict=True)] == [2] * len(included)
    random = build_federated_data(build_config({**raw, "dp_audit": {"records": 20}}),
                                  load_tokenizer)
    assert {c for t, c in zip(random.pooled_texts, random.pooled_prompt_chars, strict=True)
            if t.startswith("audit ")} == {0}
