"""End to end: Flower federation on Ray, and the centralized baseline, leave complete runs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fedmem.config import build_config
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from tests.support.files import write_toml


@pytest.mark.slow
def test_two_clients_two_rounds_on_ray(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    raw = {**tiny_raw, "model": {**tiny_raw["model"], "finetuning": "lora"}}
    raw["attack"] = {**tiny_raw["attack"], "client_view": True}
    write_toml(tmp_path / "c.toml", raw)
    assert main(["run", str(tmp_path / "c.toml")]) == 0
    run_dir = build_config(raw).run_dir

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["clients"] == {}
    for row in rows[1:]:
        assert set(row["clients"]) == {"0", "1"}
        assert row["bytes_sent"] == sum(c["bytes_sent"] for c in row["clients"].values()) > 0
        assert set(row["extraction"]["by_replicas"]) == {"0", "1", "4"}
        # The server's view of each client's returned adapter, audited before averaging.
        views = row["client_view"]["clients"]
        assert set(views) == {"0", "1"} and views["1"]["vantage"] == "client-1"
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == [
        "round-000",
        "round-001",
        "round-002",
    ]
    canaries = read_jsonl(run_dir / "canaries.jsonl")
    assert sum(c["injected"] for c in canaries) == len(canaries) // 2 == 4
    extraction = read_jsonl(run_dir / "extraction.jsonl")
    by_vantage = Counter(r["vantage"] for r in extraction)
    assert by_vantage == {"global": 3 * 8, "client-0": 2 * 8, "client-1": 2 * 8}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finetuning"] == "lora"
    assert 0 < summary["trainable_parameters"] < summary["parameters"]
    assert (run_dir / "checkpoint" / "trainable.safetensors").stat().st_size > 0


def test_centralized_baseline_uses_the_same_audit(tiny_raw, tmp_path):
    raw = {**tiny_raw, "mode": "centralized", "federation": {"rounds": 1, "num_clients": 2}}
    write_toml(tmp_path / "c.toml", raw)
    assert main(["run", str(tmp_path / "c.toml")]) == 0
    rows = read_jsonl(build_config(raw).run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["heldout_loss"] < rows[0]["heldout_loss"]
    assert set(rows[1]["extraction"]["by_replicas"]) == {"0", "1", "4"}


def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('[model]\nfinetuning = "qlora"\n')
    assert main(["run", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.finetuning" in err
