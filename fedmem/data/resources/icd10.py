"""The ICD-10-CM code list, read from the ``simple_icd_10_cm`` package.

Importing that package parses its XML (2.5 s here, far more on a loaded machine), and every
process that builds the data needs the list: under Flower's deployment engine that is one
fresh process per client per round. The list is therefore parsed once and kept as JSON in
fedmem's cache folder, keyed by the package version.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import astuple, dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path


@dataclass(frozen=True)
class IcdCode:
    code: str  # with the dot, e.g. "E11.9"
    description: str
    chapter: str  # chapter title, e.g. "Neoplasms (C00-D49)"


def icd10_cache_file() -> Path:
    from fedmem.cache import cache_root

    return cache_root() / f"icd10-cm-{version('simple-icd-10-cm')}.json"


@lru_cache(maxsize=1)
def load_icd10_codes() -> tuple[IcdCode, ...]:
    """Every ICD-10-CM category and subcategory (about 47k), in tabular order; parsed from
    the package once, then read from fedmem's cache."""
    cached = icd10_cache_file()
    if cached.exists():
        return tuple(IcdCode(*row) for row in json.loads(cached.read_text()))
    codes = parse_icd10_codes()
    from fedmem.files import atomic_write_text

    atomic_write_text(cached, json.dumps([astuple(c) for c in codes]))
    return codes


def parse_icd10_codes() -> tuple[IcdCode, ...]:
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
