"""`fedmem report PATH`: report.md, a self-contained report.html and PNG figures for a run or
a sweep, every number read from the results store (fedmem.runs.store).

The folder is (re)ingested first, so the report always matches the run folders. A
*combination* is a sweep cell's axis values except the seed (a run outside a sweep is its own
combination); tables give the mean over its seeds at each run's final round with a 95 %
Student t-interval over seeds (attacks.statistics.aggregate_seeds) and the number of seeds; a
combination of one seed shows the run's own 95 % interval instead, where its audit records
one (Clopper-Pearson over canaries, bootstrap over canaries or member/non-member samples).
What the report shows of each audit is declared by the audit (fedmem.audits.registry): its
headline columns in the table (`Column.report`), its own tables (`Audit.sections`) and its
figures (`Audit.figures`). Columns and figures fill when the runs carry them; an audit the
runs left out is listed as absent with the note its declaration gives.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from attacks.statistics import Interval, aggregate_seeds
from fedmem.audits import registry
from fedmem.audits.declaration import Column, Header, header_text
from fedmem.audits.intervals import INTERVAL_NOTE
from fedmem.files import atomic_write_text
from fedmem.runs import figures, store
from fedmem.runs.verdict import RULE, Verdict, verdicts


@dataclass
class Report:
    folder: Path
    markdown: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    table: list[list[str]] = field(default_factory=list)  # header row first
    absent: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)


# ------------------------------------------------------------------------------- data


def _scope(path: Path) -> tuple[Path, list[str]]:
    """(store, run_ids) for a run folder or a folder of runs, after (re)ingesting it."""
    path = Path(path)
    if not path.is_dir():
        raise store.StoreError(f"{path}: no such folder")
    if (path / store.SUMMARY_FILE).exists():
        return store.store_for_run(path), [store.ingest_run(path)]
    db, run_ids = store.ingest(path)
    return db, run_ids


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()) if len(values) else float("nan"), std


def seed_interval(
    values: pd.Series, bounds: tuple[float, float] = (0.0, math.inf)
) -> Interval:
    """Mean over seeds with a 95 % t-interval cut to the value's range `bounds` (nan bounds
    for one seed, nan mean for none)."""
    values = values.dropna()
    if not len(values):
        return Interval(float("nan"), float("nan"), float("nan"), 0.95, "no seeds")
    return aggregate_seeds(values.to_numpy(dtype=float), bounds=bounds)


def _fmt(mean: float, low: float, high: float, scale: float = 1.0, digits: int = 1) -> str:
    """'12.5 [3.1, 21.9]' (the mean with its interval); the mean alone without one; 'n/a'
    for none."""
    return Interval(mean * scale, low * scale, high * scale, 0.95, "").format(digits=digits)


def _report_columns() -> list[Column]:
    return [c for c in registry.columns() if c.report]


def _shown(data: ReportData, column: Column) -> bool:
    """A report column is shown when a run carries it, or carries the count it needs (then
    its cells say how many it needs)."""
    needs = column.report.needs if column.report else None
    return data.has(column.name) or (needs is not None and data.has(needs.column))


def _cell(column: Column, t: pd.Series) -> str:
    """A combination's mean [95 % interval] of `column` (over seeds; one seed: the run's own),
    or what it needs where its runs had too few."""
    report = column.report
    mean = t[f"{column.name}_mean"]
    needs = report.needs
    if mean != mean and needs and t.get(f"{needs.column}_min", float("nan")) < needs.minimum:
        return needs.text()
    return _fmt(mean, t[f"{column.name}_low"], t[f"{column.name}_high"], report.scale,
                report.digits)


@dataclass
class ReportData:
    """The reported runs' rows from the store: what the report's tables and every declared
    figure read (fedmem.audits.declaration.ReportView)."""

    runs: pd.DataFrame  # one row per run (store `runs`), in combination order
    rounds: pd.DataFrame  # rounds_wide: one row per (run, round)
    final: pd.DataFrame  # the final round of each run
    style: pd.DataFrame  # combination -> finetuning
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)  # audit tables, global view

    def __getattr__(self, name: str) -> Any:
        """An audit table's rows by the name its declaration gives them (e.g. `roc`)."""
        named = {t.frame_name: t.name for t in store.audit_tables()}
        frames = self.__dict__.get("frames", {})
        if name in named and named[name] in frames:
            return frames[named[name]]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def has(self, column: str) -> bool:
        """Whether any run carries the `runs` column (an audit it ran)."""
        return column in self.runs and bool(self.runs[column].notna().any())

    def table(self, name: str) -> pd.DataFrame:
        return self.frames[name]

    def final_round(self, frame: pd.DataFrame) -> pd.DataFrame:
        return _final_round_rows(frame)

    def colour(self, combination: str) -> tuple:
        return self._colours[combination]

    def linestyle(self, combination: str) -> str:
        return figures.LINESTYLE.get(self.style.loc[combination, "finetuning"], "-")

    @cached_property
    def _colours(self) -> dict[str, tuple]:
        return figures.colours(list(self.style.index))

    @cached_property
    def combinations(self) -> pd.DataFrame:
        return combination_table(self)

    def header(self, header: Header) -> str:
        """A header filled with the runs' values of the columns it names, e.g. the headline
        MIA score(s) 'reference' (several joined by '/')."""
        values = {c.name: "/".join(map(str, dict.fromkeys(self.runs[c.name].dropna())))
                  for c in registry.columns() if c.name in self.runs}
        return header_text(header, values)

    @cached_property
    def frontier(self) -> list[tuple[str, str, float]]:
        """The privacy axes of the privacy-utility figure: (column, label, scale)."""
        return [(c.name, self.header(c.frontier), c.report.scale if c.report else 1.0)
                for c in registry.columns() if c.frontier and self.has(c.name)]


