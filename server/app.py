"""Flower ServerApp: FedAvg of the trainable state on Flower's legacy workflow path.

The legacy `DefaultWorkflow` is the one server path here because it is the only one in
flwr 1.41 on which SecAgg+ (`SecAggPlusWorkflow`) runs; every mitigation plugs into it.
"""

from __future__ import annotations

import json

from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid

from fedmem.audits.dp.canary_clients import CanaryClients
from fedmem.audits.dp.run_audit import client_canaries_enabled
from fedmem.audits.federated_attack import FederatedAttack, due
from fedmem.config import Config, ConfigError, from_run_config, to_run_config
from fedmem.mitigations import registry
from fedmem.mitigations.dp_history import RESUMED_HISTORIES
from fedmem.models.loading import build_model, get_trainable_state, set_trainable_state
from fedmem.runs.folder import load_checkpoint
from fedmem.runs.recorder import RunRecorder
from server.measure import MeasuredFitWorkflow
from server.rounds import RoundFitStage
from server.strategy import AuditedFedAvg


def run_server(
    grid: Grid, context: Context, config: Config, recorder: RunRecorder, resume: bool = False
) -> dict:
    """Run the federation and audit every round; `resume` continues the run folder after its
    last complete round (the global model, the strategy's state and the clients' DP
    accountants come back from its checkpoint)."""
    if config.mode != "federated":
        raise ConfigError(f"mode = {config.mode!r}: the ServerApp runs federated mode only")
    fit_workflow = registry.fit_workflow(config)  # checks it before writing
    point = recorder.start(resume=resume)
    model = build_model(config, seed=config.seed)
    if point:
        load_checkpoint(point.folder, model)
    done = point.round if point else 0
    resumed_histories = point.state.get("accountants", {}) if point else {}

    def fit_config(server_round: int) -> dict:
        fit = {"server_round": server_round}
        if resumed_histories:  # clients whose node state lost its history take it from here
            fit[RESUMED_HISTORIES] = json.dumps(resumed_histories, sort_keys=True)
        return fit

    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        audit_client=client_view_auditor(config, recorder),
        keep_states=config.attack.participants and not config.secagg.enabled,
        fraction_fit=config.federation.fraction_fit,
        min_fit_clients=config.federation.min_fit_clients,
        min_available_clients=config.federation.num_clients,
        accept_failures=config.federation.accept_failures,
        fraction_evaluate=0.0,
        min_evaluate_clients=0,
        initial_parameters=ndarrays_to_parameters(get_trainable_state(model)),
        on_fit_config_fn=fit_config,
    )
    aggregating = audited
    if client_canaries_enabled(config):  # the client-level DP audit's canary clients
        aggregating = CanaryClients(
            audited, config, clip_norm=lambda: wrapped.round_facts()["client_dp"]["clip_norm"]
        )
    wrapped = registry.wrap_strategy(config, aggregating)  # client-level DP
    strategy = wrapped.strategy
    if point:
        wrapped.restore(point.state.get("strategy", {}))
    measured = MeasuredFitWorkflow(fit_workflow)
    stage = RoundFitStage(measured, config.seed, first_round=done + 1, declined=audited.declined)
    stage.accountants.update({int(c): h for c, h in resumed_histories.items()})

    attackers = FederatedAttack(config)
    previous = [get_trainable_state(model)]  # the global state the next round trains from

    def audit(server_round: int, arrays, _config):
        if server_round == 0 and point:  # Flower evaluates the initial model: audited before
            before = recorder.rows[-1]
            return before["heldout_loss"], {"exact_rate": _exact_rate(before)}
        states = audited.round_states.pop(server_round, None)
        attack = None
        outcome = stage.outcomes.get(server_round, {})
        if due(config, server_round) and outcome.get("aggregated", True):
            attack = attackers.measure(
                server_round,
                previous[0],
                list(arrays),
                {c: s for c, (s, _) in states.items()} if states is not None else None,
                {c: n for c, (_, n) in states.items()} if states is not None else None,
            )
        previous[0] = [a.copy() for a in arrays]
        set_trainable_state(model, arrays)
        row = recorder.record(
            server_round,
            model,
            audited.round_clients.pop(server_round, {}),
            fit_stage=measured.rounds.pop(server_round, None),
            strategy_facts=wrapped.round_facts() if server_round else None,
            outcome=stage.outcomes.pop(server_round, None),
            resume_state={
                "strategy": wrapped.state(),
                "accountants": {str(c): h for c, h in sorted(stage.accountants.items())},
            },
            federated_attack=attack,
        )
        return row["heldout_loss"], {"exact_rate": _exact_rate(row)}

    audited.evaluate_fn = audit
    remaining = config.federation.rounds - done
    if remaining > 0:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=remaining), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=stage)(grid, legacy)
        final = arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], True)
        set_trainable_state(model, parameters_to_ndarrays(final))
    return recorder.finish(model)


def client_view_auditor(config: Config, recorder: RunRecorder):
    """What audits one client's returned state (a separate model, so the global one is
    untouched), or None when `attack.client_view` is off or SecAgg+ makes it impossible."""
    if not config.attack.client_view or config.secagg.enabled:
        return None
    client_model = build_model(config, seed=config.seed)

    def audit_client(server_round: int, client: int, arrays) -> None:
        set_trainable_state(client_model, arrays)
        recorder.record_client_view(server_round, client, client_model)

    return audit_client


def _exact_rate(row: dict) -> float:
    return row["extraction"]["injected"]["exact_rate"]


def make_server_app(config: Config | None = None, on_round=None, resume: bool = False) -> ServerApp:
    """The ServerApp; with `config` given it overrides the run config Flower passes in, and
    `resume` continues that config's run folder (`fedmem run --resume`)."""
    preset = to_run_config(config) if config is not None else {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = from_run_config({**context.run_config, **preset})
        run_server(grid, context, cfg, RunRecorder(cfg, on_round=on_round), resume=resume)

    return app


app = make_server_app()
