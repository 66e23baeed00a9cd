"""The federated attackers on a tiny model: the server holding one client's update ranks that
client's canaries first, the leakage matrix counts the right canaries, SecAgg+ hides the
one-update row, and the terminal, the store and the report show both tables."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console

from fedmem.audits.federated_attack import (
    AUDIT,
    HIDDEN,
    FederatedAttack,
    details,
    due,
    matrix_rows,
    store_rows,
    vantage_rows,
)
from fedmem.audits.populations import canaries_by_id, canary_targets
from fedmem.config import build_config
from fedmem.models.loading import build_model, get_trainable_state
from tests.support.attack_models import memorize


def _config(tiny_raw, **attack):
    raw = {**tiny_raw, "canaries": {**tiny_raw["canaries"], "placement": "single"},
           "attack": {**tiny_raw["attack"], "participants": True, **attack}}
    return build_config(raw)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Round 1 of two clients: client 0's update memorizes its own canaries, client 1's is
    nothing; measured on the plain path and as under SecAgg+ (no returned states)."""
    from tests.support.configs import TINY_OVERRIDES

    raw = {**TINY_OVERRIDES, "name": "fa", "output": {"dir": str(tmp_path_factory.mktemp("r"))}}
    config = _config(raw)
    canaries = canaries_by_id(config)
    own = {c for c, k in canaries.items() if 0 in k.clients}
    model = build_model(config)
    previous = get_trainable_state(model)
    rows = [list(t.prefix_ids + t.suffix_ids)
            for t in canary_targets(config, config.attack.prefix_tokens) if t.canary_id in own]
    memorize(model, rows, steps=60)
    client0 = get_trainable_state(model)
    aggregate = [0.5 * a + 0.5 * b for a, b in zip(client0, previous, strict=True)]
    attack = FederatedAttack(config)
    plain = attack.measure(1, previous, aggregate, {0: client0, 1: previous}, {0: 10, 1: 10})
    secagg = attack.measure(1, previous, aggregate, None, None)
    return SimpleNamespace(config=config, canaries=canaries, own=own, plain=plain,
                           secagg=secagg)


def test_one_clients_update_ranks_that_clients_own_canaries_first(measured):
    one = measured.plain["vantage"]["one_update"]
    assert one["status"] == "measured"
    client0 = one["by_client"]["0"]
    assert client0["difference"]["auc"] == 1.0  # every own canary above every other
    assert client0["difference"]["members"] == len(measured.own)
    assert client0["exact"]["n"] == len(measured.own)
    assert client0["exact"]["extracted"] == len(measured.own)  # 60 steps: recited
    # client 1 sent no update: its difference scores are all 0, a tie, AUC 0.5
    assert one["by_client"]["1"]["difference"]["auc"] == 0.5


def test_the_matrix_counts_own_canaries_on_the_diagonal_and_others_off_it(measured):
    matrix = measured.plain["participants"]["matrix"]
    of = {j: {c for c, k in measured.canaries.items() if j in k.clients} for j in (0, 1)}
    assert matrix["0"]["0"]["exact"]["n"] == len(of[0])
    assert matrix["0"]["1"]["exact"]["n"] == len(of[1] - of[0])
    assert matrix["1"]["0"]["exact"]["n"] == len(of[0] - of[1])
    # participant 0 removed its own share: what is left is the untrained model
    assert matrix["0"]["0"]["exact"]["extracted"] == 0
    assert measured.plain["participants"]["own_share_removed"] is True
    rows = matrix_rows(measured.plain)
    assert rows[1][1].endswith("(own)") and not rows[1][2].endswith("(own)")


def test_under_secagg_the_one_update_row_is_hidden_and_the_aggregate_is_measured(measured):
    assert measured.secagg["vantage"]["one_update"]["status"] == "hidden"
    assert measured.secagg["participants"]["own_share_removed"] is False
    rows = vantage_rows(measured.secagg)
    assert rows[2][1:] == [HIDDEN, HIDDEN, HIDDEN]
    assert rows[1][0] == "server: aggregate only" and "/" in rows[1][1]
    assert measured.secagg["vantage"]["aggregate"] == measured.plain["vantage"]["aggregate"]
    assert "(global as received)" in rows[3][0]


