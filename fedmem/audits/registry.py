"""The audit registry: every module of `fedmem.audits` that declares `AUDIT = Audit(...)`.

Modules are found by scanning the package (`pkgutil.iter_modules`), so a new audit is one new
module: the per-round audit, the run recorder, the results store and the reports read it
from here. Importing a module only reads its declaration (the run functions import torch
when called), so the registry loads no model library.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

import fedmem.audits
from fedmem.audits.declaration import Audit, Column

if TYPE_CHECKING:
    from fedmem.config import Config


class RegistryError(ValueError):
    """Two audits claim one name, output file or column, or the headline is not one."""


def audit_modules() -> list[ModuleType]:
    """The modules of `fedmem.audits` (not its sub-packages), imported."""
    return [
        importlib.import_module(f"{fedmem.audits.__name__}.{info.name}")
        for info in pkgutil.iter_modules(fedmem.audits.__path__)
        if not info.ispkg
    ]


@cache
def audits() -> tuple[Audit, ...]:
    """Every declared audit, in order (its `order`, then its name)."""
    found = [m.AUDIT for m in audit_modules() if isinstance(getattr(m, "AUDIT", None), Audit)]
    found.sort(key=lambda a: (a.order, a.name))
    _check_unique("audit name", [a.name for a in found])
    _check_unique("output file", [a.output for a in found if a.output])
    _check_unique("headline column", [c.name for a in found for c in a.columns])
    _check_unique("store table", [t.name for a in found for t in a.tables])
    _check_unique("figure", [f.name for a in found for f in a.figures])
    if len([a for a in found if a.headline]) != 1:
        raise RegistryError("exactly one audit must declare the headline (Audit.headline)")
    return tuple(found)


def _check_unique(what: str, names: list[str]) -> None:
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise RegistryError(f"{what} {twice[0]!r} is declared by two audits")


def get(name: str) -> Audit:
    for audit in audits():
        if audit.name == name:
            return audit
    raise KeyError(f"no audit {name!r} (registered: {', '.join(a.name for a in audits())})")


def enabled(config: Config) -> tuple[Audit, ...]:
    """The audits `config` turns on, in order."""
    return tuple(a for a in audits() if a.enabled(config))


def headline() -> Audit:
    """The audit the terminal's final table is built around (extraction)."""
    return next(a for a in audits() if a.headline)


def columns() -> tuple[Column, ...]:
    """Every headline column, in audit order."""
    return tuple(c for a in audits() for c in a.columns)


def outputs() -> dict[str, str]:
    """Audit name -> its per-item rows' file in the run folder."""
    return {a.name: a.output for a in audits() if a.output}


def before_keys() -> tuple[str, ...]:
    """The metrics-row keys the run summary keeps from the first audited round."""
    return tuple(k for a in audits() for k in a.before_keys)
