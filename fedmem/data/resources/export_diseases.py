"""Export the disease table of faker-healthcare-provider into ``diseases.json``.

This was run once, by hand, to produce the committed ``diseases.json``:

    pip install faker-healthcare-provider==2.5.0   # MIT, see NOTICE.md
    python fedmem/data/resources/export_diseases.py      # run from outside site-packages

fedmem does not depend on that package at runtime: its wheel installs top-level ``tests``
and ``scripts`` packages into site-packages, which shadow this repository's own. Only
plain data is copied: each disease's ICD-10 code, symptoms, medications and specialty,
plus the package's adult dose ladder for every medication it has one for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("diseases.json")


def _dosing(medications: list[str]) -> dict[str, dict[str, Any]]:
    from faker_healthcare.clinical_labels import CLINICAL_LABELS, MEDICATION_NAMES
    from faker_healthcare.prescribing import DOSE_LADDERS

    substance_of = {display: substance for substance, display in MEDICATION_NAMES.items()}
    dosing: dict[str, dict[str, Any]] = {}
    for medication in medications:
        ladder = DOSE_LADDERS.get(substance_of.get(medication, ""))
        if ladder is None:
            continue
        dosing[medication] = {
            "unit": ladder["unit"],
            "doses": list(ladder["doses"]),
            "route": ladder["route"],
            "frequencies": [
                CLINICAL_LABELS[f"frequency_{freq}"].lower() for freq in ladder["frequencies"]
            ],
        }
    return dosing


def export_rows() -> list[dict[str, Any]]:
    from faker_healthcare.disease_correlations import DISEASE_CORRELATIONS

    return [
        {
            "name": name,
            "icd10": data["icd10"],
            "symptoms": list(data["symptoms"]),
            "medications": list(data["medications"]),
            "specialty": data["medical_specialty"],
            "dosing": _dosing(list(data["medications"])),
        }
        for name, data in sorted(DISEASE_CORRELATIONS.items())
    ]


def main() -> None:
    rows = export_rows()
    OUTPUT.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} diseases to {OUTPUT}")


if __name__ == "__main__":
    main()
