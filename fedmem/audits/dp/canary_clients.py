"""Canary clients for the client-level one-shot DP audit (Andrew et al., arXiv 2302.03098).

A canary client is the auditor's, not an institution: it has no data and does no training;
its update is a fixed random direction scaled to the clip norm. Canaries are simulated here,
at the server, as extra contributions to the aggregate, rather than as extra Flower nodes:
hundreds of them cost a few vector additions instead of hundreds of ClientApp calls, they
stay out of client sampling and client metrics, and they compose with SecAgg+ (they join the
unmasked sum). They are added where a client's clipped update would land: inside the DP
wrapper, after the real clients' average and before the noise, with the same fixed
denominator (the sampled clients), so each canary moves the mean by exactly clip / n, as much
as any real client may. The canaries do not dilute the real clients' average.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from attacks.dp_audit import canary_direction
from fedmem.audits.dp.run_audit import canary_seed, inserted_canaries
from fedmem.config import Config


class CanaryClients(Strategy):
    """Wraps the aggregating strategy; adds every canary client's update to its result."""

    def __init__(self, inner: Strategy, config: Config, clip_norm: Callable[[], float]) -> None:
        self.inner = inner
        self.seed = canary_seed(config)
        self.indices = inserted_canaries(config)
        self.denominator = config.sampled_clients()
        self.clip_norm = clip_norm  # the DP wrapper's clipping norm
        self.round_norms: dict[int, float] = {}

    def aggregate_fit(self, server_round, results, failures):
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if parameters is None:
            return parameters, metrics
        norm = float(self.clip_norm())
        self.round_norms[server_round] = norm
        return self._with_canaries(parameters, norm), metrics

    def _with_canaries(self, parameters: Parameters, norm: float) -> Parameters:
        arrays = parameters_to_ndarrays(parameters)
        dim = sum(a.size for a in arrays)
        total = np.zeros(dim, dtype=np.float64)
        for i in self.indices:
            total += canary_direction(dim, self.seed, i)
        total *= norm / self.denominator
        out, start = [], 0
        for a in arrays:
            piece = total[start : start + a.size].reshape(a.shape)
            out.append((a.astype(np.float64) + piece).astype(a.dtype))
            start += a.size
        return ndarrays_to_parameters(out)

    # Everything else is the inner strategy's.
    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)