def load_report_data(db: Path, run_ids: list[str]) -> ReportData:
    marks = ",".join("?" * len(run_ids))
    runs = store.query(db, f"SELECT * FROM runs WHERE run_id IN ({marks})", tuple(run_ids))
    runs = runs.sort_values("run_id").reset_index(drop=True)
    order = list(dict.fromkeys(runs["combination"]))
    runs["combination"] = pd.Categorical(runs["combination"], categories=order, ordered=True)
    runs = runs.sort_values(["combination", "seed"]).reset_index(drop=True)
    runs["combination"] = runs["combination"].astype(str)
    rounds = store.rounds_wide(db, run_ids)
    rounds["combination"] = pd.Categorical(rounds["combination"], categories=order, ordered=True)
    rounds = rounds.sort_values(["combination", "seed", "round"])
    rounds["combination"] = rounds["combination"].astype(str)
    last = rounds.groupby("run_id")["round"].transform("max")
    final = rounds[rounds["round"] == last].set_index("run_id")
    style = runs.groupby("combination", sort=False)["finetuning"].first().to_frame()
    seeds = runs.set_index("run_id")[["combination", "seed"]]
    frames = {}
    for table in store.audit_tables():
        frame = store.query(db, f"SELECT * FROM {table.name} WHERE run_id IN ({marks})",
                            tuple(run_ids))
        if len(frame):
            frame[["combination", "seed"]] = seeds.loc[frame["run_id"]].to_numpy()
        frames[table.name] = frame
    return ReportData(runs, rounds, final, style, frames)


def _final_round_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run's last round in `frame` (rows without a round are kept)."""
    if frame.empty or frame["round"].isna().all():
        return frame
    last = frame.groupby("run_id")["round"].transform("max")
    return frame[(frame["round"] == last) | frame["round"].isna()]


