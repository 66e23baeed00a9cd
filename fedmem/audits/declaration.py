"""What an audit declares: the parts the run recorder, the results store and the reports read.

Each audit module of `fedmem.audits` holds one `AUDIT = Audit(...)`: when it runs, the
function that runs it on a model, its per-item file, its headline columns, its lines and
columns in the terminal, its store tables and its report figures. `fedmem.audits.registry`
collects them; no reader names an audit.

This module imports nothing heavy (no torch, transformers, flwr, pandas or matplotlib): the
store and the reports read the declarations without loading a model. An audit's run, store
and figure functions import what they need when called.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from fedmem.config import Config

GLOBAL = "global"  # the vantage point of any participant: the global model after a round


def client_vantage(client: int) -> str:
    """The vantage point of a server without secure aggregation: client `client`'s update
    applied to the previous global model (its returned trainable state)."""
    return f"client-{client}"


@dataclass(frozen=True)
class AuditPart:
    """What one audit found on one model."""

    metrics: dict  # merged into the round's metrics row
    rows: list[dict] = field(default_factory=list)  # per-item details (its output file)
    roc: dict = field(default_factory=dict)  # ROC points to plot: curve -> population -> points


def dig(row: Mapping | None, *keys: str) -> Any:
    """row[k1][k2]...; None where any level is missing (an audit the row does not carry)."""
    for key in keys:
        if not isinstance(row, Mapping):
            return None
        row = row.get(key)
    return row


Header = str | Callable[[Mapping[str, Any]], str]  # text, or text from headline values


def header_text(header: Header, values: Mapping[str, Any]) -> str:
    """A header: fixed text, or made from headline values (e.g. the MIA score's name)."""
    return header if isinstance(header, str) else header(values)


@dataclass(frozen=True)
class Needs:
    """A report column's value exists only with at least `minimum` of what the `runs`
    column `column` counts (`what`); below it the report says so instead of a number."""

    column: str
    minimum: int
    what: str

    def text(self) -> str:
        return f"n/a (needs ≥ {self.minimum} {self.what})"


@dataclass(frozen=True)
class ReportColumn:
    """A headline column in the report's table: the mean over seeds of `value * scale` with
    its 95 % t-interval over seeds."""

    header: Header  # from {column name: its values across the runs, joined by "/"}
    scale: float = 1.0
    digits: int = 1
    note: str = ""  # its entry in the note under the table, e.g. "*exact*: ..."
    absent: str = ""  # listed under "Not in these runs" when no run carries the column
    needs: Needs | None = None  # shown as "n/a (needs ≥ N ...)" where the runs had fewer
    # The range the value (before `scale`) can take: the interval over seeds is cut to it,
    # since with two or three seeds a t-interval runs far past it (a rate below 0).
    bounds: tuple[float, float] = (0.0, math.inf)


@dataclass(frozen=True)
class Column:
    """A headline number: a column of the store's `runs` and `rounds` tables, read from a
    metrics row (None where the run did not audit it)."""

    name: str
    read: Callable[[Mapping], Any]
    sql: str = "REAL"
    doc: str = ""  # the schema comment
    first_round: bool = False  # `runs` only, read from the run's first audited round
    report: ReportColumn | None = None  # shown in the report's table
    frontier: Header | None = None  # a privacy axis (lower = more private) of the frontier


def interval_columns(
    name: str, entry: Callable[[Mapping], Any], key: str, method: str
) -> tuple[Column, Column]:
    """The store columns `<name>_low` / `<name>_high` of the 95 % interval that the metrics
    row keeps as `entry(row)[key + "_ci"]` (None where absent); `method` names it in the
    schema comment, e.g. "Clopper-Pearson interval"."""
    from fedmem.audits.intervals import ci_bound

    def side(i: int) -> Callable[[Mapping], Any]:
        return lambda row: ci_bound(entry(row), key, i)

    return (Column(f"{name}_low", side(0), doc=f"95 % {method} of {name}: low"),
            Column(f"{name}_high", side(1), doc=f"95 % {method} of {name}: high"))


@dataclass(frozen=True)
class ReplicaColumn:
    """A column of the terminal's final table, which has one row per replica count."""

    header: Header  # from the audit's headline values in the final row
    read: Callable[[Mapping, str], Any]  # (metrics row, replica count as text) -> value
    fmt: str = "{}"  # None is shown as "-"
    before: bool = False  # read from the first audited round (the summary's `before`)


@dataclass(frozen=True)
class StoreTable:
    """A store table of the audit's own, filled from the run folder at ingest."""

    name: str
    ddl: str  # CREATE TABLE IF NOT EXISTS ... (and its indexes); first column run_id
    columns: tuple[str, ...]  # inserted after run_id, in this order
    rows: Callable[[Path], list[tuple]]  # run folder -> rows (without run_id)
    frame: str = ""  # the report data's name for its rows (default: `name`)

    @property
    def frame_name(self) -> str:
        return self.frame or self.name


class ReportView(Protocol):
    """What a figure (or report section) may read: the store's rows of the reported runs.

    Frames are pandas DataFrames; `combination` orders and colours every figure."""

    runs: Any  # store `runs`, one row per run
    rounds: Any  # store `rounds_wide`: one row per (run, round), a column per metric
    final: Any  # `rounds` at each run's final round, indexed by run_id
    style: Any  # combination -> finetuning
    combinations: Any  # per combination: seeds, `<column>_mean`, `_std`, `_low`, `_high`
    frontier: list[tuple[str, str, float]]  # privacy axes: (column, label, scale)

    def table(self, name: str) -> Any:
        """A store table's rows of these runs, with their combination and seed."""

    def final_round(self, frame: Any) -> Any:
        """The rows of each run's final round in `frame` (rows without a round are kept)."""

    def colour(self, combination: str) -> Any: ...

    def linestyle(self, combination: str) -> str: ...


@dataclass(frozen=True)
class Figure:
    """A figure of the report, drawn when the runs carry its data."""

    name: str  # the PNG's stem
    caption: str
    query: Callable[[ReportView], Any]  # the store rows it draws (a DataFrame); empty: none
    draw: Callable[[Any, ReportView], Any]  # (rows, view) -> matplotlib Figure
    absent: str = ""  # listed under "Not in these runs" when there is nothing to draw


@dataclass(frozen=True)
class Section:
    """A table of the report of the audit's own, after the main table."""

    heading: str
    rows: Callable[[ReportView], list[list[str]]]  # header row first


@dataclass(frozen=True)
class Headline:
    """The audit the terminal's final table is built around (one audit declares it)."""

    title: Callable[[Mapping], str]  # final metrics row -> what the table shows
    groups: Callable[[Mapping], list[str]]  # final metrics row -> its rows' replica counts


@dataclass(frozen=True)
class Audit:
    """One audit: a name mapped to its parts."""

    name: str  # its metrics' key in the round's row and its rows' key in a RoundAudit
    order: int  # where it runs, its metrics sit in the row and its columns in every table
    enabled: Callable[[Config], bool]
    # None: not an audit of one model; the server measures it on a round's models together
    # and the recorder puts its metrics in the row (fedmem.audits.federated_attack)
    run: Callable[[Config, torch.nn.Module], AuditPart] | None
    output: str | None = None  # its per-item rows' file in the run folder, e.g. "x.jsonl"
    before: tuple[str, ...] = ()  # metrics-row keys the run summary keeps from round 0;
    # () means (name,)
    columns: tuple[Column, ...] = ()
    round_line: str = ""  # its part of the terminal's round line, over its columns' values
    by_replicas: tuple[ReplicaColumn, ...] = ()
    details: Callable[[Mapping], Sequence[Any]] | None = None  # run summary -> what the
    # terminal prints after the final table (text or rich renderables)
    headline: Headline | None = None
    tables: tuple[StoreTable, ...] = ()
    figures: tuple[Figure, ...] = ()
    sections: tuple[Section, ...] = ()

    @property
    def before_keys(self) -> tuple[str, ...]:
        return self.before or (self.name,)

    def values(self, row: Mapping | None) -> dict[str, Any]:
        """Its headline columns' values in a metrics row (None where not audited)."""
        return {c.name: c.read(row or {}) for c in self.columns}

    def line(self, row: Mapping) -> str:
        """Its part of the round line; "" when the row lacks a value the line needs."""
        if not self.round_line:
            return ""
        values = self.values(row)
        needed = [f for _, f, _, _ in string.Formatter().parse(self.round_line) if f]
        if any(values.get(f) is None for f in needed):
            return ""
        return self.round_line.format(**values)
