"""Elastic re-partitioning: the same global order over a different number of ranks.

``compile --from-plan OLD --from-step S --world-size M`` rebuilds every step's global stream from
OLD's rank files (rank 0's part, then rank 1's, ...), and hands it to M ranks: with unit = "tokens"
the global batch of ``W * B`` sequences becomes ``M * (W * B / M)`` sequences of the same tokens,
in the same order. Sequence boundaries do not move (same ``seq_len``, same global batch), so no
entry is re-cut. Streams, quotas and sample table are OLD's, so the plan resumes exactly at S.

A plan with ``[dynamic]`` keeps it. Every version folder of OLD whose decision was published from
the losses of steps before S (refit step <= S) is carried into NEW, its rank files re-partitioned
the same way, and OLD's feedback log up to S becomes NEW's, so feedback goes on in NEW from the
job's log: later decisions are made there. Nothing waits for a decision and nothing is written
into OLD: every read of OLD is a pure read of one version's files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.compile.packing import PlanState, rank_major_gather, rank_major_order
from mixtera.planner.compile.plan_arrays import fingerprint
from mixtera.planner.compile.validation import validation_spec
from mixtera.planner.compile.writer import WrittenPlan, write_plan
from mixtera.planner.mixture.spec import MixtureSpec, Topology
from mixtera.runtime.atomic import write_atomic
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.format.feedback_log import log_file_bytes, read_log
from mixtera.runtime.format.json_file import json_file_bytes
from mixtera.runtime.format.plan_dir import (
    DECISION,
    MANIFEST,
    QUOTAS,
    VALIDATION,
    WEIGHTS,
    log_path,
    rank_file_name,
    version_path,
)
from mixtera.runtime.format.rank_file import RankHeader, rank_file_bytes
from mixtera.runtime.format.rank_frames import BlockEncoder, BlockEntries, Segment
from mixtera.runtime.plan import Plan, checked_sample_table


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


def _repartition_segment(old: Plan, k: int, topo: Topology, version: int) -> BlockEntries:
    """Segment ``k`` of OLD's version ``version`` for the ranks of ``topo``."""
    segs = [old.segment(r, k, version) for r in range(old.world_size)]
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
            (states[k], _repartition_segment(old, k, topo, 0)) for k in range(old.segment_count))
        samples = np.asarray(checked_sample_table(old.path, old.manifest))  # copied whole: checked whole
        validation = spec.validation is not None and (old.path / VALIDATION / MANIFEST).is_file()
        if validation:
            manifest["validation"] = {**manifest["validation"], "batch_size": None}  # filled below

        def nested(stage: Path) -> None:
            if validation:  # the validation split, re-partitioned the same way
                written = repartition(old.path / VALIDATION, validation_spec(spec), stage / VALIDATION,
                                      world_size=world_size, from_step=0)
                with Plan.open(written.path) as val:
                    manifest["validation"].update(fingerprint=val.fingerprint, batch_size=val.batch_size)
            if old.versions.schedule is not None:  # feedback goes on in NEW
                for decision in carried_decisions(old, from_step):
                    _write_version(old, stage, decision, topo, manifest["fingerprint"])
                _write_log(old, stage, from_step, manifest["fingerprint"])

        return write_plan(out, manifest=manifest, samples=samples, quotas=old.step_array(QUOTAS),
                          weights=old.step_array(WEIGHTS), blocks=blocks, nested=nested,
                          replace_feedback_state=replace_feedback_state)
    finally:
        old.close()


def carried_decisions(old: Plan, from_step: int) -> list[dict[str, Any]]:
    """OLD's published decisions made from the losses of steps before ``from_step``, in order."""
    return [d for d in old.versions.published() if int(d["refit_step"]) <= from_step]


def _write_version(old: Plan, stage: Path, decision: dict[str, Any], topo: Topology,
                   fingerprint: str) -> None:
    """OLD's version folder of ``decision`` in NEW's staging folder, rank files re-partitioned."""
    version = int(decision["version"])
    folder = version_path(stage, version)
    folder.mkdir(parents=True)
    if decision["action"] == "rewrite":
        source = version_path(old.path, version)
        for name in (QUOTAS, WEIGHTS):
            write_atomic(folder / name, (source / name).read_bytes())
        first = int(decision["first_segment"])
        encoder = BlockEncoder(topo.world_size, version)
        try:
            for k in range(first, old.segment_count):
                encoder.submit(_repartition_segment(old, k, topo, version))
            frames = encoder.frames()
        finally:
            encoder.close()
        fp = bytes.fromhex(fingerprint)
        for rank in range(topo.world_size):
            header = RankHeader(rank=rank, world_size=topo.world_size, steps=old.steps,
                                segment_steps=old.segment_steps, first_segment=first,
                                segment_count=old.segment_count - first, fingerprint=fp)
            write_atomic(folder / rank_file_name(rank), rank_file_bytes(header, frames[rank]))
    write_atomic(folder / DECISION, json_file_bytes({**decision, "fingerprint": fingerprint}))  # last


def _write_log(old: Plan, stage: Path, from_step: int, fingerprint: str) -> None:
    """OLD's feedback records of the steps before ``from_step`` as NEW's log (none: no log)."""
    source = log_path(old.path)
    if not source.is_file():
        return
    domains = len(old.components)
    records = read_log(source, domains, old.fingerprint).before(from_step)
    dest = log_path(stage)
    dest.parent.mkdir()
    write_atomic(dest, log_file_bytes(records, domains, fingerprint))

