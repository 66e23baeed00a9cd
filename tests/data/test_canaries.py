import json
import re
from collections import Counter

import pytest

from fedmem.data.canaries import (
    DEFAULT_REPLICA_COUNTS,
    MIN_SECRET_FRACTION,
    Canary,
    generate_records,
    inject,
    make_canaries,
    make_exposure_canaries,
    to_jsonl_rows,
)


@pytest.fixture(scope="module")
def records() -> list[tuple[str, int]]:
    return generate_records(300, seed=11)


def injected(canaries: list[Canary]) -> list[Canary]:
    return [c for c in canaries if c.replicas > 0]


def twins(canaries: list[Canary]) -> list[Canary]:
    return [c for c in canaries if c.replicas == 0]


# --- generate_records -------------------------------------------------------------------


def test_same_seed_gives_identical_records():
    assert generate_records(20, seed=1) == generate_records(20, seed=1)


def test_different_seeds_give_different_records():
    assert set(generate_records(20, seed=1)).isdisjoint(generate_records(20, seed=2))


def test_records_and_their_secrets_are_all_distinct(records):
    assert len({text for text, _ in records}) == len(records)
    assert len({text[split:] for text, split in records}) == len(records)


def test_record_numbers_and_ssns_are_all_distinct(records):
    mrns = [re.search(r"\d{4}-\d{4}", text).group() for text, _ in records]
    ssns = [re.search(r"\d{3}-\d{2}-\d{4}", text).group() for text, _ in records]
    assert len(set(mrns)) == len(set(ssns)) == len(records)


def test_records_are_a_few_hundred_characters_long(records):
    assert all(250 <= len(text) <= 550 for text, _ in records)


def test_split_falls_right_after_a_newline(records):
    for text, split in records:
        assert text[split - 1] == "\n"
        assert not text[split].isspace()


def test_secret_suffix_is_most_of_the_record(records):
    assert all(len(text) - split >= MIN_SECRET_FRACTION * len(text) for text, split in records)


def test_prefix_holds_record_number_and_suffix_holds_ssn_birth_date_and_diagnosis(records):
    for text, split in records:
        prefix, suffix = text[:split], text[split:]
        assert re.search(r"\d{4}-\d{4}", prefix)
        assert re.search(r"SSN:? \d{3}-\d{2}-\d{4}", suffix)
        assert re.search(r"\d{4}-\d{2}-\d{2}", suffix)
        assert "Dr. " in suffix


def test_records_come_in_several_layouts(records):
    first_lines = Counter(text.split(" ", 1)[0] for text, _ in records)
    assert len(first_lines) >= 3


# --- make_canaries ----------------------------------------------------------------------


def test_one_injected_canary_and_one_twin_per_count_and_repetition():
    canaries = make_canaries([1, 2, 4, 8], 3, [0, 1], "single", seed=0)
    assert len(canaries) == 2 * 4 * 3
    assert Counter(c.replicas for c in injected(canaries)) == {1: 3, 2: 3, 4: 3, 8: 3}
    assert len(twins(canaries)) == 12


def test_default_replica_counts_are_powers_of_two_up_to_eight():
    assert tuple(DEFAULT_REPLICA_COUNTS) == (1, 2, 4, 8)


def test_canary_ids_are_unique_and_twins_point_at_each_other():
    canaries = make_canaries([1, 2], 2, [0], "single", seed=0)
    by_id = {c.canary_id: c for c in canaries}
    assert len(by_id) == len(canaries)
    for c in injected(canaries):
        twin = by_id[c.twin_id]
        assert twin.replicas == 0 and twin.twin_id == c.canary_id


def test_canary_ids_are_numbered_from_c0000():
    canaries = make_canaries([1], 1, [0], "single", seed=0)
    assert [c.canary_id for c in canaries] == ["c0000", "c0001"]


def test_all_canary_texts_are_distinct():
    canaries = make_canaries([1, 2, 4, 8], 5, [0, 1], "spread", seed=0)
    assert len({c.text for c in canaries}) == len(canaries)


def test_same_seed_gives_identical_canaries():
    args = ([1, 4], 2, [0, 1, 2], "spread")
    assert make_canaries(*args, seed=9) == make_canaries(*args, seed=9)


def test_each_injected_canary_lists_one_client_per_copy_and_twins_none():
    canaries = make_canaries([1, 2, 4, 8], 2, [3, 5], "spread", seed=0)
    assert all(len(c.clients) == c.replicas for c in canaries)
    assert all(c.clients == () for c in twins(canaries))


def test_single_placement_puts_all_copies_on_one_target_client():
    canaries = make_canaries([1, 2, 4, 8], 2, [3, 5], "single", seed=0)
    for c in injected(canaries):
        assert len(set(c.clients)) == 1
        assert c.clients[0] in (3, 5)


def test_single_placement_deals_canaries_round_robin_over_targets():
    canaries = make_canaries([1, 2, 4], 2, [0, 1, 2], "single", seed=0)
    assert [c.clients[0] for c in injected(canaries)] == [0, 1, 2, 0, 1, 2]


def test_spread_placement_draws_copies_from_targets_only_and_uses_several():
    canaries = make_canaries([8], 10, [1, 2, 3], "spread", seed=0)
    used = Counter(client for c in canaries for client in c.clients)
    assert set(used) == {1, 2, 3}
    assert any(len(set(c.clients)) > 1 for c in canaries)


