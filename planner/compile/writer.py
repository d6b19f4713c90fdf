"""Write a plan directory atomically (see man/mixtera-formats.md, "Plan directory").

Everything is built in a staging folder (``mixtera.runtime.atomic.staging_dir``) and swapped in with one
exchange rename, manifest last: a failed or interrupted compile leaves no partial plan and keeps an
older plan at the same path intact. An older plan is replaced only if it holds nothing but what a
compile writes (its frame cache moves into the new plan); its feedback state only when asked.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.compile.packing import PlanState
from mixtera.planner.compile.placed import Placement, components_as_placed
from mixtera.runtime.atomic import check_writable, fsync_path, staging_dir, write_atomic
from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format.json_file import created_by, json_file_bytes
from mixtera.runtime.format.plan_dir import (
    FEEDBACK_DIR,
    LOG_NAME,
    MANIFEST,
    QUOTAS,
    SAMPLE_BLOCKS,
    SAMPLES,
    VALIDATION,
    VERSIONS_DIR,
    WEIGHTS,
    rank_file_name,
)
from mixtera.runtime.format.rank_file import RankHeader, rank_file_bytes
from mixtera.runtime.format.rank_frames import BlockEntries, EncodedSegment, encode_block
from mixtera.runtime.format.sample_blocks import hash_file_blocks
from mixtera.runtime.plan import PLAN_FORMAT_VERSION, PLAN_KIND, STEP_ARRAYS, seal_manifest


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenPlan:
    path: Path
    fingerprint: str
    entries: int
    bytes_on_disk: int
    rank_bytes: int  # bytes of the rank files alone
    replaced_state: tuple[str, ...] = ()  # feedback state of the plan this one replaced

    @property
    def bytes_per_entry(self) -> float:
        return self.rank_bytes / max(self.entries, 1)


# What a plan folder may hold besides the files `write_plan` writes: the runtime's default frame
# cache (carried into the new plan: it is keyed by content hash, so it stays valid) and the
# feedback state (the log and every published decision), which a recompile must not drop unasked.
PLAN_CACHE = ".cache"
FEEDBACK_STATE = (FEEDBACK_DIR, VERSIONS_DIR)
_RANK_FILE = re.compile(r"rank-\d{5,}\.bin")


def check_output(out: Path, *, replace_feedback_state: bool = False) -> list[str]:
    """Refuse to replace anything that is not a plan (an empty folder is fine), a plan folder that
    holds files mixtera did not write, or a plan's feedback state unless ``replace_feedback_state``.

    Returns the feedback state that the new plan replaces (paths relative to ``out``).
    """
    check_writable(out)
    if not out.exists():
        return []
    hint = f"choose a new --out, or delete {out} yourself if it is no longer needed"
    if not out.is_dir():
        raise PlanError(f"{out} exists and is not a directory", hint)
    mpath = out / MANIFEST
    if not any(out.iterdir()):
        return []
    try:
        kind = json.loads(mpath.read_bytes()).get("kind") if mpath.is_file() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        kind = None
    except PermissionError as exc:
        raise PlanError(f"{mpath}: cannot read the existing plan ({exc.strerror})", hint) from None
    if kind != PLAN_KIND:
        raise PlanError(f"{out} exists and is not a mixtera plan; refusing to overwrite it", hint)
    foreign = sorted(n for n in os.listdir(out) if not _ours(n))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise PlanError(f"{out} holds files mixtera did not write ({shown}); refusing to replace the plan, "
                        "which would delete them", f"move them out of {out}, or choose a new --out")
    state = feedback_state(out)
    if state and not replace_feedback_state:
        raise PlanError(
            f"{out} holds feedback state ({', '.join(state)}) that a new plan would delete: the losses "
            "the job reported and the decisions its ranks replayed",
            "compile into a new --out (a job resumes only with the plan it trained on), or pass "
            "--replace-feedback-state to replace the plan and its feedback state",
        )
    return state


def _ours(name: str) -> bool:
    return (name in (MANIFEST, SAMPLES, SAMPLE_BLOCKS, QUOTAS, WEIGHTS, VALIDATION, PLAN_CACHE,
                     *FEEDBACK_STATE) or _RANK_FILE.fullmatch(name) is not None)


def feedback_state(plan: Path) -> list[str]:
    """The feedback log and published decisions of ``plan`` (relative paths; a bare lock is none)."""
    state = [f"{FEEDBACK_DIR}/{LOG_NAME}"] if (plan / FEEDBACK_DIR / LOG_NAME).exists() else []
    versions = plan / VERSIONS_DIR
    if versions.is_dir():
        state += [f"{VERSIONS_DIR}/{n}" for n in sorted(os.listdir(versions)) if not n.startswith(".")]
    return state


def _carry_cache(old: Path, stage: Path) -> None:
    """Move the old plan's frame cache into the new plan (a crash before the swap loses only a cache)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.rename(old / PLAN_CACHE, stage / PLAN_CACHE)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@dataclass(frozen=True, slots=True, kw_only=True)
class PackedSegment:
    """One segment packed and encoded: every rank's frame, and the plan state at its start."""

    state: PlanState
    first_step: int
    steps: int
    frames: list[EncodedSegment]  # one per rank, in rank order
    # (steps, components): what the frames hold, for a plan over whole samples (None: its quotas)
    placed: np.ndarray | None = None

    @property
    def entries(self) -> int:
        return sum(f.entries for f in self.frames)


