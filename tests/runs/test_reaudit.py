"""`fedmem audit RUN_DIR`: re-audit saved rounds with other attack settings, never
overwriting the run's own audit."""

from __future__ import annotations

import json

import pytest
import torch

from fedmem.config import ConfigError, build_config
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from fedmem.models.loading import build_model
from fedmem.runs.reaudit import reaudit, saved_rounds
from fedmem.runs.recorder import RunRecorder


@pytest.fixture
def finished_run(tiny_raw):
    """A run recorded without Flower: round 0, then one perturbed state as round 1."""
    config = build_config(tiny_raw)
    recorder = RunRecorder(config)
    recorder.start()
    model = build_model(config)
    recorder.record(0, model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    recorder.record(1, model)
    recorder.finish(model)
    return config.run_dir


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("elapsed_s", "client_view")}


def test_same_settings_reproduce_the_runs_audit_from_its_checkpoints(finished_run):
    original = (finished_run / "metrics.jsonl").read_text()
    folder = reaudit(finished_run)
    assert folder == finished_run / "audits" / "audit-1"
    again = read_jsonl(folder / "metrics.jsonl")
    assert [_stable(r) for r in again] == [
        _stable(r) for r in read_jsonl(finished_run / "metrics.jsonl")
    ]
    assert again[0]["client_view"]["status"] == "unavailable"
    assert (finished_run / "metrics.jsonl").read_text() == original


def test_other_attack_settings_on_one_round_go_to_their_own_folder(finished_run):
    folder = reaudit(
        finished_run, ['attack.decoding=["greedy", "beam"]'], rounds=[1], name="beam"
    )
    assert folder == finished_run / "audits" / "beam"
    rows = read_jsonl(folder / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1]
    assert set(rows[0]["extraction"]["variants"]) == {"greedy", "beam"}
    assert json.loads((folder / "config.json").read_text())["attack"]["decoding"] == [
        "greedy",
        "beam",
    ]
    assert not (folder / "checkpoints").exists() and not (folder / "checkpoint").exists()
    with pytest.raises(ConfigError, match="exists; pick another name"):
        reaudit(finished_run, name="beam")


def test_cli_refuses_non_attack_overrides_and_unsaved_rounds(finished_run, capsys):
    assert saved_rounds(finished_run) == [0, 1]
    assert main(["audit", str(finished_run), "--set", "training.lr=0.1"]) == 2
    assert "attack.* keys only" in capsys.readouterr().err
    assert main(["audit", str(finished_run), "--round", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--round 7" in err and "saved rounds: 0, 1" in err
    assert not (finished_run / "audits").exists()


def test_cli_writes_a_re_audit_and_prints_its_summary(finished_run, capsys):
    args = ["audit", str(finished_run), "--round", "1", "--set", "attack.prefix_sweep=[4]"]
    assert main(args) == 0
    assert "re-audit written to" in capsys.readouterr().out
    rows = read_jsonl(finished_run / "audits" / "audit-1" / "metrics.jsonl")
    assert list(rows[0]["extraction"]["variants"]["greedy"]["prefix"]) == ["16", "4"]
