"""Client failures: injected by config, survived by the round when enough clients remain,
abandoned clearly when not, and always recorded (which client, which round, what)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from fedmem.config import ConfigError, build_config
from fedmem.faults import failure_report_mod, injected_failure, parse_failure
from fedmem.files import read_jsonl
from fedmem.mitigations import client_dp, registry
from server.rounds import RoundFitStage
from server.strategy import AuditedFedAvg
from tests.support import numpy_clients as nc
from tests.support.inprocess import InProcessGrid, run_fedmem_in_process, run_rounds, server_task


def _config(tiny_raw, rounds: int = 1, **sections):
    raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": rounds}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return build_config(raw)


def _run(config, rounds: int = 1):
    """`rounds` rounds of the numpy clients behind fedmem's mods and fit stage."""
    f = config.federation
    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        initial_parameters=nc.initial_parameters(),
        fraction_evaluate=0.0,
        min_fit_clients=f.min_fit_clients,
        min_available_clients=f.num_clients,
        accept_failures=f.accept_failures,
    )
    stage = RoundFitStage(
        registry.fit_workflow(config), config.seed, declined=audited.declined
    )
    grid = InProcessGrid(nc.client_app(config), f.num_clients, {})
    context = run_rounds(grid, client_dp.wrap_strategy(config, audited), stage, rounds)
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    final = parameters_to_ndarrays(arrayrecord_to_parameters(record, True))
    return final, audited, stage


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_client_failing_in_a_given_round_is_recorded_and_the_others_aggregate(tiny_raw):
    config = _config(tiny_raw, rounds=2, faults={"client": 1, "rounds": [2]})
    _, audited, stage = _run(config, rounds=2)
    assert stage.outcomes[1] == {"aggregated": True, "failures": []}
    assert stage.outcomes[2] == {
        "aggregated": True,
        "failures": [
            {
                "client": 1,
                "stage": "fit",
                "error": "InjectedFailure: faults.client = 1: injected failure in round 2",
            }
        ],
    }
    assert set(audited.round_clients[2]) == {0, 2}


def test_a_round_with_fewer_results_than_min_fit_clients_is_abandoned(tiny_raw):
    config = _config(
        tiny_raw, federation={"num_clients": 3, "min_fit_clients": 3}, faults={"client": 0}
    )
    final, _, stage = _run(config)
    assert stage.outcomes[1]["aggregated"] is False
    assert stage.outcomes[1]["abandoned"] == (
        "2 client(s) returned a result, fewer than federation.min_fit_clients = 3"
    )
    assert _same(final, nc.initial_state())


def test_accept_failures_false_abandons_a_round_with_any_failure(tiny_raw):
    config = _config(tiny_raw, federation={"accept_failures": False}, faults={"client": 2})
    final, _, stage = _run(config)
    assert stage.outcomes[1]["abandoned"] == (
        "a client failed and federation.accept_failures = false"
    )
    assert _same(final, nc.initial_state())


@pytest.mark.parametrize("stage", ["setup", "share_keys", "collect_masked_vectors", "unmask"])
def test_secagg_survives_a_dropout_at_any_stage_and_averages_the_rest(tiny_raw, stage):
    # flwr 1.41 alone loses the round on a drop at setup or share_keys (see
    # _secagg_flower.DropoutTolerantSecAggPlus). A client dropping at unmask has
    # already uploaded its masked update, and it is still averaged.
    averaged = [0, 1, 2] if stage == "unmask" else [0, 1]
    config = _config(tiny_raw, secagg={"enabled": True, "drop_client": 2, "drop_stage": stage})
    final, audited, stage_ = _run(config)
    outcome = stage_.outcomes[1]
    assert outcome["aggregated"] is True
    assert [(f["client"], f["stage"]) for f in outcome["failures"]] == [(2, stage)]
    assert f"dropped at SecAgg+ stage {stage!r}" in outcome["failures"][0]["error"]
    assert sorted(audited.round_clients[1]) == averaged
    expected = nc.fedavg(averaged)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(final, expected, strict=True))
    assert diff <= nc.quantization_bound(config, averaged)


def test_an_injected_failure_under_secagg_happens_in_the_training_stage(tiny_raw):
    config = _config(tiny_raw, secagg={"enabled": True}, faults={"client": 0})
    _, _, stage = _run(config)
    assert stage.outcomes[1]["aggregated"] is True
    assert [(f["client"], f["stage"]) for f in stage.outcomes[1]["failures"]] == [
        (0, "collect_masked_vectors")
    ]


