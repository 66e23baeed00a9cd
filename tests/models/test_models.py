"""Models: the offline base is built once and cached; only the trainable state travels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmem.config import ConfigError, build_config
from fedmem.models.loading import (
    build_model,
    get_trainable_state,
    load_base_model,
    load_tokenizer,
    set_trainable_state,
    trainable_names,
)


def test_tiny_base_is_built_once_and_reloads_identically(tiny_raw):
    cfg = build_config(tiny_raw)
    a, b = load_base_model(cfg), load_base_model(cfg)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_lora_trains_only_adapters_and_full_trains_everything(tiny_raw):
    lora = build_model(
        build_config({**tiny_raw, "model": {**tiny_raw["model"], "finetuning": "lora"}})
    )
    names = trainable_names(lora)
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-3] for n in names} == {"lora_A", "lora_B"}
    full = build_model(build_config(tiny_raw))
    assert len(trainable_names(full)) == len(list(full.parameters()))


def test_lora_state_is_much_smaller_than_full_state(tiny_raw):
    lora_cfg = build_config(
        {**tiny_raw, "model": {**tiny_raw["model"], "finetuning": "lora"}, "lora": {"rank": 2}}
    )
    n_lora = sum(a.size for a in get_trainable_state(build_model(lora_cfg)))
    n_full = sum(a.size for a in get_trainable_state(build_model(build_config(tiny_raw))))
    assert n_lora < n_full / 4


@pytest.mark.parametrize("finetuning", ["lora", "full"])
def test_trainable_state_round_trips_as_fp32_arrays(tiny_raw, finetuning):
    cfg = build_config({**tiny_raw, "model": {**tiny_raw["model"], "finetuning": finetuning}})
    src, dst = build_model(cfg, seed=1), build_model(cfg, seed=2)
    state = [a + np.float32(0.5) for a in get_trainable_state(src)]
    assert all(a.dtype == np.float32 for a in state)
    set_trainable_state(dst, state)
    assert all(np.array_equal(a, b) for a, b in zip(state, get_trainable_state(dst), strict=True))


def test_set_trainable_state_rejects_wrong_shapes(tiny_raw):
    model = build_model(build_config(tiny_raw))
    state = get_trainable_state(model)
    with pytest.raises(ValueError, match="expected"):
        set_trainable_state(model, state[:-1])
    with pytest.raises(ValueError, match="shape mismatch"):
        set_trainable_state(model, [np.zeros((1,), np.float32)] + state[1:])


def test_any_causal_lm_loads_from_a_local_path(tiny_raw, tmp_path):
    cfg = build_config(tiny_raw)
    load_base_model(cfg).save_pretrained(tmp_path / "m")
    load_tokenizer(cfg).save_pretrained(tmp_path / "m")
    local = build_config({**tiny_raw, "model": {"name": str(tmp_path / "m"), "finetuning": "lora"}})
    model = build_model(local)
    assert trainable_names(model)
    assert load_tokenizer(local).pad_token_id is not None


def test_missing_model_path_is_a_config_error(tiny_raw, tmp_path):
    cfg = build_config({**tiny_raw, "model": {"name": str(tmp_path / "absent")}})
    with pytest.raises(ConfigError, match="model.name"):
        load_tokenizer(cfg)


def test_prepare_builds_the_base_into_the_cache_without_training(tiny_raw, tmp_path, monkeypatch,
                                                                   capsys):
    from fedmem.drivers.cli import main
    from tests.support.files import write_toml

    monkeypatch.setenv("FEDMEM_CACHE_DIR", str(tmp_path / "cache"))
    raw = {**tiny_raw, "model": {**tiny_raw["model"], "pretrain_steps": 2}}
    assert main(["prepare", str(write_toml(tmp_path / "c.toml", raw))]) == 0
    assert len(list((tmp_path / "cache" / "base").glob("*/model.safetensors"))) == 1
    assert not (tmp_path / "runs").exists()
    assert "ready in" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "c.toml"), "--set", "model.nope=1"]) == 2
