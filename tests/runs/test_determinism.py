"""Determinism: one config and seed give the same run folder, measurements (wall time, wire
bytes) aside, in process and on Ray; SecAgg+ quantization and DP noise included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from fedmem.config import build_config
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from fedmem.mitigations import client_dp, registry
from fedmem.runs.folder import MEASURED_FIELDS, without_measurements
from server.rounds import RoundFitStage
from server.strategy import AuditedFedAvg
from tests.support import numpy_clients as nc
from tests.support.files import write_toml
from tests.support.inprocess import InProcessGrid, run_fedmem_in_process, run_rounds


def _aggregate(config) -> list[np.ndarray]:
    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        initial_parameters=nc.initial_parameters(),
        fraction_evaluate=0.0,
        min_available_clients=config.federation.num_clients,
    )
    stage = RoundFitStage(registry.fit_workflow(config), config.seed)
    grid = InProcessGrid(nc.client_app(config), config.federation.num_clients, {})
    context = run_rounds(grid, client_dp.wrap_strategy(config, audited), stage, rounds=2)
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(arrayrecord_to_parameters(record, True))


def _noisy_config(tiny_raw, seed: int):
    return build_config(
        {
            **tiny_raw,
            "seed": seed,
            "federation": {"num_clients": 3, "rounds": 2},
            "secagg": {"enabled": True},
            "client_dp": {"enabled": True, "noise_multiplier": 0.5},
        }
    )


def test_secagg_quantization_and_client_dp_noise_are_seeded(tiny_raw):
    """Both draw from numpy's global RNG inside flwr; fedmem reseeds it per round (server)
    and per round and client (clients)."""
    first = _aggregate(_noisy_config(tiny_raw, seed=0))
    again = _aggregate(_noisy_config(tiny_raw, seed=0))
    other = _aggregate(_noisy_config(tiny_raw, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_measured_fields_are_only_wall_time_and_wire_bytes():
    assert MEASURED_FIELDS == ("elapsed_s", "fit_stage", "federated_attack_s")
    row = {"round": 1, "elapsed_s": 3.2, "fit_stage": {"seconds": 1.0}, "heldout_loss": 2.0}
    assert without_measurements(row) == {"round": 1, "heldout_loss": 2.0}


def _metric_lines(run_dir) -> list[dict]:
    return [without_measurements(r) for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_same_config_and_seed_give_identical_run_files_in_process(tiny_raw, tmp_path):
    raw = {
        **tiny_raw,
        "federation": {"num_clients": 2, "rounds": 2},
        "secagg": {"enabled": True},
        "client_dp": {"enabled": True, "noise_multiplier": 0.5},
        "weight_noise": {"sigma": 0.01},
    }
    first = build_config({**raw, "name": "first"})
    second = build_config({**raw, "name": "second"})
    run_fedmem_in_process(first)
    run_fedmem_in_process(second)
    assert _metric_lines(first.run_dir) == _metric_lines(second.run_dir)
    for name in ("extraction.jsonl", "canaries.jsonl"):
        assert (first.run_dir / name).read_bytes() == (second.run_dir / name).read_bytes()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics_on_ray(tiny_raw, tmp_path, monkeypatch):
    """Two clients on two Ray workers, SecAgg+ and client-level DP on: the metrics files of
    two runs match byte for byte once the measured fields are taken out; then the second
    run, resumed after round 1 on a fresh federation, matches too."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    raw = {
        **tiny_raw,
        "model": {**tiny_raw["model"], "finetuning": "lora"},
        "federation": {"num_clients": 2, "rounds": 2},
        "secagg": {"enabled": True},
        "client_dp": {"enabled": True, "noise_multiplier": 0.5},
    }
    dirs = []
    for name in ("first", "second"):
        write_toml(tmp_path / f"{name}.toml", {**raw, "name": name})
        assert main(["run", str(tmp_path / f"{name}.toml")]) == 0
        dirs.append(build_config({**raw, "name": name}).run_dir)

    def stripped(run_dir) -> str:
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in _metric_lines(run_dir))

    assert stripped(dirs[0]) == stripped(dirs[1])
    extraction = [(d / "extraction.jsonl").read_bytes() for d in dirs]
    assert extraction[0] == extraction[1]

    (dirs[1] / "checkpoints" / "round-002" / "resume.json").unlink()
    (dirs[1] / "summary.json").unlink()
    assert main(["run", "--resume", str(dirs[1])]) == 0
    assert stripped(dirs[0]) == stripped(dirs[1])
