"""Whole synthetic clinical notes as canaries (`canaries.kind = "note"`): their length in the
tiny Llama's tokens, the split inside the note, sensitive values throughout, variety and
determinism, the study's replica groups, the keys that configure them, and the short records
of the quickstart left exactly as they were."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest

from attacks.extraction import split_record
from fedmem.config import ConfigError, load_config
from fedmem.data.canaries import generate_records, to_jsonl_rows
from fedmem.data.clinical_notes import generate_notes
from fedmem.data.federated import build_federated_data
from fedmem.data.resources.diseases import load_diseases
from fedmem.models.loading import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
NOTES_SMALL = REPO / "configs" / "notes-small.toml"
QUICKSTART = REPO / "configs" / "quickstart.toml"

# (note_min_tokens, note_max_tokens, note_split_tokens)
SMALL = (300, 500, 100)  # configs/notes-small.toml: fits the tiny Llama's 512 positions
STUDY = (600, 1000, 500)  # configs/paper/: the study's 500-token prefix, 1024-token rows
WIDE = (300, 1500, 200)  # the generator's whole range
RANGES = {"small": SMALL, "study": STUDY, "wide": WIDE}

SENSITIVE_FIELDS = {
    "name", "mrn", "dob", "ssn", "address", "phone", "date", "physician", "diagnosis",
    "icd10", "medication", "dose",
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny Llama's own tokenizer (the quickstart's model, which configs/notes-small
    trains); its first use builds the base model into the test cache, as `fedmem prepare`."""
    return load_tokenizer(load_config(QUICKSTART))


@pytest.fixture(scope="module")
def notes(tokenizer) -> dict:
    """24 notes per range, each range from its own seed (one seed gives the same patients
    whatever the range, trimmed to different lengths)."""
    return {
        name: generate_notes(24, seed, tokenizer, *RANGES[name])
        for seed, name in enumerate(RANGES, start=5)
    }


def token_ends(tokenizer, text: str) -> list[int]:
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [end for start, end in offsets if end > start]


