"""Canary sources and placement: the user's own records (split by characters or tokens, a
random half held back as twins) and copies placed in proportion to client data sizes."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from attacks.extraction import split_record
from fedmem.config import build_config
from fedmem.data.canaries import load_records, make_canaries, split_records
from fedmem.data.federated import build_federated_data
from fedmem.files import DataError
from fedmem.models.loading import load_tokenizer


def _records(path, n: int) -> str:
    notes = [
        {
            "id": f"note-{i}",
            "text": f"Record {i:03d}. Patient Jane Roe {i}, MRN 77{i:04d}. "
            f"Admitted with chest pain; troponin {i}.{i % 7} ng/mL; discharged on aspirin.",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(n) + "\n" for n in notes))
    return str(path)


def _user_canaries(tiny_raw, path, **canaries):
    return build_config(
        {
            **tiny_raw,
            "canaries": {
                **tiny_raw["canaries"],
                "source": "jsonl",
                "path": path,
                **canaries,
            },
        }
    )


def test_user_records_half_injected_half_held_back_as_twins(tiny_raw, tmp_path):
    path = _records(tmp_path / "notes.jsonl", 8)  # tiny_raw needs 2 counts x 2 x 2 = 8
    data = build_federated_data(_user_canaries(tiny_raw, path, split_unit="chars"), load_tokenizer)
    texts = {json.loads(line)["text"] for line in Path(path).read_text().splitlines()}
    assert {c.text for c in data.canaries} == texts
    injected = [c for c in data.canaries if c.injected]
    twins = [c for c in data.canaries if not c.injected]
    assert len(injected) == len(twins) == 4
    trained = set(data.pooled_texts)
    assert all(c.text in trained for c in injected)
    assert not any(c.text in trained for c in twins)


def test_user_records_are_paired_in_a_seeded_random_order(tiny_raw, tmp_path):
    path = _records(tmp_path / "notes.jsonl", 8)
    a = build_federated_data(_user_canaries(tiny_raw, path, split_unit="chars"), load_tokenizer)
    other_seed = _user_canaries({**tiny_raw, "seed": 1}, path, split_unit="chars")
    b = build_federated_data(other_seed, load_tokenizer)
    in_file_order = [json.loads(line)["text"] for line in Path(path).read_text().splitlines()]
    assert [c.text for c in a.canaries] != in_file_order
    assert [c.text for c in a.canaries] != [c.text for c in b.canaries]


def test_character_split_puts_the_first_n_characters_in_the_prefix(tmp_path):
    path = _records(tmp_path / "notes.jsonl", 2)
    (text, split), _ = split_records(load_records(path), 12, "chars", path)
    assert split == 12 and text[:split] == "Record 000. "


def test_token_split_gives_the_attacker_exactly_n_tokens(tiny_raw, tmp_path):
    path = _records(tmp_path / "notes.jsonl", 2)
    tokenizer = load_tokenizer(build_config(tiny_raw))
    for text, split in split_records(load_records(path), 10, "tokens", path, tokenizer):
        target = split_record(tokenizer, "c", text, split, prefix_tokens=100, suffix_tokens=500)
        assert len(target.prefix_ids) == 10
        assert tokenizer.decode(list(target.prefix_ids + target.suffix_ids)) == text


def test_record_line_without_text_fails_with_file_line_and_field(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"text": "a full record"}\n\n{"note": "no text here"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:3: missing field 'text'")):
        load_records(path)


def test_record_shorter_than_the_prefix_fails_with_its_line(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"text": "a long enough record"}\n{"text": "short"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: record has 5 chars")):
        split_records(load_records(path), 8, "chars", str(path))


def test_too_few_records_for_injected_and_twins_is_a_data_error(tiny_raw, tmp_path):
    path = _records(tmp_path / "notes.jsonl", 7)
    with pytest.raises(DataError, match="7 records, but 8 are needed"):
        build_federated_data(_user_canaries(tiny_raw, path, split_unit="chars"), load_tokenizer)


def test_proportional_placement_follows_client_data_sizes():
    canaries = make_canaries(
        [8], 40, [0, 1, 2], "proportional", seed=3, client_weights=[100, 0, 300]
    )
    copies = Counter(client for c in canaries for client in c.clients)
    assert copies[1] == 0
    assert copies[0] + copies[2] == 8 * 40
    assert 2.5 < copies[2] / copies[0] < 3.5  # 3x the data, ~3x the copies


def test_proportional_placement_without_sizes_is_rejected():
    with pytest.raises(ValueError, match="needs client_weights"):
        make_canaries([1], 1, [0], "proportional", seed=0)
