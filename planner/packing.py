"""The resumable core of the compiler: turn per-step quotas into the entries every rank replays.

``plan_steps(streams, state, quotas, topology)`` is pure: it continues every component's shuffled
stream from ``state`` (next position, tokens already used of the current document, quota carry),
packs the quotas of a block of steps, interleaves the components inside every step, cuts the step
into sequences, hands sequences to ranks, and returns the entries with the state after the block.
It leaves ``state.carry`` alone: quotas (and their rounding carry) are :mod:`planner.quotas`' job.

Everything is vectorised (no per-entry Python, no sort): cutting streams at step ends and the step
stream at sequence ends is a merge of two sorted arrays (:func:`cut_at`), the interleave is a bucket
merge, the hand-out to ranks a counting permutation. Blocks are packed in cache-sized sub-blocks;
the result does not depend on their size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.plan_format import Segment
from runtime.shuffle import epoch_key, permute


@dataclass(frozen=True, slots=True, kw_only=True)
class Streams:
    """The components' members as the compiler sees them."""

    names: tuple[str, ...]  # stream names (= component names)
    doc_lengths: tuple[np.ndarray, ...]  # per component, per member: span in the plan's unit
    seed: int
    unit: str  # "tokens" | "samples"

    def lengths(self, k: int, start: int, count: int) -> np.ndarray:
        """Spans of the documents at stream positions ``[start, start + count)`` of component ``k``."""
        members = self.doc_lengths[k]
        n = members.size
        out = np.empty(count, dtype=members.dtype)
        at = start
        while at < start + count:  # one contiguous range per epoch
            epoch = at // n
            stop = min(start + count, (epoch + 1) * n)
            idx = permute(np.arange(at - epoch * n, stop - epoch * n, dtype=np.int64), n,
                          epoch_key(self.seed, self.names[k], epoch))
            out[at - start: stop - start] = members[idx]
            at = stop
        return out


@dataclass(slots=True, kw_only=True)
class PlanState:
    """Where every component's stream stands at the start of ``step``."""

    step: int
    position: np.ndarray  # int64 per component: next stream position
    consumed: np.ndarray  # int64 per component: tokens of that document already planned
    carry: np.ndarray  # float64 per component: quota rounding carry (see planner.quotas)

    @classmethod
    def initial(cls, components: int) -> PlanState:
        return cls(step=0, position=np.zeros(components, np.int64),
                   consumed=np.zeros(components, np.int64), carry=np.zeros(components, np.float64))

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "position": [int(x) for x in self.position],
                "consumed": [int(x) for x in self.consumed], "carry": [float(x) for x in self.carry]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PlanState:
        return cls(step=int(obj["step"]), position=np.asarray(obj["position"], np.int64),
                   consumed=np.asarray(obj["consumed"], np.int64),
                   carry=np.asarray(obj["carry"], np.float64))


@dataclass(slots=True, kw_only=True)
class BlockEntries:
    """Entries of a block of steps for all ranks, grouped rank-major (rank 0's steps, rank 1's ...)."""

    first_step: int
    counts: np.ndarray  # (steps, world_size) uint32: entries of rank r in step s
    component: np.ndarray  # uint16
    position: np.ndarray  # int64
    token_start: np.ndarray  # uint32
    token_end: np.ndarray  # uint32 (0 = to the end of the document)

    _bounds: np.ndarray | None = field(default=None, repr=False, compare=False)

    def rank_bounds(self) -> np.ndarray:
        """Rank r's entries are ``[bounds[r], bounds[r + 1])``."""
        if self._bounds is None:
            self._bounds = np.concatenate([[0], np.cumsum(self.counts.sum(axis=0, dtype=np.int64))])
        return self._bounds

    def rank_segment(self, rank: int, version: int = 0) -> Segment:
        lo, hi = int(self.rank_bounds()[rank]), int(self.rank_bounds()[rank + 1])
        return Segment(self.first_step, np.ascontiguousarray(self.counts[:, rank]), self.component[lo:hi],
                       self.position[lo:hi], self.token_start[lo:hi], self.token_end[lo:hi], version)

    def rank_segments(self, version: int = 0) -> list[Segment]:
        """Every rank's entries as a runtime Segment (views of the block's arrays)."""
        return [self.rank_segment(r, version) for r in range(self.counts.shape[1])]


