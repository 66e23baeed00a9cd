"""The SecAgg+ seed attack (attacks.secagg_seed) on a round of Flower's real client stages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import generate_key_pairs

import benchmarks.secagg_seed as bench
from attacks.mt19937 import randint_prefix
from attacks.secagg_seed import (
    REACHABLE_BITS,
    Quantization,
    SeedSpace,
    dequantized_update,
    flat,
    fold_seed,
    in_range_probability,
    mask_prefix,
    mask_sign,
    reduced_space,
    residual,
    screen,
    screen_masks,
    search,
    seed_key,
    unmask_with_seed,
)

BITS = 12
FEDMEM = Quantization()


def _updates(rng: np.random.Generator, ids: list[int]) -> dict[int, list[np.ndarray]]:
    """Small LoRA-like updates: an A and a B matrix each (512 values)."""
    return {
        nid: [
            rng.uniform(-0.06, 0.06, (16, 16)).astype(np.float32),
            rng.normal(0.0, 1e-3, (16, 16)).astype(np.float32),
        ]
        for nid in ids
    }


def _round(q: Quantization = FEDMEM, ids: tuple[int, ...] = (5, 3, 9)):
    rng = np.random.default_rng(1)
    updates = _updates(rng, list(ids))
    num_examples = dict(zip(ids, (40, 50, 30), strict=True))
    return updates, num_examples, bench.run_round(updates, num_examples, ids[2], q, seed=1)


@pytest.fixture(scope="module")
def secagg_round():
    return _round()


def _shared_key() -> bytes:
    sk, _ = generate_key_pairs()
    _, pk = generate_key_pairs()
    return generate_shared_key(sk, pk)


def test_a_pairwise_key_folds_to_a_28_bit_seed_that_gives_flowers_mask():
    for _ in range(20):
        key = _shared_key()
        seed = fold_seed(key)
        assert seed & ~REACHABLE_BITS == 0
        ours = pseudo_rand_gen(seed_key(seed), 2**32, [(1,), (7, 5)])
        theirs = pseudo_rand_gen(key, 2**32, [(1,), (7, 5)])
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_the_screen_prefix_is_the_start_of_the_full_mask():
    shapes = [(1,), (3, 40), (100,)]
    full = flat(pseudo_rand_gen(seed_key(1234567), 2**32, shapes))
    assert np.array_equal(mask_prefix(1234567, 2**32, 200), full[:200])


@pytest.mark.parametrize("num_range", [2**32, 2**24, 1000])  # 1000: randint rejects often
def test_the_batched_engine_draws_what_flowers_pseudo_rand_gen_draws(num_range):
    seeds = np.random.default_rng(3).integers(0, 2**32, size=200, dtype=np.uint64)
    for count in (1, 65, 227):
        flower = [pseudo_rand_gen(seed_key(int(s)), num_range, [(count,)])[0] for s in seeds]
        assert np.array_equal(randint_prefix(seeds, num_range, count), np.stack(flower))
    with pytest.raises(ValueError):
        randint_prefix(seeds, num_range, 228)


def test_a_reduced_space_holds_its_hint_and_2_to_the_bits_distinct_seeds():
    space = reduced_space(0x12345678 & REACHABLE_BITS, BITS)
    seeds = space.candidates(0, len(space))
    assert len(space) == 2**BITS == len(set(seeds.tolist()))
    assert (0x12345678 & REACHABLE_BITS) in space
    assert all(int(s) in space and int(s) & ~REACHABLE_BITS == 0 for s in seeds[:50])
    with pytest.raises(ValueError):
        reduced_space(0, 29)


def test_the_attack_recovers_both_survivors_updates_exactly(secagg_round):
    updates, num_examples, rnd = secagg_round
    u, w = 5, 3
    recovery = search(rnd.views[u], reduced_space(rnd.pairwise_seed, BITS))
    assert recovery.seed == rnd.pairwise_seed
    assert (recovery.confirmed, recovery.tried) == (1, 2**BITS)
    recovered = {u: recovery.quantized, w: unmask_with_seed(rnd.views[w], recovery.seed)}
    quantum = 2 * FEDMEM.clipping_range / FEDMEM.target_range
    for nid, x in recovered.items():
        assert bench.same(x, rnd.quantized[nid])
        error = bench.max_abs_error(updates[nid], dequantized_update(x, FEDMEM))
        assert error <= quantum * max(num_examples.values()) / num_examples[nid]


@pytest.mark.parametrize("engine", ["flower", "batched"])
def test_the_other_survivor_is_found_too_with_the_opposite_mask_sign(secagg_round, engine):
    _, _, rnd = secagg_round
    assert mask_sign(3, 5) == -mask_sign(5, 3)
    recovery = search(rnd.views[3], reduced_space(rnd.pairwise_seed, 10), engine=engine)
    assert recovery.seed == rnd.pairwise_seed
    assert bench.same(recovery.quantized, rnd.quantized[3])


@pytest.mark.parametrize("engine", ["flower", "batched"])
def test_no_recovery_when_the_true_seed_is_outside_the_space(secagg_round, engine):
    _, _, rnd = secagg_round
    space = reduced_space(rnd.pairwise_seed, BITS)
    outside = SeedSpace(space.fixed ^ (1 << 30), space.free_mask)  # a fixed, reachable bit
    assert rnd.pairwise_seed not in outside
    recovery = search(rnd.views[5], outside, engine=engine)
    assert (recovery.seed, recovery.quantized, recovery.confirmed) == (None, None, 0)
    assert recovery.tried == 2**BITS


@pytest.mark.parametrize(
    ("q", "values", "trials"),
    [
        (Quantization(mod_range=2**24), 2, 3000),  # p ~ 1/4: rate ~ 1/16
        (FEDMEM, 1, 12000),  # fedmem's: p ~ 2**-10 per value
    ],
)
def test_the_screens_false_positive_rate_on_random_candidates_is_p_to_the_values(q, values, trials):
    _, _, rnd = _round(q)
    view = rnd.views[5]
    window = flat(residual(view))[1 : 1 + values]
    rng = np.random.default_rng(7)
    seeds = rng.integers(0, 2**32, size=trials, dtype=np.uint64)
    seeds = seeds[seeds != rnd.pairwise_seed]
    sign = mask_sign(view.node_id, view.unknown_neighbour)
    hits = int(screen(window, screen_masks(seeds, q.mod_range, values), sign, q).sum())
    rate = in_range_probability(q) ** values
    expected, sd = len(seeds) * rate, math.sqrt(len(seeds) * rate * (1 - rate))
    print(f"{hits} false positives in {len(seeds)}, expected {expected:.1f} +- {sd:.1f}")
    assert abs(hits - expected) <= 4 * sd + 1


def test_a_run_is_appended_to_its_own_section(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Benchmarks\n\n## Other\n\nkept\n\n{bench.HEADING}\n\n### old\n\n## Z\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    bench.append_results("### new\n")
    text = results.read_text()
    assert text.index("kept") < text.index("### old") < text.index("### new") < text.index("## Z")
    assert text.count(bench.HEADING) == 1
