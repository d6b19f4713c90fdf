"""The segment frames of a rank file: one encoder (all ranks of a block at once) and its decoder.

A segment decodes to a :class:`Segment`: for each step of the segment, how many entries this
rank replays, and per entry its component, its position in that component's shuffled stream
(:mod:`mixtera.runtime.shuffle` maps it to a sample) and the token range ``[token_start, token_end)`` of
that document that the entry covers. ``token_end == 0`` means "to the end of the document,
end-of-document token included", which keeps the column almost all zeros. Positions are stored
as differences to the previous entry of the same component, which are nearly always small.

Uncompressed frame layout: 8 bytes of column type codes (one per column in ``COLUMNS`` order: the
index in ``NARROW`` of the narrowest integer type holding the column's values, padded with zeros),
then the columns step_counts, component, position_delta, token_start, token_end, each as byte
planes (all first bytes, then all second bytes, ...) so zstd sees long runs of zeros in the high
planes. Each frame is compressed with zstd level 3.

Compile and rewrites encode many small rank segments (a few thousand entries each); encoding them
one by one is dominated by numpy's per-call overhead (about 30 small calls per segment, all holding
the GIL). :func:`frame_payloads` narrows, delta-encodes and splits every rank's columns of a
:class:`BlockEntries` with a handful of vectorised calls; only the zstd compression (which releases
the GIL) runs per rank, on threads (:class:`BlockEncoder`). One segment alone is a block of one rank.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import zstandard

from mixtera.runtime.errors import PlanError

COLUMNS = (("step_counts", np.uint32), ("component", np.uint16), ("position_delta", np.int64),
           ("token_start", np.uint32), ("token_end", np.uint32))
NARROW = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64)
CODE_BYTES = 8  # a frame starts with one type code per column, padded to 8 bytes
# Values are compared as int64 (no column holds more than 63 bits), so uint64's limit is capped.
_LIMITS = [(int(np.iinfo(dt).min), min(int(np.iinfo(dt).max), 2**63 - 1)) for dt in NARROW]
_LOCAL = threading.local()


@dataclass(slots=True)
class Segment:
    """The entries one rank replays in steps ``[first_step, first_step + len(step_counts))``."""

    first_step: int
    step_counts: np.ndarray  # uint32 per step: entries of this rank in that step
    component: np.ndarray  # uint16 per entry
    position: np.ndarray  # int64 per entry: position in the component's stream
    token_start: np.ndarray  # uint32 per entry
    token_end: np.ndarray  # uint32 per entry; 0 = to the end of the document
    version: int = 0

    @property
    def steps(self) -> int:
        return len(self.step_counts)

    def step_slices(self) -> np.ndarray:
        """Entry offsets: entries of step ``first_step + i`` are ``[off[i], off[i + 1])``."""
        return np.concatenate([[0], np.cumsum(self.step_counts, dtype=np.int64)])


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

    @classmethod
    def of_segment(cls, seg: Segment) -> BlockEntries:
        """One rank's segment as a block of a world of one."""
        return cls(first_step=seg.first_step, counts=np.asarray(seg.step_counts).reshape(-1, 1),
                   component=seg.component, position=seg.position, token_start=seg.token_start,
                   token_end=seg.token_end)

    def rank_bounds(self) -> np.ndarray:
        """Rank r's entries are ``[bounds[r], bounds[r + 1])``."""
        if self._bounds is None:
            self._bounds = np.concatenate([[0], np.cumsum(self.counts.sum(axis=0, dtype=np.int64))])
        return self._bounds

    def rank_segment(self, rank: int, version: int = 0) -> Segment:
        lo, hi = int(self.rank_bounds()[rank]), int(self.rank_bounds()[rank + 1])
        return Segment(self.first_step, np.ascontiguousarray(self.counts[:, rank]), self.component[lo:hi],
                       self.position[lo:hi], self.token_start[lo:hi], self.token_end[lo:hi], version)


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """A segment compressed for a rank file (what the seek table needs besides its offset)."""

    frame: bytes
    first_step: int
    steps: int
    entries: int
    version: int = 0


