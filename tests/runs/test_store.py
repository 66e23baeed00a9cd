"""The results store: every finished run in SQLite, replaced whole on re-ingest, queried as
pandas DataFrames, rebuilt from folders."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3

import pytest

from fedmem.config import MIA_SCORES
from fedmem.drivers.cli import main
from fedmem.runs.store import TABLES, flatten, ingest_run, query, rounds_wide


def _counts(db, run_id: str) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (run_id,))
                .fetchone()[0] for t in TABLES}
    finally:
        conn.close()


@pytest.fixture
def one_run(finished_sweep, tmp_path):
    """A copy of one finished cell in a folder of its own (its store: tmp_path)."""
    source = finished_sweep.sweep.cells[0].run_dir
    return shutil.copytree(source, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint"))


def test_flatten_keeps_numeric_leaves_under_dotted_keys():
    row = {"a": {"b": 1, "c": {"d": 0.5}}, "flag": True, "text": "x", "points": [1, 2]}
    assert flatten(row) == {"a.b": 1.0, "a.c.d": 0.5, "flag": 1.0}


def test_every_finished_run_is_in_its_store_without_an_explicit_ingest(finished_sweep):
    runs = finished_sweep.runs_after_sweep
    assert sorted(runs["run_id"]) == sorted(c.name for c in finished_sweep.sweep.cells)
    assert set(runs["sweep"]) == {"tiny-sweep"}


def test_runs_carry_combination_seed_and_mitigations(finished_sweep):
    runs = query(finished_sweep.sweep.folder, "runs").set_index("run_id")
    cell = finished_sweep.sweep.cells[-1]  # lora, goldfish on, seed 1
    assert runs.loc[cell.name, "combination"] == "finetuning=lora,goldfish=true"
    assert runs.loc[cell.name, "seed"] == 1
    assert runs.loc[cell.name, "mitigations"] == "goldfish(k=4,hashed)"
    assert json.loads(runs.loc[cell.name, "axes_json"])["model.finetuning"] == "lora"


def test_query_runs_sql_and_returns_a_dataframe(finished_sweep):
    frame = query(
        finished_sweep.sweep.folder / "fedmem.sqlite",
        "SELECT finetuning, COUNT(*) AS n FROM runs GROUP BY finetuning ORDER BY finetuning",
    )
    assert frame.to_dict("records") == [{"finetuning": "full", "n": 4},
                                        {"finetuning": "lora", "n": 4}]


def test_run_headline_numbers_equal_the_final_metrics_row(finished_sweep):
    cell = finished_sweep.sweep.cells[2]
    final = json.loads((cell.run_dir / "summary.json").read_text())["final"]
    run = query(finished_sweep.sweep.folder, "SELECT * FROM runs WHERE run_id = ?",
                (cell.name,)).iloc[0]
    assert run["exact_rate"] == final["extraction"]["injected"]["exact_rate"]
    assert run["heldout_perplexity"] == pytest.approx(final["heldout_perplexity"])


def test_rounds_wide_has_one_row_per_run_and_round_with_flattened_metrics(finished_sweep):
    wide = rounds_wide(finished_sweep.sweep.folder)
    assert len(wide) == 8 * 2
    assert {"extraction.by_replicas.4.exact_rate", "heldout_loss", "combination"} <= set(wide)


def test_canary_results_hold_every_extraction_line(finished_sweep):
    cell = finished_sweep.sweep.cells[0]
    lines = (cell.run_dir / "extraction.jsonl").read_text().splitlines()
    rows = query(finished_sweep.sweep.folder, "SELECT * FROM canary_results WHERE run_id = ?",
                 (cell.name,))
    assert len(rows) == len(lines)
    assert set(rows["injected"]) == {0, 1}
    extra = [json.loads(e) for e in rows["extra_json"]]  # per-canary BLEU of each guess
    assert all(0 <= e["char_bleu"] <= 1 and 0 <= e["token_bleu"] <= 1 for e in extra)


def test_reingesting_a_run_replaces_its_rows(one_run, tmp_path):
    ingest_run(one_run)
    before = _counts(tmp_path / "fedmem.sqlite", "run")
    ingest_run(one_run)
    assert _counts(tmp_path / "fedmem.sqlite", "run") == before
    assert before["rounds"] == 2 and before["round_metrics"] > 20


def test_ingest_is_all_or_nothing(one_run, tmp_path):
    ingest_run(one_run)
    before = _counts(tmp_path / "fedmem.sqlite", "run")
    metrics = one_run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() * 2)  # each round twice: violates (run_id, round)
    with pytest.raises(sqlite3.IntegrityError):
        ingest_run(one_run)
    assert _counts(tmp_path / "fedmem.sqlite", "run") == before


def test_audit_outputs_fill_the_mia_and_exposure_tables_from_the_global_view(one_run, tmp_path):
    """mia_roc holds every global curve of roc/round-NNN.json (score x population), exposure
    every global row of exposure.jsonl; a client's vantage, in the audit's own shape, stays in
    the files."""
    curves = {int(f.stem.removeprefix("round-")): json.loads(f.read_text())
              for f in (one_run / "roc").glob("round-*.json")}
    assert sorted(curves) == [0, 1] and all(set(c) == {"global"} for c in curves.values())
    for rnd, c in curves.items():
        (one_run / "roc" / f"round-{rnd:03d}.json").write_text(
            json.dumps({**c, "client-0": c["global"]}))
    rows = [json.loads(line) for line in (one_run / "exposure.jsonl").read_text().splitlines()]
    assert rows and {r["vantage"] for r in rows} == {"global"}
    with (one_run / "exposure.jsonl").open("a") as f:
        f.writelines(json.dumps({**r, "vantage": "client-0", "exposure": 99.0}) + "\n"
                     for r in rows)
    ingest_run(one_run)

    roc = query(tmp_path, "SELECT * FROM mia_roc ORDER BY round, curve, population, point")
    expected = sorted(
        [rnd, score, population, i, f, t]
        for rnd, c in curves.items()
        for score, populations in c["global"].items()
        for population, points in populations.items()
        for i, (f, t) in enumerate(zip(points["fpr"], points["tpr"], strict=True))
    )
    assert roc[["round", "curve", "population", "point", "fpr", "tpr"]].values.tolist() == expected
    assert set(roc["curve"]) == set(MIA_SCORES)
    assert set(roc["population"]) == {"all", "canaries", "qa"}
    exposure = query(tmp_path, "SELECT * FROM exposure ORDER BY round, canary_id")
    assert exposure[["round", "canary_id", "replicas", "exposure"]].values.tolist() == sorted(
        [r["round"], r["canary_id"], r["replicas"], r["exposure"]] for r in rows)


def test_runs_and_rounds_carry_the_headline_audit_numbers(finished_sweep):
    cell = finished_sweep.sweep.cells[2]
    metrics = [json.loads(line) for line in (cell.run_dir / "metrics.jsonl").open()]
    store = finished_sweep.sweep.folder
    run = query(store, "SELECT * FROM runs WHERE run_id = ?", (cell.name,)).iloc[0]
    rounds = query(store, "SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (cell.name,))
    assert len(rounds) == len(metrics) == 2
    for got, row in [(run, metrics[-1]), *zip((r for _, r in rounds.iterrows()), metrics,
                                             strict=True)]:
        assert got["mia_score"] == "reference"  # computed by default: the headline score
        overall = row["membership"]["scores"]["reference"]["all"]
        assert got["mia_auc"] == overall["auc"]
        assert got["mia_nonmembers"] == overall["nonmembers"]
        for column, key in (("mia_tpr_at_1pct_fpr", "tpr_at_fpr_0.01"),
                            ("mia_tpr_at_01pct_fpr", "tpr_at_fpr_0.001")):
            if overall[key] is None:  # too few non-members to resolve the FPR: NULL
                assert got[column] is None or math.isnan(got[column])
            else:
                assert got[column] == overall[key]
        assert got["exposure_mean"] == row["exposure"]["injected"]["mean"]
        assert got["qa_accuracy"] == row["utility"]["qa_accuracy"]
        assert got["mcq_accuracy"] == row["utility"]["mcq_accuracy"]


def test_the_headline_mia_score_is_the_first_configured_without_reference(one_run, tmp_path):
    """A run configured without the reference score: its first configured score heads."""
    config = json.loads((one_run / "config.json").read_text())
    config["attack"]["membership"]["scores"] = ["zlib", "loss"]
    (one_run / "config.json").write_text(json.dumps(config))
    rows = [json.loads(line) for line in (one_run / "metrics.jsonl").open()]
    for row in rows:
        scores = row["membership"]["scores"]
        row["membership"]["scores"] = {k: scores[k] for k in ("zlib", "loss")}
    (one_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest_run(one_run)
    run = query(tmp_path, "runs").iloc[0]
    assert run["mia_score"] == "zlib"
    assert run["mia_auc"] == rows[-1]["membership"]["scores"]["zlib"]["all"]["auc"]


def test_a_store_made_before_the_audit_columns_gains_them(one_run, tmp_path):
    db = tmp_path / "fedmem.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mia_roc (run_id TEXT NOT NULL, round INTEGER, curve TEXT NOT NULL,"
                 " point INTEGER NOT NULL, fpr REAL NOT NULL, tpr REAL NOT NULL)")
    conn.close()
    ingest_run(one_run)
    assert set(query(tmp_path, "mia_roc")["population"]) == {"all", "canaries", "qa"}


def test_ingest_rebuilds_a_store_from_folders(finished_sweep, tmp_path, capsys):
    copy = shutil.copytree(finished_sweep.sweep.folder, tmp_path / "copy",
                           ignore=shutil.ignore_patterns("checkpoint", "fedmem.sqlite"))
    assert main(["ingest", str(copy)]) == 0
    assert "8 runs ingested" in capsys.readouterr().out
    runs = query(copy, "runs")
    assert len(runs) == 8 and set(runs["sweep"]) == {"tiny-sweep"}


def test_ingest_of_a_folder_without_runs_exits_2(tmp_path, capsys):
    assert main(["ingest", str(tmp_path)]) == 2
    assert "no finished run folders" in capsys.readouterr().err
