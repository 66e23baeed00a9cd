"""The white-box record-level DP audit (Dirac gradient canaries) on real DP-SGD steps of the
tiny model, scored on the final model and over all iterates: a run with a tenth of its
accounted noise is a VIOLATION, intact runs never are by either statistic.

Sized to be quick and still have power: 8 rows in full batches (Poisson rate 1), 9 steps,
sigma 10 (the accountant claims about 1.4 at delta 1e-5), 5,000 canaries (ceiling about 10
at the split significance).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from attacks.dp_audit import one_run_ceilings
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
    sums = {0: fit.plan.canary_sums()}  # the one trainer's, as its fit metrics carry them
    return audit.observe(1, flat_state(model), fit.metrics()["dp_epsilon"], sums)


def _bound(facts: dict, statistic: str) -> float:
    return max(facts[statistic]["epsilon_one_run"], facts[statistic]["epsilon_one_run_fdp"])


def test_a_tenth_of_the_accounted_noise_is_a_violation_by_both_statistics(tiny_raw):
    facts = _audited_fit(tiny_raw, seed=0, fault="noise-tenth")
    assert facts["canaries"] == CANARIES and facts["claimed_by"] == "dp_sgd"
    assert facts["epsilon_claimed"] < facts["epsilon_ceiling"]  # the audit has the power
    assert facts["verdict"] == "VIOLATION"
    assert _bound(facts, "all_iterates") > facts["epsilon_claimed"]
    assert _bound(facts, "final_model") > facts["epsilon_claimed"]


@pytest.mark.parametrize("seed", range(5))
def test_intact_dp_sgd_is_never_flagged_by_either_statistic(tiny_raw, seed):
    facts = _audited_fit(tiny_raw, seed=seed)
    assert facts["epsilon_claimed"] < facts["epsilon_ceiling"]
    assert facts["verdict"] == "consistent"
    assert _bound(facts, "final_model") <= facts["epsilon_claimed"]
    assert _bound(facts, "all_iterates") <= facts["epsilon_claimed"]


def _synthetic_facts(config, sums: np.ndarray | None, dim: int = 20_000) -> dict:
    """The audit of a made-up run: round 0's state zeros, the final one moved by `shift` x
    sign on the included canaries; `sums` the one trainer's iterate sums."""
    audit = GradientCanaryAudit(config)
    audit.observe(0, np.zeros(dim), None)
    final = np.zeros(dim)
    canaries = audit.canaries
    final[canaries.coordinates] = -0.1 * canaries.signs * canaries.included
    return audit.observe(1, final, 1.0, None if sums is None else {0: sums})


def test_the_verdict_splits_its_confidence_over_two_methods_and_two_statistics(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw.update(mode="centralized")
    raw["federation"] = {"num_clients": 1, "rounds": 1}
    raw["dp_sgd"] = {"enabled": True}
    raw["dp_audit"] = {"records": 0, "gradient_canaries": 400, "confidence": 0.95}
    config = build_config(raw)
    facts = _synthetic_facts(config, np.zeros(400))  # every iterate sum 0: no signal there
    assert facts["significance"] == pytest.approx(0.05 / 4)
    n_in = facts["included"]
    ceilings = one_run_ceilings(n_in, 400 - n_in, facts["delta"], 0.05 / 4)
    assert facts["all_iterates"]["epsilon_ceiling_one_run_fdp"] == pytest.approx(
        ceilings["one_run_fdp"], rel=1e-9
    )
    assert facts["final_model"]["epsilon_one_run"] > 0  # perfect separation on the model
    assert facts["all_iterates"]["epsilon_one_run"] == 0
    assert facts["verdict"] == "VIOLATION"  # the final model's bound beats the claim of 1


def test_under_secagg_the_all_iterates_statistic_is_absent_and_says_why(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["federation"] = {"num_clients": 3, "rounds": 1}
    raw["secagg"] = {"enabled": True}
    raw["dp_sgd"] = {"enabled": True}
    raw["dp_audit"] = {"records": 0, "gradient_canaries": 400}
    facts = _synthetic_facts(build_config(raw), None)
    assert "SecAgg+" in facts["all_iterates"]["unavailable"]
    assert facts["significance"] == pytest.approx(0.05 / 2)  # the final model's bounds only
    assert facts["final_model"]["epsilon_one_run"] > 0


def test_a_resumed_audit_continues_the_sums_of_its_checkpoint_or_says_they_are_lost(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw.update(mode="centralized")
    raw["federation"] = {"num_clients": 1, "rounds": 2}
    raw["dp_sgd"] = {"enabled": True}
    raw["dp_audit"] = {"records": 0, "gradient_canaries": 400}
    config = build_config(raw)
    before = GradientCanaryAudit(config)
    before.add_sums({0: np.arange(400.0)})
    resumed = GradientCanaryAudit(config)
    resumed.restore(before.resume_state())
    resumed.add_sums({0: np.ones(400)})
    np.testing.assert_array_equal(resumed.sums, np.arange(400.0) + 1)
    lost = GradientCanaryAudit(config)
    lost.restore({})  # a checkpoint written before the sums were kept
    assert "without the gradient-canary sums" in lost.unavailable
