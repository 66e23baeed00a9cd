"""DP audit statistics: scores, one-run bounds, the client-level estimate, the accountants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attacks.dp_audit import (
    CONSISTENT,
    INCONCLUSIVE,
    VIOLATION,
    all_correct_epsilon,
    canary_direction,
    cosine,
    gaussian_composition_epsilon,
    gaussian_fit_epsilon,
    gdp_ceiling,
    gdp_lower_bound,
    one_run_bounds,
    one_run_ceilings,
    record_scores,
    token_log_probs,
    verdict,
)


def _separated(shift: float, n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) + shift, rng.standard_normal(n)


def test_one_run_bounds_are_zero_when_included_and_excluded_scores_look_alike():
    in_scores, out_scores = _separated(0.0)
    bounds = one_run_bounds(in_scores, out_scores, delta=1e-5, significance=0.025)
    assert {b.epsilon for b in bounds.values()} == {0.0}
    assert {b.guesses for b in bounds.values()} == {0}


def test_one_run_bounds_report_the_guesses_of_the_threshold_they_used():
    in_scores, out_scores = _separated(5.0)  # every included record scores above the rest
    bounds = one_run_bounds(in_scores, out_scores, delta=1e-5, significance=0.025)
    for bound in bounds.values():
        assert bound.epsilon > 2.5
        assert bound.correct <= bound.guesses <= 200
        assert bound.correct > 0.9 * bound.guesses
    # f-DP auditing (Mahloujifar et al.) is tighter than the (eps, delta) one (Steinke et al.)
    assert bounds["one_run_fdp"].epsilon > bounds["one_run"].epsilon


def test_one_run_bound_grows_with_the_separation_of_the_scores():
    epsilons = [
        one_run_bounds(*_separated(shift), 1e-5, 0.025)["one_run"].epsilon
        for shift in (0.0, 2.0, 5.0)
    ]
    assert epsilons[0] < epsilons[1] < epsilons[2]


def test_record_score_is_the_log_likelihood_ratio_or_the_log_likelihood_without_a_base():
    final = [np.log([0.5, 0.5]), np.log([0.9, 0.8])]
    base = [np.log([0.5, 0.25]), np.log([0.9, 0.8])]
    np.testing.assert_allclose(record_scores(final, base), [math.log(2), 0.0])
    np.testing.assert_allclose(record_scores(final, None), [math.log(0.25), math.log(0.72)])


def test_with_a_secret_mask_the_score_reads_the_secret_positions_only():
    final = [np.log([0.5, 0.5, 0.9]), np.log([0.1, 0.8, 0.2])]
    base = [np.log([0.5, 0.25, 0.3]), np.log([0.9, 0.8, 0.1])]
    secret = [np.array([False, False, True]), np.array([False, False, True])]
    np.testing.assert_allclose(record_scores(final, base, secret), [math.log(3), math.log(2)])
    np.testing.assert_allclose(record_scores(final, None, secret), [math.log(0.9), math.log(0.2)])
    # Whatever happens to the prefix's tokens leaves the score alone.
    changed = [np.log([0.01, 0.99, 0.9]), np.log([0.99, 0.01, 0.2])]
    np.testing.assert_array_equal(
        record_scores(changed, base, secret), record_scores(final, base, secret)
    )


def test_token_log_probs_are_the_models_next_token_loss(tiny_raw):
    from fedmem.config import build_config
    from fedmem.models.loading import build_model, load_tokenizer
    from fedmem.training import encode_samples, mean_token_loss

    config = build_config(tiny_raw)
    tokenizer = load_tokenizer(config)
    texts = ["audit k7q2m: x0zrt b91aa", "a longer second row, padded"]
    rows = encode_samples(tokenizer, texts, 64)
    model = build_model(config)
    log_probs = token_log_probs(model, rows, tokenizer.pad_token_id)
    assert [len(lp) for lp in log_probs] == [len(r) - 1 for r in rows]
    for row, lp in zip(rows, log_probs, strict=True):
        loss = mean_token_loss(model, [row], 1, tokenizer.pad_token_id)
        assert -lp.mean() == pytest.approx(loss, rel=1e-5)


def test_a_bound_above_the_claim_is_a_violation():
    assert verdict([0.3, 1.2], claimed=1.0, ceiling=6.0) == VIOLATION
    assert verdict([0.3, 1.2], claimed=1.0, ceiling=0.5) == VIOLATION


def test_a_claim_below_the_ceiling_that_no_bound_exceeds_is_consistent_even_at_bound_zero():
    assert verdict([0.3, 0.9], claimed=1.0, ceiling=3.0) == CONSISTENT
    assert verdict([0.0, 0.0], claimed=1.0, ceiling=3.0) == CONSISTENT


def test_a_claim_above_the_ceiling_is_inconclusive_the_audit_could_not_have_refuted_it():
    assert verdict([0.0, 0.0], claimed=50.2, ceiling=4.9) == INCONCLUSIVE
    assert verdict([2.0, 3.0], claimed=math.inf, ceiling=4.9) == INCONCLUSIVE
    assert verdict([0.0, 0.0], claimed=0.1, ceiling=0.0) == INCONCLUSIVE  # no power at all


def test_the_ceiling_of_all_correct_guesses_is_the_papers():
    """Steinke, Nasr and Jagielski 2023: 1,000 guesses, all right, bound epsilon at about 5.8
    with 95 % confidence; 10,000 at about 8."""
    assert all_correct_epsilon(1_000, 0.95) == pytest.approx(5.8, abs=0.05)
    assert all_correct_epsilon(10_000, 0.95) == pytest.approx(8.1, abs=0.1)
    assert all_correct_epsilon(0, 0.95) == 0.0


def test_the_audits_ceiling_is_its_bound_on_perfectly_separated_scores():
    ceilings = one_run_ceilings(100, 100, delta=1e-5, significance=0.025)
    perfect = one_run_bounds(np.arange(100.0) + 1000, np.arange(100.0), 1e-5, 0.025)
    assert ceilings == {name: b.epsilon for name, b in perfect.items()}
    assert 0 < ceilings["one_run"] < all_correct_epsilon(200, 0.975)


def test_a_quickstart_size_audit_cannot_confirm_the_quickstarts_claims():
    """200 audit records, about 100 in: no bound could reach epsilon 9.42 (sigma 1) or 50.2
    (sigma 0.5), so a zero bound there says nothing."""
    ceiling = max(one_run_ceilings(100, 100, delta=1e-5, significance=0.025).values())
    assert ceiling < 9.42
    assert verdict([0.0, 0.0], claimed=9.42, ceiling=ceiling) == INCONCLUSIVE
    assert verdict([0.0, 0.0], claimed=50.2, ceiling=ceiling) == INCONCLUSIVE


def test_the_client_level_ceiling_is_the_gdp_bound_on_perfectly_separated_cosines():
    ceiling = gdp_ceiling(64, 1e-5, 0.025)
    assert ceiling == gdp_lower_bound(np.ones(64), np.zeros(64), 1e-5, 0.025) > 0


# ------------------------------------------------------------------------ client level


def _gaussian_mechanism(sigma: float, dim: int = 5000, k: int = 200, seed: int = 0):
    """Cosines of k inserted and k never-inserted unit directions with the noisy sum of the
    inserted ones: a Gaussian mechanism of sensitivity 1 and noise std sigma."""
    inserted = np.stack([canary_direction(dim, seed, i) for i in range(k)]).astype(np.float64)
    unobserved = np.stack([canary_direction(dim, seed, k + i) for i in range(k)])
    release = inserted.sum(axis=0) + np.random.default_rng(seed).standard_normal(dim) * sigma
    return (
        np.array([cosine(u, release) for u in inserted]),
        np.array([cosine(u, release) for u in unobserved.astype(np.float64)]),
    )


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.0])
def test_one_shot_estimate_is_within_20_percent_of_the_gaussian_mechanisms_epsilon(sigma):
    import dp_accounting

    analytical = dp_accounting.get_epsilon_gaussian(sigma, 1e-5)
    estimate = gaussian_fit_epsilon(*_gaussian_mechanism(sigma), delta=1e-5)
    assert estimate == pytest.approx(analytical, rel=0.2)


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.0])
def test_gdp_lower_bound_stays_below_the_gaussian_mechanisms_epsilon(sigma):
    import dp_accounting

    bound = gdp_lower_bound(*_gaussian_mechanism(sigma), delta=1e-5, significance=0.025)
    assert bound <= dp_accounting.get_epsilon_gaussian(sigma, 1e-5)


def test_gdp_lower_bound_detects_a_weakly_noised_mechanism():
    assert gdp_lower_bound(*_gaussian_mechanism(0.6), delta=1e-5, significance=0.025) > 3


def test_gdp_lower_bound_is_zero_for_two_samples_of_one_distribution():
    rng = np.random.default_rng(0)
    for n in (50, 200, 1000):
        assert gdp_lower_bound(rng.standard_normal(n), rng.standard_normal(n), 1e-5, 0.05) == 0


@pytest.mark.xfail(
    strict=True,
    reason="jax-privacy 2.0.0 epsilon_from_gdp keeps max |mu|: a threshold whose two "
    "Clopper-Pearson upper bounds sum past 1 reads as leakage in reverse (eps ~4-6 here)",
)
def test_jax_privacy_epsilon_from_gdp_is_near_zero_without_leakage():
    from jax_privacy.auditing import CanaryScoreAuditor

    rng = np.random.default_rng(0)
    auditor = CanaryScoreAuditor(rng.standard_normal(200), rng.standard_normal(200))
    assert auditor.epsilon_from_gdp(0.05, 1e-5) < 0.5


def test_canary_directions_are_unit_vectors_fixed_by_seed_and_index():
    a, b = canary_direction(1000, 3, 0), canary_direction(1000, 3, 1)
    assert np.linalg.norm(a) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(a, canary_direction(1000, 3, 0))
    assert abs(float(a @ b)) < 0.15  # nearly orthogonal in high dimension


# -------------------------------------------------------------------------- accountants


def test_client_level_epsilon_is_the_gaussian_composed_over_rounds():
    import dp_accounting

    # T Gaussian mechanisms of noise z compose to one of noise z / sqrt(T) (GDP).
    assert gaussian_composition_epsilon(2.0, 4, 1e-5) == pytest.approx(
        dp_accounting.get_epsilon_gaussian(1.0, 1e-5)
    )
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(2.0), 4)
    assert gaussian_composition_epsilon(2.0, 4, 1e-5) == pytest.approx(
        pld.get_epsilon(1e-5), rel=0.01
    )
    assert gaussian_composition_epsilon(0.0, 4, 1e-5) == math.inf
    assert gaussian_composition_epsilon(1.0, 0, 1e-5) == 0.0


@pytest.mark.parametrize(("sigma", "rate", "steps"), [(1.0, 1 / 4, 8), (0.8, 1 / 19, 152)])
def test_opacus_rdp_accountant_agrees_with_dp_accounting_within_one_percent(sigma, rate, steps):
    import dp_accounting
    from opacus.accountants import RDPAccountant

    ours = RDPAccountant()
    ours.history = [(sigma, rate, steps)]
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma))
    independent = dp_accounting.rdp.RdpAccountant()
    independent.compose(event, steps)
    assert ours.get_epsilon(delta=1e-5) == pytest.approx(independent.get_epsilon(1e-5), rel=0.01)


def test_opacus_prv_accountant_agrees_with_dp_accounting_pld_within_one_percent():
    import dp_accounting
    from opacus.accountants import PRVAccountant

    ours = PRVAccountant()
    ours.history = [(1.0, 1 / 19, 152)]
    event = dp_accounting.PoissonSampledDpEvent(1 / 19, dp_accounting.GaussianDpEvent(1.0))
    independent = dp_accounting.pld.PLDAccountant()
    independent.compose(event, 152)
    assert ours.get_epsilon(delta=1e-5) == pytest.approx(independent.get_epsilon(1e-5), rel=0.01)


def test_terminal_summary_shows_claim_bounds_and_verdict_of_each_audit():
    from rich.console import Console

    from fedmem.runs.report import dp_audit_table

    record = {
        "records": 200,
        "included": 97,
        "epsilon_claimed": 0.15,
        "claimed_by": "dp_sgd",
        "delta": 1e-5,
        "verdict": VIOLATION,
        "epsilon_one_run": 0.31,
        "guesses_one_run": 40,
        "correct_one_run": 36,
        "epsilon_one_run_fdp": 0.48,
        "guesses_one_run_fdp": 40,
        "correct_one_run_fdp": 36,
        "epsilon_ceiling_one_run": 3.001,
        "epsilon_ceiling_one_run_fdp": 5.345,
    }
    threat = {"epsilon_lower_bound": 1.5, "epsilon_estimate": 3.9}
    client = {
        "canaries": 64,
        "epsilon_claimed": 4.4,
        "delta": 1e-5,
        "epsilon_ceiling": 15.69,
        "verdict": CONSISTENT,
        "final_model": threat,
        "all_iterates": threat,
    }
    gradient = {
        **{k: record[k] for k in ("epsilon_claimed", "claimed_by", "delta", "verdict")},
        "canaries": 5000,
        "included": 2480,
        "final_model": {**record, "epsilon_one_run_fdp": 2.75,
                        "epsilon_ceiling_one_run_fdp": 11.06},
        "all_iterates": {"unavailable": "secagg.enabled: kept from the server"},
    }
    console = Console(width=200, record=True)
    console.print(dp_audit_table({"record": record, "client": client, "gradient": gradient}))
    text = console.export_text()
    assert "gradient (2480/5000 canaries in)" in text and "2.750" in text and "11.060" in text
    assert "one_run_fdp, final_model" in text
    assert "unavailable: secagg.enabled: kept from the server" in text
    assert "0.480" in text and "36/40 guesses right" in text and "VIOLATION" in text
    assert "gdp, all_iterates" in text and "Gaussian-fit estimate 3.900 (not a bound)" in text
    assert "3.001" in text and "5.345" in text and "15.690" in text  # each audit's ceiling
    assert "verdict: final round only" in text


def test_only_the_final_round_gets_a_verdict(tiny_raw):
    from fedmem.audits.dp.run_audit import run_verdict
    from fedmem.config import build_config

    config = build_config({**tiny_raw, "federation": {"num_clients": 2, "rounds": 3}})
    assert run_verdict(config, 2, [9.0], claimed=1.0, ceiling=5.0) is None
    assert run_verdict(config, 3, [9.0], claimed=1.0, ceiling=5.0) == VIOLATION
    assert run_verdict(config, 3, [0.0], claimed=9.42, ceiling=5.0) == INCONCLUSIVE


def test_our_tests_package_wins_over_the_one_jax_privacy_installs():
    # jax-privacy's wheel puts a top-level `tests` package into site-packages.
    from pathlib import Path

    import jax_privacy.auditing  # noqa: F401  (imported first, as in a real run)

    import tests

    assert Path(tests.__file__).resolve().parent == Path(__file__).resolve().parents[1]
