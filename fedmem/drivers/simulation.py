"""Run a federated fine-tuning + audit with Flower's Simulation Engine (Ray backend).

`fedmem run` drives the simulation in-process with `run_simulation` so that one command
blocks until the run folder is complete; `flwr run .` drives the very same ServerApp and
ClientApp through Flower's own CLI (see README, design notes). With
`federation.ray_address` set, the simulation's clients run as actors of an existing Ray
cluster instead of a private Ray instance on this machine.
"""

from __future__ import annotations

import logging
import os

from clients.app import make_client_app
from fedmem.config import Config, ConfigError
from server.app import make_server_app


def backend_config(config: Config, verbose: bool = False) -> dict:
    """Ray's settings. Actors' output is not forwarded to this terminal (`verbose`: it is);
    their warnings and Flower's lines are in the run folder's run.log (fedmem.runs.run_log)."""
    fed = config.federation
    init_args: dict = {"logging_level": logging.ERROR, "log_to_driver": verbose}
    if fed.ray_address:
        # Connecting to a running cluster: its resources are the cluster's own (Ray refuses
        # num_cpus/num_gpus here), and actors are spread over all its nodes.
        init_args["address"] = fed.ray_address
    else:
        # "local": a new Ray instance for this run. Ray's default (no address) joins the
        # cluster last started on this machine with `ray start`, which nobody asked for.
        init_args.update(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False)
    return {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
        "init_args": init_args,
    }


def check_resources(config: Config) -> None:
    """Ray waits forever for an actor whose resources no node has: refuse up front a GPU
    request on a private Ray instance of a machine without CUDA."""
    fed = config.federation
    if fed.client_gpus > 0 and not fed.ray_address:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"federation.client_gpus = {fed.client_gpus!r}: this machine has no CUDA "
                "device (set it to 0, or set federation.ray_address to a cluster with GPUs)"
            )


def run_federated(
    config: Config, on_round=None, resume: bool = False, verbose: bool = False
) -> None:
    check_resources(config)
    # Keep Ray's current behaviour for CPU-only actors, without its FutureWarning.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    run_simulation(
        server_app=make_server_app(config, on_round=on_round, resume=resume),
        client_app=make_client_app(config),
        num_supernodes=config.federation.num_clients,
        backend_config=backend_config(config, verbose),
    )
