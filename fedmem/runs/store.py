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
  canary_results  one row per extraction.jsonl line: round, canary, replicas, injected,
                  exact, token_accuracy, longest_match, generated, any other fields as JSON
  mia_roc         ROC points of roc/round-NNN.json: round, curve (the MIA score), population
                  (all, canaries, qa), point, fpr, tpr
  exposure        exposure.jsonl: round, canary, replicas, exposure (bits)
                  (both: the global model's view only; client vantages stay in the files)

The runs and rounds tables carry the membership audit's headline score (fedmem.runs.report
`headline_score`: "reference" when computed, else the first configured score) with its AUC and
TPR at 1% / 0.1% FPR over all samples, the mean exposure of injected exposure canaries and the
utility audit's QA and multiple-choice accuracy; NULL where the run did not audit them.

`query(path, sql)` returns a pandas DataFrame; `rounds_wide(path)` pivots round_metrics.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmem.config import flatten_dotted
from fedmem.mitigations import registry

if TYPE_CHECKING:
    import pandas as pd

GLOBAL = "global"  # fedmem.audits.model_audit.GLOBAL (not imported: that would load torch)
STORE_NAME = "fedmem.sqlite"
SWEEP_FILE = "sweep.json"
RUN_FILES = ("config.json", "canaries.jsonl", "metrics.jsonl", "extraction.jsonl", "summary.json")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
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
    wall_time_s REAL,
    exact_rate_before REAL,           -- injected canaries, round 0
    exact_rate REAL,                  -- injected canaries, final round
    token_accuracy REAL,
    longest_match REAL,
    heldout_loss REAL,                -- final round
    heldout_perplexity REAL,
    mia_score TEXT,                   -- headline MIA score (final round), NULL: no MIA audit
    mia_auc REAL,                     -- its AUC over all members vs non-members
    mia_tpr_at_1pct_fpr REAL,
    mia_tpr_at_01pct_fpr REAL,
    exposure_mean REAL,               -- mean exposure (bits) of injected exposure canaries
    qa_accuracy REAL,                 -- held-out QA answer match (utility)
    mcq_accuracy REAL,                -- held-out multiple choice; NULL when none held out
    axes_json TEXT NOT NULL,          -- {axis key: value} of the sweep cell, {} otherwise
    config_json TEXT NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_config (
    run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL,
    elapsed_s REAL, heldout_loss REAL, heldout_perplexity REAL,
    exact_rate REAL, token_accuracy REAL, longest_match REAL, bytes_sent INTEGER,
    mia_score TEXT, mia_auc REAL, mia_tpr_at_1pct_fpr REAL, mia_tpr_at_01pct_fpr REAL,
    exposure_mean REAL, qa_accuracy REAL, mcq_accuracy REAL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, round, key)
);
CREATE TABLE IF NOT EXISTS canary_results (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, canary_id TEXT NOT NULL,
    replicas INTEGER, injected INTEGER, exact INTEGER, token_accuracy REAL,
    longest_match REAL, generated TEXT, extra_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS canary_results_run ON canary_results (run_id, round);
CREATE TABLE IF NOT EXISTS mia_roc (
    run_id TEXT NOT NULL, round INTEGER, curve TEXT NOT NULL, point INTEGER NOT NULL,
    fpr REAL NOT NULL, tpr REAL NOT NULL, population TEXT
);
CREATE INDEX IF NOT EXISTS mia_roc_run ON mia_roc (run_id);
CREATE TABLE IF NOT EXISTS exposure (
    run_id TEXT NOT NULL, round INTEGER, canary_id TEXT NOT NULL, replicas INTEGER,
    exposure REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exposure_run ON exposure (run_id);
"""
ROUND_COLUMNS = (
    "run_id", "round", "elapsed_s", "heldout_loss", "heldout_perplexity", "exact_rate",
    "token_accuracy", "longest_match", "bytes_sent", "mia_score", "mia_auc",
    "mia_tpr_at_1pct_fpr", "mia_tpr_at_01pct_fpr", "exposure_mean", "qa_accuracy", "mcq_accuracy",
)
TABLES = ("runs", "run_config", "rounds", "round_metrics", "canary_results", "mia_roc", "exposure")


class StoreError(ValueError):
    """A path that is not a run folder, sweep folder or store; one line naming it."""


def store_for_run(run_dir: Path) -> Path:
    """The store a run writes itself into: next to its folder."""
    return Path(run_dir).parent / STORE_NAME


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    return [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})")]


def connect(db: Path) -> sqlite3.Connection:
    """The store, created or brought up to the current schema (columns added since a store
    was made are added to it, NULL for the runs it already holds)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=60)
    conn.executescript(SCHEMA)
    current = sqlite3.connect(":memory:")
    current.executescript(SCHEMA)
    with conn:
        for table in TABLES:
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


def headline_score(membership: dict) -> str:
    """The MIA score the terminal shows: the reference ratio when it was computed."""
    scores = membership["scores"]
    return "reference" if "reference" in scores else next(iter(scores))


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
    return "+".join(registry.labels(config)) or "none"


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


def _global(row: dict) -> bool:
    return row.get("vantage", GLOBAL) == GLOBAL


def _audit_extras(run_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """The global model's ROC points (roc/round-NNN.json: {vantage: {score: {population:
    {"fpr", "tpr"}}}}) and per-canary exposures (exposure.jsonl) of a run folder."""
    roc: list[tuple] = []
    for file in sorted((run_dir / "roc").glob("round-*.json")):
        rnd = int(file.stem.removeprefix("round-"))
        for score, populations in json.loads(file.read_text()).get(GLOBAL, {}).items():
            for population, curve in populations.items():
                roc += [(rnd, score, population, i, float(f), float(t))
                        for i, (f, t) in enumerate(zip(curve["fpr"], curve["tpr"], strict=True))]
    exposure = [
        (r["round"], r["canary_id"], r.get("replicas"), float(r["exposure"]))
        for r in _read_jsonl(run_dir / "exposure.jsonl")
        if _global(r)
    ]
    return roc, exposure


def audit_headline(row: dict | None) -> dict[str, Any]:
    """The audit numbers of one metrics.jsonl row that the runs and rounds tables carry:
    the headline MIA score's AUC and TPR at low FPR over all samples, the injected exposure
    canaries' mean exposure, QA and multiple-choice accuracy; None where not audited."""
    row = row or {}
    out: dict[str, Any] = {"mia_score": None, "mia_auc": None, "mia_tpr_at_1pct_fpr": None,
                           "mia_tpr_at_01pct_fpr": None}
    if membership := row.get("membership"):
        score = headline_score(membership)
        overall = membership["scores"][score]["all"]
        out.update(mia_score=score, mia_auc=overall["auc"],
                   mia_tpr_at_1pct_fpr=overall["tpr_at_fpr_0.01"],
                   mia_tpr_at_01pct_fpr=overall["tpr_at_fpr_0.001"])
    out["exposure_mean"] = ((row.get("exposure") or {}).get("injected") or {}).get("mean")
    utility = row.get("utility") or {}
    out["qa_accuracy"] = utility.get("qa_accuracy")
    out["mcq_accuracy"] = utility.get("mcq_accuracy")
    return out


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
    if not (run_dir / "summary.json").exists():
        raise StoreError(f"{run_dir}: not a finished run folder (no summary.json)")
    db = Path(db).resolve() if db else store_for_run(run_dir).resolve()
    try:
        run_id = run_dir.relative_to(db.parent).as_posix()
    except ValueError:
        raise StoreError(f"{run_dir}: must be inside the store's folder {db.parent}") from None
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    extraction = _read_jsonl(run_dir / "extraction.jsonl")
    injected = {c["canary_id"]: bool(c["injected"]) for c in
                _read_jsonl(run_dir / "canaries.jsonl")}
    sweep, cell = _sweep_cell(run_dir)
    mitigations = mitigations_label(config)
    axes = (cell or {}).get("values", {})
    final = metrics[-1] if metrics else summary["final"]
    first = metrics[0] if metrics else None

    def injected_stat(row: dict | None, key: str) -> float | None:
        return (((row or {}).get("extraction") or {}).get("injected") or {}).get(key)

    run_row = {
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
        "exact_rate_before": injected_stat(first, "exact_rate"),
        "exact_rate": injected_stat(final, "exact_rate"),
        "token_accuracy": injected_stat(final, "token_accuracy"),
        "longest_match": injected_stat(final, "longest_match"),
        "heldout_loss": _finite(final.get("heldout_loss")),
        "heldout_perplexity": _finite(final.get("heldout_perplexity")),
        **audit_headline(final),
        "axes_json": json.dumps(axes, sort_keys=True),
        "config_json": json.dumps(config, sort_keys=True),
        "ingested_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rounds = [
        (run_id, r["round"], r.get("elapsed_s"), _finite(r.get("heldout_loss")),
         _finite(r.get("heldout_perplexity")), injected_stat(r, "exact_rate"),
         injected_stat(r, "token_accuracy"), injected_stat(r, "longest_match"),
         r.get("bytes_sent"), *audit_headline(r).values())
        for r in metrics
    ]
    round_metrics = [
        (run_id, r["round"], key, _finite(value))
        for r in metrics
        for key, value in flatten({k: v for k, v in r.items() if k != "round"}).items()
    ]
    known = {"round", "canary_id", "replicas", "exact", "token_accuracy", "longest_match",
             "generated"}
    canary_rows = [
        (run_id, r["round"], r["canary_id"], r.get("replicas"), injected.get(r["canary_id"]),
         r.get("exact"), r.get("token_accuracy"), r.get("longest_match"), r.get("generated"),
         json.dumps({k: v for k, v in r.items() if k not in known}, sort_keys=True))
        for r in extraction
    ]
    roc, exposure = _audit_extras(run_dir)

    conn = connect(db)
    try:
        with conn:  # one transaction: all of the run's rows, or none
            for table in TABLES:
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            cols = ", ".join(run_row)
            conn.execute(
                f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(run_row))})",
                tuple(run_row.values()),
            )
            conn.executemany(
                "INSERT INTO run_config VALUES (?, ?, ?)",
                [(run_id, k, json.dumps(v)) for k, v in flatten_dotted(config).items()],
            )
            conn.executemany(
                f"INSERT INTO rounds ({', '.join(ROUND_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ROUND_COLUMNS))})", rounds
            )
            conn.executemany("INSERT INTO round_metrics VALUES (?, ?, ?, ?)", round_metrics)
            conn.executemany(
                "INSERT INTO canary_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", canary_rows
            )
            conn.executemany(
                "INSERT INTO mia_roc (run_id, round, curve, population, point, fpr, tpr) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", [(run_id, *p) for p in roc]
            )
            conn.executemany(
                "INSERT INTO exposure VALUES (?, ?, ?, ?, ?)", [(run_id, *e) for e in exposure]
            )
    finally:
        conn.close()
    return run_id


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
    if sql in TABLES:
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
