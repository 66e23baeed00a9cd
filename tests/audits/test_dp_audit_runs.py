"""The DP audit of whole runs (centralized, tiny model): power without noise, soundness with
it, and a deliberately broken DP-SGD flagged as a VIOLATION of the accountant's claim."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fedmem.config import build_config
from fedmem.drivers.centralized import run_centralized
from fedmem.files import read_jsonl

# Training sized so that single audit records are memorized without noise: 2 rounds of
# `epochs` at a high rate, mostly over the ~100 included audit records (little QA, one canary).
AUDITED = {
    "mode": "centralized",
    "data": {"num_samples": 20},
    "canaries": {"replica_counts": [1], "per_count": 1, "exposure_per_count": 0},
    "federation": {"num_clients": 2, "rounds": 2},
    "training": {"batch_size": 8, "lr": 1e-2, "local_epochs": 6, "max_seq_len": 128},
    "dp_audit": {"records": 200},
}
# Claims epsilon ~0.16 over the 12 epochs. Adam makes training invariant to the clip norm
# (noise scales with it), so a tiny norm changes nothing until clipping is switched off:
# then the noise (sigma x norm) is negligible beside the unclipped gradients.
STRONG_NOISE = {"noise_multiplier": 20.0, "max_grad_norm": 1e-4}

_runs: dict[str, dict] = {}
_folders: dict[str, Path] = {}  # run name -> run folder


def _audited_run(
    tmp_path_factory, tiny_raw, seed: int = 0, fault: str = "none", epochs: int = 6, **dp
) -> dict:
    """Summary of a tiny audited centralized run, computed once per session and setting."""
    key = json.dumps([seed, fault, epochs, dp], sort_keys=True)
    if key not in _runs:
        raw = copy.deepcopy(tiny_raw) | copy.deepcopy(AUDITED)
        raw["model"] = tiny_raw["model"]
        raw["training"]["local_epochs"] = epochs
        raw["seed"] = seed
        raw["name"] = f"audit-{len(_runs)}"
        raw["output"] = {"dir": str(tmp_path_factory.mktemp("dp-audit"))}
        raw["dp_sgd"] = {"enabled": True, **dp}
        raw["dp_audit"] = {**raw["dp_audit"], "fault": fault}
        config = build_config(raw)
        _runs[key] = run_centralized(config)
        _folders[config.name] = config.run_dir
    return _runs[key]


def _record(summary: dict) -> dict:
    return summary["dp_audit"]["record"]


def _bound(summary: dict) -> float:
    facts = _record(summary)
    return max(facts["epsilon_one_run"], facts["epsilon_one_run_fdp"])


@pytest.mark.slow
def test_without_noise_the_record_level_bound_is_clearly_above_zero(tmp_path_factory, tiny_raw):
    # 20 epochs: at 12 the audit records' AUROC is about 0.7 and the bound can fall to 0 with
    # float rounding alone; at 20 it was 0.46-0.87 over seeds 0-2 (AUROC 0.78-0.82).
    summary = _audited_run(tmp_path_factory, tiny_raw, epochs=10, noise_multiplier=0.0)
    facts = _record(summary)
    assert facts["records"] == 200 and facts["score"] == "llr"
    # No finite audit can refute an infinite claim.
    assert facts["epsilon_claimed"] == float("inf") and facts["verdict"] == "inconclusive"
    assert _bound(summary) > 0.15
    assert facts["correct_one_run_fdp"] > 0.6 * facts["guesses_one_run_fdp"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_correct_dp_sgd_never_has_a_bound_above_its_epsilon(tmp_path_factory, tiny_raw, seed):
    summary = _audited_run(tmp_path_factory, tiny_raw, seed=seed, **STRONG_NOISE)
    facts = _record(summary)
    assert 0 < facts["epsilon_claimed"] < 0.3
    assert _bound(summary) <= facts["epsilon_claimed"]
    assert _bound(summary) < 0.05  # strong noise: near zero
    assert facts["verdict"] == "consistent"


@pytest.mark.slow
def test_dp_sgd_without_clipping_is_flagged_as_a_violation(tmp_path_factory, tiny_raw):
    intact = _audited_run(tmp_path_factory, tiny_raw, **STRONG_NOISE)
    broken = _audited_run(tmp_path_factory, tiny_raw, fault="no-clipping", **STRONG_NOISE)
    # The accountant cannot tell: it reports the same epsilon for both.
    assert _record(broken)["epsilon_claimed"] == _record(intact)["epsilon_claimed"]
    assert _record(intact)["verdict"] == "consistent"
    assert _record(broken)["verdict"] == "VIOLATION"
    assert _bound(broken) > _record(broken)["epsilon_claimed"]


@pytest.mark.slow
def test_audit_records_and_their_inclusion_bits_are_in_the_run_folder(tmp_path_factory, tiny_raw):
    summary = _audited_run(tmp_path_factory, tiny_raw, epochs=10, noise_multiplier=0.0)
    folder = _folders[summary["name"]]
    records = read_jsonl(folder / "dp_audit_records.jsonl")
    assert len(records) == 200
    assert sum(r["included"] for r in records) == _record(summary)["included"]
    metrics = read_jsonl(folder / "metrics.jsonl")
    assert "dp_audit" not in metrics[0]  # round 0 is the model before fine-tuning
    assert all("record" in r["dp_audit"] for r in metrics[1:])
