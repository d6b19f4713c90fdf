"""``stream_samples`` of many streams in one vectorised pass (the runtime's hot path).

A plan segment mixes entries of several components, and a component's entries may span epochs;
each (component, epoch) is its own keyed permutation (:mod:`mixtera.runtime.shuffle`). Permuting each
group separately costs ~80 small numpy calls per cycle-walking pass and group, and the walk's tail
needs about ``log2(entries)`` passes, so on a segment of a few thousand entries per component the
call overhead dominates. Here every entry carries its own round keys, bit width and masks, so one
pass of the network serves all groups at once. The result is identical to
``stream_samples(positions, n, seed, stream)`` of each group (tests/runtime/test_stream_rows.py).
"""

from __future__ import annotations

import numpy as np

from mixtera.runtime.shuffle import _CHUNK, _ROUNDS, _mix_into, _round_keys, epoch_key


def _feistel(x: np.ndarray, group: np.ndarray, keys: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """One pass of each entry's alternating Feistel network (mixtera.runtime.shuffle._feistel, per entry)."""
    low = bits[group] // np.uint64(2)
    left_mask = (np.uint64(1) << (bits[group] - low)) - np.uint64(1)
    right_mask = (np.uint64(1) << low) - np.uint64(1)
    left, right = x >> low, x & right_mask
    z, t = np.empty_like(x), np.empty_like(x)
    for i in range(_ROUNDS):
        if i % 2 == 0:
            _mix_into(left, right, keys[i][group], left_mask, z, t)
        else:
            _mix_into(right, left, keys[i][group], right_mask, z, t)
    np.left_shift(left, low, out=left)
    return left | right


def _permute(x: np.ndarray, group: np.ndarray, keys: np.ndarray, bits: np.ndarray,
             limit: np.ndarray) -> np.ndarray:
    """Each ``x`` (in ``[0, limit[group])``) through its group's bijection, with cycle walking."""
    out = _feistel(x, group, keys, bits)
    todo = np.flatnonzero(out >= limit[group])
    while todo.size:
        out[todo] = _feistel(out[todo], group[todo], keys, bits)
        todo = todo[out[todo] >= limit[group[todo]]]
    return out


def _groups(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, index of each key among them), as np.unique(return_inverse=True);
    a segment's keys span a small range, where counting beats sorting."""
    lo, hi = int(key.min()), int(key.max())
    if hi - lo > 4 * key.size:
        return np.unique(key, return_inverse=True)
    present = np.bincount(key - lo, minlength=hi - lo + 1) > 0
    index = np.cumsum(present) - 1
    return np.flatnonzero(present) + lo, index[key - lo]


def stream_rows(component: np.ndarray, position: np.ndarray, rows: np.ndarray, first_row: np.ndarray,
                seed: int, streams: list[str]) -> np.ndarray:
    """Sample-table rows of entries (``component[i]``, stream ``position[i]``).

    Component ``c`` has ``rows[c]`` members starting at table row ``first_row[c]`` and permutes
    them with the stream named ``streams[c]``: row = ``first_row[c] + stream_samples(position,
    rows[c], seed, streams[c])``.
    """
    comp = np.asarray(component, dtype=np.int64)
    pos = np.asarray(position, dtype=np.int64)
    out = np.empty(comp.size, dtype=np.int64)
    if not comp.size:
        return out
    n = rows[comp]
    if (n <= 0).any() or (pos < 0).any():
        raise ValueError("stream positions must be >= 0 and components non-empty")
    epoch = pos // n
    ncomp = len(streams)
    pairs, group = _groups(epoch * ncomp + comp)  # (component, epoch) groups
    pair_comp, pair_epoch = pairs % ncomp, pairs // ncomp
    keys = np.stack([_round_keys(epoch_key(seed, streams[c], e))
                     for c, e in zip(pair_comp.tolist(), pair_epoch.tolist(), strict=True)], axis=1)
    sizes = rows[pair_comp]
    bits = np.array([max(1, (int(s) - 1).bit_length()) for s in sizes], dtype=np.uint64)
    limit = sizes.astype(np.uint64)
    x = (pos - epoch * n).astype(np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, x.size, _CHUNK):
            part = slice(lo, lo + _CHUNK)
            out[part] = _permute(x[part], group[part], keys, bits, limit).view(np.int64)
    return out + first_row[comp]
