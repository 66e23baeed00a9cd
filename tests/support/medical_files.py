"""Tiny files in the published layouts of the three medical datasets, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def write_medical_files(folder: Path, n: int = 20) -> dict[str, str]:
    """Flashcards as a JSON array, MedMCQA as its original JSON Lines release (cop 1-4),
    PubMedQA as the hub's pqa_labeled Parquet; `n` rows each, `i`-th answers distinct."""
    folder.mkdir(parents=True, exist_ok=True)
    flashcards = folder / "medical_meadow_wikidoc_medical_flashcards.json"
    flashcards.write_text(
        json.dumps(
            [
                {
                    "instruction": "Answer this question truthfully",
                    "input": f"What is the first-line treatment of condition {i}?",
                    "output": f"Drug {i} at {10 * i} mg daily.",
                }
                for i in range(n)
            ],
            indent=2,
        )
    )
    medmcqa = folder / "train.json"
    medmcqa.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"m{i}",
                    "question": f"Which nerve supplies muscle {i}?",
                    "opa": f"Nerve {i}a",
                    "opb": f"Nerve {i}b",
                    "opc": f"Nerve {i}c",
                    "opd": f"Nerve {i}d",
                    "cop": 1 + i % 4,
                    "subject_name": "Anatomy",
                }
            )
            + "\n"
            for i in range(n)
        )
    )
    pubmedqa = folder / "pqa_labeled.parquet"
    pd.DataFrame(
        [
            {
                "pubid": 1000 + i,
                "question": f"Does treatment {i} improve outcome?",
                "context": {"contexts": [f"We randomized {i + 20} patients."], "labels": ["M"]},
                "long_answer": "See results.",
                "final_decision": ("yes", "no", "maybe")[i % 3],
            }
            for i in range(n)
        ]
    ).to_parquet(pubmedqa)
    return {"flashcards": str(flashcards), "medmcqa": str(medmcqa), "pubmedqa": str(pubmedqa)}


def per_source_raw(tiny_raw: dict, folder: Path, sizes=(20, 20, 20)) -> dict:
    """`tiny_raw` with 3 clients, each holding one dataset read from `folder`."""
    paths = write_medical_files(folder, n=max(sizes))
    data = {
        "source": "datasets",
        "datasets": ["flashcards", "medmcqa", "pubmedqa"],
        "partition": "by-source",
        **{
            name: {"path": paths[name], "size": size}
            for name, size in zip(paths, sizes, strict=True)
        },
    }
    return {
        **tiny_raw,
        "data": data,
        "federation": {**tiny_raw["federation"], "num_clients": 3},
        "canaries": {**tiny_raw["canaries"], "placement": "proportional"},
    }
