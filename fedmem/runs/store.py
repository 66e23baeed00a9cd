"""The results store: one embedded SQLite database next to the run folders it indexes.

Every run ingests itself at its end into `<output.dir>/fedmem.sqlite` (for a sweep's cells,
`<output.dir>/<sweep>/fedmem.sqlite`): one transaction per run, and re-ingesting a run replaces
all of its rows. The run folder stays the source of truth; `fedmem ingest PATH` rebuilds a
store from folders. Schema (README, "Results store"):

  runs            one row per run: identity (run_id = folder relative to the store), sweep,
                  cell, combination, seed, mitigations, final-round headline numbers, config
  run_config      (run_id, key, value): every flat config key, value as JSON text
  rounds          (run_id, round): the headline numbers of each audited round
  round_metrics   (run_id, round, key, value): every numeric field of metrics.jsonl, nested
                  keys flattened with dots (extraction.by_replicas.4.exact_rate, clients.0...)
  <audit tables>  each audit's own tables (fedmem.audits: `Audit.tables`), e.g.
                  canary_results (extraction.jsonl), mia_roc (roc/round-NNN.json), exposure

The runs and rounds tables carry every registered audit's headline columns (fedmem.audits:
`Audit.columns`, e.g. exact_rate, heldout_perplexity, mia_auc, exposure_mean), read from each
round's metrics row; NULL where the run did not audit them. The schema is built from the audit
registry, so a new audit's columns and tables need no change here.

`query(path, sql)` returns a pandas DataFrame; `rounds_wide(path)` pivots round_metrics.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmem.audits import registry as audits
from fedmem.audits.declaration import Column, StoreTable
from fedmem.config import flatten_dotted
from fedmem.mitigations import registry as mitigations

if TYPE_CHECKING:
    import pandas as pd

STORE_NAME = "fedmem.sqlite"
SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"

RUNS_HEAD = """
    run_id TEXT PRIMARY KEY,          -- run folder relative to the store's folder
    path TEXT NOT NULL,               -- run folder, absolute, at ingest time
    name TEXT NOT NULL,
    sweep TEXT,                       -- sweep name when the folder sits in a sweep folder
    cell TEXT,
    combination TEXT NOT NULL,        -- sweep axis values except seed; else the mitigations
    seed INTEGER NOT NULL,
    mode TEXT NOT NULL,
    model TEXT NOT NULL,
    finetuning TEXT NOT NULL,
    mitigations TEXT NOT NULL,        -- e.g. 'goldfish(k=4)+dp-sgd(sigma=1)', or 'none'
    rounds INTEGER NOT NULL,
    parameters INTEGER,
    trainable_parameters INTEGER,
    wall_time_s REAL,"""
RUNS_TAIL = """
    axes_json TEXT NOT NULL,          -- {axis key: value} of the sweep cell, {} otherwise
    config_json TEXT NOT NULL,
    ingested_at TEXT NOT NULL"""
CORE_TABLES = """
CREATE TABLE IF NOT EXISTS run_config (
    run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, round, key)
);
"""
ROUND_FACTS = ("run_id", "round", "elapsed_s", "bytes_sent")


def _column_ddl(column: Column, comment: bool = True) -> str:
    line = f"{column.name} {column.sql},"
    return f"\n    {line:<33} -- {column.doc}" if comment and column.doc else f"\n    {line}"


def schema() -> str:
    """The store's tables: runs and rounds with every registered headline column, the
    config and flattened metrics, and each audit's own tables."""
    columns = audits.columns()
    runs = "".join(_column_ddl(c) for c in columns)
    rounds = "".join(_column_ddl(c, comment=False) for c in columns if not c.first_round)
    return (
        f"CREATE TABLE IF NOT EXISTS runs ({RUNS_HEAD}{runs}{RUNS_TAIL}\n);"
        f"\nCREATE TABLE IF NOT EXISTS rounds (\n    run_id TEXT NOT NULL, round INTEGER NOT "
        f"NULL,\n    elapsed_s REAL, bytes_sent INTEGER,{rounds}\n    PRIMARY KEY (run_id, "
        f"round)\n);{CORE_TABLES}" + "".join(t.ddl for t in audit_tables())
    )


def audit_tables() -> tuple[StoreTable, ...]:
    return tuple(t for a in audits.audits() for t in a.tables)


def round_columns() -> tuple[str, ...]:
    """The `rounds` table's columns: the round's facts, then every headline column."""
    return (*ROUND_FACTS, *(c.name for c in audits.columns() if not c.first_round))


def tables() -> tuple[str, ...]:
    return ("runs", "run_config", "rounds", "round_metrics", *(t.name for t in audit_tables()))