def write_plan(out: Path | str, *, manifest: dict[str, Any], samples: np.ndarray, quotas: np.ndarray,
               weights: np.ndarray, blocks: Iterable[tuple[PlanState, BlockEntries]] = (),
               packed: Iterable[PackedSegment] | None = None,
               nested: Callable[[Path], Any] | None = None,
               placement: Placement | None = None,
               replace_feedback_state: bool = False) -> WrittenPlan:
    """Write samples, quotas, one rank file per rank from ``blocks`` and, last, the manifest.

    ``blocks`` are encoded on threads here; ``packed`` (instead of ``blocks``) are segments already
    encoded elsewhere (``mixtera.planner.compile.parallel``), in segment order. With ``placement``
    (a plan over whole image-text samples, whose ``quotas`` are targets) quotas.npy records what the
    blocks hold instead, checked against on_exhausted = "error" (``mixtera.planner.compile.placed``).
    ``manifest`` holds everything but ``segments``, which is filled here (with each segment's
    ``start_state``). ``blocks`` may raise (e.g. exhaustion): nothing is left behind then.
    ``nested(stage)`` writes plans inside this one (the validation plan) before the manifest, so
    that they are published with it. An existing plan at ``out`` is replaced only as
    :func:`check_output` allows.
    """
    out = Path(out)
    if placement is not None and packed is not None:  # a bug, never bad input
        raise ValueError("write_plan: placement measures the blocks it packs, not segments encoded elsewhere")
    replaced = check_output(out, replace_feedback_state=replace_feedback_state)
    topo = manifest["topology"]
    world = int(topo["world_size"])
    fp = bytes.fromhex(manifest["fingerprint"])
    with staging_dir(out) as stage, ThreadPoolExecutor(max_workers=_workers()) as pool:
        # The tables go to disk while the blocks are packed (file writes release the GIL).
        tables = [pool.submit(_write_npy, stage / name, arr) for name, arr in (
            (SAMPLES, samples), (WEIGHTS, np.ascontiguousarray(weights, dtype=np.float64)))]
        quotas = np.array(quotas, dtype=np.int64)  # a copy: rows become what the blocks hold
        used = np.zeros(quotas.shape[1], np.int64)
        frames: list[list[EncodedSegment]] = [[] for _ in range(world)]
        segments, entries = [], 0
        for k, seg in enumerate(_encode(blocks, pool, placement) if packed is None else packed):
            if seg.placed is not None:  # only with placement: packed segments carry none
                used = placement.check(seg.placed, seg.first_step, used)
                quotas[seg.first_step: seg.first_step + seg.steps] = seg.placed
            for per_rank, enc in zip(frames, seg.frames, strict=True):
                per_rank.append(enc)
            segments.append({"index": k, "first_step": seg.first_step, "steps": seg.steps,
                             "version": 0, "entries": seg.entries, "start_state": seg.state.to_json()})
            entries += seg.entries
        header = {"world_size": world, "steps": int(manifest["steps"]),
                  "segment_steps": int(manifest["segment_steps"]), "first_segment": 0,
                  "segment_count": len(segments), "fingerprint": fp}
        paths = [stage / rank_file_name(rank) for rank in range(world)]
        rank_bytes = sum(pool.map(lambda r: _write_rank(paths[r], RankHeader(rank=r, **header), frames[r]),
                                  range(world)))
        paths += [f.result() for f in tables] + [_write_npy(stage / QUOTAS, quotas)]
        _fsync_files(paths, pool)  # all at once: the first flush carries the others' data along
        if nested is not None:
            nested(stage)
        if placement is not None:
            manifest = {**manifest, "components": components_as_placed(manifest["components"], quotas)}
        full = {"kind": PLAN_KIND, "format_version": PLAN_FORMAT_VERSION, "created_by": created_by(),
                **manifest, "segments": segments, "entries": entries}
        # Read back for their checksums: cheap next to the fsync.
        hashes = {name: file_content_hash(stage / name) for name in STEP_ARRAYS}
        full = seal_manifest(full, {**hashes, **_sample_checksums(stage)})
        write_atomic(stage / MANIFEST, json_file_bytes(full))
        total = sum(p.stat().st_size for p in stage.iterdir() if p.is_file())
        _carry_cache(out, stage)
    return WrittenPlan(path=out, fingerprint=manifest["fingerprint"], entries=entries,
                       bytes_on_disk=total, rank_bytes=rank_bytes, replaced_state=tuple(replaced))


def _sample_checksums(stage: Path) -> dict[str, str]:
    """Hashes of samples.npy (whole, and per block in samples.blocks.npy, written here) and of
    samples.blocks.npy, from one read of samples.npy back (cheap next to the fsync)."""
    whole, sums = hash_file_blocks(stage / SAMPLES)
    _write_npy(stage / SAMPLE_BLOCKS, sums)
    fsync_path(stage / SAMPLE_BLOCKS)
    return {SAMPLES: whole, SAMPLE_BLOCKS: file_content_hash(stage / SAMPLE_BLOCKS)}


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


def _encode(blocks: Iterable[tuple[PlanState, BlockEntries]], pool: ThreadPoolExecutor,
            placement: Placement | None) -> Iterator[PackedSegment]:
    """Encode and compress every block on ``pool`` (numpy and zstd release the GIL) while the
    caller packs the next one (and measure what it holds, with ``placement``); frames are the same
    bytes whichever thread makes them, and come out in block order."""
    pending: deque[tuple[PlanState, BlockEntries, Future[list[EncodedSegment]],
                         Future[np.ndarray] | None]] = deque()

    def collect() -> PackedSegment:
        state, block, fut, placed = pending.popleft()
        return PackedSegment(state=state, first_step=block.first_step, steps=int(block.counts.shape[0]),
                             frames=fut.result(), placed=None if placed is None else placed.result())

    for state, block in blocks:
        placed = None if placement is None else pool.submit(placement.tokens, block)
        pending.append((state, block, pool.submit(encode_block, block), placed))
        if len(pending) > _IN_FLIGHT:
            yield collect()
    while pending:
        yield collect()
