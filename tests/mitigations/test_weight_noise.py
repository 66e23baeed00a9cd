"""Weight noise: only trainable weights, seeded, and only on the audited model."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import fedmem.runs.recorder
from fedmem.audits.model_audit import RoundAudit
from fedmem.config import ConfigError, build_config
from fedmem.mitigations.weight_noise import add_weight_noise, noised_weights
from fedmem.runs.recorder import RunRecorder


def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def tiny_lora() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_peft_model(tiny_lm(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigma_zero_leaves_weights_bit_identical():
    model = tiny_lm()
    before = snapshot(model)
    add_weight_noise(model, 0.0, seed=0)
    assert same(before, snapshot(model))


def test_noise_changes_only_trainable_weights():
    model = tiny_lora()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = snapshot(model)
    add_weight_noise(model, 0.1, seed=0)
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert trainable and changed == trainable


def test_noise_std_matches_sigma_on_a_large_tensor():
    layer = torch.nn.Linear(1000, 1000, bias=False)
    torch.nn.init.zeros_(layer.weight)
    add_weight_noise(layer, 0.05, seed=3)
    weights = layer.weight.detach()
    assert abs(float(weights.std()) - 0.05) < 0.0005
    assert abs(float(weights.mean())) < 0.0005


def test_noise_is_reproducible_for_a_seed_and_differs_across_seeds():
    models = [tiny_lm() for _ in range(3)]
    for model, seed in zip(models, (7, 7, 8), strict=True):
        add_weight_noise(model, 0.1, seed)
    a, b, c = (snapshot(m) for m in models)
    assert same(a, b) and not same(a, c)


def test_noised_weights_restores_the_exact_weights():
    model = tiny_lora()
    before = snapshot(model)
    with noised_weights(model, 0.1, seed=0):
        assert not same(before, snapshot(model))
    assert same(before, snapshot(model))


def test_audit_sees_noise_while_the_training_state_is_untouched(tmp_path, monkeypatch):
    seen: list[dict[str, torch.Tensor]] = []

    def fake_audit(config, model):
        seen.append(snapshot(model))
        return RoundAudit(metrics={})

    monkeypatch.setattr(fedmem.runs.recorder, "audit_model", fake_audit)
    config = build_config({"weight_noise": {"sigma": 0.1}, "output": {"dir": str(tmp_path)}})
    recorder = RunRecorder(config)
    model = tiny_lm()
    training_state = snapshot(model)
    rows = [recorder.record(r, model) for r in (0, 1, 2)]
    assert same(snapshot(model), training_state)
    assert [r["weight_noise_sigma"] for r in rows] == [0.0, 0.1, 0.1]
    assert same(seen[0], training_state)  # the base model's round-0 audit is not noised
    assert not same(seen[1], training_state) and not same(seen[1], seen[2])


def test_negative_sigma_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match=r"^weight_noise\.sigma = -0\.1: must be >= 0"):
        build_config({"weight_noise": {"sigma": -0.1}})
