"""FedAvg over the trainable state, with the global model audited after every round."""

from __future__ import annotations

from flwr.common import FitRes, Parameters, Scalar
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg


class AuditedFedAvg(FedAvg):
    """Example-weighted FedAvg that keeps each round's per-client facts for the audit row.

    Results are aggregated in client order, not arrival order, so the float sums (and the
    run's metrics) do not depend on which client finished first.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.round_clients: dict[int, dict[int, dict[str, Scalar]]] = {}
        self.round_failures: dict[int, int] = {}

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        results = sorted(results, key=lambda r: int(r[1].metrics["client"]))
        self.round_clients[server_round] = {
            int(res.metrics["client"]): {k: v for k, v in res.metrics.items() if k != "client"}
            for _, res in results
        }
        self.round_failures[server_round] = len(failures)
        return super().aggregate_fit(server_round, results, failures)
