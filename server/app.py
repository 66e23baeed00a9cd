"""Flower ServerApp: FedAvg of the trainable state on Flower's legacy workflow path.

The legacy `DefaultWorkflow` is the one server path here because it is the only one in
flwr 1.41 on which SecAgg+ (`SecAggPlusWorkflow`) runs; every mitigation plugs into it.
"""

from __future__ import annotations

import random

from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid

from fedmem.config import Config, ConfigError, from_run_config, to_run_config
from fedmem.mitigations import client_dp, secure_aggregation
from fedmem.models import build_model, get_trainable_state, set_trainable_state
from fedmem.privacy_audit import client_canaries_enabled
from fedmem.results import RunRecorder
from server.canary_clients import CanaryClients
from server.measure import MeasuredFitWorkflow
from server.strategy import AuditedFedAvg


def run_server(grid: Grid, context: Context, config: Config, recorder: RunRecorder) -> dict:
    if config.mode != "federated":
        raise ConfigError(f"mode = {config.mode!r}: the ServerApp runs federated mode only")
    random.seed(config.seed)  # Flower's client sampling draws from `random`
    recorder.start()
    model = build_model(config, seed=config.seed)
    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        fraction_fit=config.federation.fraction_fit,
        min_fit_clients=1,
        min_available_clients=config.federation.num_clients,
        fraction_evaluate=0.0,
        min_evaluate_clients=0,
        initial_parameters=ndarrays_to_parameters(get_trainable_state(model)),
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
    )

    aggregating = audited
    if client_canaries_enabled(config):  # the client-level DP audit's canary clients
        aggregating = CanaryClients(
            audited, config, clip_norm=lambda: client_dp.round_facts(strategy)["clip_norm"]
        )
    strategy = client_dp.wrap_strategy(config, aggregating)
    fit_stage = MeasuredFitWorkflow(secure_aggregation.fit_workflow(config))

    def audit(server_round: int, arrays, _config):
        set_trainable_state(model, arrays)
        row = recorder.record(
            server_round,
            model,
            audited.round_clients.pop(server_round, {}),
            fit_stage=fit_stage.rounds.pop(server_round, None),
            client_dp=client_dp.round_facts(strategy) if server_round else None,
        )
        return row["heldout_loss"], {"exact_rate": row["extraction"]["injected"]["exact_rate"]}

    audited.evaluate_fn = audit
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.federation.rounds),
        strategy=strategy,
    )
    DefaultWorkflow(fit_workflow=fit_stage)(grid, legacy)
    final = arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], True)
    set_trainable_state(model, parameters_to_ndarrays(final))
    return recorder.finish(model)


def make_server_app(config: Config | None = None, on_round=None) -> ServerApp:
    """The ServerApp; with `config` given it overrides the run config Flower passes in."""
    preset = to_run_config(config) if config is not None else {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = from_run_config({**context.run_config, **preset})
        run_server(grid, context, cfg, RunRecorder(cfg, on_round=on_round))

    return app


app = make_server_app()