# -- encoding ------------------------------------------------------------------------------------
def _ragged_columns(block: BlockEntries) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(values, per-rank counts) of every frame column in ``COLUMNS`` order, rank-major."""
    steps, world = block.counts.shape
    counts = np.diff(block.rank_bounds())
    component = np.asarray(block.component)
    columns = {"step_counts": (np.ascontiguousarray(block.counts.T).ravel(), np.full(world, steps, np.int64)),
               "component": (component, counts),
               "position_delta": (position_deltas(component, np.asarray(block.position, np.int64), counts),
                                  counts),
               "token_start": (np.asarray(block.token_start), counts),
               "token_end": (np.asarray(block.token_end), counts)}
    for name, _ in COLUMNS:
        yield columns[name]


def position_deltas(component: np.ndarray, position: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each entry's position minus the previous one of its component in its rank (absolute if first);
    ``counts[r]`` entries belong to rank ``r``."""
    groups = counts.size * (int(component.max(initial=0)) + 1)
    if position.size and groups <= 2**16:
        return _position_deltas_radix(component, position, counts, groups)
    rank = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    delta = np.empty_like(position)
    for k in np.unique(component):  # few components: one pass each, no sort
        idx = np.flatnonzero(component == k)
        pos = position[idx]
        d = np.diff(pos, prepend=0)
        first = np.flatnonzero(np.diff(rank[idx], prepend=-1) != 0)
        d[first] = pos[first]
        delta[idx] = d
    return delta


def _position_deltas_radix(component: np.ndarray, position: np.ndarray, counts: np.ndarray,
                           groups: int) -> np.ndarray:
    """``position_deltas`` when every (rank, component) pair fits a uint16 key: numpy's stable
    argsort of 16-bit keys is a radix sort, one call for the whole block (about 3x faster)."""
    comps = groups // counts.size
    key = np.repeat(np.arange(0, groups, comps, dtype=np.uint16), counts)
    key += component.astype(np.uint16, copy=False)
    order = np.argsort(key, kind="stable")
    pos = position[order]
    d = np.empty_like(pos)
    d[0] = pos[0]
    np.subtract(pos[1:], pos[:-1], out=d[1:])
    grouped = key[order]
    first = np.flatnonzero(grouped[1:] != grouped[:-1]) + 1
    d[first] = pos[first]
    delta = np.empty_like(position)
    delta[order] = d
    return delta


