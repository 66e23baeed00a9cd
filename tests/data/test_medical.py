"""Published medical datasets: each layout and file format reads field by field; malformed
rows fail with file:line and the field at fault; prompts follow the reference study."""

from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest

from fedmem.config import DatasetConfig
from fedmem.data.medical import load_medical
from fedmem.data.qa import format_qa
from fedmem.files import DataError

MEDMCQA_ROW = {
    "id": "e9ad821a",
    "question": "Which vitamin deficiency causes scurvy?",
    "opa": "Vitamin A",
    "opb": "Vitamin B12",
    "opc": "Vitamin C",
    "opd": "Vitamin D",
    "exp": "Ascorbic acid is needed for collagen synthesis.",
    "subject_name": "Biochemistry",
    "topic_name": "Vitamins",
    "choice_type": "single",
}


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(name: str, path, size: int = 0):
    return load_medical(name, DatasetConfig(path=str(path), size=size))


# --- MedMCQA ---------------------------------------------------------------------------


def test_medmcqa_original_release_numbers_cop_from_one(tmp_path):
    # The original release is JSON Lines in a file named train.json, cop 1..4.
    path = tmp_path / "train.json"
    _jsonl(path, [{**MEDMCQA_ROW, "cop": 3}, {**MEDMCQA_ROW, "question": "Q2?", "cop": 1}])
    first, second = _load("medmcqa", path)
    assert first.question == "Which vitamin deficiency causes scurvy?"
    assert first.options == ("Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D")
    assert (first.answer, second.answer) == ("C", "A")
    assert (first.source, first.topic, first.prompt_format) == ("medmcqa", "Biochemistry", "mcq")


