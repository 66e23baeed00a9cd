import json
import re
import time
from collections import Counter

import pytest

from fedmem.data.canaries import make_canaries
from fedmem.data.qa import (
    SOURCES,
    QAPair,
    format_qa,
    format_question,
    generate_qa,
    load_qa_jsonl,
    public_corpus,
)
from fedmem.data.resources.icd10 import load_icd10_codes
from fedmem.files import DataError


@pytest.fixture(scope="module")
def pairs() -> list[QAPair]:
    return generate_qa(3000, seed=7)


def by_source(pairs: list[QAPair], source: str) -> list[QAPair]:
    return [p for p in pairs if p.source == source]


# --- generate_qa ------------------------------------------------------------------------


def test_same_seed_gives_identical_pairs():
    assert generate_qa(200, seed=1) == generate_qa(200, seed=1)


def test_different_seeds_give_different_pairs():
    assert generate_qa(200, seed=1) != generate_qa(200, seed=2)


def test_returns_exactly_n_pairs():
    assert len(generate_qa(37, seed=0)) == 37
    assert generate_qa(0, seed=0) == []


def test_negative_n_is_rejected():
    with pytest.raises(ValueError, match="n must be >= 0"):
        generate_qa(-1, seed=0)


def test_3000_pairs_have_at_least_2900_distinct_questions(pairs):
    assert len({p.question for p in pairs}) >= 2900


def test_every_style_is_generated_in_fair_share(pairs):
    counts = Counter(p.source for p in pairs)
    assert set(counts) == set(SOURCES)
    assert min(counts.values()) > len(pairs) / len(SOURCES) * 0.8


def test_every_pair_has_a_topic(pairs):
    assert all(p.topic for p in pairs)


def test_icd_questions_are_topiced_by_chapter(pairs):
    chapters = {c.chapter for c in load_icd10_codes()}
    assert {p.topic for p in by_source(pairs, "icd")} <= chapters


def test_mcq_has_four_distinct_options_and_a_letter_answer(pairs):
    for p in by_source(pairs, "mcq"):
        assert len(p.options) == 4
        assert len(set(p.options)) == 4
        assert p.answer in "ABCD"


def test_mcq_correct_letter_is_shuffled(pairs):
    letters = Counter(p.answer for p in by_source(pairs, "mcq"))
    assert set(letters) == set("ABCD")
    assert min(letters.values()) > sum(letters.values()) / 4 * 0.7


def test_only_mcq_has_options(pairs):
    assert all(not p.options for p in pairs if p.source != "mcq")


def test_yesno_answers_are_balanced(pairs):
    answers = Counter(p.answer for p in by_source(pairs, "yesno"))
    assert set(answers) == {"Yes", "No"}
    assert abs(answers["Yes"] - answers["No"]) < 0.15 * sum(answers.values())


def test_icd_code_answers_name_the_description_in_the_question(pairs):
    description = {c.code: c.description for c in load_icd10_codes()}
    code_answers = [p for p in by_source(pairs, "icd") if p.answer in description]
    assert code_answers
    for p in code_answers:
        assert description[p.answer].lower() in p.question


def test_generating_5000_pairs_takes_under_a_second_once_tables_are_loaded():
    generate_qa(1, seed=0)
    start = time.perf_counter()
    generate_qa(5000, seed=0)
    assert time.perf_counter() - start < 1.0


# --- formatting -------------------------------------------------------------------------


def test_format_qa_is_the_question_prompt_plus_the_answer():
    pair = QAPair("What is X?", "Y", "open", "t")
    assert format_qa(pair) == format_question(pair) + " Y"
    assert format_qa(pair) == "Question: What is X?\nAnswer: Y"


def test_question_prompt_lists_lettered_options_and_ends_with_answer_marker():
    pair = QAPair("Pick one.", "B", "mcq", "t", ("red", "green", "blue", "grey"))
    assert format_question(pair) == (
        "Question: Pick one.\nA. red\nB. green\nC. blue\nD. grey\nAnswer:"
    )


# --- load_qa_jsonl ----------------------------------------------------------------------


def write_lines(tmp_path, lines: list[str]):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loads_pairs_with_defaults_for_source_and_topic(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"question": "Q?", "answer": "A"})])
    assert load_qa_jsonl(path) == [QAPair("Q?", "A", "open", "general")]


def test_loads_multiple_choice_options_as_a_tuple(tmp_path):
    row = {"question": "Q?", "answer": "B", "source": "mcq", "topic": "x", "options": ["1", "2"]}
    path = write_lines(tmp_path, [json.dumps(row)])
    assert load_qa_jsonl(str(path)) == [QAPair("Q?", "B", "mcq", "x", ("1", "2"))]


def test_blank_lines_are_skipped(tmp_path):
    row = json.dumps({"question": "Q?", "answer": "A"})
    path = write_lines(tmp_path, ["", row, "   ", row])
    assert len(load_qa_jsonl(path)) == 2


def test_generated_pairs_survive_a_jsonl_round_trip(tmp_path):
    original = generate_qa(50, seed=3)
    rows = [
        {
            "question": p.question,
            "answer": p.answer,
            "source": p.source,
            "topic": p.topic,
            "options": list(p.options),
        }
        for p in original
    ]
    path = write_lines(tmp_path, [json.dumps(r) for r in rows])
    assert load_qa_jsonl(path) == original


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"question": "Q?"}', "missing key 'answer'"),
        ('{"answer": "A"}', "missing key 'question'"),
        ('{"question": 3, "answer": "A"}', "key 'question' must be a string, got int"),
        ('{"question": "Q?", "answer": ""}', "key 'answer' is empty"),
        ('["Q?", "A"]', "expected a JSON object, got list"),
        ('{"question": "Q?", "answer": "A", "options": "A,B"}', "list of strings"),
        ('{"question": "Q?", "answer": "C", "options": ["x", "y"]}', "letter A-B"),
    ],
)
def test_malformed_line_is_reported_with_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"question": "Q?", "answer": "A"})
    path = write_lines(tmp_path, [good, "", bad_line])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        load_qa_jsonl(path)


def test_invalid_utf8_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b'{"question": "Q?", "answer": "A"}\n\xff\xfe\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid UTF-8")):
        load_qa_jsonl(path)


def test_missing_file_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_qa_jsonl(path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- public_corpus ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return public_corpus(seed=5, n_qa=40, n_icd=300, n_records=30)


def test_public_corpus_holds_the_requested_number_of_texts(corpus):
    assert len(corpus) == 300 + 40 + 30


def test_public_corpus_is_deterministic_in_seed(corpus):
    assert public_corpus(seed=5, n_qa=40, n_icd=300, n_records=30) == corpus


def test_public_corpus_has_icd_lines_qa_prompts_and_records(corpus):
    assert sum(bool(re.fullmatch(r"[A-Z][0-9A-Z]{2}(\.[0-9A-Z]+)?: .+", t)) for t in corpus) == 300
    assert sum(t.startswith("Question: ") for t in corpus) == 40
    assert sum("SSN" in t for t in corpus) == 30


def test_public_qa_differs_from_client_qa_drawn_with_the_same_seed(corpus):
    client = {format_qa(p) for p in generate_qa(40, seed=5)}
    assert not client <= set(corpus)


def test_public_corpus_contains_no_canary_secret_made_with_the_same_seed(corpus):
    canaries = make_canaries([1, 2], 5, [0, 1], "single", seed=5)
    text = "\n".join(corpus)
    assert not any(c.suffix in text for c in canaries)