def combination_table(data: ReportData) -> pd.DataFrame:
    """Per combination: seeds, then `<column>_mean` / `<column>_std` and the 95 % interval
    `<column>_low` / `<column>_high` for every report column shown (`_shown`), the wall time
    (fractions, unscaled), and `<count>_min` for each count a shown column needs. The
    interval is the t-interval over seeds; a combination of one seed has none over seeds, so
    it takes the run's own 95 % interval where its audit records one (`<column>_low` /
    `_high` in `runs`: Clopper-Pearson over canaries, bootstrap AUC, ...), else nan."""
    shown = [c for c in _report_columns() if _shown(data, c)]
    columns = ["combination", "seed", *[c.name for c in shown], "wall_time_s"]
    counts = list(dict.fromkeys(c.report.needs.column for c in shown
                                if c.report.needs and c.report.needs.column in data.runs))
    within = [c.name for c in shown if within_run_interval(data.runs, c.name)]
    bounds_columns = [f"{name}_{side}" for name in within for side in ("low", "high")]
    extra = [c for c in counts + bounds_columns if c not in columns]
    per_run = data.runs.set_index("run_id")[columns + extra].astype(
        {c: float for c in columns[2:] + extra})
    bounds = {c.name: c.report.bounds for c in shown}  # wall time: the default, >= 0
    rows = {}
    for combination, group in per_run.groupby("combination", sort=False):
        row: dict[str, float] = {"seeds": len(group)}
        for column in columns[2:]:
            row[f"{column}_mean"], row[f"{column}_std"] = _mean_std(group[column])
            ci = seed_interval(group[column], bounds.get(column, (0.0, math.inf)))
            row[f"{column}_low"], row[f"{column}_high"] = ci.low, ci.high
            if len(group) == 1 and column in within:
                row[f"{column}_low"] = float(group[f"{column}_low"].iloc[0])
                row[f"{column}_high"] = float(group[f"{column}_high"].iloc[0])
        for column in counts:
            row[f"{column}_min"] = float(group[column].min())
        rows[combination] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def within_run_interval(runs: pd.DataFrame, column: str) -> bool:
    """Whether the store holds a run's own 95 % interval of `column` (`<column>_low`/`_high`)."""
    return f"{column}_low" in runs and f"{column}_high" in runs


# ------------------------------------------------------------------------------- writing


def _table_rows(data: ReportData) -> list[list[str]]:
    """The main table: per combination, seeds, each report column (mean [95 % interval]),
    wall time."""
    table = data.combinations
    shown = [c for c in _report_columns() if f"{c.name}_mean" in table]
    header = ["combination", "seeds", *[data.header(c.report.header) for c in shown]]
    rows = [[*header, "wall time (s)"]]
    for combination, t in table.iterrows():
        row = [combination, str(int(t["seeds"]))]
        row += [_cell(c, t) for c in shown]
        row.append(_fmt(t.wall_time_s_mean, t.wall_time_s_low, t.wall_time_s_high, digits=0))
        rows.append(row)
    return rows


def _notes(data: ReportData) -> str:
    """What the main table's columns mean (each shown column's declared note)."""
    notes = [c.report.note for c in _report_columns() if c.report.note and data.has(c.name)]
    return "; ".join(notes) + "." if notes else ""


def _absent(data: ReportData, empty: set[str]) -> list[str]:
    """What the runs lack, audit by audit: columns no run carries, figures with no data."""
    absent = []
    for audit in registry.audits():
        absent += [c.report.absent for c in audit.columns
                   if c.report and c.report.absent and not data.has(c.name)]
        absent += [f.absent for f in audit.figures if f.absent and f.name in empty]
    return absent


