"""Seeded permutations that need no storage: a keyed Feistel network with cycle walking.

A component's sample stream is ``member[perm_e(i)]`` for position ``p = e * n + i`` (epoch ``e``).
The planner writes only stream positions into plans; the runtime maps them back to samples with
the same function, so a plan never stores shuffled index arrays. Six rounds of a Luby-Rackoff
network over a splitmix64 round function give a pseudorandom permutation; pure uint64 arithmetic
keeps it identical on every platform and numpy version.
"""

from __future__ import annotations

import hashlib

import numpy as np

_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def epoch_key(seed: int, stream: str, epoch: int) -> int:
    """The 64-bit key of one epoch of one named stream (a component) under ``seed``."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _round_keys(key: int) -> np.ndarray:
    base = np.uint64(key)
    with np.errstate(over="ignore"):
        return _splitmix64(base + np.arange(_ROUNDS, dtype=np.uint64))


_CHUNK = 1 << 15  # elements per pass: the working set of a round stays in the CPU cache
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


def _feistel(x: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    """One pass of the network; in-place arithmetic on cache-sized chunks (same values as
    ``left, right = right, left ^ (_splitmix64(right ^ k) & mask)`` per round)."""
    mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    out = np.empty_like(x)
    for lo in range(0, x.size, _CHUNK):
        chunk = x[lo: lo + _CHUNK]
        left, right = chunk >> shift, chunk & mask
        z, t = np.empty_like(right), np.empty_like(right)
        for k in keys:
            np.bitwise_xor(right, k, out=z)
            np.add(z, _GOLDEN, out=z)
            np.right_shift(z, _S30, out=t)
            np.bitwise_xor(z, t, out=z)
            np.multiply(z, _M1, out=z)
            np.right_shift(z, _S27, out=t)
            np.bitwise_xor(z, t, out=z)
            np.multiply(z, _M2, out=z)
            np.right_shift(z, _S31, out=t)
            np.bitwise_xor(z, t, out=z)
            np.bitwise_and(z, mask, out=z)
            np.bitwise_xor(left, z, out=left)
            left, right = right, left
        np.left_shift(left, shift, out=left)
        np.bitwise_or(left, right, out=out[lo: lo + _CHUNK])
    return out


def permute(positions: np.ndarray, n: int, key: int) -> np.ndarray:
    """Map each of ``positions`` (values in ``[0, n)``) through a bijection of ``[0, n)``."""
    if n <= 0:
        raise ValueError("permute needs n >= 1")
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    keys = _round_keys(key)
    limit = np.uint64(n)
    with np.errstate(over="ignore"):
        out = _feistel(np.asarray(positions, dtype=np.uint64), half_bits, keys)
        # Cycle walking: the network permutes [0, 4**half_bits); re-apply until back inside [0, n).
        todo = np.flatnonzero(out >= limit)
        while todo.size:
            out[todo] = _feistel(out[todo], half_bits, keys)
            todo = todo[out[todo] >= limit]
    return out.view(np.int64)


def stream_samples(positions: np.ndarray, n: int, seed: int, stream: str) -> np.ndarray:
    """Member indices (``[0, n)``) of stream ``positions`` that may span several epochs."""
    positions = np.asarray(positions, dtype=np.int64)
    epochs = positions // n
    out = np.empty_like(positions)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = permute(positions[sel] - e * n, n, epoch_key(seed, stream, int(e)))
    return out
