"""The first values of `np.random.RandomState(seed).randint(0, m - 1, n)` for many seeds at once.

`pseudo_rand_gen` builds one RandomState per seed, which costs tens of µs in numpy's Python
layer however few values are drawn. A brute-force screen needs only a few values per seed, so
this computes them for a whole batch of seeds in numpy: MT19937's `init_genrand` seeding
(what RandomState does with an integer seed), the first twist for the words needed, the
tempering, and randint's masked rejection (a 32-bit draw `& mask`, redrawn while > m - 2).
Rows where a draw would be rejected (chance about n / m) are redone with RandomState itself.
tests/test_secagg_seed.py checks the values against Flower's `pseudo_rand_gen`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

N, M_OFFSET = 624, 397
MATRIX_A, UPPER, LOWER = np.uint32(0x9908B0DF), np.uint32(0x80000000), np.uint32(0x7FFFFFFF)


def _seeded_words(
    seeds: NDArray[np.uint64], count: int
) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
    """init_genrand's state words 0..count and 397..396+count (one column per seed): all
    that the first twist reads for its first `count` words."""
    low = np.empty((count + 1, len(seeds)), dtype=np.uint32)
    high = np.empty((count, len(seeds)), dtype=np.uint32)
    word, shifted = seeds.astype(np.uint32), np.empty(len(seeds), dtype=np.uint32)
    low[0] = word
    for i in range(1, M_OFFSET + count):
        np.right_shift(word, np.uint32(30), out=shifted)
        np.bitwise_xor(word, shifted, out=word)
        np.multiply(word, np.uint32(1812433253), out=word)
        np.add(word, np.uint32(i), out=word)
        if i <= count:
            low[i] = word
        elif i >= M_OFFSET:
            high[i - M_OFFSET] = word
    return low, high


def _twisted(low: NDArray[np.uint32], high: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """The first len(high) (<= 227) words of the state after MT19937's first twist."""
    y = (low[:-1] & UPPER) | (low[1:] & LOWER)
    odd = (y & np.uint32(1)).astype(bool)
    out = high ^ (y >> np.uint32(1))
    out[odd] ^= MATRIX_A
    return out


def _tempered(y: NDArray[np.uint32]) -> NDArray[np.uint32]:
    y = y ^ (y >> np.uint32(11))
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    return y ^ (y >> np.uint32(18))


def randint_prefix(seeds: NDArray[np.uint64], num_range: int, count: int) -> NDArray[np.int64]:
    """(len(seeds), count): RandomState(seed).randint(0, num_range - 1, count) per seed."""
    if not 0 < count <= N - M_OFFSET or not 2 < num_range <= 2**32:
        raise ValueError(f"count {count} must be in 1..{N - M_OFFSET}, num_range in 3..2**32")
    high = num_range - 2  # randint's inclusive upper bound
    mask = np.uint32((1 << high.bit_length()) - 1)
    draws = _tempered(_twisted(*_seeded_words(seeds, count))).T & mask
    values = draws.astype(np.int64)
    for row in np.flatnonzero((draws > high).any(axis=1)):
        values[row] = np.random.RandomState(int(seeds[row])).randint(0, high + 1, count)
    return values
