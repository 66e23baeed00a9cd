"""Flower ClientApp: one simulated institution training on its own partition."""

from __future__ import annotations

import json
import sys
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.client import ClientApp, NumPyClient

from fedmem import seeding
from fedmem.config import Config, from_run_config, to_run_config
from fedmem.data.federated import client_data
from fedmem.mitigations import registry
from fedmem.mitigations.client_mods import mitigation_mod
from fedmem.mitigations.dp_history import HISTORY_METRIC, RESUMED_HISTORIES
from fedmem.mitigations.local_fit import local_fit
from fedmem.models.loading import (
    build_model,
    get_trainable_state,
    load_tokenizer,
    set_trainable_state,
    state_nbytes,
)
from fedmem.runs import run_log
from fedmem.training import encode_training_rows


@lru_cache(maxsize=8)
def client_rows(config: Config, client: int) -> tuple[list[list[int]], list[int] | None]:
    """The client's training rows and, under answer-only loss, their prompt lengths."""
    texts, prompt_chars = client_data(config, load_tokenizer, client)
    return encode_training_rows(load_tokenizer(config), texts, prompt_chars, config.training)


@lru_cache(maxsize=1)
def working_model(config: Config) -> torch.nn.Module:
    """The one model object this process trains, built (loaded from disk) once per process.

    Every fit first overwrites its whole trainable state (all weights under `full`, the
    adapter under `lora`) with the global state, and training changes nothing else, so a
    fit on a reused model equals a fit on a freshly built one. A process never holds more
    than this one model, however many clients it serves; per-client state is the client's
    rows (and its DP accountant history in the node state).
    """
    model = build_model(config, seed=config.seed)
    if config.federation.client_gpus > 0:
        model.to("cuda")
    return model


def reset_peak_gpu_memory(model: torch.nn.Module) -> None:
    """Start this fit's GPU peak from what is allocated now (the model, its state)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_memory(model: torch.nn.Module) -> dict[str, float]:
    """`peak_gpu_mib`: this process' peak allocated CUDA memory during the fit (its model
    included), for benchmarks/gpu_run.py; nothing on cpu."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return {}
    return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


def training_seed(config: Config, server_round: int, client: int) -> int:
    return seeding.training_seed(config.seed, server_round, client)


# Key in the node's persistent state under which the client's DP accountant history lives.
DP_HISTORY = "dp_sgd.accountant_history"


class FedmemClient(NumPyClient):
    def __init__(self, config: Config, client: int, state: RecordDict | None = None) -> None:
        self.config = config
        self.client = client
        # Flower keeps a node's `context.state` across rounds (the simulation engine stores
        # the context each ClientApp call returns), while this object is rebuilt every round.
        self.state = state if state is not None else RecordDict()

    def get_parameters(self, config) -> list[np.ndarray]:
        return get_trainable_state(build_model(self.config, seed=self.config.seed))

    def fit(self, parameters, config):
        server_round = int(config["server_round"])
        model = working_model(self.config)
        reset_peak_gpu_memory(model)
        set_trainable_state(model, parameters)
        rows, prompt_lengths = client_rows(self.config, self.client)
        pad_id = load_tokenizer(self.config).pad_token_id
        seed = training_seed(self.config, server_round, self.client)
        history = self.accountant_history(config)
        fit = local_fit(
            self.config, model, rows, prompt_lengths, pad_id, seed, history, trainer=self.client
        )
        result = fit.result
        update = get_trainable_state(model)
        metrics = {
            "client": self.client,
            "train_loss": result.mean_loss,
            "steps": result.steps,
            "examples": result.examples,
            "bytes_sent": state_nbytes(update),
        }
        metrics.update(fit.metrics())
        metrics.update(peak_gpu_memory(model))
        saved = fit.history()  # the step variant's run-long state: DP-SGD's accountant
        if saved is not None:
            self.state[DP_HISTORY] = ConfigRecord(saved)
            metrics[HISTORY_METRIC] = json.dumps(saved)  # the server keeps it for resuming
        return update, registry.client_weight(self.config, len(rows)), metrics

    def accountant_history(self, fit_config) -> dict | None:
        """The DP accountant history so far: the node's own, or, on the first round this
        node trains after a resume, the one the server saved for this client."""
        if DP_HISTORY in self.state:
            return dict(self.state[DP_HISTORY])
        resumed = json.loads(str(fit_config.get(RESUMED_HISTORIES, "{}")))
        return resumed.get(str(self.client))


def _in_ray_actor() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def make_client_app(config: Config | None = None) -> ClientApp:
    """The ClientApp; with `config` given it overrides the run config Flower passes in."""
    preset = to_run_config(config) if config is not None else {}

    def client_fn(context: Context):
        cfg = from_run_config({**context.run_config, **preset})
        if _in_ray_actor():  # a simulation's client: its library output goes to run.log
            run_log.attach(cfg.run_dir)
        torch.set_num_threads(max(1, int(cfg.federation.client_cpus)))
        client = int(context.node_config["partition-id"])
        return FedmemClient(cfg, client, context.state).to_client()

    return ClientApp(client_fn=client_fn, mods=[mitigation_mod(preset)])


app = make_client_app()
