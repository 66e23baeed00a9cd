"""Numpy-only fedmem clients for protocol tests: each adds a seeded step to the global
state and runs behind the real fedmem mitigation mod."""

from __future__ import annotations

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters

from fedmem.config import Config, to_run_config
from fedmem.mitigations import secure_aggregation
from fedmem.mitigations.client_dp import client_weight
from fedmem.mitigations.client_mods import mitigation_mod

SHAPES = [(4, 3), (5,)]
WEIGHTS = (10, 20, 30)  # below the tiny data's smallest client, so max_weight is never hit


def initial_state() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 1, s).astype(np.float32) for s in SHAPES]


def initial_parameters():
    return ndarrays_to_parameters(initial_state())


def local_step(client: int, scale: float) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + client)
    return [(scale * rng.normal(0, 1, s)).astype(np.float32) for s in SHAPES]


class StepClient(NumPyClient):
    def __init__(self, config: Config, client: int, scale: float, extra: dict | None) -> None:
        self.config, self.client, self.scale = config, client, scale
        self.extra = extra or {}

    def fit(self, parameters, config):
        new = [p + d for p, d in zip(parameters, local_step(self.client, self.scale), strict=True)]
        metrics = {"client": self.client, "bytes_sent": int(sum(a.nbytes for a in new))}
        return new, client_weight(self.config, WEIGHTS[self.client]), {**metrics, **self.extra}


def client_app(config: Config, scale: float = 0.5, extra: dict | None = None) -> ClientApp:
    """Clients whose fit metrics also hold `extra`."""

    def client_fn(context):
        client = int(context.node_config["partition-id"])
        return StepClient(config, client, scale, extra).to_client()

    return ClientApp(client_fn=client_fn, mods=[mitigation_mod(to_run_config(config))])


def fedavg(clients: list[int], scale: float = 0.5, uniform: bool = False) -> list[np.ndarray]:
    """The plain example-weighted (or uniform) FedAvg of the clients' new states, float64."""
    weights = np.array([1.0 if uniform else WEIGHTS[c] for c in clients], dtype=np.float64)
    weights /= weights.sum()
    steps = [local_step(c, scale) for c in clients]
    return [
        p + sum(w * s[i].astype(np.float64) for w, s in zip(weights, steps, strict=True))
        for i, p in enumerate(initial_state())
    ]


def quantization_bound(config, clients: list[int]) -> float:
    """Stochastic rounding errs by < 1 quantum per client and value; the sum is divided by
    the total weight ratio sum(w / max_weight)."""
    quantum = 2 * config.secagg.clipping_range / config.secagg.quantization_range
    max_weight = secure_aggregation.max_weight(config)
    ratio = sum(WEIGHTS[c] / max_weight for c in clients)
    return len(clients) * quantum / ratio + 1e-6  # + fp32 rounding of values ~1