def test_medmcqa_parquet_export_numbers_cop_from_zero(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame([{**MEDMCQA_ROW, "cop": 2}, {**MEDMCQA_ROW, "cop": 1}]).to_parquet(path)
    assert [p.answer for p in _load("medmcqa", path)] == ["C", "B"]


def test_medmcqa_numbering_is_read_from_the_values_when_they_tell(tmp_path):
    # A 0 can only be 0-based, whatever the file format.
    path = _jsonl(tmp_path / "m.jsonl", [{**MEDMCQA_ROW, "cop": 0}, {**MEDMCQA_ROW, "cop": 2}])
    assert [p.answer for p in _load("medmcqa", path)] == ["A", "C"]


def test_medmcqa_skips_rows_without_four_options(tmp_path):
    rows = [{**MEDMCQA_ROW, "cop": 1}, {**MEDMCQA_ROW, "opd": "", "cop": 2}]
    assert len(_load("medmcqa", _jsonl(tmp_path / "m.jsonl", rows))) == 1


def test_medmcqa_prompt_is_the_study_mcq_format(tmp_path):
    (pair,) = _load("medmcqa", _jsonl(tmp_path / "m.jsonl", [{**MEDMCQA_ROW, "cop": 3}]))
    assert format_qa(pair) == (
        "MCQ: Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin B12\n"
        "C. Vitamin C\nD. Vitamin D\nThe answer is: C"
    )


def test_medmcqa_row_missing_cop_fails_with_file_line_and_field(tmp_path):
    rows = [{**MEDMCQA_ROW, "cop": 1}, {**MEDMCQA_ROW, "cop": 2}, MEDMCQA_ROW]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{path}:3: missing field 'cop'")):
        _load("medmcqa", path)


def test_medmcqa_parquet_row_missing_a_value_names_the_row(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame([{**MEDMCQA_ROW, "cop": 1}, {**MEDMCQA_ROW, "cop": None}]).to_parquet(path)
    with pytest.raises(DataError, match=re.escape(f"{path}:row 2: field 'cop'")):
        _load("medmcqa", path)


def test_medmcqa_with_both_zero_and_four_is_rejected(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{**MEDMCQA_ROW, "cop": 0}, {**MEDMCQA_ROW, "cop": 4}])
    with pytest.raises(DataError, match="holds both 0 and 4"):
        _load("medmcqa", path)


# --- PubMedQA --------------------------------------------------------------------------


def test_pubmedqa_original_json_keyed_by_pmid(tmp_path):
    path = tmp_path / "ori_pqal.json"
    doc = {
        "21645374": {
            "QUESTION": "Do mitochondria play a role in remodelling lace plant leaves?",
            "CONTEXTS": ["Programmed cell death occurs.", "Mitochondria were imaged."],
            "LABELS": ["BACKGROUND", "RESULTS"],
            "MESHES": ["Mitochondria"],
            "final_decision": "yes",
            "LONG_ANSWER": "Results suggest so.",
        },
        "16418930": {
            "QUESTION": "Is the test useful?",
            "CONTEXTS": ["We studied 20 patients."],
            "final_decision": "maybe",
        },
    }
    path.write_text(json.dumps(doc, indent=2))
    first, second = _load("pubmedqa", path)
    assert first.question == "Do mitochondria play a role in remodelling lace plant leaves?"
    assert first.context == "Programmed cell death occurs. Mitochondria were imaged."
    assert (first.answer, second.answer) == ("yes", "maybe")
    assert (first.source, first.prompt_format) == ("pubmedqa", "closed")


def test_pubmedqa_hub_layout_pqa_labeled_from_parquet(tmp_path):
    path = tmp_path / "pqa_labeled.parquet"
    row = {
        "pubid": 25429730,
        "question": "Are group 2 innate lymphoid cells increased in rhinosinusitis?",
        "context": {
            "contexts": ["Chronic rhinosinusitis is common.", "ILC2s were counted."],
            "labels": ["BACKGROUND", "METHODS"],
            "meshes": ["Adult"],
            "reasoning_required_pred": ["yes"],
            "reasoning_free_pred": ["yes"],
        },
        "long_answer": "They are.",
        "final_decision": "yes",
    }
    pd.DataFrame([row]).to_parquet(path)
    (pair,) = _load("pubmedqa", path)
    assert pair.question == "Are group 2 innate lymphoid cells increased in rhinosinusitis?"
    assert pair.context == "Chronic rhinosinusitis is common. ILC2s were counted."
    assert format_qa(pair) == (
        "Closed Question: Chronic rhinosinusitis is common. ILC2s were counted.\n"
        "Are group 2 innate lymphoid cells increased in rhinosinusitis?\nThe answer is: yes"
    )


def test_pubmedqa_hub_layout_pqa_artificial_from_jsonl(tmp_path):
    rows = [
        {
            "pubid": 1,
            "question": "Does aspirin reduce fever?",
            "context": {"contexts": ["Aspirin was given."], "labels": ["X"], "meshes": []},
            "long_answer": "Yes.",
            "final_decision": "no",
        }
    ]
    (pair,) = _load("pubmedqa", _jsonl(tmp_path / "pqa_artificial.jsonl", rows))
    assert (pair.question, pair.context, pair.answer) == (
        "Does aspirin reduce fever?",
        "Aspirin was given.",
        "no",
    )


def test_pubmedqa_decision_outside_yes_no_maybe_names_the_field(tmp_path):
    row = {"question": "Q?", "context": {"contexts": ["c"]}, "final_decision": "probably"}
    path = _jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'final_decision'")):
        _load("pubmedqa", path)


# --- Medical Meadow flashcards ---------------------------------------------------------


def test_flashcards_json_array(tmp_path):
    path = tmp_path / "medical_meadow_wikidoc_medical_flashcards.json"
    rows = [
        {"instruction": "Answer this question truthfully", "input": "What is X?", "output": "Y."},
        {"instruction": "Answer this question truthfully", "input": "", "output": "skipped"},
        {"instruction": "Answer this question truthfully", "input": "And Z?", "output": "W."},
    ]
    path.write_text(json.dumps(rows, indent=2))
    first, second = _load("flashcards", path)
    assert (first.question, first.answer) == ("What is X?", "Y.")
    assert (second.question, second.answer) == ("And Z?", "W.")
    assert format_qa(first) == "Open Question: What is X?\nThe answer is: Y."


def test_flashcards_json_array_element_missing_output_names_its_line(tmp_path):
    path = tmp_path / "f.json"
    # json.dumps(indent=2): "[" on line 1, each 2-key object spans 4 lines from line 2.
    rows = [{"input": "a?", "output": "b"}, {"input": "c?"}]
    path.write_text(json.dumps(rows, indent=2))
    with pytest.raises(DataError, match=re.escape(f"{path}:6: missing field 'output'")):
        _load("flashcards", path)


def test_flashcards_parquet_and_size_keeps_the_first_examples(tmp_path):
    path = tmp_path / "f.parquet"
    pd.DataFrame([{"input": f"q{i}?", "output": f"a{i}"} for i in range(5)]).to_parquet(path)
    assert [p.question for p in _load("flashcards", path, size=2)] == ["q0?", "q1?"]


def test_invalid_json_line_is_reported_with_its_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"input": "a?", "output": "b"}\n{"input": \n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: invalid JSON")):
        _load("flashcards", path)


def test_unknown_file_format_is_rejected(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("input,output\n")
    with pytest.raises(DataError, match="expected .json, .jsonl or .parquet"):
        _load("flashcards", path)


def test_hub_without_datasets_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError) as err:
        load_medical("medmcqa", DatasetConfig())
    message = str(err.value)
    assert "\n" not in message
    assert "openlifescienceai/medmcqa" in message and "pip install 'fedmem[hub]'" in message
