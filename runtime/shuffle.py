"""Seeded permutations that need no storage: a keyed Feistel network with cycle walking.

A component's sample stream is ``member[perm_e(i)]`` for position ``p = e * n + i`` (epoch ``e``).
The planner writes only stream positions into plans; the runtime maps them back to samples with
the same function, so a plan never stores shuffled index arrays. Six rounds of an alternating
Feistel network over ``bits = bit_length(n - 1)`` bits (halves of ``ceil(bits / 2)`` and
``floor(bits / 2)`` bits, as in FF1) with a splitmix64 round function give a pseudorandom
permutation of ``[0, 2**bits)``; cycle walking restricts it to ``[0, n)`` (fewer than two passes
per value on average, since ``2**bits < 2n``). Pure uint64 arithmetic keeps it identical on every
platform and numpy version.
"""

from __future__ import annotations

import functools
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


def _mix_into(
    target: np.ndarray, source: np.ndarray, key: np.uint64 | np.ndarray, mask: np.uint64 | np.ndarray,
    z: np.ndarray, t: np.ndarray,
) -> None:
    """``target ^= splitmix64(source ^ key) & mask``, in place, with scratch arrays ``z`` and ``t``.

    ``key`` and ``mask`` may be scalars or per-element arrays (mixtera.runtime.stream_rows passes arrays).
    """
    np.bitwise_xor(source, key, out=z)
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
    np.bitwise_xor(target, z, out=target)


def _feistel(x: np.ndarray, bits: int, keys: np.ndarray) -> np.ndarray:
    """One pass of the alternating network over ``bits``-bit values, on cache-sized chunks.

    ``x`` splits into ``left`` (the high ``ceil(bits / 2)`` bits) and ``right`` (the rest). Even
    rounds do ``left ^= splitmix64(right ^ k) & left_mask``, odd rounds
    ``right ^= splitmix64(left ^ k) & right_mask``; each round is invertible, so the whole is a
    bijection of ``[0, 2**bits)``.
    """
    low = bits // 2
    shift = np.uint64(low)
    masks = (np.uint64((1 << (bits - low)) - 1), np.uint64((1 << low) - 1))
    out = np.empty_like(x)
    for lo in range(0, x.size, _CHUNK):
        chunk = x[lo: lo + _CHUNK]
        left, right = chunk >> shift, chunk & masks[1]
        z, t = np.empty_like(right), np.empty_like(right)
        for i, k in enumerate(keys):
            if i % 2 == 0:
                _mix_into(left, right, k, masks[0], z, t)
            else:
                _mix_into(right, left, k, masks[1], z, t)
        np.left_shift(left, shift, out=left)
        np.bitwise_or(left, right, out=out[lo: lo + _CHUNK])
    return out


@functools.lru_cache(maxsize=16)
def _round_tables(key: int, bits: int) -> tuple[np.ndarray, ...]:
    """Every round's ``splitmix64(half ^ k) & mask`` for all values of its input half (int64).

    A round's input is a half of at most 16 bits (``bits <= 32``), so the six round functions fit
    in small tables; a round is then one gather and one xor instead of a dozen uint64 passes, with
    exactly the same values.
    """
    low = bits // 2
    out = []
    with np.errstate(over="ignore"):
        for i, k in enumerate(_round_keys(key)):
            src, dst = (low, bits - low) if i % 2 == 0 else (bits - low, low)
            z = _splitmix64(np.arange(1 << src, dtype=np.uint64) ^ k) & np.uint64((1 << dst) - 1)
            out.append(z.astype(np.int64))
    return tuple(out)


_TABLE_CHUNK = 1 << 14  # values per pass: a round's three int64 arrays stay in the L2 cache


def _rounds(x: np.ndarray, low: int, tables: tuple[np.ndarray, ...]) -> np.ndarray:
    """The network on int64 values, with the round functions looked up in ``tables``."""
    left, right = x >> low, x & ((1 << low) - 1)
    for i, table in enumerate(tables):
        if i % 2 == 0:
            left ^= table[right]
        else:
            right ^= table[left]
    left <<= low
    left |= right
    return left


def _rounds_chunked(x: np.ndarray, low: int, tables: tuple[np.ndarray, ...]) -> np.ndarray:
    if x.size <= _TABLE_CHUNK:
        return _rounds(x, low, tables)
    out = np.empty(x.size, np.int64)
    for lo in range(0, x.size, _TABLE_CHUNK):
        out[lo: lo + _TABLE_CHUNK] = _rounds(x[lo: lo + _TABLE_CHUNK], low, tables)
    return out


def _permute_tables(positions: np.ndarray, n: int, bits: int, tables: tuple[np.ndarray, ...]) -> np.ndarray:
    """The network over cache-sized chunks, then cycle walking over all the values still outside
    ``[0, n)`` at once: the walk takes a few dozen passes over ever fewer values, whose per-call
    cost would dominate if every chunk walked on its own."""
    low = bits // 2
    values = _rounds_chunked(positions.astype(np.int64, copy=False), low, tables)
    todo = np.flatnonzero(values >= n)
    while todo.size:
        again = _rounds_chunked(values[todo], low, tables)
        values[todo] = again
        todo = todo[again >= n]
    return values


def _use_tables(bits: int, count: int) -> bool:
    # Building the tables costs about one pass over 2 ** ceil(bits / 2) values.
    return bits <= 24 or (bits <= 32 and count >= 1 << ((bits + 1) // 2))


def permute(positions: np.ndarray, n: int, key: int) -> np.ndarray:
    """Map each of ``positions`` (values in ``[0, n)``) through a bijection of ``[0, n)``."""
    if n <= 0:
        raise ValueError("permute needs n >= 1")
    positions = np.asarray(positions)
    if positions.size and (int(positions.min()) < 0 or int(positions.max()) >= n):
        raise ValueError(f"permute positions must lie in [0, {n})")  # else cycle walking never ends
    bits = max(1, (n - 1).bit_length())
    if _use_tables(bits, positions.size):
        return _permute_tables(positions, n, bits, _round_tables(key, bits))
    return _permute_network(positions, n, bits, key)


def _permute_network(positions: np.ndarray, n: int, bits: int, key: int) -> np.ndarray:
    """The network computed round by round in uint64 (any ``bits``)."""
    keys = _round_keys(key)
    limit = np.uint64(n)
    with np.errstate(over="ignore"):
        out = _feistel(positions.astype(np.uint64), bits, keys)
        # Cycle walking: the network permutes [0, 2**bits), fewer than 2n values; re-apply until
        # the value is back inside [0, n).
        todo = np.flatnonzero(out >= limit)
        while todo.size:
            out[todo] = _feistel(out[todo], bits, keys)
            todo = todo[out[todo] >= limit]
    return out.view(np.int64)


def stream_samples(positions: np.ndarray, n: int, seed: int, stream: str) -> np.ndarray:
    """Member indices (``[0, n)``) of stream ``positions`` that may span several epochs."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and positions.min() // n == positions.max() // n:  # one epoch: no masks
        e = int(positions[0] // n)
        return permute(positions - e * n, n, epoch_key(seed, stream, e))
    epochs = positions // n
    out = np.empty_like(positions)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = permute(positions[sel] - e * n, n, epoch_key(seed, stream, int(e)))
    return out