@dataclass(slots=True)
class _Pieces:
    """Entries of one component in a block, in stream order."""

    step: np.ndarray
    frac: np.ndarray  # progress through the component's quota of that step, in [0, 1)
    position: np.ndarray
    start: np.ndarray  # token coordinates inside the document
    end: np.ndarray
    doc_end: np.ndarray  # document span (to encode token_end = 0)


_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                        thread_name_prefix="mixtera-pack"))
    return _POOL[0]


SUB_BLOCK_ENTRIES = 1 << 18  # entries packed at once: bounds the working set of a pack


def compact_lengths(lengths: np.ndarray) -> np.ndarray:
    """``lengths`` in the narrowest unsigned type: the random gathers of the shuffle stay in cache."""
    top = int(lengths.max(initial=0))
    dtype = np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.int64
    return np.ascontiguousarray(lengths, dtype=dtype)


def plan_steps(streams: Streams, state: PlanState, quotas: np.ndarray, *, world_size: int,
               batch_size: int, seq_len: int) -> tuple[BlockEntries, PlanState]:
    """Pack ``quotas`` (steps x components, each row summing to the global step size)."""
    quotas = np.asarray(quotas, dtype=np.int64)
    per_step = _entries_per_step(streams, quotas[0], world_size * batch_size) if len(quotas) else 1
    sub = max(1, SUB_BLOCK_ENTRIES // per_step)
    parts = []
    for lo in range(0, quotas.shape[0], sub):
        part, state = _pack(streams, state, quotas[lo: lo + sub], world_size, batch_size, seq_len)
        parts.append(part)
    return merge_blocks(parts, world_size), state


def _entries_per_step(streams: Streams, quota: np.ndarray, sequences: int) -> int:
    if streams.unit == "samples":
        return max(int(quota.sum()), 1)
    docs = sum(int(q) / max(float(lens.mean()), 1.0) for q, lens in zip(quota, streams.doc_lengths,
                                                                           strict=True))
    return max(int(docs) + sequences + quota.size, 1)


def merge_blocks(parts: list[BlockEntries], world_size: int) -> BlockEntries:
    """Consecutive blocks (each rank-major) as one block: rank r's entries of every part, in order."""
    if len(parts) == 1:
        return parts[0]
    bounds = [np.concatenate([[0], np.cumsum(p.counts.sum(axis=0, dtype=np.int64))]) for p in parts]
    cols = {}
    for name in ("component", "position", "token_start", "token_end"):
        cols[name] = np.concatenate([getattr(p, name)[b[r]: b[r + 1]] for r in range(world_size)
                                     for p, b in zip(parts, bounds, strict=True)])
    return BlockEntries(first_step=parts[0].first_step, counts=np.concatenate([p.counts for p in parts]),
                        **cols)


def _pack(streams: Streams, state: PlanState, quotas: np.ndarray, world_size: int, batch_size: int,
          seq_len: int) -> tuple[BlockEntries, PlanState]:
    steps, k_count = quotas.shape
    new = PlanState(step=state.step + steps, position=state.position.copy(),
                    consumed=state.consumed.copy(), carry=state.carry.copy())
    if streams.unit == "tokens":
        # Components are independent: pack them on threads (numpy releases the GIL; same result).
        results = list(_pool().map(lambda k: _token_pieces(streams, k, int(state.position[k]),
                                                           int(state.consumed[k]), quotas[:, k]),
                                    range(k_count)))
        pieces = [r[0] for r in results]
        new.position[:] = [r[1] for r in results]
        new.consumed[:] = [r[2] for r in results]
    else:
        pieces = [_sample_pieces(int(state.position[k]), quotas[:, k]) for k in range(k_count)]
        new.position += quotas.sum(axis=0)
    cat, perm = _interleave(pieces, steps)
    if streams.unit == "tokens":
        cut = _cut_sequences(cat, perm, world_size * batch_size, seq_len, batch_size)
    else:
        cut = _sample_ranks(cat, perm, batch_size)
    return _block(cat, cut, steps, world_size, state.step), new


def _token_pieces(streams: Streams, k: int, pos: int, consumed: int,
                  quota: np.ndarray) -> tuple[_Pieces, int, int]:
    """Cut component ``k``'s token stream at document ends and at step ends.

    Local coordinates count tokens from the start of the document at ``pos``; the block takes
    ``[consumed, need)``. Step ends are few (one per step), so they are inserted into the sorted
    document ends in O(documents) instead of searching every document among the steps.
    """
    need = consumed + int(quota.sum())
    if need == consumed:
        empty = np.zeros(0, np.int64)
        return _Pieces(empty, empty.astype(np.float64), empty, empty, empty, empty), pos, consumed
    ends = _doc_ends(streams, k, pos, need)
    live = np.flatnonzero(quota)  # steps with a zero quota get no piece
    bound = consumed + np.cumsum(quota[live])  # strictly increasing, last == need
    cuts, doc, step_live = cut_at(ends, bound)
    pieces = int(np.searchsorted(cuts, need, side="left")) + 1  # cuts up to `need`
    cuts, doc, step_live = cuts[:pieces], doc[:pieces], step_live[:pieces]
    start = np.concatenate([[consumed], cuts[:-1]])
    step = live[step_live]
    prev = np.concatenate([[consumed], bound[:-1]])[step_live]
    frac = (start - prev) / quota[step]
    lens = ends[: int(doc[-1]) + 1] - np.concatenate([[0], ends[: int(doc[-1])]])
    begins = ends[doc] - lens[doc]
    if cuts[-1] == ends[doc[-1]]:
        new_pos, new_consumed = pos + int(doc[-1]) + 1, 0
    else:
        new_pos, new_consumed = pos + int(doc[-1]), need - int(begins[-1])
    return (_Pieces(step, frac, pos + doc, start - begins, cuts - begins, lens[doc]), new_pos,
            new_consumed)


def cut_at(ends: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut consecutive intervals (strictly increasing ``ends``) at strictly increasing ``bounds``.

    Returns the pieces' ends (``ends`` with the bounds that are not already an end inserted), and
    for every piece the interval it belongs to and how many bounds lie before it. Bounds are few
    and sorted, so this is O(len(ends)) with no division and no sort.
    """
    at = np.searchsorted(ends, bounds, side="left")  # first end >= each bound
    on = np.zeros(bounds.size, bool)
    inside = at < ends.size
    on[inside] = ends[at[inside]] == bounds[inside]  # a bound on an end adds no cut
    off = ~on
    inserted_before = np.cumsum(off) - off
    cuts = np.insert(ends, at[off], bounds[off])
    is_end = np.ones(cuts.size, bool)
    is_end[(at + inserted_before)[off]] = False
    is_bound = ~is_end
    is_bound[(at + inserted_before)[on]] = True
    return cuts, np.cumsum(is_end) - is_end, np.cumsum(is_bound) - is_bound


def _doc_ends(streams: Streams, k: int, pos: int, need: int) -> np.ndarray:
    """Cumulative spans of documents from ``pos`` on, up to the first that reaches ``need``."""
    mean = max(float(streams.doc_lengths[k].mean()), 1.0)
    count = int(need / mean * 1.05) + 16
    ends = np.cumsum(streams.lengths(k, pos, count), dtype=np.int64)
    while ends[-1] < need:
        more = int((need - ends[-1]) / mean * 1.2) + 16
        ends = np.concatenate([ends, ends[-1] + np.cumsum(streams.lengths(k, pos + ends.size, more),
                                                          dtype=np.int64)])
    return ends[: int(np.searchsorted(ends, need, side="left")) + 1]


def _sample_pieces(pos: int, quota: np.ndarray) -> _Pieces:
    total = int(quota.sum())
    step = np.repeat(np.arange(quota.size), quota)
    within = np.arange(total) - np.repeat(np.cumsum(quota) - quota, quota)
    frac = within / np.maximum(quota[step], 1)
    zeros = np.zeros(total, np.int64)
    return _Pieces(step, frac, pos + np.arange(total, dtype=np.int64), zeros, zeros, zeros)


def _interleave(pieces: list[_Pieces], steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Merge the components' entries inside every step by their progress through their quota.

    Step ``s`` with ``n_s`` entries gets ``n_s`` buckets; an entry lands in bucket
    ``floor(frac * n_s)``, buckets keep component order, and a component keeps its stream order, so
    any stretch of the step holds every component in proportion (no sort needed). Returns the
    concatenated pieces (component-major) and ``perm``: merged slot -> concatenated index.
    """
    per_step = np.zeros(steps, np.int64)
    for p in pieces:
        per_step += np.bincount(p.step, minlength=steps)
    step_off = np.cumsum(per_step) - per_step
    total = int(per_step.sum())
    buckets = []
    for p in pieces:
        n = per_step[p.step]
        buckets.append(step_off[p.step] + np.minimum((p.frac * n).astype(np.int64), n - 1))
    sizes = np.bincount(np.concatenate(buckets), minlength=total)
    filled = np.cumsum(sizes) - sizes  # next free slot of every bucket
    perm = np.empty(total, np.int64)
    at = 0
    for b in buckets:
        if b.size:
            run_start = np.flatnonzero(np.diff(b, prepend=-1))
            run_len = np.diff(np.append(run_start, b.size))
            dest = filled[b] + (np.arange(b.size) - np.repeat(run_start, run_len))
            filled[b[run_start]] += run_len
            perm[dest] = np.arange(at, at + b.size)
        at += b.size
    cat = {name: np.concatenate([getattr(p, name) for p in pieces])
           for name in ("step", "position", "start", "end", "doc_end")}
    cat["component"] = np.repeat(np.arange(len(pieces)), [p.step.size for p in pieces])
    return cat, perm


def _cut_sequences(cat: dict[str, np.ndarray], perm: np.ndarray, sequences: int, seq_len: int,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split merged entries at sequence boundaries.

    Returns per final entry: its concatenated index, token start, token end, and its (step, rank)
    cell ``local step * world_size + rank`` (sequence // batch_size).
    """
    start = cat["start"][perm]
    length = cat["end"][perm] - start
    stop = np.cumsum(length)  # offsets in the block's token stream
    total = int(stop[-1])
    cuts, entry, seq = cut_at(stop, np.arange(seq_len, total, seq_len, dtype=np.int64))
    piece_shift = (start + length - stop)[entry]  # token coordinate minus stream offset
    begin = np.concatenate([[0], cuts[:-1]])
    cells = total // (seq_len * batch_size)  # (step, rank) cells of the block, step-major
    return perm[entry], begin + piece_shift, cuts + piece_shift, np.repeat(np.arange(cells), batch_size)[seq]


def _sample_ranks(cat: dict[str, np.ndarray], perm: np.ndarray,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Every step holds exactly world_size * batch_size samples: entry i is in cell i // batch_size.
    zeros = np.zeros(perm.size, np.int64)
    return perm, zeros, zeros, np.repeat(np.arange(perm.size // batch_size), batch_size)


def rank_major_order(cell: np.ndarray, steps: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries are sorted by ``cell = step * world_size + rank``: the permutation that lists them
    rank-major (rank 0's steps, then rank 1's ...), keeping the order inside every cell; and the
    (steps, world_size) entry counts."""
    counts = np.bincount(cell, minlength=steps * world_size)
    cell_start = np.cumsum(counts) - counts
    rank_major = np.arange(steps * world_size).reshape(steps, world_size).T.ravel()
    rm_counts = counts[rank_major]
    rm_start = np.cumsum(rm_counts) - rm_counts
    order = np.arange(cell.size) + np.repeat(cell_start[rank_major] - rm_start, rm_counts)
    return order, counts.reshape(steps, world_size)


def _block(cat: dict[str, np.ndarray], cut: tuple[np.ndarray, ...], steps: int, world_size: int,
           first_step: int) -> BlockEntries:
    src, start, end, cell = cut
    order, counts = rank_major_order(cell, steps, world_size)
    src = src[order]
    end = end[order]
    token_end = np.where(end == cat["doc_end"][src], 0, end)
    return BlockEntries(first_step=first_step, counts=counts.astype(np.uint32),
                        component=cat["component"][src].astype(np.uint16), position=cat["position"][src],
                        token_start=start[order].astype(np.uint32), token_end=token_end.astype(np.uint32))
