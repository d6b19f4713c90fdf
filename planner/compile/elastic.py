"""Elastic re-partitioning: the same global order over a different number of ranks.

``compile --from-plan OLD --from-step S --world-size M`` rebuilds every step's global stream from
OLD's rank files (rank 0's part, then rank 1's, ...), and hands it to M ranks: with unit = "tokens"
the global batch of ``W * B`` sequences becomes ``M * (W * B / M)`` sequences of the same tokens,
in the same order. Sequence boundaries do not move (same ``seq_len``, same global batch), so no
entry is re-cut. Streams, quotas and sample table are OLD's, so the plan resumes exactly at S.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.compile.packing import BlockEntries, PlanState, rank_major_gather, rank_major_order
from mixtera.planner.compile.plan_arrays import fingerprint
from mixtera.planner.compile.validation import validation_spec
from mixtera.planner.compile.writer import QUOTAS, WEIGHTS, WrittenPlan, write_plan
from mixtera.planner.mixture.spec import MixtureSpec, Topology
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.format.rank_file import Segment
from mixtera.runtime.plan import MANIFEST, SAMPLES, VALIDATION, Plan


def check_elastic(old: Plan, spec: MixtureSpec, world_size: int, from_step: int) -> Topology:
    """The new topology; refuses an indivisible global batch, a bad step or a different mixture."""
    global_batch = old.world_size * old.batch_size
    if world_size < 1 or global_batch % world_size:
        raise ConfigError(f"--world-size {world_size}: the plan's global batch of {global_batch} "
                          f"{'sequences' if old.unit == 'tokens' else 'samples'} ({old.world_size} ranks x "
                          f"{old.batch_size}) is not divisible by it",
                          f"use a world size that divides {global_batch}")
    if not 0 <= from_step < old.steps:
        raise ConfigError(f"--from-step {from_step} is outside the plan's {old.steps} steps",
                          f"use a step in 0..{old.steps - 1}")
    mine = _comparable(spec.to_dict())
    theirs = _comparable(old.manifest["spec"])
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"{spec.source}: the mixture differs from the one {old.path} was compiled from "
                          f"(in {', '.join(diff)})", "pass the mixture file the old plan was compiled from")
    return Topology(world_size=world_size, batch_size=global_batch // world_size, seq_len=old.seq_len)


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in ("topology", "index")}


def step_major(segs: list[Segment]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Concatenate the ranks' entries of a segment in global order (step, then rank)."""
    steps = segs[0].steps
    counts = np.stack([s.step_counts.astype(np.int64) for s in segs], axis=1)  # (steps, world)
    # The ranks' files list the entries rank-major: rank-major entry i is step-major entry dest[i].
    dest = rank_major_gather(counts, steps, len(segs))
    out = {}
    for name in ("component", "position", "token_start", "token_end"):
        src = np.concatenate([getattr(s, name) for s in segs]).astype(np.int64)
        out[name] = np.empty_like(src)
        out[name][dest] = src
    return out, np.repeat(np.arange(steps), counts.sum(axis=1))


def _repartition_segment(old: Plan, k: int, topo: Topology) -> BlockEntries:
    segs = [old.segment(r, k) for r in range(old.world_size)]
    e, step = step_major(segs)
    steps = segs[0].steps
    if old.unit == "tokens":
        counts = np.bincount(step, minlength=steps).astype(np.uint32)
        resolved = old.resolve(Segment(segs[0].first_step, counts,
                                       e["component"].astype(np.uint16), e["position"],
                                       e["token_start"].astype(np.uint32), e["token_end"].astype(np.uint32)))
        length = resolved.token_end - resolved.token_start
        offset = np.cumsum(length) - length - step * (topo.global_batch * topo.seq_len)
        rank = (offset // topo.seq_len) // topo.batch_size
    else:
        per_step = np.bincount(step, minlength=steps)
        rank = (np.arange(step.size) - np.repeat(np.cumsum(per_step) - per_step, per_step)) // topo.batch_size
    order, counts = rank_major_order(step * topo.world_size + rank, steps, topo.world_size)
    return BlockEntries(first_step=segs[0].first_step, counts=counts.astype(np.uint32),
                        component=e["component"][order].astype(np.uint16), position=e["position"][order],
                        token_start=e["token_start"][order].astype(np.uint32),
                        token_end=e["token_end"][order].astype(np.uint32))


def repartition(old_path: Path | str, spec: MixtureSpec, out: Path | str, *, world_size: int,
                from_step: int, replace_feedback_state: bool = False) -> WrittenPlan:
    old = Plan.open(old_path)
    try:
        topo = check_elastic(old, spec, world_size, from_step)
        manifest = {k: v for k, v in old.manifest.items()
                    if k not in ("kind", "format_version", "created_by", "segments", "entries")}
        elastic = {"from_plan": old.fingerprint, "from_step": from_step, "old_world_size": old.world_size,
                   "old_batch_size": old.batch_size}
        manifest["topology"] = topo.to_dict()
        manifest["spec"] = {**manifest["spec"], "topology": topo.to_dict()}
        manifest["elastic"] = elastic
        manifest["fingerprint"] = fingerprint(manifest["spec"], manifest["index"]["manifest_blake2b"], topo,
                                              old.seed, extra=elastic)
        states = [PlanState.from_json(s["start_state"]) for s in old.manifest["segments"]]
        blocks: Iterator[tuple[PlanState, BlockEntries]] = (
            (states[k], _repartition_segment(old, k, topo)) for k in range(old.segment_count))
        samples = np.load(old.path / SAMPLES)
        nested = None
        if spec.validation is not None and (old.path / VALIDATION / MANIFEST).is_file():
            manifest["validation"] = {**manifest["validation"], "batch_size": None}  # filled below

            def nested(stage: Path) -> None:  # the validation split, re-partitioned the same way
                written = repartition(old.path / VALIDATION, validation_spec(spec), stage / VALIDATION,
                                      world_size=world_size, from_step=0)
                with Plan.open(written.path) as val:
                    manifest["validation"].update(fingerprint=val.fingerprint, batch_size=val.batch_size)
        return write_plan(out, manifest=manifest, samples=samples, quotas=np.load(old.path / QUOTAS),
                          weights=np.load(old.path / WEIGHTS), blocks=blocks, nested=nested,
                          replace_feedback_state=replace_feedback_state)
    finally:
        old.close()

