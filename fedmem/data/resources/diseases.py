"""The disease table exported from faker-healthcare-provider (see NOTICE.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class Dosing:
    medication: str
    unit: str
    doses: tuple[float, ...]
    route: str
    frequencies: tuple[str, ...]

    def strengths(self) -> tuple[str, ...]:
        """Each dispensed strength as written on a prescription, e.g. ``"62.5 µg"``."""
        return tuple(f"{dose:g} {self.unit}" for dose in self.doses)


@dataclass(frozen=True)
class Disease:
    name: str
    icd10: str
    symptoms: tuple[str, ...]
    medications: tuple[str, ...]
    specialty: str
    dosing: tuple[Dosing, ...]

    def dosing_for(self, medication: str) -> Dosing | None:
        return next((d for d in self.dosing if d.medication == medication), None)


def _disease(row: dict) -> Disease:
    return Disease(
        name=row["name"],
        icd10=row["icd10"],
        symptoms=tuple(row["symptoms"]),
        medications=tuple(row["medications"]),
        specialty=row["specialty"],
        dosing=tuple(
            Dosing(
                medication=medication,
                unit=ladder["unit"],
                doses=tuple(ladder["doses"]),
                route=ladder["route"],
                frequencies=tuple(ladder["frequencies"]),
            )
            for medication, ladder in row["dosing"].items()
        ),
    )


@lru_cache(maxsize=1)
def load_diseases() -> tuple[Disease, ...]:
    """All diseases, sorted by name."""
    text = resources.files(__package__).joinpath("diseases.json").read_text(encoding="utf-8")
    return tuple(_disease(row) for row in json.loads(text))
