"""The packer's inner loops, compiled to machine code by numba.

Packing is a few sequential walks: along every component's documents (cutting them at step ends),
through every step's interleave buckets (a counting sort), along the merged token stream (cutting it
at sequence ends) and over the (step, rank) cells (rank-major order). As numpy array programs they
need searches, sorts and a dozen temporaries per entry; as loops they touch every entry a few times.
Numba compiles them once per machine (``cache=True`` keeps the machine code beside this file, or in
numba's user cache where that is read-only); arithmetic is IEEE double and int64 as in numpy, so
the results are the bytes the array programs gave.

Numba does not check array bounds: the callers (:mod:`mixtera.planner.compile.packing`) pass
what the loops rely on, above all spans that cover the quotas (``packing._doc_ends``). Spans are at
least 1 (the selection drops empty documents).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def token_pieces(lens: np.ndarray, lens_first: np.ndarray, position: np.ndarray, consumed: np.ndarray,
                 quotas: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cut every component's token stream at document ends and at step ends.

    Component ``k``'s documents from its stream position ``position[k]`` on have the spans
    ``lens[lens_first[k]: lens_first[k + 1]]`` (at least enough for its quotas), and ``consumed[k]``
    tokens of the first are planned already. Steps take ``quotas[s, k]`` tokens in order; a step
    with a zero quota gets no piece. Returns, component-major and in stream order, every piece's
    (stream position, first token in its document, tokens, document span, tokens of its step's
    quota before it), the pieces per (component, step), and every component's position and
    consumed tokens after the block.
    """
    steps, k_count = quotas.shape
    bound = lens.size + steps * k_count  # a piece ends at a document end or at a step end
    pos_out, start_out = np.empty(bound, np.int64), np.empty(bound, np.int64)
    len_out, span_out = np.empty(bound, np.int64), np.empty(bound, np.int64)
    off_out = np.empty(bound, np.int64)
    counts = np.zeros((k_count, steps), np.int64)
    new_position, new_consumed = position.copy(), consumed.copy()
    j = 0
    for k in range(k_count):
        first = lens_first[k]
        doc, within = 0, consumed[k]
        for s in range(steps):
            quota = quotas[s, k]
            given, step_first = 0, j
            while given < quota:
                span = lens[first + doc]
                take = min(span - within, quota - given)
                pos_out[j], start_out[j], len_out[j] = position[k] + doc, within, take
                span_out[j], off_out[j] = span, given
                j += 1
                within += take
                given += take
                if within == span:
                    doc += 1
                    within = 0
            counts[k, s] = j - step_first
        new_position[k], new_consumed[k] = position[k] + doc, within
    return (pos_out[:j], start_out[:j], len_out[:j], span_out[:j], off_out[:j], counts, new_position,
            new_consumed)


@njit(cache=True)
def interleave(counts: np.ndarray, offset: np.ndarray, quotas: np.ndarray) -> np.ndarray:
    """Merge the components' pieces inside every step by their progress through their quota
    (``_step_order``). ``counts[k, s]`` pieces (component-major, in stream order) of component ``k``
    belong to step ``s``. Returns ``perm``: merged slot -> piece index."""
    first = _piece_first(counts)
    per_step = counts.sum(axis=0)
    perm = np.empty(offset.size, np.int64)
    scratch = np.zeros(2 * _largest(per_step) + 1, np.int64)
    slot = 0
    for s in range(counts.shape[1]):
        n = per_step[s]
        _step_order(counts, first, offset, quotas, s, n, scratch, perm[slot: slot + n])
        slot += n
    return perm


@njit(cache=True)
def _largest(values: np.ndarray) -> int:
    """The largest of ``values``, 0 for none."""
    top = 0
    for v in values:
        top = max(top, v)
    return top


@njit(cache=True)
def _piece_first(counts: np.ndarray) -> np.ndarray:
    """Index of the first piece of component ``k`` in step ``s`` (pieces component-major)."""
    first = np.empty_like(counts)
    at = 0
    for k in range(counts.shape[0]):
        for s in range(counts.shape[1]):
            first[k, s] = at
            at += counts[k, s]
    return first


@njit(cache=True)
def _step_order(counts: np.ndarray, first: np.ndarray, offset: np.ndarray, quotas: np.ndarray, s: int, n: int,
                scratch: np.ndarray, out: np.ndarray) -> None:
    """The ``n`` pieces of step ``s`` in merged order, into ``out``.

    The step gets ``n`` buckets, and a piece lands in bucket ``floor(offset / quota * n)`` (at most
    ``n - 1``). Buckets keep component order and a component keeps its stream order (a stable
    counting sort), so any stretch of the step holds every component in proportion. ``scratch``
    holds at least ``2 n + 1`` zeros and is left so.
    """
    fill, bucket = scratch[: n + 1], scratch[n + 1: 2 * n + 1]
    j = 0
    for k in range(counts.shape[0]):
        quota = float(quotas[s, k])
        for i in range(first[k, s], first[k, s] + counts[k, s]):
            b = min(int(float(offset[i]) / quota * float(n)), n - 1)
            bucket[j] = b
            fill[b + 1] += 1
            j += 1
    for b in range(n):  # fill[b]: the first slot of bucket b
        fill[b + 1] += fill[b]
    j = 0
    for k in range(counts.shape[0]):
        for i in range(first[k, s], first[k, s] + counts[k, s]):
            out[fill[bucket[j]]] = i
            fill[bucket[j]] += 1
            j += 1
    fill[:] = 0
    bucket[:] = 0


