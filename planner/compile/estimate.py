"""What a plan will cost before it is built: entries, bytes on disk, memory while compiling.

A topology or a step count off by a few powers of two (``world_size = 2**40``, ``seq_len = 2**33``,
``steps = 10**9``) used to run until the kernel killed the compiler. :func:`estimate_plan` works from
the selection (documents and units per component) and the spec alone, before any per-step array is
allocated; :meth:`PlanEstimate.check_memory` and :meth:`PlanEstimate.check_disk` refuse what cannot
fit, with the estimate in the message. The figures are lower bounds in spirit: entries from the
mean document length, one byte per entry on disk (compressed rank files take one to three), the
arrays the compiler must hold at once in memory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixtera.planner.mixture.spec import MixtureSpec
from mixtera.runtime.errors import ConfigError

_ENTRY_COLUMNS = 2 + 8 + 4 + 4  # bytes per packed entry: component, position, token start and end
_PER_STEP = 3 * 8  # bytes per (step, component): target weights, quotas, weights in effect
_MIN_DISK_PER_ENTRY = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEstimate:
    entries: int  # over all ranks and steps
    disk_bytes: int
    memory_bytes: int

    def describe(self) -> str:
        return (f"about {self.entries:,} entries, at least {_gb(self.disk_bytes)} of rank files, and at "
                f"least {_gb(self.memory_bytes)} of memory while compiling")

    def check_memory(self, where: str, available: int | None = None) -> None:
        have = physical_memory() if available is None else available
        if have and self.memory_bytes > have:
            raise ConfigError(f"{where}: the plan is too large to compile here: {self.describe()}, and this "
                              f"machine has {_gb(have)}", _HINT)

    def check_disk(self, out: Path, available: int | None = None) -> None:
        have = free_disk(out) if available is None else available
        if have is not None and self.disk_bytes > have:
            raise ConfigError(f"{out}: the plan does not fit on its file system: {self.describe()}, and "
                              f"{_gb(have)} are free there", _HINT)


_HINT = ("check [mixture] steps and [topology] world_size, batch_size and seq_len (a power of two too "
         "many?); a long run can be compiled in parts with [[schedule]] stages, or on a larger machine")


def estimate_plan(spec: MixtureSpec, docs: np.ndarray, units: np.ndarray,
                  weights: np.ndarray) -> PlanEstimate:
    """Estimate for ``spec`` over components with ``docs`` members holding ``units`` units, at the
    initial leaf ``weights``."""
    topo, steps = spec.topology, spec.steps
    batch = topo.global_batch
    if spec.unit == "tokens":
        mean = np.where(docs > 0, units / np.maximum(docs, 1), 1.0)
        per_step = batch + float(np.sum(weights * batch * topo.seq_len / np.maximum(mean, 1.0)))
    else:
        per_step = float(batch)
    entries = int(per_step * steps)
    segment = per_step * spec.segment_steps * _ENTRY_COLUMNS + spec.segment_steps * topo.world_size * 4
    memory = steps * len(docs) * _PER_STEP + int(segment)
    return PlanEstimate(entries=entries, disk_bytes=entries * _MIN_DISK_PER_ENTRY, memory_bytes=memory)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return None


def free_disk(out: Path) -> int | None:
    """Free bytes on the file system that will hold ``out`` (its nearest existing ancestor)."""
    path = out.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"
