"""The resumable core of the compiler: turn per-step quotas into the entries every rank replays.

``plan_steps(streams, state, quotas, topology)`` is pure: it continues every component's shuffled
stream from ``state`` (next position, tokens already used of the current document, quota carry),
packs the quotas of a block of steps, interleaves the components inside every step, cuts the step
into sequences, hands sequences to ranks, and returns the entries with the state after the block.
It leaves ``state.carry`` alone: quotas (and their rounding carry) are
:mod:`mixtera.planner.compile.quotas`' job.

No per-entry Python: the walks along the streams (cutting them at document and step ends), the
interleave (a stable counting sort of bucket keys) and the cut of the step stream at sequence ends
are compiled loops (:mod:`mixtera.planner.compile.kernels`), and the hand-out to ranks is one gather
per column per segment (sub-blocks are step-major, so they simply concatenate). Blocks are packed in
sub-blocks that bound the working set; the result does not depend on their size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from mixtera.planner.compile import kernels
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.format.rank_frames import BlockEntries
from mixtera.runtime.shuffle import epoch_key, permute


@dataclass(frozen=True, slots=True, kw_only=True)
class Streams:
    """The components' members as the compiler sees them."""

    names: tuple[str, ...]  # stream names (= component names)
    doc_lengths: tuple[np.ndarray, ...]  # per component, per member: span in the plan's unit
    seed: int
    unit: str  # "tokens" | "samples"
    # Per component: its members are whole samples (image-text), never cut (empty: none is).
    whole: tuple[bool, ...] = ()
    means: tuple[float, ...] = field(init=False)  # mean span per component, at least 1
    # Per component: (first position, spans) shuffled ahead of the packer (see ``lengths``).
    _ahead: dict[int, tuple[int, np.ndarray]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: packing asks for them every sub-block, and a mean reads every member.
        object.__setattr__(self, "means", tuple(max(float(x.mean()), 1.0) if x.size else 1.0
                                                for x in self.doc_lengths))
        object.__setattr__(self, "_ahead", {})

    def __getstate__(self) -> dict[str, Any]:
        # A copy (a worker process's) starts without the read-ahead: it need not travel.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_ahead"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_ahead", {})

    def is_whole(self, k: int) -> bool:
        return bool(self.whole) and self.whole[k]

    def lengths(self, k: int, start: int, count: int) -> np.ndarray:
        """Spans of the documents at stream positions ``[start, start + count)`` of component ``k``
        (read-only).

        The packer asks for consecutive stretches of a few thousand positions; the shuffle has a
        fixed cost per call (its cycle walk takes a dozen passes whatever the size), so they are
        served from up to ``SHUFFLE_AHEAD`` positions shuffled at once, never past the end of the
        current epoch (a small component would otherwise shuffle thousands of epochs ahead). The
        same values either way.
        """
        first, spans = self._ahead.get(k, (0, _NO_SPANS))
        if not first <= start <= start + count <= first + spans.size:
            n = self.doc_lengths[k].size  # ahead no further than the epoch's end: one permutation each
            ahead = min(SHUFFLE_AHEAD, n - start % n) if n else 0
            first, spans = start, self._shuffled(k, start, max(count, ahead))
            spans.flags.writeable = False
            if count <= SHUFFLE_AHEAD:  # a larger request (parallel's segment starts) is not kept
                self._ahead[k] = (first, spans)
        return spans[start - first: start - first + count]

    def _shuffled(self, k: int, start: int, count: int) -> np.ndarray:
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


SHUFFLE_AHEAD = 1 << 18  # stream positions of a component shuffled at once (512 KiB of uint16 spans)
_NO_SPANS = np.zeros(0, np.uint16)


@dataclass(slots=True, kw_only=True)
class PlanState:
    """Where every component's stream stands at the start of ``step``."""

    step: int
    position: np.ndarray  # int64 per component: next stream position
    # int64 per component: tokens of that document already planned; for a component of whole
    # samples, the tokens its quotas so far hold beyond the whole samples it was given (its lag).
    consumed: np.ndarray
    carry: np.ndarray  # float64 per component: quota rounding carry (see mixtera.planner.compile.quotas)

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


@dataclass(slots=True)
class _Pieces:
    """Entries of every component in a block before the interleave: component-major, each
    component's in stream order.

    A piece is the part of one document that falls into one step. ``counts[k, s]`` pieces of
    component ``k`` belong to step ``s``; ``offset`` is a piece's progress (in units) through its
    step's quota, whose interleave bucket is ``floor(offset / quota * pieces_in_step)``.
    """

    counts: np.ndarray  # (components, steps) int64
    quota: np.ndarray  # (steps, components) int64: the quotas the pieces fill
    offset: np.ndarray  # int64 per piece: units of the step's quota before the piece
    position: np.ndarray  # int64 per piece: stream position
    start: np.ndarray  # int64 per piece: first token inside the document
    length: np.ndarray  # int64 per piece: tokens of the piece
    doc_end: np.ndarray  # int64 per piece: document span (to encode token_end = 0)

    def component(self) -> np.ndarray:
        """The component of every piece."""
        dtype = np.uint16 if self.counts.shape[0] <= 2**16 else np.int64
        return kernels.piece_components(self.counts, np.zeros(0, dtype))


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
    first_step = state.step
    for lo in range(0, quotas.shape[0], sub):
        part, state = _pack(streams, state, quotas[lo: lo + sub], world_size, batch_size, seq_len)
        parts.append(part)
    return _to_block(parts, quotas.shape[0], world_size, first_step), state


def _entries_per_step(streams: Streams, quota: np.ndarray, sequences: int) -> int:
    if streams.unit == "samples":
        return max(int(quota.sum()), 1)
    docs = sum(int(q) / mean for q, mean in zip(quota, streams.means, strict=True))
    return max(int(docs) + sequences + quota.size, 1)


@dataclass(slots=True)
class _StepMajor:
    """Packed entries of consecutive steps in global order (step, then rank), with cell counts."""

    counts: np.ndarray  # (steps, world_size) int64
    component: np.ndarray
    position: np.ndarray
    token_start: np.ndarray
    token_end: np.ndarray


def _to_block(parts: list[_StepMajor], steps: int, world_size: int, first_step: int) -> BlockEntries:
    """Sub-blocks are consecutive in step-major order: concatenate, then one rank-major gather."""
    def cat(name: str) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    counts = cat("counts")
    order = rank_major_gather(counts, steps, world_size)
    return BlockEntries(first_step=first_step, counts=counts.astype(np.uint32),
                        component=cat("component")[order], position=cat("position")[order],
                        token_start=cat("token_start")[order], token_end=cat("token_end")[order])


def _pack(streams: Streams, state: PlanState, quotas: np.ndarray, world_size: int, batch_size: int,
          seq_len: int) -> tuple[_StepMajor, PlanState]:
    steps = quotas.shape[0]
    new = PlanState(step=state.step + steps, position=state.position.copy(),
                    consumed=state.consumed.copy(), carry=state.carry.copy())
    if streams.unit == "tokens" and any(streams.whole):
        return _pack_whole(streams, state, quotas, world_size, batch_size, seq_len, new)
    if streams.unit == "tokens":
        pieces = _token_pieces(streams, state, quotas, new)
        return _cut_sequences(pieces, world_size, batch_size, seq_len), new
    pieces = _sample_pieces(state.position, quotas)
    new.position += quotas.sum(axis=0)
    perm = kernels.interleave(pieces.counts, pieces.offset, pieces.quota)
    return _sample_cells(pieces, perm, steps, world_size, batch_size), new


def _token_pieces(streams: Streams, state: PlanState, quotas: np.ndarray, new: PlanState,
                  text: np.ndarray | None = None) -> _Pieces:
    """Cut the token streams of the components (those in ``text`` if given; the others get no
    piece) at document ends and at step ends, from ``state`` on; their state after the block goes
    to ``new``."""
    k_count = quotas.shape[1]
    text = np.ones(k_count, bool) if text is None else text
    quotas = np.where(text[None, :], quotas, 0)
    given = quotas.sum(axis=0)
    need = state.consumed + given
    spans = [_doc_ends(streams, k, int(state.position[k]), int(need[k]))[0] if given[k] else _NO_SPANS
             for k in range(k_count)]  # each reaches its component's need: the loop relies on it
    first = np.zeros(k_count + 1, np.int64)
    np.cumsum([x.size for x in spans], out=first[1:])
    lens = np.concatenate(spans).astype(np.int64)
    position, start, length, doc_end, offset, counts, pos, consumed = kernels.token_pieces(
        lens, first, state.position, state.consumed, np.ascontiguousarray(quotas))
    new.position[text], new.consumed[text] = pos[text], consumed[text]
    return _Pieces(counts=counts, quota=quotas, offset=offset, position=position, start=start,
                   length=length, doc_end=doc_end)


def _doc_ends(streams: Streams, k: int, pos: int, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Spans and cumulative spans of documents from ``pos`` on, up to the first that reaches ``need``."""
    mean = streams.means[k]
    count = int(need / mean * 1.05) + 16
    lens = streams.lengths(k, pos, count)
    ends = np.cumsum(lens, dtype=np.int64)
    while ends[-1] < need:
        more = int((need - ends[-1]) / mean * 1.2) + 16
        extra = streams.lengths(k, pos + ends.size, more)
        lens = np.concatenate([lens, extra])
        ends = np.concatenate([ends, ends[-1] + np.cumsum(extra, dtype=np.int64)])
    stop = int(np.searchsorted(ends, need, side="left")) + 1
    return lens[:stop], ends[:stop]


def _sample_pieces(position: np.ndarray, quotas: np.ndarray) -> _Pieces:
    """Every component's next samples, one piece each (component-major)."""
    counts = np.ascontiguousarray(quotas.T)
    per_comp = counts.sum(axis=1)
    total = int(per_comp.sum())
    comp_first = np.cumsum(per_comp) - per_comp
    flat = counts.ravel()
    piece = np.arange(total, dtype=np.int64)
    within_step = piece - np.repeat(np.cumsum(flat) - flat, flat)  # the sample's place in its step
    within_comp = piece - np.repeat(comp_first, per_comp)
    zeros = np.zeros(total, np.int64)
    return _Pieces(counts=counts, quota=np.ascontiguousarray(quotas), offset=within_step,
                   position=np.repeat(position, per_comp) + within_comp, start=zeros, length=zeros,
                   doc_end=zeros)


def _cut_sequences(pieces: _Pieces, world_size: int, batch_size: int, seq_len: int) -> _StepMajor:
    """Interleave every step's pieces and split them at sequence boundaries; sequence ``j`` of a step
    goes to rank ``j // batch_size``, so a (step, rank) cell is a contiguous stretch of the step."""
    counts, component, position, token_start, token_end = kernels.cut_sequences(
        pieces.counts, pieces.offset, pieces.quota, pieces.component(), pieces.position, pieces.start,
        pieces.length, pieces.doc_end, world_size, batch_size, seq_len)
    return _StepMajor(counts=counts, component=component, position=position, token_start=token_start,
                      token_end=token_end)


def _sample_cells(pieces: _Pieces, perm: np.ndarray, steps: int, world_size: int,
                  batch_size: int) -> _StepMajor:
    # Every step holds exactly world_size * batch_size samples: entry i is in cell i // batch_size.
    zeros = np.zeros(perm.size, np.uint32)
    return _StepMajor(counts=np.full((steps, world_size), batch_size, np.int64),
                      component=pieces.component()[perm], position=pieces.position[perm],
                      token_start=zeros, token_end=zeros)


def rank_major_gather(counts: np.ndarray, steps: int, world_size: int) -> np.ndarray:
    """For entries sorted by cell ``step * world_size + rank`` with ``counts`` (steps, world_size),
    the gather that lists them rank-major (rank 0's steps, then rank 1's ...)."""
    return kernels.rank_major_gather(np.ascontiguousarray(counts, dtype=np.int64).reshape(steps, world_size))


def rank_major_order(cell: np.ndarray, steps: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries are sorted by ``cell = step * world_size + rank``: the permutation that lists them
    rank-major (rank 0's steps, then rank 1's ...), keeping the order inside every cell; and the
    (steps, world_size) entry counts."""
    counts = np.bincount(cell, minlength=steps * world_size).reshape(steps, world_size)
    return rank_major_gather(counts, steps, world_size), counts


# -- whole samples ---------------------------------------------------------------------------------
# A component of whole samples (image-text: ``Streams.whole``) is never cut. Every step takes its
# next members, in stream order, while the tokens it was given stay within its quotas so far
# (``end <= bound``: it lags them by less than one sample, the lag is carried in
# ``PlanState.consumed``); they go to the step's sequences longest first, each to the sequence with
# the most room left (worst fit decreasing, ties round the ranks: they spread over the sequences and
# ranks). When one fits
# nowhere, the component's last member of the step waits for the next step and the rest is placed
# again (the lag then grows past one sample for a while; a component a whole step behind cannot
# keep up: refused). What remains of
# every sequence is text, cut at the rooms' ends. The step's largest text quota (the "filler")
# takes what the whole samples leave over or under their quotas, so every other text component
# gets exactly its quotas and every sequence holds exactly ``seq_len`` tokens: no padding. A step
# whose text quotas are all zero and whose sequences the whole samples do not fill exactly cannot
# be packed without padding and is refused.


@dataclass(slots=True)
class _Placed:
    """Whole samples of a block in placement order, and the room they leave in every sequence."""

    component: np.ndarray  # int64 per sample
    position: np.ndarray  # int64 per sample: stream position
    sequence: np.ndarray  # int64 per sample: sequence of the block (step * sequences + j)
    room: np.ndarray  # (steps, sequences) int64: tokens left for text
    lagging: ConfigError | None  # a component fell behind its quotas by more than a sample


def _pack_whole(streams: Streams, state: PlanState, quotas: np.ndarray, world_size: int, batch_size: int,
                seq_len: int, new: PlanState) -> tuple[_StepMajor, PlanState]:
    steps, k_count = quotas.shape
    seqs = world_size * batch_size
    whole = np.array([streams.is_whole(k) for k in range(k_count)])
    text_q = np.where(whole[None, :], 0, quotas)
    rows = np.arange(steps)
    filler = np.argmax(text_q, axis=1)  # the largest text quota of the step (ties: the lower id)
    others = text_q.sum(axis=1) - text_q[rows, filler]
    placed = _place_whole(streams, state, quotas, whole, world_size, batch_size, seq_len,
                          seqs * seq_len - others, new)
    room = placed.room.sum(axis=1)
    _check_fill(streams, state.step, room, text_q.sum(axis=1))  # the more telling error first
    if placed.lagging is not None:
        raise placed.lagging
    text_q[rows, filler] += room - text_q.sum(axis=1)
    pieces = _token_pieces(streams, state, text_q, new, text=~whole)
    perm = kernels.interleave(pieces.counts, pieces.offset, pieces.quota)
    return _merge_sequences(pieces, perm, placed, steps, world_size, batch_size, k_count), new


def _check_fill(streams: Streams, first_step: int, room: np.ndarray, text: np.ndarray) -> None:
    bad = np.flatnonzero((room > 0) & (text == 0))
    if bad.size:
        s = int(bad[0])
        text = [n for k, n in enumerate(streams.names) if not streams.is_whole(k)]
        hint = (f"give a text component ({', '.join(text)}) a weight in every step" if text else
                "add a text component to the mixture")
        raise ConfigError(
            f"step {first_step + s}: the whole (image-text) samples leave {int(room[s])} tokens of the "
            "step's sequences empty, and no text component has a quota in that step to fill them (a "
            "sequence is never padded)", f"{hint}, or use unit = \"samples\"")


def _place_whole(streams: Streams, state: PlanState, quotas: np.ndarray, whole: np.ndarray, world_size: int,
                 batch_size: int, seq_len: int, cap: np.ndarray, new: PlanState) -> _Placed:
    """Every step's whole samples (at most ``cap[s]`` tokens) and the sequences they go to.

    One pass of a few array operations per step (no per-sample Python): the samples a step may take,
    the longest prefix within ``cap``, and the worst fit decreasing of ``_worst_fit_decreasing``."""
    steps, seqs = quotas.shape[0], world_size * batch_size
    comps = np.flatnonzero(whole).tolist()
    lens, ends, lag, taken = {}, {}, {}, {}
    for k in comps:
        need = int(state.consumed[k]) + int(quotas[:, k].sum())
        lens[k], ends[k] = _doc_ends(streams, k, int(state.position[k]), need) if need > 0 else \
            (np.zeros(0, np.int64), np.zeros(0, np.int64))
        lag[k], taken[k] = int(state.consumed[k]), 0
    room = np.empty((steps, seqs), np.int64)
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lagging: ConfigError | None = None
    for s in range(steps):
        comp, member, size = _candidates(comps, quotas[s], lens, ends, lag, taken)
        n = int(np.searchsorted(np.cumsum(size), int(cap[s]), side="right"))  # the prefix within cap
        comp, member, size = comp[:n], member[:n], size[:n]
        while True:  # the longest stream prefix that fits: a component's last samples wait
            seq, room[s], failed = _worst_fit_decreasing(size, world_size, batch_size, seq_len)
            if failed is None:
                break
            keep = np.ones(comp.size, bool)  # its last sample (a component's are in stream order) waits
            keep[np.flatnonzero(comp == comp[failed])[-1]] = False
            comp, member, size = comp[keep], member[keep], size[keep]
        out.append((comp, state.position[comp] + member, s * seqs + seq))
        for k in comps:  # samples that waited for room make up for it later, unless they never can
            mine = comp == k
            lag[k] -= int(size[mine].sum())
            taken[k] += int(mine.sum())
            if lag[k] >= seqs * seq_len and lagging is None:
                lagging = _lagging(streams, k, state.step + s, lag[k], seqs, seq_len)
    for k in comps:
        new.position[k], new.consumed[k] = int(state.position[k]) + taken[k], lag[k]

    def cat(i: int) -> np.ndarray:
        return np.concatenate([o[i] for o in out]) if out else np.zeros(0, np.int64)

    return _Placed(component=cat(0), position=cat(1), sequence=cat(2), room=room, lagging=lagging)


def _worst_fit_decreasing(sizes: np.ndarray, world_size: int, batch_size: int,
                          seq_len: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The sequence of every sample, every sequence's room left, and the index of the first sample
    that fits nowhere (None when all fit): :func:`kernels.worst_fit_decreasing`."""
    seq = np.zeros(sizes.size, np.int64)
    room = np.zeros(world_size * batch_size, np.int64)
    failed = kernels.worst_fit_decreasing(np.asarray(sizes, np.int64), world_size, batch_size, seq_len, seq,
                                          room)
    return seq, room, None if failed < 0 else failed


def _candidates(comps: list[int], quota: np.ndarray, lens: dict[int, np.ndarray], ends: dict[int, np.ndarray],
                lag: dict[int, int], taken: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(component, member index, span) of the samples a step may take (their ends within each
    component's quotas so far), merged by their progress through the step's budget, as the text
    interleave does."""
    keys, comp, member, size = [], [], [], []
    for k in comps:
        lag[k] += int(quota[k])
        if lag[k] <= 0:
            continue
        first = taken[k]
        base = int(ends[k][first - 1]) if first else 0
        stop = int(np.searchsorted(ends[k], base + lag[k], side="right"))
        keys.append((ends[k][first:stop] - base) / lag[k])
        comp.append(np.full(stop - first, k, np.int64))
        member.append(np.arange(first, stop, dtype=np.int64))
        size.append(lens[k][first:stop].astype(np.int64))
    if not keys:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate(comp)[order], np.concatenate(member)[order], np.concatenate(size)[order]


def _lagging(streams: Streams, k: int, step: int, lag: int, seqs: int, seq_len: int) -> ConfigError:
    return ConfigError(
        f"step {step}: the whole (image-text) samples of component {streams.names[k]!r} do not fit the "
        f"step's {seqs} sequences of {seq_len} tokens beside the other components' quotas: it lags its "
        f"token quotas by {lag} tokens, a whole step",
        "lower its weight, raise seq_len or batch_size, or lower [mixture] image_tokens")


def _merge_sequences(pieces: _Pieces, perm: np.ndarray, placed: _Placed, steps: int,
                     world_size: int, batch_size: int, k_count: int) -> _StepMajor:
    """Every sequence: its whole samples in placement order, then its room of text (cut there).

    Every entry's place is counted, not sorted for: before a text entry come the text entries before
    it and the whole samples of its sequence and the earlier ones."""
    length = pieces.length[perm]
    stop = np.cumsum(length)
    cuts, piece, seq = _text_cuts(stop, np.cumsum(placed.room.ravel()))
    begin = np.concatenate([[0], cuts])[:-1].astype(np.int64)
    shift = (pieces.start[perm] - (stop - length))[piece]
    src = perm[piece]
    t_begin, t_end = begin + shift, cuts + shift
    doc_end = pieces.doc_end[src]
    n_seq = placed.room.size
    img_per_seq = np.bincount(placed.sequence, minlength=n_seq)
    per_seq = img_per_seq + np.bincount(seq, minlength=n_seq)
    img_dest = _grouped_slots(placed.sequence, np.cumsum(per_seq) - per_seq, img_per_seq)
    text_dest = np.arange(cuts.size) + np.cumsum(img_per_seq)[seq]
    comp_dtype = np.uint16 if k_count <= 2**16 else np.int64

    def merged(whole: np.ndarray, text: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.empty(whole.size + text.size, dtype)
        out[img_dest] = whole
        out[text_dest] = text
        return out

    n_img = placed.component.size
    zeros = np.zeros(n_img, np.uint32)
    counts = per_seq.reshape(steps * world_size, batch_size).sum(axis=1).reshape(steps, world_size)
    return _StepMajor(counts=counts, component=merged(placed.component, pieces.component()[src], comp_dtype),
                      position=merged(placed.position, pieces.position[src], np.int64),
                      token_start=merged(zeros, t_begin, np.uint32),
                      token_end=merged(zeros, np.where(t_end == doc_end, 0, t_end), np.uint32))


def _text_cuts(stop: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the text entries end: every piece end ``stop`` and every room end ``bounds`` (both
    sorted, in the block's text stream), once each, with the piece (first ``stop`` at or after it)
    and the sequence (first ``bounds`` at or after it) of every cut. One merge of the two sorted
    runs (a stable sort; of equal values the piece end comes first) and running counts: no search."""
    both = np.concatenate([stop, bounds])
    order = np.argsort(both, kind="stable")
    value = both[order]
    is_stop = order < stop.size
    stops_before = np.cumsum(is_stop) - is_stop
    keep = value > 0  # an empty room at the start of the block ends no entry
    keep[1:] &= value[1:] != value[:-1]
    return value[keep], stops_before[keep], (np.arange(value.size) - stops_before)[keep]


def _grouped_slots(group: np.ndarray, first: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Slot of every item when each ``group`` (sequence) lists its items in their order from
    ``first[group]`` on (``sizes``: items per group)."""
    order = np.argsort(group, kind="stable")
    within = np.arange(group.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    out = np.empty(group.size, np.int64)
    out[order] = first[group[order]] + within
    return out