class StoreError(ValueError):
    """A path that is not a run folder, sweep folder or store; one line naming it."""


def store_for_run(run_dir: Path) -> Path:
    """The store a run writes itself into: next to its folder."""
    return Path(run_dir).parent / STORE_NAME


def __getattr__(name: str) -> Any:
    """SCHEMA, TABLES and ROUND_COLUMNS, as the audit registry makes them now."""
    made = {"SCHEMA": schema, "TABLES": tables, "ROUND_COLUMNS": round_columns}
    if name in made:
        return made[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    return [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})")]


def connect(db: Path) -> sqlite3.Connection:
    """The store, created or brought up to the current schema (columns added since a store
    was made are added to it, NULL for the runs it already holds)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=60)
    conn.executescript(schema())
    current = sqlite3.connect(":memory:")
    current.executescript(schema())
    with conn:
        for table in tables():
            have = {name for name, _ in _columns(conn, table)}
            for name, kind in _columns(current, table):
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    current.close()
    return conn


# ----------------------------------------------------------------------------- reading


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flatten(row: dict) -> dict[str, float]:
    """Numeric leaves of nested dicts under dotted keys (booleans as 0/1); strings and lists
    are left out. New nested metrics therefore land in the store with no code change."""
    return {
        key: float(value)  # bool is an int: true -> 1.0
        for key, value in flatten_dotted(row).items()
        if isinstance(value, int | float)
    }


def mitigations_label(config: dict) -> str:
    """The mitigations a saved config turns on, e.g. 'goldfish(k=4,hashed)+dp-sgd(sigma=1)',
    joined in the registry's order; 'none'."""
    return "+".join(mitigations.labels(config)) or "none"


def _sweep_cell(run_dir: Path) -> tuple[str | None, dict | None]:
    """(sweep name, cell entry) when the run folder is a cell listed in its parent's sweep.json."""
    sweep_file = run_dir.parent / SWEEP_FILE
    if not sweep_file.exists():
        return None, None
    sweep = json.loads(sweep_file.read_text())
    for cell in sweep.get("cells", []):
        if cell["name"] == run_dir.name:
            return sweep["name"], cell
    return sweep["name"], None


def headline(row: dict | None, first_round: bool = False) -> dict[str, Any]:
    """The headline columns of one metrics.jsonl row (the `rounds` columns, or with
    `first_round` the `runs` columns read from a run's first round); None where the row
    does not carry the audit."""
    return {
        c.name: _finite(c.read(row or {}))
        for c in audits.columns()
        if c.first_round == first_round
    }


def _run_headline(first: dict | None, final: dict) -> dict[str, Any]:
    """The `runs` table's headline columns, in registry order."""
    values = {**headline(first, first_round=True), **headline(final)}
    return {c.name: values[c.name] for c in audits.columns()}


# ----------------------------------------------------------------------------- writing


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _own_combination(config: dict, mitigations: str) -> str:
    """A run outside a sweep is its own combination: mode, fine-tuning and mitigations."""
    label = f"{config['mode']} {config['model']['finetuning']}"
    return label if mitigations == "none" else f"{label}+{mitigations}"


