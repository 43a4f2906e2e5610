"""A keyed pseudo-random permutation of range(n), evaluated at any positions in O(1) memory.

Shuffling a corpus of 274M rows with `rng.permutation` needs a 2 GB index array per epoch; here
position p of the shuffled order is computed on its own: a balanced Feistel network (Luby &
Rackoff 1988: four rounds of a keyed mixing function make a pseudo-random permutation) over
the smallest power-of-four domain >= n, with cycle-walking (Black & Rogaway 2002, "Ciphers
with Arbitrary Finite Domains") to land inside range(n): re-encrypt until the value is < n.
The domain is < 4n, so the expected number of walks is under 4. The round function is the
SplitMix64 finaliser (Steele et al. 2014) of the half-block xor a round key.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def permuted(positions: np.ndarray, n: int, *, key: tuple[int, ...]) -> np.ndarray:
    """The values at `positions` (each in [0, n)) of the permutation of range(n) named by `key`
    (e.g. (seed, epoch)): the same key always gives the same permutation, another key another."""
    positions = np.asarray(positions, dtype=np.int64)
    if n <= 1 or not len(positions):
        return positions.copy()
    if positions.min() < 0 or positions.max() >= n:
        raise ValueError(f"positions must lie in [0, {n})")
    half = max(1, (int(n - 1).bit_length() + 1) // 2)  # domain 4**half >= n
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(list(key)).integers(0, 2**63, size=ROUNDS, dtype=np.uint64)

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for round_key in keys:
            left, right = right, left ^ (_mix(right ^ round_key) & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):  # uint64 products wrap by design
        out = encrypt(positions.astype(np.uint64))
        outside = out >= np.uint64(n)
        while outside.any():
            out[outside] = encrypt(out[outside])
            outside = out >= np.uint64(n)
    return out.astype(np.int64)