@njit(cache=True)
def piece_components(counts: np.ndarray, dtype_like: np.ndarray) -> np.ndarray:
    """The component of every piece (component-major), in the dtype of ``dtype_like``."""
    out = np.empty(counts.sum(), dtype_like.dtype)
    i = 0
    for k in range(counts.shape[0]):
        for _ in range(counts[k].sum()):
            out[i] = k
            i += 1
    return out


@njit(cache=True)
def cut_sequences(counts: np.ndarray, offset: np.ndarray, quotas: np.ndarray, component: np.ndarray,
                  position: np.ndarray, start: np.ndarray, length: np.ndarray, span: np.ndarray,
                  world_size: int, batch_size: int, seq_len: int) -> tuple[np.ndarray, ...]:
    """Merge every step's pieces (``_step_order``) and split the step stream at sequence ends into
    entries, step-major. ``counts[k, s]``: pieces (component-major) of component ``k`` in step ``s``.

    Sequence ``j`` of a step goes to rank ``j // batch_size``, so a (step, rank) cell is a
    contiguous stretch of the block's token stream. An entry's token range is the stretch of its
    document it covers; ``token_end`` is 0 where that is the document's end. Step by step, so the
    pieces a step merges stay in the cache. Returns the entries per (step, rank) and the entries'
    component, position, token_start and token_end.
    """
    steps = counts.shape[1]
    first = _piece_first(counts)
    per_step = counts.sum(axis=0)
    n_max = _largest(per_step)
    scratch = np.zeros(2 * n_max + 1, np.int64)
    order = np.empty(n_max, np.int64)
    bound = offset.size + steps * world_size * batch_size  # a sequence end cuts at most one piece
    comp_out = np.empty(bound, component.dtype)
    pos_out = np.empty(bound, np.int64)
    start_out, end_out = np.empty(bound, np.uint32), np.empty(bound, np.uint32)
    cell_counts = np.zeros(steps * world_size, np.int64)
    e, at, seq_end, cell, seq_in_cell = 0, 0, seq_len, 0, 0
    for s in range(steps):
        n = per_step[s]
        _step_order(counts, first, offset, quotas, s, n, scratch, order)
        for slot in range(n):
            i = order[slot]
            shift = start[i] - at  # document token = block token + shift
            stop = at + length[i]
            while at < stop:
                cut = min(seq_end, stop)
                comp_out[e], pos_out[e], start_out[e] = component[i], position[i], at + shift
                end_out[e] = 0 if cut + shift == span[i] else cut + shift
                cell_counts[cell] += 1
                e += 1
                at = cut
                if at == seq_end:
                    seq_end += seq_len
                    seq_in_cell += 1
                    if seq_in_cell == batch_size:
                        seq_in_cell = 0
                        cell += 1
    return cell_counts.reshape(steps, world_size), comp_out[:e], pos_out[:e], start_out[:e], end_out[:e]


@njit(cache=True)
def rank_major_gather(counts: np.ndarray) -> np.ndarray:
    """For entries grouped by cell in step-major order (``counts``: (steps, world_size) entries per
    cell), the gather that lists them rank-major (rank 0's steps, then rank 1's ...), keeping the
    order inside every cell."""
    steps, world = counts.shape
    cell_first = np.empty(steps * world + 1, np.int64)
    cell_first[0] = 0
    for c in range(steps * world):
        cell_first[c + 1] = cell_first[c] + counts[c // world, c % world]
    order = np.empty(cell_first[-1], np.int64)
    j = 0
    for r in range(world):
        for s in range(steps):
            first = cell_first[s * world + r]
            for i in range(first, first + counts[s, r]):
                order[j] = i
                j += 1
    return order


@njit(cache=True)
def worst_fit_decreasing(sizes: np.ndarray, world_size: int, batch_size: int, seq_len: int,
                         seq: np.ndarray, room: np.ndarray) -> int:
    """Whole samples into a step's sequences: longest first (stream order among equals), each into
    the sequence with the most room left; ties go round the ranks (sequence 0 of every rank, then
    sequence 1, ...), so every rank gets image samples when the step has as many as ranks.

    Writes every sample's sequence into ``seq`` and every sequence's room left into ``room``;
    returns the index of the first sample that fits nowhere, or -1 when all fit. The sequences
    wait in a max-heap keyed by (room, tie order): O(log sequences) per sample.
    """
    seqs = world_size * batch_size
    key = np.empty(seqs, np.int64)  # room * seqs + tie order: all distinct, larger is preferred
    heap = np.empty(seqs, np.int64)  # sequences, a max-heap by key
    for j in range(seqs):
        tie = seqs - 1 - ((j % batch_size) * world_size + j // batch_size)
        key[j] = seq_len * seqs + tie
    for t in range(seqs):  # all rooms are equal: descending tie order, a valid heap
        heap[t] = (t % world_size) * batch_size + t // world_size  # the sequence of tie order seqs - 1 - t
    order = np.argsort(-sizes, kind="mergesort")  # stable: stream order among equals
    for i in order:
        best = heap[0]
        left = key[best] // seqs - sizes[i]
        if left < 0:
            return i
        seq[i] = best
        key[best] -= sizes[i] * seqs
        _sift_down(heap, key, 0)
    for j in range(seqs):
        room[j] = key[j] // seqs
    return -1


@njit(cache=True)
def _sift_down(heap: np.ndarray, key: np.ndarray, at: int) -> None:
    n = heap.size
    while True:
        child = 2 * at + 1
        if child >= n:
            return
        if child + 1 < n and key[heap[child + 1]] > key[heap[child]]:
            child += 1
        if key[heap[child]] <= key[heap[at]]:
            return
        heap[at], heap[child] = heap[child], heap[at]
        at = child