def test_a_size_per_replica_count_gives_the_study_groups():
    """The study's 70 % once, 30 % ten times: per_count per replica count."""
    canaries = make_canaries(
        [1, 10], [7, 3], [0, 1, 2], "proportional", seed=0, client_weights=[1, 2, 3]
    )
    assert [c.replicas for c in injected(canaries)] == [1] * 7 + [10] * 3
    assert len(twins(canaries)) == 10
    assert all(len(c.clients) == c.replicas for c in canaries)
    assert make_canaries([1, 2], [2, 2], [0], "single", seed=1) == make_canaries(
        [1, 2], 2, [0], "single", seed=1
    )


def test_prefix_and_suffix_reassemble_the_text():
    for c in make_canaries([1], 2, [0], "single", seed=0):
        assert c.prefix + c.suffix == c.text
        assert c.prefix == c.text[: c.split]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"placement": "scatter"}, "unknown placement 'scatter'"),
        ({"target_clients": []}, "target_clients must not be empty"),
        ({"target_clients": [-1]}, "client indices must be >= 0"),
        ({"replica_counts": [1, 0]}, "replica counts must be >= 1, got 0"),
        ({"replica_counts": []}, "replica_counts must not be empty"),
        ({"per_count": 0}, "per_count must be >= 1, got 0"),
        ({"per_count": [1, 0]}, "per_count must be >= 1, got 0"),
        ({"per_count": [1]}, "1 per-count sizes for 2 replica counts"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(kwargs, message):
    args = {
        "replica_counts": [1, 2],
        "per_count": 1,
        "target_clients": [0],
        "placement": "single",
        "seed": 0,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        make_canaries(**(args | kwargs))


# --- inject -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clients() -> list[list[str]]:
    return [[f"client{k}-sample{i}" for i in range(10)] for k in range(3)]


@pytest.fixture(scope="module")
def spread() -> list[Canary]:
    return make_canaries([1, 2, 4, 8], 2, [0, 1, 2], "spread", seed=4)


def test_each_injected_canary_appears_exactly_replicas_times(clients, spread):
    counts = Counter(s for client in inject(clients, spread, seed=0) for s in client)
    for c in injected(spread):
        assert counts[c.text] == c.replicas


def test_twins_appear_nowhere(clients, spread):
    everything = {s for client in inject(clients, spread, seed=0) for s in client}
    assert not any(c.text in everything for c in twins(spread))


def test_copies_land_on_their_assigned_clients(clients, spread):
    result = inject(clients, spread, seed=0)
    for c in injected(spread):
        placed = Counter(k for k, client in enumerate(result) for s in client if s == c.text)
        assert placed == Counter(c.clients)


def test_other_samples_keep_their_order(clients, spread):
    texts = {c.text for c in spread}
    for before, after in zip(clients, inject(clients, spread, seed=0), strict=True):
        assert [s for s in after if s not in texts] == before


def test_input_lists_are_not_modified(clients, spread):
    snapshot = [list(client) for client in clients]
    inject(clients, spread, seed=0)
    assert clients == snapshot


def test_injection_positions_depend_on_the_seed(clients, spread):
    assert inject(clients, spread, seed=0) == inject(clients, spread, seed=0)
    assert inject(clients, spread, seed=0) != inject(clients, spread, seed=1)


def test_copies_are_not_all_appended_at_the_end(clients):
    canaries = make_canaries([8], 4, [0], "single", seed=0)
    result = inject([clients[0]], canaries, seed=0)[0]
    texts = {c.text for c in canaries}
    assert any(s in texts for s in result[: len(result) // 2])


def test_canary_for_a_missing_client_is_rejected(clients):
    canaries = make_canaries([1], 1, [7], "single", seed=0)
    with pytest.raises(ValueError, match="targets client 7, but there are 3 clients"):
        inject(clients, canaries, seed=0)


# --- to_jsonl_rows ----------------------------------------------------------------------


def test_jsonl_rows_carry_all_fields_and_the_injected_flag():
    canaries = make_canaries([2], 1, [0, 1], "spread", seed=0)
    rows = to_jsonl_rows(canaries)
    assert [r["injected"] for r in rows] == [True, False]
    for row, c in zip(rows, canaries, strict=True):
        assert row["canary_id"] == c.canary_id
        assert row["prefix"] + row["suffix"] == row["text"] == c.text
        assert row["clients"] == list(c.clients)
        assert (row["split"], row["replicas"], row["twin_id"]) == (c.split, c.replicas, c.twin_id)


def test_jsonl_rows_are_json_serializable():
    rows = to_jsonl_rows(make_canaries([1], 1, [0], "single", seed=0))
    assert json.loads(json.dumps(rows)) == rows


def test_exposure_canaries_end_in_a_digit_secret_and_pair_with_twins():
    canaries = make_exposure_canaries((1, 4), 2, 5, (0, 1), "single", seed=3)
    assert [c.canary_id for c in canaries[:2]] == ["e0000", "e0001"]
    assert [c.replicas for c in canaries] == [1, 0, 1, 0, 4, 0, 4, 0]
    for c in canaries:
        assert c.suffix[0] == " " and c.suffix[1:].isdigit() and len(c.suffix) == 6
        assert c.text == c.prefix + c.suffix
    assert canaries[0].twin_id == "e0001" and canaries[1].twin_id == "e0000"
    assert make_exposure_canaries((1,), 0, 3, (0,), "spread", seed=3) == []
