"""From config to federated data: split first, then inject; a pure function of the config."""

from __future__ import annotations

from collections import Counter

from fedmem.config import build_config
from fedmem.data.federated import build_federated_data
from fedmem.data.qa import format_qa
from fedmem.models.loading import load_tokenizer


def test_same_config_gives_identical_data(tiny_raw):
    a = build_federated_data(build_config(tiny_raw), load_tokenizer)
    build_federated_data.cache_clear()
    b = build_federated_data(build_config(tiny_raw), load_tokenizer)
    assert a == b


def test_seed_changes_data(tiny_raw):
    a = build_federated_data(build_config(tiny_raw), load_tokenizer)
    b = build_federated_data(build_config({**tiny_raw, "seed": 1}), load_tokenizer)
    assert a.client_texts != b.client_texts and a.canaries != b.canaries


def test_every_copy_lands_in_its_clients_and_twins_nowhere(tiny_raw):
    data = build_federated_data(build_config(tiny_raw), load_tokenizer)
    assert len(data.exposure_canaries) == 4  # one per replica count, each with a twin
    for canary in (*data.canaries, *data.exposure_canaries):
        found = Counter(
            client
            for client, texts in enumerate(data.client_texts)
            for t in texts
            if t == canary.text
        )
        assert found == Counter(canary.clients)
        assert sum(found.values()) == canary.replicas


def test_heldout_split_is_canary_free_and_disjoint_from_training(tiny_raw):
    data = build_federated_data(build_config(tiny_raw), load_tokenizer)
    canary_texts = {c.text for c in data.canaries}
    heldout = {format_qa(p) for p in data.heldout}
    assert not heldout & canary_texts
    assert not heldout & set(data.pooled_texts)
    assert len(data.heldout) == round(120 * 0.1)


def test_canaries_go_only_to_the_chosen_clients(tiny_raw):
    raw = {**tiny_raw, "canaries": {**tiny_raw["canaries"], "clients": [1]}}
    data = build_federated_data(build_config(raw), load_tokenizer)
    canary_texts = {c.text for c in data.canaries}
    assert not canary_texts & set(data.client_texts[0])
    assert canary_texts & set(data.client_texts[1])


def test_every_qa_sample_is_trained_by_exactly_one_client(tiny_raw):
    data = build_federated_data(build_config(tiny_raw), load_tokenizer)
    canary_texts = {c.text for c in (*data.canaries, *data.exposure_canaries)}
    qa = [t for t in data.pooled_texts if t not in canary_texts]
    assert len(qa) == 120 - len(data.heldout)
    sizes = [len([t for t in texts if t not in canary_texts]) for texts in data.client_texts]
    assert max(sizes) - min(sizes) <= 1
