"""Write a plan directory atomically (see man/mixtera-formats.md, "Plan directory").

Everything is built in a staging folder (``mixtera.runtime.atomic.staging_dir``) and swapped in with one
rename, manifest last: a failed or interrupted compile leaves no partial plan and keeps an older
plan at the same path intact.
"""

from __future__ import annotations

import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.compile.packing import PlanState
from mixtera.runtime.atomic import fsync_path, staging_dir, write_atomic
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.json_file import created_by, json_file_bytes
from mixtera.runtime.format.plan_dir import MANIFEST, QUOTAS, SAMPLES, WEIGHTS, rank_file_name
from mixtera.runtime.format.rank_file import RankHeader, rank_file_bytes
from mixtera.runtime.format.rank_frames import BlockEntries, EncodedSegment, encode_block
from mixtera.runtime.plan import PLAN_FORMAT_VERSION, PLAN_KIND


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenPlan:
    path: Path
    fingerprint: str
    entries: int
    bytes_on_disk: int
    rank_bytes: int  # bytes of the rank files alone

    @property
    def bytes_per_entry(self) -> float:
        return self.rank_bytes / max(self.entries, 1)


def check_output(out: Path) -> None:
    """Refuse to replace anything that is not a plan (an empty folder is fine)."""
    if not out.exists():
        return
    hint = f"choose a new --out, or delete {out} yourself if it is no longer needed"
    if not out.is_dir():
        raise PlanError(f"{out} exists and is not a directory", hint)
    mpath = out / MANIFEST
    if not any(out.iterdir()):
        return
    try:
        kind = json.loads(mpath.read_bytes()).get("kind") if mpath.is_file() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        kind = None
    if kind != PLAN_KIND:
        raise PlanError(f"{out} exists and is not a mixtera plan; refusing to overwrite it", hint)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_plan(out: Path | str, *, manifest: dict[str, Any], samples: np.ndarray, quotas: np.ndarray,
               weights: np.ndarray, blocks: Iterable[tuple[PlanState, BlockEntries]],
               nested: Callable[[Path], Any] | None = None) -> WrittenPlan:
    """Write samples, quotas, one rank file per rank from ``blocks`` and, last, the manifest.

    ``manifest`` holds everything but ``segments``, which is filled here (with each segment's
    ``start_state``). ``blocks`` may raise (e.g. exhaustion): nothing is left behind then.
    ``nested(stage)`` writes what lives inside this plan (the validation plan; an elastic plan's
    versions and feedback log) before the manifest, so that it is published with it.
    """
    out = Path(out)
    check_output(out)
    topo = manifest["topology"]
    world = int(topo["world_size"])
    fp = bytes.fromhex(manifest["fingerprint"])
    with staging_dir(out) as stage, ThreadPoolExecutor(max_workers=_workers()) as pool:
        # The tables go to disk while the blocks are packed (file writes release the GIL).
        tables = [pool.submit(_write_npy, stage / name, arr) for name, arr in (
            (SAMPLES, samples), (QUOTAS, np.ascontiguousarray(quotas, dtype=np.int64)),
            (WEIGHTS, np.ascontiguousarray(weights, dtype=np.float64)))]
        frames: list[list[EncodedSegment]] = [[] for _ in range(world)]
        segments, entries = [], 0
        for k, (state, block) in enumerate(_encode(blocks, frames, pool)):
            segments.append({"index": k, "first_step": block.first_step, "steps": int(block.counts.shape[0]),
                             "version": 0, "entries": int(block.counts.sum()),
                             "start_state": state.to_json()})
            entries += int(block.counts.sum())
        header = {"world_size": world, "steps": int(manifest["steps"]),
                  "segment_steps": int(manifest["segment_steps"]), "first_segment": 0,
                  "segment_count": len(segments), "fingerprint": fp}
        paths = [stage / rank_file_name(rank) for rank in range(world)]
        rank_bytes = sum(pool.map(lambda r: _write_rank(paths[r], RankHeader(rank=r, **header), frames[r]),
                                  range(world)))
        paths += [f.result() for f in tables]
        _fsync_files(paths, pool)  # all at once: the first flush carries the others' data along
        if nested is not None:
            nested(stage)
        full = {"kind": PLAN_KIND, "format_version": PLAN_FORMAT_VERSION, "created_by": created_by(),
                **manifest, "segments": segments, "entries": entries}
        write_atomic(stage / MANIFEST, json_file_bytes(full))
        total = sum(p.stat().st_size for p in stage.iterdir() if p.is_file())
    return WrittenPlan(path=out, fingerprint=manifest["fingerprint"], entries=entries,
                       bytes_on_disk=total, rank_bytes=rank_bytes)


def _workers() -> int:
    return min(8, os.cpu_count() or 1)


def _write_npy(path: Path, arr: np.ndarray) -> Path:
    """The bytes of ``np.save`` written straight into the staging folder (fsynced with the rest):
    the header, then the array's memory in one write (``np.save`` itself spends ten times longer
    on a structured array such as the sample table)."""
    arr = np.ascontiguousarray(arr)
    head = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
    except ValueError:  # a header too large for format 1.0: let numpy choose
        head = None
    with open(path, "wb") as f:
        if head is None or arr.dtype.hasobject:
            np.save(f, arr, allow_pickle=False)
        else:
            f.write(head.getvalue())
            f.write(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
    return path


def _write_rank(path: Path, header: RankHeader, frames: list[EncodedSegment]) -> int:
    data = rank_file_bytes(header, frames)
    path.write_bytes(data)
    return len(data)


def _fsync_files(paths: list[Path], pool: ThreadPoolExecutor) -> None:
    """fsync many files concurrently (fsync releases the GIL, the file system batches the flushes)."""
    list(pool.map(fsync_path, paths))
    if paths:
        fsync_path(paths[0].parent)


_IN_FLIGHT = 2  # blocks that may still be encoding: bounds the memory they hold


def _encode(blocks: Iterable[tuple[PlanState, BlockEntries]], frames: list[list[EncodedSegment]],
            pool: ThreadPoolExecutor) -> Iterator[tuple[PlanState, BlockEntries]]:
    """Encode and compress every block on ``pool`` (numpy and zstd release the GIL) while the
    caller packs the next one; frames are the same bytes whichever thread makes them, and are
    appended in block order."""
    pending: deque[Future[list[EncodedSegment]]] = deque()

    def collect() -> None:
        for per_rank, enc in zip(frames, pending.popleft().result(), strict=True):
            per_rank.append(enc)

    for state, block in blocks:
        pending.append(pool.submit(encode_block, block))
        if len(pending) > _IN_FLIGHT:
            collect()
        yield state, block
    while pending:
        collect()
