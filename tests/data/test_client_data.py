"""One client's data on demand: exactly the rows the whole-federation build gives it, so a
process renders only the clients it serves; the audits' held-out sample is seeded and
sized by the config."""

from __future__ import annotations

import pytest

from fedmem.config import ConfigError, build_config
from fedmem.data.federated import (
    audited_heldout_texts,
    build_federated_data,
    check_data_sizes,
    client_data,
    client_sizes,
    planted,
    training_qa_texts,
)
from fedmem.models.loading import load_tokenizer

LAYOUTS = {
    "iid, spread": {"data": {"partition": "iid"}, "canaries": {"placement": "spread"}},
    "dirichlet, proportional": {
        "data": {"partition": "dirichlet", "dirichlet_alpha": 0.3},
        "canaries": {"placement": "proportional"},
    },
    "by-source, single, audit records": {
        "data": {"partition": "by-source"},
        "canaries": {"placement": "single", "clients": [1, 2]},
        "dp_audit": {"records": 12, "inject": "always"},
    },
}


def _config(tiny_raw, layout: dict):
    raw = {**tiny_raw, "federation": {**tiny_raw["federation"], "num_clients": 3}}
    for section, values in layout.items():
        raw[section] = {**raw.get(section, {}), **values}
    return build_config(raw)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_each_clients_rows_equal_the_whole_builds(tiny_raw, layout):
    config = _config(tiny_raw, layout)
    whole = build_federated_data(config, load_tokenizer)
    for client in range(config.federation.num_clients):
        texts, prompt_chars = client_data(config, load_tokenizer, client)
        assert texts == whole.client_texts[client]
        assert prompt_chars == whole.client_prompt_chars[client]
    assert client_sizes(config, load_tokenizer) == tuple(len(t) for t in whole.client_texts)


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_audit_views_equal_the_whole_builds(tiny_raw, layout):
    config = _config(tiny_raw, layout)
    whole = build_federated_data(config, load_tokenizer)
    planted_items = planted(config, load_tokenizer)
    assert planted_items.canaries == whole.canaries
    assert planted_items.exposure_canaries == whole.exposure_canaries
    assert planted_items.audit_records == whole.audit_records
    assert training_qa_texts(config, load_tokenizer) == tuple(sorted(set(whole.qa_texts)))
    assert audited_heldout_texts(config, load_tokenizer) == whole.heldout_texts


def test_heldout_sample_is_seeded_sized_and_a_subset(tiny_raw):
    config = build_config({**tiny_raw, "data": {**tiny_raw["data"], "heldout_sample": 5}})
    whole = build_federated_data(config, load_tokenizer).heldout_texts
    sample = audited_heldout_texts(config, load_tokenizer)
    assert len(sample) == 5 and set(sample) <= set(whole)
    audited_heldout_texts.cache_clear()
    assert audited_heldout_texts(config, load_tokenizer) == sample


def test_heldout_sample_larger_than_the_heldout_set_is_a_one_line_error(tiny_raw):
    config = build_config({**tiny_raw, "data": {**tiny_raw["data"], "heldout_sample": 500}})
    with pytest.raises(ConfigError, match=r"data.heldout_sample = 500: .* only 12 held-out"):
        check_data_sizes(config, load_tokenizer)


def test_more_clients_than_training_rows_is_a_one_line_error(tiny_raw):
    raw = {**tiny_raw, "federation": {**tiny_raw["federation"], "num_clients": 200}}
    with pytest.raises(ConfigError, match=r"federation.num_clients = 200: more clients than"):
        check_data_sizes(build_config(raw), load_tokenizer)
