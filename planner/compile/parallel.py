"""`mixtera compile --processes N`: pack and encode segments in N worker processes.

Segments are independent once their start states are known, and the quotas determine those: after
step ``s`` component ``k`` has handed out exactly ``Q_k(s)`` units (the sum of its quotas), so its
stream stands at the document where the running sum of spans (in stream order) passes ``Q_k(s)``.
``segment_starts`` finds all of them in one pass over each component's stream (the same keyed
permutation the packer walks), then contiguous ranges of segments are packed and encoded in
worker processes and come back in segment order. Every segment is packed by the same
``plan_steps`` from the same state as in one process, so the plan is the same bytes for any N;
each worker checks that its packing ends where the next segment's start state says.

Not for a plan over whole (image-text) samples: where its segments start depends on where the
previous ones' whole samples went (``PlanState.consumed`` holds their lag behind their quotas, and
the text filler's stream moves by it), so ``compile_file`` packs such a plan in one process.

Workers are spawned (never forked: the parent holds threads) and get the streams and quotas once;
they hold neither the index nor the sample table.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from mixtera.planner.compile.packing import PlanState, Streams, plan_steps
from mixtera.planner.compile.plan_arrays import CompiledPlan
from mixtera.planner.compile.writer import PackedSegment
from mixtera.runtime.format.rank_frames import encode_block

_CHUNK_DOCS = 1 << 22  # stream positions whose spans are summed at once in ``segment_starts``
TASKS_PER_PROCESS = 4  # segment ranges per worker: a slow range delays the others less


def segment_starts(plan: CompiledPlan) -> list[PlanState]:
    """The plan state at the start of every segment, computed from the quotas alone."""
    if any(plan.streams.whole):
        raise RuntimeError("segment_starts: the quotas of a plan over whole samples do not tell where its "
                           "segments start")  # a bug, never bad input: compile_file packs it in one process
    seg, steps = plan.spec.segment_steps, plan.spec.steps
    firsts = np.arange(0, steps, seg, dtype=np.int64)
    given = np.zeros((firsts.size, len(plan.components)), np.int64)  # units handed out before each
    if firsts.size > 1:
        given[1:] = np.cumsum(plan.quotas, axis=0)[firsts[1:] - 1]
    position, consumed = np.zeros_like(given), np.zeros_like(given)
    for k in range(len(plan.components)):
        if plan.streams.unit == "tokens":
            position[:, k], consumed[:, k] = _token_starts(plan.streams, k, given[:, k])
        else:
            position[:, k] = given[:, k]
    carry = np.zeros_like(position, dtype=np.float64)
    if firsts.size > 1:
        carry[1:] = plan.carries(firsts[1:])
    return [PlanState(step=int(first), position=position[i].copy(), consumed=consumed[i].copy(),
                      carry=carry[i].copy()) for i, first in enumerate(firsts)]


def _token_starts(streams: Streams, k: int, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every (non-decreasing) token total, the stream position of the document it ends in and
    the tokens of that document already used: a total on a document end starts the next one."""
    position = np.zeros(totals.size, np.int64)
    consumed = np.zeros(totals.size, np.int64)
    at, start_tokens, i = 0, 0, 0  # next position, tokens before it, next total to place
    while i < totals.size:
        count = max(min(_CHUNK_DOCS, int((int(totals[-1]) - start_tokens) / streams.means[k]) + 16), 16)
        lens = streams.lengths(k, at, count).astype(np.int64)
        starts = start_tokens + np.concatenate([[0], np.cumsum(lens[:-1])])
        chunk_end = int(starts[-1] + lens[-1])
        stop = int(np.searchsorted(totals, chunk_end, side="left"))  # totals inside this chunk
        idx = np.searchsorted(starts, totals[i:stop], side="right") - 1
        position[i:stop] = at + idx
        consumed[i:stop] = totals[i:stop] - starts[idx]
        i, at, start_tokens = stop, at + count, chunk_end
    return position, consumed


def packed_segments(plan: CompiledPlan, processes: int) -> Iterator[PackedSegment]:
    """Every segment of ``plan``, packed and encoded in ``processes`` worker processes, in order."""
    starts = segment_starts(plan)
    bounds = np.linspace(0, len(starts), min(len(starts), processes * TASKS_PER_PROCESS) + 1).astype(int)
    t = plan.topology
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=_init,
                             initargs=(plan.streams, plan.quotas, plan.spec.segment_steps, plan.spec.steps,
                                       (t.world_size, t.batch_size, t.seq_len))) as pool:
        tasks: list[Future[list[PackedSegment]]] = [
            pool.submit(_pack_range, starts[lo:hi], starts[hi] if hi < len(starts) else None)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
        for task in tasks:
            yield from task.result()


_WORKER: dict[str, object] = {}


def _init(streams: Streams, quotas: np.ndarray, segment_steps: int, steps: int,
          topology: tuple[int, int, int]) -> None:
    _WORKER.update(streams=streams, quotas=quotas, segment_steps=segment_steps, steps=steps,
                   topology=topology)


def _pack_range(states: list[PlanState], after: PlanState | None) -> list[PackedSegment]:
    streams, quotas = _WORKER["streams"], _WORKER["quotas"]
    seg = int(_WORKER["segment_steps"])  # type: ignore[call-overload]
    world, batch, seq_len = _WORKER["topology"]  # type: ignore[misc]
    assert isinstance(streams, Streams) and isinstance(quotas, np.ndarray)
    out = []
    for j, state in enumerate(states):
        block, nxt = plan_steps(streams, state, quotas[state.step: state.step + seg], world_size=world,
                                batch_size=batch, seq_len=seq_len)
        expected = states[j + 1] if j + 1 < len(states) else after
        if expected is not None and not (np.array_equal(nxt.position, expected.position)
                                         and np.array_equal(nxt.consumed, expected.consumed)):
            raise RuntimeError(f"segment {state.step // seg}: packing ends at positions {nxt.position}, "
                               f"consumed {nxt.consumed}; the quotas say {expected.position}, "
                               f"{expected.consumed}")  # a bug, never bad input
        out.append(PackedSegment(state=state, first_step=block.first_step, steps=int(block.counts.shape[0]),
                                 frames=encode_block(block)))
    return out
