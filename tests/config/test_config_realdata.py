"""Config keys for real data and models: validated once, errors name the key."""

from __future__ import annotations

import pytest

from fedmem.config import ConfigError, build_config
from fedmem.drivers.simulation import backend_config


def test_unknown_dataset_name_is_rejected_with_its_index():
    with pytest.raises(ConfigError, match=r"data\.datasets\[1\] = 'medqa': must be one of"):
        build_config({"data": {"source": "datasets", "datasets": ["medmcqa", "medqa"]}})


def test_a_dataset_listed_twice_is_rejected():
    raw = {"data": {"source": "datasets", "datasets": ["medmcqa", "medmcqa"]}}
    with pytest.raises(ConfigError, match="listed twice"):
        build_config({**raw, "federation": {"num_clients": 2}})


def test_user_canaries_need_a_path():
    with pytest.raises(ConfigError, match="canaries.path: required"):
        build_config({"canaries": {"source": "jsonl"}})


def test_dataset_size_cannot_be_negative():
    with pytest.raises(ConfigError, match=r"data\.pubmedqa\.size = -1: must be >= 0"):
        build_config({"data": {"pubmedqa": {"size": -1}}})


def test_model_dtype_choices_are_named():
    with pytest.raises(ConfigError, match=r"model\.dtype = 'fp8': must be one of 'auto'"):
        build_config({"model": {"dtype": "fp8"}})


def test_client_gpus_become_ray_num_gpus():
    config = build_config({"federation": {"client_gpus": 0.25}})
    assert backend_config(config)["client_resources"]["num_gpus"] == 0.25
