"""DP-SGD's Dirac gradient canaries (`dp_audit.gradient_canaries`): designed per-record
gradients that enter the clipped sum before the noise, each owned by one trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from attacks.dp_audit import dirac_canaries, dirac_scores
from fedmem.config import build_config
from fedmem.mitigations.dp_sgd import gradient_canary_plan
from fedmem.models.loading import load_tokenizer
from fedmem.training import encode_samples
from tests.support.dp_steps import dp_steps, one_dp_step

TEXTS = [f"Question: which drug treats condition {i}?\nAnswer: drug {i * 7}" for i in range(4)]


def _config(tiny_raw, canaries: int, **dp):
    raw = copy.deepcopy(tiny_raw)
    raw["training"].update(batch_size=4)  # 4 rows in batches of 4: sample rate 1
    raw["mode"] = "centralized"  # one trainer: it owns every canary
    raw["dp_sgd"] = {"enabled": True, "poisson": False, **dp}
    raw["dp_audit"] = {"gradient_canaries": canaries}
    return build_config(raw)


def _applied_gradient(config, empty: bool) -> torch.Tensor:
    """The flat gradient the wrapped optimizer applies in one DP step."""
    return one_dp_step(config, encode_samples(load_tokenizer(config), TEXTS, 64), empty)[0]


def test_dirac_canaries_are_distinct_coordinates_drawn_from_their_seed():
    one, again = dirac_canaries(10_000, 500, seed=3), dirac_canaries(10_000, 500, seed=3)
    assert len(np.unique(one.coordinates)) == 500
    assert (one.coordinates == again.coordinates).all() and (one.included == again.included).all()
    assert 200 < one.included.sum() < 300 and set(np.unique(one.signs)) == {-1.0, 1.0}
    other = dirac_canaries(10_000, 500, seed=4)
    assert not (one.coordinates == other.coordinates).all()


def test_a_dirac_score_is_the_move_against_the_canary_gradient():
    canaries = dirac_canaries(10, 2, seed=0)
    initial, final = np.zeros(2), -0.5 * canaries.signs  # each moved by -0.5 x its gradient
    np.testing.assert_allclose(dirac_scores(canaries, initial, final), [0.5, 0.5])


def test_included_canaries_add_the_clip_norm_before_the_noise(tiny_raw):
    clip = 0.5
    config = _config(tiny_raw, 300, noise_multiplier=0.0, max_grad_norm=clip)
    applied = _applied_gradient(config, empty=True)  # a noise-only step: only canaries
    canaries = dirac_canaries(applied.numel(), 300, gradient_canary_plan(config, 0).seed)
    at = torch.as_tensor(canaries.coordinates)
    included = torch.as_tensor(canaries.included)
    # Sample rate 1: each included canary is in the step, as sign x clip / expected batch (4).
    expected = torch.as_tensor(canaries.signs * clip / 4, dtype=applied.dtype)
    torch.testing.assert_close(applied[at][included], expected[included])
    assert (applied[at][~included] == 0).all()
    assert int((applied != 0).sum()) == int(included.sum())  # nothing else moved


def test_canaries_ride_on_a_real_batch_and_are_noised_with_it(tiny_raw):
    config = _config(tiny_raw, 300, noise_multiplier=0.0, max_grad_norm=0.5)
    without = _applied_gradient(_config(tiny_raw, 0, noise_multiplier=0.0, max_grad_norm=0.5),
                                empty=False)
    with_canaries = _applied_gradient(config, empty=False)
    canaries = dirac_canaries(without.numel(), 300, gradient_canary_plan(config, 0).seed)
    moved = torch.as_tensor(canaries.coordinates[canaries.included])
    expected = without.clone()
    expected[moved] += torch.as_tensor(canaries.signs[canaries.included] * 0.5 / 4,
                                       dtype=expected.dtype)
    torch.testing.assert_close(with_canaries, expected)


def test_each_canary_belongs_to_one_trainer(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["federation"] = {"num_clients": 3, "rounds": 1}
    raw["dp_sgd"] = {"enabled": True}
    raw["dp_audit"] = {"gradient_canaries": 90}
    config = build_config(raw)
    plans = [gradient_canary_plan(config, trainer) for trainer in range(3)]
    coordinates = [set(plan.inserted(10_000)[0].tolist()) for plan in plans]
    canaries = dirac_canaries(10_000, 90, plans[0].seed)
    assert set().union(*coordinates) == set(canaries.coordinates[canaries.included].tolist())
    assert sum(len(c) for c in coordinates) == int(canaries.included.sum())
    assert len({plan.draws_seed for plan in plans}) == 3  # each trainer its own draws


def test_no_plan_when_off(tiny_raw):
    assert gradient_canary_plan(_config(tiny_raw, 0), 0) is None
    with pytest.raises(ValueError, match="distinct coordinates"):
        dirac_canaries(10, 11, seed=0)


def _owned_coordinates(config, dim: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coordinates, signs, inclusion) of trainer 0's canaries, in the order of its sums."""
    plan = gradient_canary_plan(config, 0)
    canaries = dirac_canaries(dim, k, plan.seed)
    owned = plan.owned()
    return canaries.coordinates[owned], canaries.signs[owned], canaries.included[owned]


def test_iterate_sums_are_the_privatized_gradient_at_every_canary_summed_over_steps(tiny_raw):
    config = _config(tiny_raw, 300, noise_multiplier=1.0, max_grad_norm=0.5)
    rows = encode_samples(load_tokenizer(config), TEXTS, 64)
    applied, private = dp_steps(config, rows, steps=3)  # noisy: each step's noise differs
    coordinates, _, _ = _owned_coordinates(config, applied.shape[1], 300)
    expected = applied[:, coordinates].double().sum(0).numpy()
    np.testing.assert_allclose(private.canary_sums(), expected, rtol=1e-12, atol=1e-12)
    assert len(private.canary_sums()) == 300  # every canary, included or not


def test_without_noise_the_sums_are_the_canaries_plus_the_datas_gradient(tiny_raw):
    clip = 0.5
    config = _config(tiny_raw, 300, noise_multiplier=0.0, max_grad_norm=clip)
    rows = encode_samples(load_tokenizer(config), TEXTS, 64)
    without, _ = dp_steps(_config(tiny_raw, 0, noise_multiplier=0.0, max_grad_norm=clip), rows, 2)
    _, private = dp_steps(config, rows, steps=2)
    coordinates, signs, included = _owned_coordinates(config, without.shape[1], 300)
    # Sample rate 1: each included canary adds sign x clip / expected batch (4) per step.
    data = without[:, coordinates].double().sum(0).numpy()
    np.testing.assert_allclose(private.canary_sums(), data + 2 * included * signs * clip / 4,
                               rtol=1e-5, atol=1e-7)