def test_the_terminal_prints_the_vantage_table_and_the_matrix(measured):
    console = Console(width=200, record=True)
    for table in details({"final": {"federated_attack": measured.secagg}}):
        console.print(table)
    text = console.export_text()
    assert "hidden by SecAgg+" in text and "server: aggregate only" in text
    assert "leakage matrix" in text and "(own)" in text
    assert details({"final": {}}) == []


def test_the_store_and_the_report_sections_carry_both_tables(measured, tmp_path):
    summary = {"final": {"federated_attack": measured.plain}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rows = store_rows(tmp_path)
    assert {kind for _, kind, _, _ in rows} == {"vantage", "matrix exact", "matrix approximate"}
    frame = pd.DataFrame(rows, columns=["round", "kind", "position", "cells_json"])
    frame[["run_id", "combination", "seed"]] = ["r1", "quickstart", 0]
    view = SimpleNamespace(table=lambda name: frame)
    vantage, matrix, _ = (s.rows(view) for s in AUDIT.sections)
    assert vantage[0][:2] == ["run", "vantage"] and len(vantage) == 5
    assert vantage[2][1].startswith("server: one client's update")
    assert matrix[0] == ["run", "participant \\ records of", "client 0", "client 1"]
    assert len(matrix) == 3


def test_attackers_run_every_n_rounds_and_always_after_the_last(tiny_raw):
    config = _config({**tiny_raw, "federation": {"num_clients": 2, "rounds": 5}},
                     participants_every=2)
    assert [r for r in range(6) if due(config, r)] == [2, 4, 5]
    off = build_config(tiny_raw)
    assert not any(due(off, r) for r in range(3))


def test_the_plain_strategy_keeps_each_clients_state_and_examples_for_the_attackers(tiny_raw):
    import numpy as np

    from fedmem.mitigations import registry
    from server.strategy import AuditedFedAvg
    from tests.support import numpy_clients as nc
    from tests.support.inprocess import InProcessGrid, run_rounds

    for secagg in (False, True):
        raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": 1},
               "secagg": {"enabled": secagg}}
        config = build_config(raw)
        audited = AuditedFedAvg(
            secure_aggregation=secagg, keep_states=not secagg,
            initial_parameters=nc.initial_parameters(), fraction_evaluate=0.0,
            min_available_clients=3,
        )
        grid = InProcessGrid(nc.client_app(config), 3, {})
        run_rounds(grid, audited, registry.fit_workflow(config))
        if secagg:
            assert audited.round_states == {}  # the server never holds one update
            continue
        states = audited.round_states[1]
        assert sorted(states) == [0, 1, 2]
        for client, (arrays, examples) in states.items():
            own = [p + d for p, d in zip(nc.initial_state(), nc.local_step(client, 0.5),
                                         strict=True)]
            assert all(np.allclose(a, b) for a, b in zip(arrays, own, strict=True))
            assert examples > 0


@pytest.mark.slow
def test_a_secagg_run_reports_both_tables_with_the_one_update_row_hidden(tiny_raw):
    from fedmem.runs.report_files import write_report
    from tests.support.inprocess import run_fedmem_in_process

    raw = {**tiny_raw, "federation": {"num_clients": 2, "rounds": 1},
           "secagg": {"enabled": True}}
    config = _config(raw)
    summary = run_fedmem_in_process(config)
    attack = summary["final"]["federated_attack"]
    assert attack["round"] == 1
    assert attack["vantage"]["one_update"]["status"] == "hidden"
    assert summary["final"]["federated_attack_s"] > 0
    report = write_report(config.run_dir).markdown.read_text()
    assert "## Federated attackers" in report and "## Leakage matrix, exact" in report
    assert "| hidden by SecAgg+ |" in report
