"""End to end: three clients on Ray, each holding one published dataset read from its file."""

from __future__ import annotations

import pytest

from fedmem.config import build_config
from fedmem.drivers.cli import run
from fedmem.files import read_jsonl
from tests.support.medical_files import per_source_raw


@pytest.mark.slow
def test_three_clients_one_dataset_each_run_end_to_end(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    raw = per_source_raw(tiny_raw, tmp_path / "data", sizes=(10, 20, 30))
    raw["model"] = {**raw["model"], "finetuning": "lora"}
    raw["federation"] = {**raw["federation"], "rounds": 1, "client_cpus": 0.5}
    raw["training"] = {**raw["training"], "answer_only_loss": True}
    config = build_config(raw)
    run(config)

    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1]
    clients = rows[1]["clients"]
    assert set(clients) == {"0", "1", "2"}
    canaries = [
        *read_jsonl(config.run_dir / "canaries.jsonl"),
        *read_jsonl(config.run_dir / "exposure_canaries.jsonl"),
    ]
    copies = [c for canary in canaries for c in canary["clients"]]
    # Each client trained on its dataset's 90% plus the canary copies (memorization and
    # exposure canaries) placed on it.
    for client, qa in enumerate((9, 18, 27)):
        assert clients[str(client)]["examples"] == qa + copies.count(client)
    assert set(rows[1]["extraction"]["by_replicas"]) == {"0", "1", "4"}