def _draw(data: ReportData, folder: Path) -> tuple[dict[str, Path], dict[str, str], set[str]]:
    """Every declared figure the runs have data for, as PNG files in `folder`: (name ->
    file, name -> caption, names of figures with nothing to draw)."""
    pngs: dict[str, Path] = {}
    captions: dict[str, str] = {}
    empty: set[str] = set()
    for audit in registry.audits():
        for figure in audit.figures:
            drawn = figures.draw(figure, data)
            if drawn is None:
                empty.add(figure.name)
                continue
            pngs[figure.name] = folder / f"{figure.name}.png"
            captions[figure.name] = figure.caption
            _save_png(drawn, pngs[figure.name])
    return pngs, captions, empty


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_verdict(found: list[Verdict]) -> str:
    """The verdict block: one card per combination, a leak in bold red."""
    cards = []
    for verdict in found:
        items = "".join(
            f'<li class="{"leak" if line.startswith("LEAKED") else ""}">{html.escape(line)}</li>'
            for line in verdict.lines)
        cards.append(f"<h3>{html.escape(verdict.heading())}</h3><ul>{items}</ul>")
    return (f'<section class="verdict"><h2>Verdict</h2><p class="rule">{html.escape(RULE)}</p>'
            f'{"".join(cards)}</section>')


CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
    "td,th{border:1px solid #bbb;padding:3px 5px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    "section.verdict{border:2px solid #444;border-radius:6px;padding:0.5em 1.2em;"
    "background:#f7f7f2}section.verdict h3{margin:0.8em 0 0.2em;font-size:1.05em}"
    "section.verdict ul{margin:0.2em 0}li.leak{color:#a00;font-weight:bold}"
    ".rule,.facts{font-size:0.9em;color:#555}figure{margin:1.5em 0}"
)

def write_report(path: str | Path) -> Report:
    """Ingest `path` (a run folder or a folder of runs), then write report.md, report.html and
    the figures' PNG files into it."""
    folder = Path(path)
    db, run_ids = _scope(folder)
    data = load_report_data(db, run_ids)
    pngs, captions, empty = _draw(data, folder)
    absent = _absent(data, empty)
    rows = _table_rows(data)
    sections = [(s.heading, table) for a in registry.audits() for s in a.sections
                if len(table := s.rows(data)) > 1]  # a table with only its header: left out
    title = f"fedmem report: {folder.resolve().name}"
    facts = (
        f"{len(data.runs)} runs, {len(data.style)} combinations; final round of each run; "
        f"mean over seeds [{INTERVAL_NOTE}]. Store: `{db}`."
    )
    notes = _notes(data)
    found = verdicts(data)
    md = [f"# {title}", "", facts, "", "## Verdict", "", RULE, ""]
    for verdict in found:
        md += [f"**{verdict.heading()}**", "", *[f"- {line}" for line in verdict.lines], ""]
    md += ["## Memorization and utility by combination", "",
          _markdown_table(rows), "", notes, ""]
    for heading, table in sections:
        md += [f"## {heading}", "", _markdown_table(table), ""]
    for name, png in pngs.items():
        md += [f"![{captions[name]}]({png.name})", "", captions[name], ""]
    if absent:
        md += ["## Not in these runs", "", *[f"- {a}" for a in absent], ""]
    markdown = folder / "report.md"
    atomic_write_text(markdown, "\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", _html_verdict(found),
            f"<p class=\"facts\">{html.escape(facts)}</p>",
            "<h2>Memorization and utility by combination</h2>", _html_table(rows),
            f"<p>{html.escape(notes)}</p>"]
    for heading, table in sections:
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(table)]
    for name, png in pngs.items():
        encoded = base64.b64encode(png.read_bytes()).decode()
        body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                    f'{encoded}"><figcaption>{html.escape(captions[name])}</figcaption></figure>')
    if absent:
        body += ["<h2>Not in these runs</h2>", "<ul>",
                 *[f"<li>{html.escape(a)}</li>" for a in absent], "</ul>"]
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    report_html = folder / "report.html"
    atomic_write_text(report_html, page)
    return Report(folder, markdown, report_html, pngs, rows, absent, found)


def _save_png(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
