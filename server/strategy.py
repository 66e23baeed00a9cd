"""FedAvg over the trainable state, with the global model audited after every round."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedmem.mitigations.dp_history import HISTORY_METRIC

# Fit metrics that are bookkeeping, not facts of the round: the client's index (the key of
# its facts) and its DP-SGD accountant history (kept for resuming, see server/rounds.py).
NOT_RECORDED_METRICS = ("client", HISTORY_METRIC)


class AuditedFedAvg(FedAvg):
    """Example-weighted FedAvg that keeps each round's per-client facts for the audit row.

    Results are aggregated in client order, not arrival order, so the float sums (and the
    run's metrics) do not depend on which client finished first.

    With `secure_aggregation`, SecAgg+ has already averaged the masked updates: Flower hands
    every client's result the same aggregate as its parameters, with the client's own
    metrics (which travel unmasked). The aggregate is passed through, never re-averaged.

    `audit_client(server_round, client, arrays)`, when set, is called with each client's
    returned trainable state before averaging: the view of a server without secure
    aggregation. Under SecAgg+ no such state exists, and it is never called.

    With `keep_states`, each aggregated round's returned states and example counts are kept
    in `round_states` (client -> (arrays, examples)) for the federated attackers
    (fedmem.audits.federated_attack); never under SecAgg+, where the server holds none.

    A round is declined (the global model stays) when fewer than `min_fit_clients` clients
    return a result, or when any client failed and `accept_failures` is off; `declined`
    keeps why, per round.
    """

    def __init__(
        self,
        *,
        secure_aggregation: bool = False,
        audit_client: Callable[[int, int, list[np.ndarray]], object] | None = None,
        keep_states: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.secure_aggregation = secure_aggregation
        self.audit_client = audit_client
        self.keep_states = keep_states
        self.round_states: dict[int, dict[int, tuple[list[np.ndarray], int]]] = {}
        self.round_clients: dict[int, dict[int, dict[str, Scalar]]] = {}
        self.round_failures: dict[int, int] = {}
        self.declined: dict[int, str] = {}

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        results = sorted(results, key=lambda r: int(r[1].metrics["client"]))
        self.round_clients[server_round] = {
            int(res.metrics["client"]): {
                k: v for k, v in res.metrics.items() if k not in NOT_RECORDED_METRICS
            }
            for _, res in results
        }
        self.round_failures[server_round] = len(failures)
        if len(results) < self.min_fit_clients:
            self.declined[server_round] = (
                f"{len(results)} client(s) returned a result, fewer than "
                f"federation.min_fit_clients = {self.min_fit_clients}"
            )
            return None, {}
        if failures and not self.accept_failures:
            self.declined[server_round] = "a client failed and federation.accept_failures = false"
            return None, {}
        if self.secure_aggregation:
            return _secure_aggregate(results), {}
        if self.audit_client is not None:
            for _, res in results:
                client = int(res.metrics["client"])
                self.audit_client(server_round, client, parameters_to_ndarrays(res.parameters))
        if self.keep_states:
            self.round_states[server_round] = {
                int(res.metrics["client"]): (parameters_to_ndarrays(res.parameters),
                                             int(res.num_examples))
                for _, res in results
            }
        return super().aggregate_fit(server_round, results, failures)


def _secure_aggregate(results: list[tuple[ClientProxy, FitRes]]) -> Parameters:
    aggregate = results[0][1].parameters
    if any(res.parameters is not aggregate for _, res in results):
        raise RuntimeError("secure aggregation: results carry distinct parameters")
    # SecAgg+ dequantizes to float64; the global state travels as fp32 everywhere else.
    return ndarrays_to_parameters([a.astype(np.float32) for a in parameters_to_ndarrays(aggregate)])
