"""What the rank files of a token plan over whole (image-text) samples hold: its ``quotas.npy``.

The per-step quotas of such a plan are targets: they drive the packing (``packing._pack_whole``), but a
component of whole samples lags them (by up to about a sample, more while one waits for room; the lag
is carried in ``PlanState.consumed``, so the targets stay exact over every prefix of steps) and the
step's text filler takes the difference. The writer records what the packed entries really hold
instead, measured here from the entries themselves, and checks ``on_exhausted = "error"`` against it:
the filler's extra tokens could otherwise start a second epoch of it unnoticed. Text-only plans hold
exactly their quotas; nothing here is used for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixtera.planner.compile.packing import Streams
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.format.rank_frames import BlockEntries


def placed_tokens(streams: Streams, block: BlockEntries) -> np.ndarray:
    """(steps, components) int64: the tokens every component has in every step of ``block`` (all ranks)."""
    steps, world = block.counts.shape
    k_count = len(streams.names)
    comp = block.component.astype(np.int64)
    size = np.empty(comp.size, np.int64)
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.arange(k_count + 1))
    for k in range(k_count):
        at = order[bounds[k]: bounds[k + 1]]
        if not at.size:
            continue
        pos = block.position[at]
        lo = int(pos.min())  # a block takes a contiguous stretch of every component's stream
        doc = streams.lengths(k, lo, int(pos.max()) - lo + 1)[pos - lo].astype(np.int64)
        end = block.token_end[at].astype(np.int64)
        size[at] = np.where(end == 0, doc, end) - block.token_start[at]
    # Entries are rank-major: rank 0's steps, then rank 1's ...
    cells = block.counts.T.ravel().astype(np.int64)
    step = np.repeat(np.tile(np.arange(steps, dtype=np.int64), world), cells)
    sums = np.bincount(step * k_count + comp, weights=size, minlength=steps * k_count)
    return np.rint(sums).astype(np.int64).reshape(steps, k_count)  # exact: sums far below 2**53


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """How the writer turns packed blocks into the quotas it records, and the exhaustion check on them."""

    streams: Streams
    names: tuple[str, ...]
    capacity: np.ndarray  # int64 per component: tokens in one epoch
    error: np.ndarray  # bool per component: on_exhausted = "error"
    source: str  # the mixture file, for messages

    def tokens(self, block: BlockEntries) -> np.ndarray:
        return placed_tokens(self.streams, block)

    def check(self, tokens: np.ndarray, first_step: int, used: np.ndarray) -> np.ndarray:
        """``used`` (tokens placed before ``first_step``) plus the block's ``tokens``; raises when a
        component with on_exhausted = "error" gets past its one epoch. Its quotas were checked to fit
        (``quotas.plan_quotas``): only the text filler's extra tokens can take it past."""
        run = used[None, :] + np.cumsum(tokens, axis=0)
        over = self.error & (run[-1] > self.capacity) if run.size else np.zeros_like(self.error)
        for k in np.flatnonzero(over).tolist():
            s = int(np.argmax(run[:, k] > self.capacity[k]))
            given, size = int(run[s, k]), int(self.capacity[k])
            raise ConfigError(
                f"{self.source}: component {self.names[k]!r} runs out of data at step {first_step + s}: its "
                f"quotas fit its {size} tokens, but as the text that fills what the whole (image-text) "
                f"samples leave of the sequences it is given {given} tokens by then ({given - size} past "
                "one epoch; on_exhausted = 'error')",
                "lower its weight or `steps` a little, give another text component the largest text "
                "weight, add data, or set on_exhausted = 'repeat'")
        return run[-1] if run.size else used


def component_use(used: int, size: int) -> dict[str, Any]:
    """The manifest's (and inspect's) fields for ``used`` tokens or samples of a component whose epoch
    holds ``size``."""
    return {"used": used, "epochs": used / size, "epochs_started": -(-used // size)}


def components_as_placed(components: list[dict[str, Any]], quotas: np.ndarray) -> list[dict[str, Any]]:
    """The manifest's component entries with ``used`` and the epochs of what ``quotas`` (as placed) hold,
    so that the manifest of an image plan agrees with its quotas.npy and rank files."""
    return [{**c, **component_use(used, int(c["size"]))}
            for c, used in zip(components, quotas.sum(axis=0).tolist(), strict=True)]
