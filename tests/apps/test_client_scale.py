"""Costs that scale: a process trains one model object for every client it serves, and
starts fast (Flower's deployment engine starts one per client per round).

With 100 simulated clients a Ray actor serves many of them in turn; the ClientApp must not
keep a model per client, nor reload the base model from disk for every fit, and reusing the
one model must not change what a fit computes.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import clients.app as client_app
from fedmem.config import ConfigError, build_config
from fedmem.drivers.simulation import backend_config, check_resources
from fedmem.models.loading import build_model, get_trainable_state


def _config(tiny_raw, finetuning="full", dp=False):
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["finetuning"] = finetuning
    raw["federation"]["num_clients"] = 3
    raw["training"]["local_steps"] = 2
    if dp:
        raw["dp_sgd"] = {"enabled": True, "noise_multiplier": 1.0}
    return build_config(raw)


def _fit(config, client, parameters):
    fit_client = client_app.FedmemClient(config, client)
    update, _, _ = fit_client.fit(parameters, {"server_round": 1})
    return update


@pytest.mark.parametrize(
    ("finetuning", "dp"), [("full", False), ("full", True), ("lora", False), ("lora", True)]
)
def test_a_fit_on_the_reused_model_equals_a_fit_on_a_freshly_built_one(tiny_raw, finetuning, dp):
    config = _config(tiny_raw, finetuning, dp)
    initial = get_trainable_state(build_model(config, seed=config.seed))
    client_app.working_model.cache_clear()
    fresh = _fit(config, 0, initial)
    _fit(config, 1, initial)  # the process's model now holds client 1's trained state
    reused = _fit(config, 0, initial)
    assert len(fresh) == len(reused)
    for a, b in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_process_loads_the_base_model_once_for_all_the_clients_it_serves(
    tiny_raw, monkeypatch
):
    config = _config(tiny_raw)
    initial = get_trainable_state(build_model(config, seed=config.seed))
    loads = []

    def counting_build_model(cfg, seed=0):
        loads.append(seed)
        return build_model(cfg, seed=seed)

    monkeypatch.setattr(client_app, "build_model", counting_build_model)
    client_app.working_model.cache_clear()
    for client in range(3):
        _fit(config, client, initial)
    assert len(loads) == 1


def test_gpu_clients_on_a_machine_without_cuda_are_refused_before_ray_starts(
    tiny_raw, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = copy.deepcopy(tiny_raw)
    raw["federation"]["client_gpus"] = 0.5
    with pytest.raises(ConfigError, match=r"^federation.client_gpus = 0.5: "):
        check_resources(build_config(raw))


def test_a_ray_address_connects_to_the_cluster_without_claiming_its_resources(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["federation"].update(ray_address="127.0.0.1:6379", client_cpus=2, client_gpus=0.25)
    backend = backend_config(build_config(raw))
    assert backend["init_args"]["address"] == "127.0.0.1:6379"
    assert "num_cpus" not in backend["init_args"]  # Ray refuses it when connecting
    assert backend["client_resources"] == {"num_cpus": 2, "num_gpus": 0.25}


def test_the_icd10_list_is_parsed_once_then_read_back_equal_from_the_cache(
    tmp_path, monkeypatch
):
    from fedmem.data.resources import icd10

    monkeypatch.setenv("FEDMEM_CACHE_DIR", str(tmp_path))
    icd10.load_icd10_codes.cache_clear()
    try:
        parsed = icd10.load_icd10_codes()
        assert icd10.icd10_cache_file().parent == tmp_path
        icd10.load_icd10_codes.cache_clear()
        monkeypatch.setattr(icd10, "parse_icd10_codes", lambda: pytest.fail("parsed again"))
        assert icd10.load_icd10_codes() == parsed
    finally:
        icd10.load_icd10_codes.cache_clear()