def ingest_run(run_dir: Path, db: Path | None = None) -> str:
    """Write one finished run folder into the store, replacing its rows (one transaction).

    Returns its run_id: the folder relative to the store's folder."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / SUMMARY_FILE).exists():
        raise StoreError(f"{run_dir}: not a finished run folder (no {SUMMARY_FILE})")
    db = Path(db).resolve() if db else store_for_run(run_dir).resolve()
    try:
        run_id = run_dir.relative_to(db.parent).as_posix()
    except ValueError:
        raise StoreError(f"{run_dir}: must be inside the store's folder {db.parent}") from None
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    run_row = _run_row(run_id, run_dir, config, summary, metrics)
    rounds = [
        (run_id, r["round"], r.get("elapsed_s"), r.get("bytes_sent"), *headline(r).values())
        for r in metrics
    ]
    round_metrics = [
        (run_id, r["round"], key, _finite(value))
        for r in metrics
        for key, value in flatten({k: v for k, v in r.items() if k != "round"}).items()
    ]
    extras = {t: [(run_id, *row) for row in t.rows(run_dir)] for t in audit_tables()}

    conn = connect(db)
    try:
        with conn:  # one transaction: all of the run's rows, or none
            for table in tables():
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            _insert(conn, "runs", tuple(run_row), [tuple(run_row.values())])
            _insert(conn, "run_config", ("run_id", "key", "value"),
                    [(run_id, k, json.dumps(v)) for k, v in flatten_dotted(config).items()])
            _insert(conn, "rounds", round_columns(), rounds)
            _insert(conn, "round_metrics", ("run_id", "round", "key", "value"), round_metrics)
            for table, rows in extras.items():
                _insert(conn, table.name, ("run_id", *table.columns), rows)
    finally:
        conn.close()
    return run_id


def _run_row(run_id: str, run_dir: Path, config: dict, summary: dict,
             metrics: list[dict]) -> dict[str, Any]:
    """The run's `runs` row: its identity and facts, then its headline columns."""
    sweep, cell = _sweep_cell(run_dir)
    mitigations = mitigations_label(config)
    final = metrics[-1] if metrics else summary["final"]
    return {
        "run_id": run_id,
        "path": str(run_dir),
        "name": config["name"],
        "sweep": sweep if cell else None,
        "cell": cell["name"] if cell else None,
        "combination": cell["combination"] if cell else _own_combination(config, mitigations),
        "seed": config["seed"],
        "mode": config["mode"],
        "model": config["model"]["name"],
        "finetuning": config["model"]["finetuning"],
        "mitigations": mitigations,
        "rounds": summary["rounds"],
        "parameters": summary.get("parameters"),
        "trainable_parameters": summary.get("trainable_parameters"),
        "wall_time_s": summary.get("wall_time_s"),
        **_run_headline(metrics[0] if metrics else None, final),
        "axes_json": json.dumps((cell or {}).get("values", {}), sort_keys=True),
        "config_json": json.dumps(config, sort_keys=True),
        "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _insert(conn: sqlite3.Connection, table: str, columns: Sequence[str],
            rows: list[tuple]) -> None:
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        rows,
    )


def run_folders(path: Path) -> list[Path]:
    """Finished run folders at or under `path` (folders holding summary.json)."""
    path = Path(path)
    if (path / "summary.json").exists():
        return [path]
    return sorted(p.parent for p in path.rglob("summary.json") if "checkpoint" not in p.parts)


def ingest(path: str | Path, db: str | Path | None = None) -> tuple[Path, list[str]]:
    """(Re)build the store at `db` (default `<path>/fedmem.sqlite`, or next to a single run
    folder) from every finished run folder under `path`. Returns (db, run_ids)."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"{path}: no such folder")
    folders = run_folders(path)
    if not folders:
        raise StoreError(f"{path}: no finished run folders (summary.json) under it")
    if db is None:
        db = store_for_run(path) if folders == [path] else path / STORE_NAME
    db = Path(db)
    return db, [ingest_run(folder, db) for folder in folders]


def ensure_ingested(run_dir: Path) -> None:
    """Ingest a finished run unless its store already holds it."""
    db = store_for_run(run_dir)
    run_id = Path(run_dir).name
    if db.exists():
        conn = connect(db)
        try:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                return
        finally:
            conn.close()
    ingest_run(run_dir, db)


# ----------------------------------------------------------------------------- querying


def resolve_store(path: str | Path) -> Path:
    """A store file, a folder holding one, or a run folder (its parent's store)."""
    path = Path(path)
    for candidate in (path, path / STORE_NAME, path.parent / STORE_NAME):
        if candidate.is_file() and candidate.name.endswith(".sqlite"):
            return candidate
    raise StoreError(f"{path}: no {STORE_NAME} here (run `fedmem ingest {path}`)")


def query(path: str | Path, sql: str = "runs", params: tuple | dict = ()) -> pd.DataFrame:
    """A DataFrame from the store at `path` (file, or folder holding it): `sql` is a query,
    or a bare table name for the whole table."""
    import pandas as pd

    db = resolve_store(path)
    if sql in tables():
        sql = f"SELECT * FROM {sql}"
    conn = sqlite3.connect(db)
    try:
        return pd.read_sql_query(sql, conn, params=params)
    finally:
        conn.close()


def rounds_wide(path: str | Path, run_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per (run, round), one column per metric key, with the run's combination,
    seed, finetuning and mitigations alongside."""
    metrics = query(path, "round_metrics")
    runs = query(path, "SELECT run_id, combination, seed, finetuning, mitigations FROM runs")
    if run_ids is not None:
        metrics = metrics[metrics.run_id.isin(run_ids)]
        runs = runs[runs.run_id.isin(run_ids)]
    wide = metrics.pivot_table(index=["run_id", "round"], columns="key", values="value",
                               aggfunc="first", dropna=False).reset_index()
    wide.columns.name = None
    return runs.merge(wide, on="run_id").sort_values(["combination", "seed", "round"])
