"""Mitigations combine freely from config: each combination runs end to end on Ray."""

from __future__ import annotations

import math

import pytest

from fedmem.config import build_config
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from tests.support.files import write_toml

EVERYTHING_ON_LORA = {
    "model": {"finetuning": "lora"},
    "dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
    "secagg": {"enabled": True},
    "client_dp": {"enabled": True, "clipping": "client-fixed", "noise_multiplier": 0.1},
    "goldfish": {"enabled": True, "variant": "hashed"},
    "weight_noise": {"sigma": 0.001},
}
FULL_WITH_SERVER_DP_AND_STATIC_GOLDFISH = {
    "client_dp": {"enabled": True, "clipping": "server-fixed", "noise_multiplier": 0.1},
    "goldfish": {"enabled": True, "variant": "static"},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "combination",
    [EVERYTHING_ON_LORA, FULL_WITH_SERVER_DP_AND_STATIC_GOLDFISH],
    ids=["lora+dp-sgd+secagg+client-dp+goldfish+weight-noise", "full+server-dp+goldfish"],
)
def test_combination_runs_and_reports_each_mitigation(tiny_raw, tmp_path, monkeypatch, combination):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": 1}}
    for section, values in combination.items():
        raw[section] = {**raw.get(section, {}), **values}
    write_toml(tmp_path / "c.toml", raw)
    assert main(["run", str(tmp_path / "c.toml")]) == 0
    config = build_config(raw)
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1]
    last = rows[1]
    assert last["secure_aggregation"] is config.secagg.enabled
    assert last["weight_noise_sigma"] == config.weight_noise.sigma
    assert "client_dp" in last
    if config.dp_sgd.enabled:
        assert 0 < last["dp_epsilon_max"] < math.inf
        assert all(c["dp_epsilon"] > 0 for c in last["clients"].values())
    assert math.isfinite(last["heldout_loss"])
