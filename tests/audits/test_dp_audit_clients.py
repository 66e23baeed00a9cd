"""Client-level DP audit: canary clients join the DP-FedAvg sum, their cosines give epsilon."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from attacks.dp_audit import canary_direction
from fedmem.audits.dp.canary_clients import CanaryClients
from fedmem.audits.dp.run_audit import ClientCanaryAudit, canary_seed, client_epsilon
from fedmem.config import build_config
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from fedmem.mitigations import client_dp, registry
from server.strategy import AuditedFedAvg
from tests.support import numpy_clients as nc
from tests.support.files import write_toml
from tests.support.inprocess import InProcessGrid, run_rounds

CLIP = 0.5


def _config(tiny_raw, canaries: int, secagg: bool = False, noise: float = 0.0, rounds: int = 1):
    raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": rounds}}
    raw["client_dp"] = {"enabled": True, "noise_multiplier": noise, "clip_norm": CLIP}
    raw["secagg"] = {"enabled": secagg}
    raw["dp_audit"] = {"client_canaries": canaries}
    return build_config(raw)


def _aggregate(config, with_canaries: bool) -> list[np.ndarray]:
    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        initial_parameters=nc.initial_parameters(),
        fraction_evaluate=0.0,
        min_available_clients=3,
    )
    inner = audited
    if with_canaries:
        inner = CanaryClients(audited, config, clip_norm=lambda: CLIP)
    strategy = client_dp.wrap_strategy(config, inner)
    grid = InProcessGrid(nc.client_app(config, 0.01), 3, {})  # updates below the clip norm
    context = run_rounds(grid, strategy, registry.fit_workflow(config))
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(arrayrecord_to_parameters(record, True))


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float64)


@pytest.mark.parametrize("secagg", [False, True])
def test_each_canary_client_moves_the_aggregate_by_clip_over_n_along_its_direction(
    tiny_raw, secagg
):
    config = _config(tiny_raw, canaries=4, secagg=secagg)
    shift = _flat(_aggregate(config, True)) - _flat(_aggregate(config, False))
    dim = shift.size
    expected = sum(canary_direction(dim, canary_seed(config), i) for i in range(4)) * CLIP / 3
    tolerance = 1e-5 if not secagg else 1e-3  # SecAgg+ quantizes the real clients' sum
    np.testing.assert_allclose(shift, expected, atol=tolerance)


def test_canary_audit_of_dp_fedavg_rounds_estimates_the_accountants_epsilon(tiny_raw):
    """The per-round statistics on a simulated DP-FedAvg: n = 3 clients, canary updates at
    the clip norm, noise z * clip / n, for 4 rounds (5,000 trainable values)."""
    rounds, dim, z = 4, 5000, 2.0
    config = _config(tiny_raw, canaries=150, noise=z, rounds=rounds)
    audit = ClientCanaryAudit(config)
    seed, n = canary_seed(config), 3
    canaries = sum(canary_direction(dim, seed, i).astype(np.float64) for i in range(150))
    rng = np.random.default_rng(0)
    state = rng.standard_normal(dim)
    assert audit.observe(0, state) is None
    for server_round in range(1, rounds + 1):
        learning = np.full(dim, 0.3 / np.sqrt(dim))  # the real clients' update, norm 0.3
        state = state + learning + CLIP / n * canaries + rng.normal(0, z * CLIP / n, dim)
        facts = audit.observe(server_round, state)
    claimed = client_epsilon(config, rounds)
    assert facts["epsilon_claimed"] == claimed
    for threat in ("final_model", "all_iterates"):
        assert facts[threat]["epsilon_estimate"] == pytest.approx(claimed, rel=0.2)
        assert facts[threat]["epsilon_lower_bound"] <= claimed
    assert facts["epsilon_ceiling"] > claimed  # 150 canaries could have refuted it
    assert facts["verdict"] == "consistent"


@pytest.mark.slow
def test_federated_client_dp_run_reports_both_audits(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    raw = {
        **tiny_raw,
        "client_dp": {"enabled": True, "clipping": "client-fixed", "noise_multiplier": 1.0},
        "dp_audit": {"records": 40, "client_canaries": 16},
    }
    write_toml(tmp_path / "c.toml", raw)
    assert main(["run", str(tmp_path / "c.toml")]) == 0
    config = build_config(raw)
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    for row in rows[1:]:
        client, record = row["dp_audit"]["client"], row["dp_audit"]["record"]
        assert client["epsilon_claimed"] == client_epsilon(config, row["round"])
        assert record["claimed_by"] == "client_dp"
        assert set(client) >= {"final_model", "all_iterates"}
    # One verdict per run, at the final round (2). Its claim, epsilon 6.57 (sigma 1, 2
    # rounds), is above what 16 canaries (ceiling 5.49) or 40 records (about 2.4) can refute.
    assert rows[1]["dp_audit"]["client"]["verdict"] is None
    assert rows[1]["dp_audit"]["record"]["verdict"] is None
    final = rows[-1]["dp_audit"]
    assert final["client"]["epsilon_claimed"] > final["client"]["epsilon_ceiling"]
    assert final["client"]["verdict"] == final["record"]["verdict"] == "inconclusive"
