"""What a plan holds and what the runtime will replay from it, as JSON-ready data.

`mixtera inspect PLAN` renders these reports; they never wait for a feedback decision and never
write. "Replayed now" means: every segment from the version whose decision governs it; a segment
whose decision is not published yet from the version that holds it now (what a rank replays if that
decision ends as "keep"), marked undecided.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.compile.placed import component_use
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.plan_dir import QUOTAS, RANK_FILE_GLOB, WEIGHTS
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import DecisionSchedule, read_decision


def decisions(path: Path | str) -> list[dict[str, Any]]:
    """Published decisions in version order (a gap ends the list: later ones cannot exist)."""
    plan = Plan.open(path)
    sched = DecisionSchedule.from_manifest(plan.manifest)
    found = []
    for v in sched.versions() if sched else []:
        d = read_decision(plan.path, v)
        if d is None:
            break
        found.append(d)
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Replayed:
    """What the runtime replays now, per step and per segment."""

    quotas: np.ndarray  # (steps, K) int64: each step's tokens (or samples) per component
    weights: np.ndarray  # (steps, K) float64: each step's target weights
    versions: list[int]  # per segment: the version whose rank files hold it
    decided: list[bool]  # per segment: False while its decision is not published
    entries: int  # entries of all ranks in the replayed segments


def replayed(path: Path | str) -> Replayed:
    """Per-step quotas and targets of the published versions (the compiled plan where none rewrote)."""
    plan = Plan.open(path)
    seg, count = plan.segment_steps, plan.segment_count
    found = decisions(path)
    versions = [0] * count
    for d in found:  # decisions are in order: a later one overrides from its first segment on
        versions[int(d["first_segment"]):] = [int(d["data_version"])] * (count - int(d["first_segment"]))
    sched = DecisionSchedule.from_manifest(plan.manifest)
    decided = [sched is None or sched.decision_of_segment(k) <= len(found) for k in range(count)]
    first = {0: 0, **{int(d["version"]): int(d["first_step"]) for d in found}}
    out: dict[str, np.ndarray] = {}
    for name in (QUOTAS, WEIGHTS):
        arrays = {v: plan.step_array(name, v) for v in sorted(set(versions))}
        full = arrays[0].copy() if 0 in arrays else plan.step_array(name)
        for k, v in enumerate(versions):
            if v:
                lo, hi = k * seg, min((k + 1) * seg, plan.steps)
                full[lo:hi] = arrays[v][lo - first[v]: hi - first[v]]
        out[name] = full
    # Segments are served by data versions: the compiled plan and rewrites; a "keep" decision has
    # no files (and no segments) of its own, its data_version names the rewrite that keeps serving.
    rewrites = [d for d in found if int(d["data_version"]) == int(d["version"])]
    by_version = {0: plan.manifest["segments"], **{int(d["version"]): d["segments"] for d in rewrites}}
    first_seg = {0: 0, **{int(d["version"]): int(d["first_segment"]) for d in rewrites}}
    entries = sum(int(by_version[v][k - first_seg[v]].get("entries", 0)) for k, v in enumerate(versions))
    return Replayed(quotas=out[QUOTAS], weights=out[WEIGHTS], versions=versions, decided=decided,
                    entries=entries)


def feedback_report(path: Path | str) -> dict[str, Any] | None:
    """Decisions (step, action, weights, fitted parameters) and per-segment shares; None if static."""
    plan = Plan.open(path)
    sched = DecisionSchedule.from_manifest(plan.manifest)
    if sched is None:
        return None
    found = decisions(path)
    rep = replayed(path)
    seg = plan.segment_steps
    shares = []
    for k in range(plan.segment_count):
        q = rep.quotas[k * seg: (k + 1) * seg].sum(axis=0)
        shares.append([round(float(x), 6) for x in q / max(q.sum(), 1)])
    rows = [{"version": d["version"], "action": d["action"], "refit_step": d["refit_step"],
             "first_step": d["first_step"], "data_version": d["data_version"],
             "weights": d.get("weights"), "mean_weights": d.get("mean_weights"),
             "fit": d.get("fit"), "reason": d.get("reason")} for d in found]
    waiting = [{"version": v, "refit_step": sched.refit_step(v),
                "first_step": sched.first_segment(v) * sched.segment_steps}
               for v in sched.versions()[len(found):]]
    return {"algorithm": plan.manifest["dynamic"]["algorithm"], "refit_every": sched.refit_every,
            "lookahead": sched.lookahead, "steps": plan.steps, "decisions": rows, "pending": waiting,
            "decisions_total": len(sched.versions()), "segment_shares": shares,
            "segment_versions": rep.versions, "segment_decided": rep.decided}


def plan_report(path: Path | str) -> dict[str, Any]:
    """Everything `inspect` shows about a plan except entries, as JSON-ready data."""
    plan = Plan.open(path)
    m = plan.manifest
    files = [p for p in plan.path.rglob("*") if p.is_file()]
    rank_bytes = sum(p.stat().st_size for p in plan.path.glob(RANK_FILE_GLOB))
    entries = int(m.get("entries") or sum(s.get("entries", 0) for s in m["segments"]))
    rep = replayed(plan.path)
    undecided = [k for k, ok in enumerate(rep.decided) if not ok]
    return {"path": str(plan.path), "fingerprint": plan.fingerprint, "created_by": m.get("created_by"),
            "unit": plan.unit, "steps": plan.steps, "segment_steps": plan.segment_steps,
            "segments": plan.segment_count, "topology": m["topology"], "seed": plan.seed,
            "entries": entries, "replayed_entries": rep.entries,
            "bytes_on_disk": sum(p.stat().st_size for p in files),
            "rank_bytes": rank_bytes, "bytes_per_entry": rank_bytes / max(entries, 1),
            "components": component_report(m["components"], rep, plan.step_array(QUOTAS)),
            "rewritten_from_step": next((k * plan.segment_steps for k, v in enumerate(rep.versions) if v),
                                        None),
            "undecided_from_step": undecided[0] * plan.segment_steps if undecided else None,
            "schedule": m.get("schedule", []), "dynamic": m.get("dynamic"),
            "elastic": m.get("elastic"), "index": m.get("index"), "feedback": feedback_report(path),
            "validation": m.get("validation"), **whole_sample_report(m)}


def whole_sample_report(manifest: dict[str, Any]) -> dict[str, Any]:
    """``packing`` for a token plan with components of whole (image-text) samples; nothing otherwise.

    The compiler fills what such samples leave of a sequence with text (never padding) and refuses a
    plan it cannot fill, so the padding share of every replayed sequence is 0 by construction (the
    runtime checks that a rank's step holds exactly batch_size x seq_len planned tokens)."""
    whole = [c["name"] for c in manifest["components"] if c.get("whole")]
    if not whole:
        return {}
    return {"packing": {"whole_components": whole, "image_tokens": manifest.get("image_tokens"),
                        "filled_by": "text", "padding_share": 0.0}}


def component_report(components: list[dict[str, Any]], rep: Replayed, compiled: np.ndarray
                     ) -> list[dict[str, Any]]:
    """Per component: targets, and the realized share and deviation of what the runtime replays now.

    ``realized_share`` and ``max_step_deviation`` use the replayed versions' quotas and per-step
    targets (feedback rewrites included); ``compiled_*`` are the compiled plan's, before feedback.
    """
    quotas, weights = rep.quotas, rep.weights
    share = quotas / np.maximum(quotas.sum(axis=1, keepdims=True), 1)
    used, compiled_used = quotas.sum(axis=0), compiled.sum(axis=0)
    out = []
    for c in components:
        k = c["id"]
        dev = np.abs(share[:, k] - weights[:, k]) if quotas.size else np.zeros(1)
        size = max(int(c["size"]), 1)
        out.append({**c, "target_weight": c["weight"], "initial_target": c["weight"],
                    "mean_target": float(weights[:, k].mean()) if weights.size else c["weight"],
                    "realized_share": float(used[k] / max(used.sum(), 1)),
                    "max_step_deviation": float(dev.max()), "max_deviation_step": int(dev.argmax()),
                    **component_use(int(used[k]), size),
                    "compiled_realized_share": float(compiled_used[k] / max(compiled_used.sum(), 1)),
                    "compiled_used": int(compiled_used[k]),
                    "compiled_epochs": float(compiled_used[k] / size)})
    return out


def rank_entries(path: Path | str, rank: int, steps: range) -> list[dict[str, Any]]:
    """Rank ``rank``'s entries in ``steps`` as the runtime replays them now (never waits, never writes).

    A segment whose feedback decision is not published yet is read from the version that holds it
    now (``decided`` false): what the rank replays if that decision ends as "keep".
    """
    plan = Plan.open(path)
    if not 0 <= rank < plan.world_size:
        raise PlanError(f"--rank {rank}: the plan has ranks 0..{plan.world_size - 1}",
                        f"use a rank in 0..{plan.world_size - 1}")
    rep = replayed(plan.path)
    names = [c.name for c in plan.components]
    rows: list[dict[str, Any]] = []
    with plan:
        for k in sorted({plan.segment_of_step(s) for s in steps}):
            version = rep.versions[k]
            seg = plan.segment(rank, k, version)  # the runtime's checked read (rank, world, fingerprint)
            bounds = seg.step_slices()
            e = plan.resolve(seg)
            for step in range(max(steps.start, seg.first_step), min(steps.stop, seg.first_step + seg.steps)):
                i = step - seg.first_step
                for j in range(int(bounds[i]), int(bounds[i + 1])):
                    rows.append({"rank": rank, "step": step, "sample_id": plan.sample_id(int(e.row[j])),
                                 "component": names[int(e.component[j])], "position": int(e.position[j]),
                                 "token_start": int(e.token_start[j]), "token_end": int(e.token_end[j]),
                                 "version": version, "decided": rep.decided[k]})
    return rows
