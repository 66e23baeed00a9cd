"""The ICD-10-CM code list, read from the ``simple_icd_10_cm`` package."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class IcdCode:
    code: str  # with the dot, e.g. "E11.9"
    description: str
    chapter: str  # chapter title, e.g. "Neoplasms (C00-D49)"


@lru_cache(maxsize=1)
def load_icd10_codes() -> tuple[IcdCode, ...]:
    """Every ICD-10-CM category and subcategory (about 47k), in tabular order.

    Seventh-character extensions are left out: they repeat their parent's description with
    an encounter suffix, and would make up more than half of the list.
    """
    # Imported here because importing the package parses its XML (about 1.5 s); it still
    # reads its data through importlib's deprecated text API.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm as icd

    codes: list[IcdCode] = []
    chapter = ""
    # get_all_codes() walks the tree depth first, so a chapter precedes all its codes.
    for code in icd.get_all_codes():
        if icd.is_chapter(code):
            chapter = icd.get_description(code)
        elif icd.is_category_or_subcategory(code) and not icd.is_extended_subcategory(code):
            codes.append(IcdCode(code, icd.get_description(code), chapter))
    return tuple(codes)