def longest_common_substring(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        spans = {a[i : i + mid] for i in range(len(a) - mid + 1)}
        if any(b[j : j + mid] in spans for j in range(len(b) - mid + 1)):
            lo = mid
        else:
            hi = mid - 1
    return lo


# --- the generator ----------------------------------------------------------------------


@pytest.mark.parametrize("name", RANGES)
def test_notes_are_within_their_token_range(notes, tokenizer, name):
    low, high, _ = RANGES[name]
    sizes = [len(tokenizer(note.text)["input_ids"]) for note, _ in notes[name]]
    assert all(low <= n <= high for n in sizes), sizes
    # Lengths are drawn across the range, not piled up at one end.
    assert min(sizes) < low + 0.4 * (high - low) and max(sizes) > low + 0.6 * (high - low)
    assert all(len(note.text) > 1.5 * n for (note, _), n in zip(notes[name], sizes, strict=True))


@pytest.mark.parametrize("name", RANGES)
def test_split_is_a_sentence_or_line_end_after_split_tokens(notes, tokenizer, name):
    low, _, split_tokens = RANGES[name]
    for note, split in notes[name]:
        assert split in note.boundaries
        assert note.text[split] in " \n"  # the secret starts with a new sentence or line
        ends = token_ends(tokenizer, note.text)
        before = sum(1 for e in ends if e <= split)
        assert before >= split_tokens
        assert len(ends) - before >= low - split_tokens


@pytest.mark.parametrize(
    ("name", "lengths"), [("study", (10, 50, 100, 200, 500)), ("small", (10, 50, 100))]
)
def test_the_prefix_sweep_gives_distinct_prompts_ending_at_the_split(
    notes, tokenizer, name, lengths
):
    for i, (note, split) in enumerate(notes[name]):
        targets = [split_record(tokenizer, f"n{i}", note.text, split, n, 50) for n in lengths]
        prompts = [tokenizer.decode(list(t.prefix_ids)) for t in targets]
        assert [len(t.prefix_ids) for t in targets] == list(lengths)
        assert len(set(prompts)) == len(prompts)  # pairwise different strings
        assert all(note.text[:split].endswith(p) for p in prompts)
        assert {len(t.suffix_ids) for t in targets} == {50}


def test_short_records_collapse_long_prefixes_to_one_prompt(tokenizer):
    """Why notes: a record's whole header is shorter than 100 tokens, so the prefixes of
    100, 200 and 500 tokens are one prompt."""
    for i, (text, split) in enumerate(generate_records(10, seed=3)):
        targets = {
            split_record(tokenizer, f"r{i}", text, split, n, 50).prefix_ids for n in (100, 200, 500)
        }
        assert len(targets) == 1


@pytest.mark.parametrize("name", RANGES)
def test_sensitive_values_run_through_the_whole_note(notes, name):
    seen: set[str] = set()
    for note, split in notes[name]:
        secret = note.text[split:]
        after = {(f, v) for f, v in note.sensitive if v in secret}
        assert len({v for _, v in after}) >= 5 and len({f for f, _ in after}) >= 3, after
        quarters = [0] * 4
        for _, value in note.sensitive:
            for match in re.finditer(re.escape(value), note.text):
                quarters[min(3, 4 * match.start() // len(note.text))] += 1
        assert min(quarters) >= 1, quarters
        fields = {f for f, _ in note.sensitive}
        assert {"name", "mrn", "dob", "date", "physician", "diagnosis"} <= fields
        assert all(v in note.text for _, v in note.sensitive)
        seen |= fields
    assert seen >= SENSITIVE_FIELDS


def test_notes_are_admission_notes_and_discharge_summaries_with_clinical_sections(notes):
    wide = [note for note, _ in notes["wide"]]
    assert {note.kind for note in wide} == {"admission", "discharge"}
    codes = {d.icd10 for d in load_diseases()}
    names = {d.name for d in load_diseases()}
    for note in wide:
        icd = [v for f, v in note.sensitive if f == "icd10"]
        assert set(icd) <= codes
        assert any(v in names for f, v in note.sensitive if f == "diagnosis")

    def share(pattern: str) -> float:
        return sum(bool(re.search(pattern, note.text)) for note in wide) / len(wide)

    assert share(r"(?i)medication") >= 0.6
    assert share(r"(?i)allerg|NKDA") >= 0.6
    assert share(r"\d (mmol/L|mg/dL|g/dL|U/L|pg/mL)") >= 0.6  # lab values with units
    assert share(r"(?i)plan|hospital course|A/P") == 1  # the principal problem, always
    assert share(r"(?i)follow") >= 0.5


def test_no_two_notes_share_a_long_verbatim_span(notes):
    """Templates x random content: two notes have section headings in common, not text."""
    texts = [note.text for note, _ in notes["wide"][:8]] + [n.text for n, _ in notes["small"][:4]]
    for a, b in itertools.combinations(texts, 2):
        shared = longest_common_substring(a, b)
        assert shared <= 80 and shared <= 0.1 * min(len(a), len(b)), shared


def test_same_seed_gives_the_same_notes_and_another_seed_others(tokenizer, notes):
    again = generate_notes(24, 5, tokenizer, *SMALL)
    assert again == notes["small"]
    other = generate_notes(6, 4, tokenizer, *SMALL)
    assert {n.text for n, _ in other}.isdisjoint(n.text for n, _ in notes["small"])


def test_record_numbers_and_ssns_are_unique(notes):
    for batch in notes.values():
        for field in ("mrn", "ssn"):
            values = [next((v for f, v in n.sensitive if f == field), None) for n, _ in batch]
            present = [v for v in values if v is not None]
            assert len(set(present)) == len(present)


def test_a_length_no_note_can_reach_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="widen the range"):
        generate_notes(2, 0, tokenizer, 40, 60, 10)
    with pytest.raises(ValueError, match="split_tokens"):
        generate_notes(2, 0, tokenizer, 300, 500, 300)


# --- config -----------------------------------------------------------------------------


def test_notes_small_preset_groups_twenty_notes_as_the_study():
    c = load_config(NOTES_SMALL).canaries
    assert c.kind == "note" and c.group_sizes() == ((1, 14), (10, 6))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["canaries.note_max_tokens=600"], ["canaries.note_max_tokens", "training.max_seq_len"]),
        (["training.max_seq_len=400"], ["canaries.note_max_tokens", "training.max_seq_len"]),
        (
            ["training.max_seq_len=1024", "canaries.note_max_tokens=900"],
            ["canaries.note_max_tokens", "model.name"],
        ),
        (["attack.prefix_sweep=[10, 50, 200]"], ["attack.prefix_sweep", "note_split_tokens"]),
        (["attack.prefix_tokens=150"], ["attack.prefix_tokens", "note_split_tokens"]),
        (["attack.suffix_tokens=250"], ["attack.suffix_tokens", "canaries.note_min_tokens"]),
        (["canaries.note_min_tokens=501"], ["canaries.note_min_tokens", "note_max_tokens"]),
        (["canaries.note_split_tokens=300"], ["canaries.note_split_tokens", "note_min_tokens"]),
        (
            ["canaries.source=jsonl", "canaries.path=notes.jsonl"],
            ["canaries.kind", "canaries.source"],
        ),
    ],
)
def test_inconsistent_note_keys_are_one_line_errors_naming_them(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_config(NOTES_SMALL, overrides)
    message = str(err.value)
    assert "\n" not in message
    assert all(key in message for key in named), message


# --- federated data ---------------------------------------------------------------------


def test_notes_small_data_injects_the_study_groups(tokenizer):
    config = load_config(NOTES_SMALL)
    data = build_federated_data(config, lambda _: tokenizer)
    canaries = data.canaries
    assert collections.Counter(c.replicas for c in canaries) == {0: 20, 1: 14, 10: 6}
    texts = collections.Counter(t for client in data.client_texts for t in client)
    for c in canaries:
        assert texts[c.text] == c.replicas  # every copy injected, twins never
        assert 300 <= len(tokenizer(c.text)["input_ids"]) <= config.canaries.note_max_tokens
        assert sum(1 for e in token_ends(tokenizer, c.text) if e <= c.split) >= 100


def test_a_note_length_the_tokenizer_cannot_give_is_a_one_line_config_error(tokenizer):
    config = load_config(
        NOTES_SMALL, ["canaries.note_min_tokens=350", "canaries.note_max_tokens=350"]
    )
    with pytest.raises(ConfigError, match="widen the range") as err:
        build_federated_data(config, lambda _: tokenizer)
    assert "canaries.note_min_tokens" in str(err.value) and "\n" not in str(err.value)


# The hash of build_federated_data(configs/quickstart.toml) (client texts, prompt lengths,
# held-out texts, canaries, exposure canaries), computed on main before notes existed.
QUICKSTART_DATA_SHA256 = "342af0ed58c868f71bf90f819d07294334761b42427a3eb9f34c900adc9004c0"


def test_quickstart_records_are_byte_identical_to_before_notes():
    def no_tokenizer(config):
        raise AssertionError("short records need no tokenizer")

    data = build_federated_data(load_config(QUICKSTART), no_tokenizer)
    blob = json.dumps(
        {
            "client_texts": data.client_texts,
            "prompt_chars": data.client_prompt_chars,
            "heldout": data.heldout_texts,
            "canaries": to_jsonl_rows(data.canaries),
            "exposure": to_jsonl_rows(data.exposure_canaries),
        },
        sort_keys=True,
    ).encode()
    assert hashlib.sha256(blob).hexdigest() == QUICKSTART_DATA_SHA256
