"""Run a federated fine-tuning + audit with Flower's Simulation Engine (Ray backend).

`fedmem run` drives the simulation in-process with `run_simulation` so that one command
blocks until the run folder is complete; `flwr run .` drives the very same ServerApp and
ClientApp through Flower's own CLI (see README, design notes).
"""

from __future__ import annotations

import logging
import os

from clients.app import make_client_app
from fedmem.config import Config
from server.app import make_server_app


def backend_config(config: Config) -> dict:
    return {
        # A fractional num_gpus lets several clients share one GPU.
        "client_resources": {
            "num_cpus": config.federation.client_cpus,
            "num_gpus": config.federation.client_gpus,
        },
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": True,
        },
    }


def run_federated(config: Config, on_round=None, resume: bool = False) -> None:
    # Keep Ray's current behaviour for CPU-only actors, without its FutureWarning.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    run_simulation(
        server_app=make_server_app(config, on_round=on_round, resume=resume),
        client_app=make_client_app(config),
        num_supernodes=config.federation.num_clients,
        backend_config=backend_config(config),
    )
