"""Pack one step's token pieces into ``batch_size`` sequences of exactly ``seq_len`` tokens.

The plan already cut the step's global token stream into sequences and split entries at sequence
boundaries (man/mixtera-formats.md), so packing is a concatenation and a reshape; the code still
slices provenance per sequence from the cumulative offsets, so it never assumes that split.
Labels: ``labels[i] = input_ids[i + 1]`` and the last label is -100 (ignored), so no token is read
twice and a sequence holds exactly ``seq_len`` planned tokens (the tensors are built in runtime/batches.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixtera.runtime.errors import PlanError

IGNORE_INDEX = -100
Provenance = list[list[tuple[str, int, int]]]  # per sequence: (sample_id, token_start, token_end)


@dataclass(slots=True)
class PackedStep:
    """One step's tokens in compact form; ``ids`` holds ``batch_size * seq_len`` planned ids."""

    step: int
    batch_size: int
    seq_len: int
    ids: np.ndarray  # [batch_size * seq_len], the source's dtype (uint16 / uint32 from token files)
    component: np.ndarray  # per packed entry: its component (domain id)
    sizes: np.ndarray  # per packed entry: its ids in ``ids``, in order
    provenance: Provenance | None
    # With document masks: per packed entry, the document token its first id is (0: a document start).
    token_start: np.ndarray | None = None
    continue_positions: bool = False
    # With image samples (runtime/image_tokens.py): the step's decoded images in stream order (uint8
    # [N, 3, H, W] when all share one size, else a list of [3, H, W]), each one's (sequence, offset),
    # and the flat indices of the labels whose target is a placeholder.
    images: np.ndarray | list[np.ndarray] | None = None
    image_positions: np.ndarray | None = None
    hidden_labels: np.ndarray | None = None


def pack_step(
    flat: np.ndarray, sizes: np.ndarray, component: np.ndarray, batch_size: int, seq_len: int, step: int
) -> PackedStep:
    """Check that ``flat`` (the entries' token ids, concatenated; entry i holds ``sizes[i]``) fills the
    step's ``batch_size`` sequences exactly; the tensors are built from it by StepBatch.of."""
    total = int(flat.size)
    if total != batch_size * seq_len:
        raise PlanError(
            f"step {step}: this rank's entries hold {total} tokens, the topology needs "
            f"{batch_size} x {seq_len} = {batch_size * seq_len}",
            "the plan is inconsistent with its topology; recompile it",
        )
    return PackedStep(step, batch_size, seq_len, flat, component.astype(np.int64), sizes, None)


def provenance_slices(
    sizes: np.ndarray, token_start: np.ndarray, seq_len: int, batch_size: int
) -> list[list[tuple[int, int, int]]]:
    """Per sequence, the (entry, document token start, end) slices it holds."""
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(batch_size)]
    for i in np.flatnonzero(sizes).tolist():
        at, stop = int(starts[i]), int(ends[i])
        while at < stop:
            seq = at // seq_len
            cut = min(stop, (seq + 1) * seq_len)
            doc_at = int(token_start[i]) + (at - int(starts[i]))
            out[seq].append((i, doc_at, doc_at + cut - at))
            at = cut
    return out
