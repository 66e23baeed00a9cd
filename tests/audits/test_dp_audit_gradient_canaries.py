"""The white-box record-level DP audit (Dirac gradient canaries) on real DP-SGD steps of the
tiny model: a run with a tenth of its accounted noise is a VIOLATION, intact runs never are.

Sized to be quick and still have power: 8 rows in full batches (Poisson rate 1), 9 steps,
sigma 10 (the accountant claims about 1.4 at delta 1e-5), 5,000 canaries (ceiling about 11).
"""

from __future__ import annotations

import copy

import pytest

from fedmem.audits.dp.run_audit import GradientCanaryAudit, flat_state
from fedmem.config import build_config
from fedmem.mitigations.local_fit import local_fit
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.training import encode_samples

TEXTS = [f"Question: which drug treats condition {i}?\nAnswer: drug {i * 7}" for i in range(8)]
SIGMA, CANARIES = 10.0, 5000


def _audited_fit(tiny_raw, seed: int, fault: str = "none") -> dict:
    """The gradient-canary facts of one DP-SGD fit (the whole run: one round)."""
    raw = copy.deepcopy(tiny_raw)
    raw.update(mode="centralized", seed=seed)
    raw["federation"] = {"num_clients": 1, "rounds": 1}
    raw["training"].update(batch_size=8, local_epochs=9, lr=1e-2)
    raw["dp_sgd"] = {"enabled": True, "noise_multiplier": SIGMA, "max_grad_norm": 1.0}
    raw["dp_audit"] = {"records": 0, "gradient_canaries": CANARIES, "fault": fault}
    config = build_config(raw)
    tokenizer = load_tokenizer(config)
    model = build_model(config, seed=config.seed)
    audit = GradientCanaryAudit(config)
    audit.observe(0, flat_state(model), None)
    rows = encode_samples(tokenizer, TEXTS, 64)
    fit = local_fit(config, model, rows, None, tokenizer.pad_token_id, seed)
    assert fit.metrics()["dp_sample_rate"] == 1.0 and fit.metrics()["dp_steps"] == 9
    return audit.observe(1, flat_state(model), fit.metrics()["dp_epsilon"])


def _bound(facts: dict) -> float:
    return max(facts["epsilon_one_run"], facts["epsilon_one_run_fdp"])


def test_a_tenth_of_the_accounted_noise_is_a_violation(tiny_raw):
    facts = _audited_fit(tiny_raw, seed=0, fault="noise-tenth")
    assert facts["canaries"] == CANARIES and facts["claimed_by"] == "dp_sgd"
    assert facts["epsilon_claimed"] < facts["epsilon_ceiling"]  # the audit has the power
    assert facts["verdict"] == "VIOLATION"
    assert _bound(facts) > facts["epsilon_claimed"]


@pytest.mark.parametrize("seed", range(5))
def test_intact_dp_sgd_is_never_flagged(tiny_raw, seed):
    facts = _audited_fit(tiny_raw, seed=seed)
    assert facts["epsilon_claimed"] < facts["epsilon_ceiling"]
    assert facts["verdict"] == "consistent"
    assert _bound(facts) <= facts["epsilon_claimed"]
