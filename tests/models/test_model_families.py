"""Any causal LM by local path or hub id: LoRA presets per family (an explicit list wins),
dtype and device placement, and a hub id that cannot be fetched fails fast in one line."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

from fedmem.config import ConfigError, build_config
from fedmem.models.loading import (
    build_model,
    get_trainable_state,
    load_base_model,
    load_tokenizer,
    model_device,
    model_dtype,
)
from fedmem.training import TrainingConfig, encode_samples, train_local

TEXTS = ["Open Question: What treats asthma?\nThe answer is: albuterol"] * 4


def _save(model, tokenizer, folder) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _local(tiny_raw, path, **model) -> dict:
    return {**tiny_raw, "model": {"name": path, "finetuning": "lora", **model}}


@pytest.fixture
def gpt2_dir(tiny_raw, tmp_path) -> str:
    tokenizer = load_tokenizer(build_config(tiny_raw))
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return _save(GPT2LMHeadModel(config), tokenizer, tmp_path / "gpt2")


def _lora_layers(model) -> set[str]:
    return {
        name.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1]
        for name, _ in model.named_parameters()
        if ".lora_A." in name
    }


def test_local_llama_gets_the_llama_preset(tiny_raw, tmp_path):
    cfg = build_config(tiny_raw)
    path = _save(load_base_model(cfg), load_tokenizer(cfg), tmp_path / "llama")
    model = build_model(build_config(_local(tiny_raw, path)))
    assert _lora_layers(model) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_local_gpt2_gets_its_preset_and_trains_with_lora(tiny_raw, gpt2_dir):
    cfg = build_config(_local(tiny_raw, gpt2_dir))
    model = build_model(cfg)
    assert _lora_layers(model) == {"c_attn", "c_proj", "c_fc"}
    tok = load_tokenizer(cfg)
    before = get_trainable_state(model)
    result = train_local(
        model,
        encode_samples(tok, TEXTS, 64),
        TrainingConfig(batch_size=2, local_steps=2),
        tok.pad_token_id,
        0,
    )
    after = get_trainable_state(model)
    assert result.steps == 2 and np.isfinite(result.mean_loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_an_explicit_target_list_wins_over_the_preset(tiny_raw, gpt2_dir):
    raw = _local(tiny_raw, gpt2_dir)
    raw["lora"] = {"target_modules": ["c_attn"]}
    assert _lora_layers(build_model(build_config(raw))) == {"c_attn"}


def test_a_family_without_preset_asks_for_the_module_list(tiny_raw, tmp_path):
    tokenizer = load_tokenizer(build_config(tiny_raw))
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            ffn_dim=32,
            word_embed_proj_dim=16,
        )
    )
    path = _save(opt, tokenizer, tmp_path / "opt")
    with pytest.raises(ConfigError, match="lora.target_modules: no preset for model_type 'opt'"):
        build_model(build_config(_local(tiny_raw, path)))


def test_cpu_defaults_to_fp32_and_an_explicit_dtype_is_honoured(tiny_raw, gpt2_dir):
    auto = build_config(_local(tiny_raw, gpt2_dir, device="cpu"))
    assert model_device(auto) == torch.device("cpu")
    assert model_dtype(auto, torch.device("cpu")) == torch.float32
    bf16 = build_config(
        _local(tiny_raw, gpt2_dir, device="cpu", dtype="bfloat16", finetuning="full")
    )
    model = build_model(bf16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # The exchanged state stays fp32, whatever the model's dtype.
    assert {a.dtype for a in get_trainable_state(model)} == {np.dtype("float32")}


def test_gradient_checkpointing_is_switched_on_and_lora_still_trains(tiny_raw, gpt2_dir):
    cfg = build_config(_local(tiny_raw, gpt2_dir, gradient_checkpointing=True))
    model = build_model(cfg)
    assert model.base_model.model.is_gradient_checkpointing
    tok = load_tokenizer(cfg)
    before = get_trainable_state(model)
    train_local(
        model,
        encode_samples(tok, TEXTS, 64),
        TrainingConfig(batch_size=2, local_steps=1),
        tok.pad_token_id,
        0,
    )
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, get_trainable_state(model), strict=True)
    )


def test_uncached_hub_id_offline_fails_fast_in_one_line(tiny_raw, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = build_config({**tiny_raw, "model": {"name": "meta-llama/Llama-3.2-1B"}})
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_tokenizer(cfg)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message
    assert "model.name = 'meta-llama/Llama-3.2-1B'" in message and "HF_HUB_OFFLINE" in message


def test_uncached_hub_id_with_an_unreachable_hub_fails_fast_in_one_line(tiny_raw, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    cfg = build_config({**tiny_raw, "model": {"name": "Qwen/Qwen2.5-0.5B"}})
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_base_model(cfg)
    assert time.perf_counter() - start < 5
    assert "\n" not in str(err.value) and "unreachable" in str(err.value)


def test_a_missing_local_folder_is_named(tiny_raw, tmp_path):
    cfg = build_config({**tiny_raw, "model": {"name": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match="no such model folder"):
        load_base_model(cfg)