def test_secagg_below_the_threshold_abandons_the_round_and_says_why(tiny_raw):
    config = _config(
        tiny_raw, secagg={"enabled": True, "drop_client": 1, "reconstruction_threshold": 1.0}
    )
    final, audited, stage = _run(config)
    assert stage.outcomes[1]["aggregated"] is False
    assert stage.outcomes[1]["abandoned"] == (
        "SecAgg+ halted: 2 of 3 clients left, below the reconstruction threshold of 3"
    )
    assert audited.round_clients == {}
    assert _same(final, nc.initial_state())


def test_random_failures_are_a_seeded_fraction_of_client_rounds(tiny_raw):
    def failing(seed: int) -> set[tuple[int, int]]:
        config = _config({**tiny_raw, "seed": seed}, rounds=40, faults={"fraction": 0.3})
        return {(r, c) for r in range(1, 41) for c in range(3) if injected_failure(config, r, c)}

    first = failing(seed=0)
    assert first == failing(seed=0)
    assert first != failing(seed=1)
    assert 0.2 < len(first) / 120 < 0.4


def test_random_failures_run_through_the_round(tiny_raw):
    config = _config(tiny_raw, rounds=6, faults={"fraction": 0.4})
    _, audited, stage = _run(config, rounds=6)
    for r in range(1, 7):
        expected = [c for c in range(3) if injected_failure(config, r, c)]
        assert [f["client"] for f in stage.outcomes[r]["failures"]] == expected
        if len(expected) < 3:
            assert sorted(audited.round_clients[r]) == sorted(set(range(3)) - set(expected))


def test_anything_a_client_raises_becomes_an_error_reply_naming_it():
    def broken(msg, ctxt):
        raise ValueError("shape mismatch")

    with server_task():
        msg = Message(RecordDict(), dst_node_id=7, message_type="train", group_id="3")
        ctxt = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
        reply = failure_report_mod(client=4)(msg, ctxt, broken)
    assert reply.has_error()
    assert parse_failure(reply.error.reason) == (4, "ValueError: shape mismatch")


def test_a_reason_from_elsewhere_is_kept_whole():
    assert parse_failure("<class 'RuntimeError'>:<'boom'>") == (
        None,
        "<class 'RuntimeError'>:<'boom'>",
    )


@pytest.mark.parametrize(
    ("faults", "federation", "match"),
    [
        ({"client": 3}, {}, r"faults\.client = 3: client indices are 0\.\.2"),
        ({"rounds": [4]}, {}, r"faults\.rounds contains 4: rounds are 1\.\.3"),
        ({"fraction": 1.5}, {}, r"faults\.fraction = 1\.5: must be <= 1"),
        ({}, {"min_fit_clients": 4}, r"federation\.min_fit_clients = 4: more than"),
    ],
)
def test_bad_failure_settings_are_rejected_naming_the_key(tiny_raw, faults, federation, match):
    raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": 3, **federation}}
    with pytest.raises(ConfigError, match=match):
        build_config({**raw, "faults": faults})


def test_failures_and_abandoned_rounds_are_recorded_in_metrics_jsonl(tiny_raw):
    """A real fedmem federation (in process): client 1 fails in round 2, and with
    min_fit_clients = 2 that round is abandoned, so the global model does not move."""
    raw = {**tiny_raw, "federation": {"num_clients": 2, "rounds": 3, "min_fit_clients": 2}}
    config = build_config({**raw, "faults": {"client": 1, "rounds": [2]}})
    run_fedmem_in_process(config)
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    assert "failures" not in rows[0]
    assert [r["aggregated"] for r in rows[1:]] == [True, False, True]
    assert rows[2]["failures"] == [
        {
            "client": 1,
            "stage": "fit",
            "error": "InjectedFailure: faults.client = 1: injected failure in round 2",
        }
    ]
    assert rows[2]["abandoned"].startswith("1 client(s) returned a result")
    assert set(rows[2]["clients"]) == {"0"}
    assert rows[2]["heldout_loss"] == rows[1]["heldout_loss"]
    assert rows[3]["failures"] == [] and rows[3]["heldout_loss"] != rows[2]["heldout_loss"]
    assert json.loads((config.run_dir / "summary.json").read_text())["rounds"] == 3


def test_the_round_line_names_failed_clients_and_an_abandoned_round():
    from fedmem.runs.report import round_line

    ext = {"injected": {"exact_rate": 0.0, "token_accuracy": 0.5}}
    row = {
        "round": 2,
        "clients": {},
        "heldout_perplexity": 9.0,
        "extraction": ext,
        "elapsed_s": 4.0,
        "failures": [{"client": 1, "stage": "fit", "error": "x"}],
        "abandoned": "SecAgg+ halted: 1 of 2 clients left, below the reconstruction threshold of 2",
    }
    assert round_line(row, 3).endswith(
        "(4s)  failed: client 1  ROUND ABANDONED: SecAgg+ halted: 1 of 2 clients left, "
        "below the reconstruction threshold of 2"
    )