def _codes(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per rank, the index in ``NARROW`` of the narrowest type holding its values (0 if none)."""
    codes = np.zeros(counts.size, np.int64)
    live = np.flatnonzero(counts)
    if live.size == 0:
        return codes
    starts = (np.cumsum(counts) - counts)[live]
    lo = np.minimum.reduceat(values, starts).astype(np.int64)
    hi = np.maximum.reduceat(values, starts).astype(np.int64)
    fits = np.stack([(lo >= a) & (hi <= b) for a, b in _LIMITS], axis=1)
    if not fits.any(axis=1).all():
        raise ValueError("column values do not fit 64 bits")
    codes[live] = np.argmax(fits, axis=1)
    return codes


def frame_payloads(block: BlockEntries) -> list[bytes]:
    """Every rank's uncompressed frame of ``block``."""
    world = block.counts.shape[1]
    parts: list[list[bytes]] = [[] for _ in range(world)]
    code_rows = []
    for values, counts in _ragged_columns(block):
        codes = _codes(values, counts)
        code_rows.append(codes)
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        for k in np.unique(codes).tolist():
            dt = np.dtype(NARROW[k])
            planes = values.astype(dt).view(np.uint8).reshape(-1, dt.itemsize)  # narrowed once
            for r in np.flatnonzero(codes == k).tolist():
                # Byte planes: all first bytes of the rank's values, then all second bytes, ...
                parts[r].append(planes[bounds[r]: bounds[r + 1]].T.tobytes())
    head = np.zeros((world, CODE_BYTES), np.uint8)
    head[:, : len(code_rows)] = np.stack(code_rows, axis=1)
    return [head[r].tobytes() + b"".join(parts[r]) for r in range(world)]


def compress_frames(payloads: list[bytes]) -> list[bytes]:
    """zstd level 3 on one compressor per thread (the same bytes whichever thread runs it)."""
    if not hasattr(_LOCAL, "compressor"):  # a compressor is not shared between threads
        _LOCAL.compressor = zstandard.ZstdCompressor(level=3)
    return [_LOCAL.compressor.compress(p) for p in payloads]


def encode_block(block: BlockEntries, version: int = 0) -> list[EncodedSegment]:
    """Every rank's compressed frame of ``block``, in the calling thread."""
    steps = int(block.counts.shape[0])
    per_rank = np.diff(block.rank_bounds()).tolist()
    return [EncodedSegment(frame, block.first_step, steps, n, version)
            for frame, n in zip(compress_frames(frame_payloads(block)), per_rank, strict=True)]


def encode_rank_segment(seg: Segment, compressor: zstandard.ZstdCompressor | None = None) -> EncodedSegment:
    """Compress one rank's ``seg``; pass a reused ``compressor`` (level 3) to save its set-up."""
    payload = frame_payloads(BlockEntries.of_segment(seg))[0]
    frame = (compressor or zstandard.ZstdCompressor(level=3)).compress(payload)
    return EncodedSegment(frame, seg.first_step, seg.steps, int(seg.component.size), seg.version)


class BlockEncoder:
    """Encodes blocks on a thread pool; ``frames()`` returns each rank's frames in submission order."""

    def __init__(self, world_size: int, version: int, workers: int | None = None) -> None:
        self.world = world_size
        self.version = version
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mixtera-encode")
        self._jobs: list[tuple[BlockEntries, np.ndarray, list[Future[list[bytes]]]]] = []

    def submit(self, block: BlockEntries) -> None:
        payloads = frame_payloads(block)
        chunk = -(-self.world // (4 * self.workers))  # a few tasks per thread: even load, little overhead
        futures = [self._pool.submit(compress_frames, payloads[lo: lo + chunk])
                   for lo in range(0, self.world, chunk)]
        self._jobs.append((block, np.diff(block.rank_bounds()), futures))

    def frames(self) -> list[list[EncodedSegment]]:
        out: list[list[EncodedSegment]] = [[] for _ in range(self.world)]
        try:
            for block, counts, futures in self._jobs:
                steps = int(block.counts.shape[0])
                compressed = [frame for f in futures for frame in f.result()]
                for rank, frame in enumerate(compressed):
                    out[rank].append(EncodedSegment(frame, block.first_step, steps, int(counts[rank]),
                                                    self.version))
        finally:
            self._pool.shutdown()
        return out

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


# -- decoding ------------------------------------------------------------------------------------
def _group_key(component: np.ndarray) -> np.ndarray:
    """Components as uint16 (they are < 2**16): numpy's stable argsort of 16-bit keys is a radix sort."""
    return component if component.dtype == np.uint16 else component.astype(np.uint16)


def position_sums(component: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The inverse of ``position_deltas`` for one rank's entries."""
    order = np.argsort(_group_key(component), kind="stable")
    running = np.cumsum(delta[order])
    starts = np.flatnonzero(np.diff(component[order], prepend=-1) != 0)
    # Each component's running sum restarts at its first entry (which holds an absolute position).
    before = np.where(starts > 0, running[starts - 1], 0)
    sizes = np.diff(np.append(starts, running.size))
    out = np.empty_like(running)
    out[order] = running - np.repeat(before, sizes)
    return out


def _unplanes(raw: bytes, at: int, code: int, n: int) -> np.ndarray:
    dt = np.dtype(NARROW[code]).newbyteorder("<")
    width = dt.itemsize
    planes = np.frombuffer(raw, dtype=np.uint8, count=n * width, offset=at).reshape(width, n)
    return np.ascontiguousarray(planes.T).view(dt).reshape(n)


def decode_segment(frame: bytes, first_step: int, steps: int, entries: int, version: int,
                   where: str) -> Segment:
    """The segment of a compressed ``frame`` that the seek table says holds ``steps`` steps and
    ``entries`` entries."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise PlanError(f"{where}: segment does not decompress ({exc})", "recompile the plan") from exc
    codes = raw[:CODE_BYTES]
    if len(raw) < CODE_BYTES or any(c >= len(NARROW) for c in codes[: len(COLUMNS)]):
        raise PlanError(f"{where}: segment has bad column types", "recompile the plan")
    arrays, at = {}, CODE_BYTES
    for i, (name, dt) in enumerate(COLUMNS):
        n = steps if name == "step_counts" else entries
        size = n * np.dtype(NARROW[codes[i]]).itemsize
        if at + size > len(raw):
            raise PlanError(f"{where}: segment holds {len(raw)} bytes, too few for its columns",
                            "recompile the plan")
        arrays[name] = _unplanes(raw, at, codes[i], n).astype(dt, copy=False)
        at += size
    if at != len(raw):
        raise PlanError(f"{where}: segment holds {len(raw)} bytes, expected {at}", "recompile the plan")
    component = arrays["component"]
    return Segment(first_step, arrays["step_counts"], component,
                   position_sums(component, arrays["position_delta"]),
                   arrays["token_start"], arrays["token_end"], version)
