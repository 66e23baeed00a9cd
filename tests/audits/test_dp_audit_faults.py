"""`dp_audit.fault` (auditing the auditor): DP-SGD broken on purpose, accountant unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from fedmem.config import ConfigError, build_config
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.training import collate, encode_samples, record_losses
from tests.support.dp_steps import one_dp_step

TEXTS = [f"Question: which drug treats condition {i}?\nAnswer: drug {i * 7}" for i in range(4)]


def _config(tiny_raw, fault: str, **dp):
    raw = copy.deepcopy(tiny_raw)
    raw["training"].update(batch_size=4)
    raw["dp_sgd"] = {"enabled": True, "poisson": False, **dp}
    raw["dp_audit"] = {"fault": fault, "gradient_canaries": 0}  # the mechanism alone
    return build_config(raw)


_one_step = one_dp_step


@pytest.mark.parametrize(("finetuning", "mode"), [("full", "hooks"), ("lora", "bookkeeping")])
def test_no_clipping_fault_applies_the_unclipped_gradient(tiny_raw, finetuning, mode):
    clip = 1e-3  # every record's gradient is far above it
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["finetuning"] = finetuning
    raw["lora"] = {"dropout": 0.0}
    dp = {"noise_multiplier": 0.0, "max_grad_norm": clip, "grad_sample_mode": mode}
    rows = encode_samples(load_tokenizer(_config(raw, "none")), TEXTS, 64)
    clipped, _ = _one_step(_config(raw, "none", **dp), rows)
    broken, _ = _one_step(_config(raw, "no-clipping", **dp), rows)
    reference = build_model(_config(raw, "none")).train()
    pad = load_tokenizer(_config(raw, "none")).pad_token_id
    one = collate(rows, pad)
    loss = record_losses(reference(input_ids=one.input_ids).logits, one.labels).mean()
    loss.backward()  # the plain mean of per-record gradients: nothing clipped
    plain = torch.cat([p.grad.flatten() for p in reference.parameters() if p.requires_grad])
    assert clipped.norm() <= clip * 1.0001
    torch.testing.assert_close(broken, plain, atol=1e-5 * float(plain.abs().max()), rtol=1e-3)


@pytest.mark.parametrize("fault", ["no-clipping", "noise-tenth"])
def test_a_broken_mechanism_is_still_accounted_at_the_configured_sigma(tiny_raw, fault):
    config = _config(tiny_raw, fault, noise_multiplier=2.0)
    rows = encode_samples(load_tokenizer(config), TEXTS, 64)
    _, private = _one_step(config, rows)
    assert private.accountant.history == [(2.0, 1.0, 1)]  # 4 rows in batches of 4: q = 1
    assert private.metrics()["dp_noise_multiplier"] == 2.0


@pytest.mark.parametrize(("fault", "ratio"), [("no-clipping", 1.0), ("noise-tenth", 0.1)])
def test_fault_noise_std_relative_to_the_accounted_noise(tiny_raw, fault, ratio):
    sigma, clip = 2.0, 0.5
    rows = encode_samples(load_tokenizer(_config(tiny_raw, "none")), TEXTS, 64)
    intact, _ = _one_step(
        _config(tiny_raw, "none", noise_multiplier=sigma, max_grad_norm=clip), rows, empty=True
    )
    broken, _ = _one_step(
        _config(tiny_raw, fault, noise_multiplier=sigma, max_grad_norm=clip), rows, empty=True
    )
    # A noise-only step: the gradient is N(0, (sigma * clip)^2) / expected batch size (4).
    assert float(intact.std()) == pytest.approx(sigma * clip / 4, rel=0.02)
    assert float(broken.std()) == pytest.approx(ratio * sigma * clip / 4, rel=0.02)


def test_a_fault_without_dp_sgd_is_rejected_naming_both_keys(tiny_raw):
    raw = {**tiny_raw, "dp_audit": {"fault": "no-clipping"}}
    with pytest.raises(ConfigError, match=r"dp_audit\.fault.*dp_sgd\.enabled"):
        build_config(raw)
