"""`mixtera compile`: a pure function from (spec, index, seed, topology) to plan arrays.

``compile_plan`` matches components, resolves weights (schedule, natural shares), computes every
step's quotas and returns a :class:`CompiledPlan`; its ``blocks()`` packs one segment at a time with
:func:`mixtera.planner.compile.packing.plan_steps`, so memory stays bounded by a segment. Writing files is
:mod:`mixtera.planner.compile.writer`'s job.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from mixtera.planner.compile.estimate import PlanEstimate, estimate_plan
from mixtera.planner.compile.packing import PlanState, Streams, compact_lengths, plan_steps
from mixtera.planner.compile.placed import Placement, component_use
from mixtera.planner.compile.quotas import QuotaPlan, plan_quotas, weight_matrix
from mixtera.planner.compile.selection import Selection, leaf_weights, select
from mixtera.planner.compile.validation import hold_out
from mixtera.planner.index import IndexTables
from mixtera.planner.mixture.spec import MixtureSpec, Topology
from mixtera.runtime.fingerprint import json_digest
from mixtera.runtime.format.rank_frames import BlockEntries
from mixtera.runtime.plan import NO_TOKEN_OFFSET, SAMPLE_DTYPE


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentInfo:
    id: int
    name: str
    where: str | None  # the `and` of the wheres on the component's path
    on_exhausted: str
    first_row: int
    rows: int
    size: int  # tokens (unit = tokens) or samples in one epoch
    used: int  # tokens or samples the plan takes from it
    dropped: int  # members without tokens, left out
    exhausted_at: int | None  # step where `redistribute` took its weight away
    whole: bool = False  # its members are image-text samples, packed whole (never cut)

    @property
    def epochs(self) -> float:
        return self.used / self.size

    def to_json(self, weight: float) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "stream": self.name, "where": self.where,
                "weight": weight, "on_exhausted": self.on_exhausted, "first_row": self.first_row,
                "rows": self.rows, "size": self.size, **component_use(self.used, self.size),
                "dropped": self.dropped,
                "exhausted_at": self.exhausted_at, **({"whole": True} if self.whole else {})}


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledPlan:
    spec: MixtureSpec
    topology: Topology
    fingerprint: str
    index_hash: str
    components: tuple[ComponentInfo, ...]
    samples: np.ndarray  # SAMPLE_DTYPE rows, sorted by (component, index row)
    # (steps, components) int64: units of each component in each step; with whole (image-text) samples
    # the targets, which the rank files hold within about a sample (``placement()`` records theirs)
    quotas: np.ndarray
    weights: np.ndarray  # (steps, components) float64: target weights in effect
    streams: Streams
    validation: CompiledPlan | None = None  # the [validation] plan, over the held-out samples
    size: PlanEstimate | None = None  # the training plan's estimate, checked before it was built

    @property
    def step_total(self) -> int:
        return step_total(self.spec.unit, self.topology)

    def blocks(self, start: PlanState | None = None) -> Iterator[tuple[PlanState, BlockEntries]]:
        """(state at the segment's start, entries) for every segment from ``start`` on."""
        state = start or PlanState.initial(len(self.components))
        seg = self.spec.segment_steps
        t = self.topology
        firsts = np.arange(state.step, self.spec.steps, seg)
        carries = self.carries(firsts)
        while state.step < self.spec.steps:
            if state.step:
                state.carry = carries[(state.step - firsts[0]) // seg]
            q = self.quotas[state.step: state.step + seg]
            entries, nxt = plan_steps(self.streams, state, q, world_size=t.world_size,
                                      batch_size=t.batch_size, seq_len=t.seq_len)
            yield state, entries
            state = nxt

    def placement(self) -> Placement | None:
        """For a token plan with whole (image-text) samples: what records the tokens the rank files
        hold (its ``quotas.npy``; the ``quotas`` above are the targets that drive packing)."""
        if not any(self.streams.whole):
            return None
        return Placement(streams=self.streams, names=tuple(c.name for c in self.components),
                         capacity=np.array([c.size for c in self.components], np.int64),
                         error=np.array([c.on_exhausted == "error" for c in self.components]),
                         source=self.spec.source)

    def carries(self, steps: np.ndarray) -> np.ndarray:
        """The quota rounding carry at the start of each of ``steps`` (> 0): the target so far
        minus the units given so far, per component."""
        target = np.cumsum(self.weights * self.step_total, axis=0)
        given = np.cumsum(self.quotas, axis=0)
        before = np.asarray(steps, np.int64) - 1
        return target[before] - given[before]


def step_total(unit: str, topology: Topology) -> int:
    """Units (tokens or samples) in one global step."""
    return topology.step_units(unit)


def fingerprint(spec_dict: dict[str, Any], index_hash: str, topology: Topology, seed: int,
                extra: dict[str, Any] | None = None) -> str:
    spec_dict = {k: v for k, v in spec_dict.items() if k != "index"}  # the index counts by content
    obj = {"spec": spec_dict, "index": index_hash, "topology": topology.to_dict(), "seed": seed}
    if extra:
        obj["extra"] = extra
    return json_digest(obj)


def index_manifest_hash(index: IndexTables) -> str:
    return json_digest(index.manifest)


def compile_plan(spec: MixtureSpec, index: IndexTables) -> CompiledPlan:
    """Everything about the plan except the packed entries (see ``CompiledPlan.blocks``)."""
    spec.validate()
    sel = select(spec, index)
    held = None
    if spec.validation is not None:  # held out first: training never sees those samples
        sel, held = hold_out(spec, sel)
    sizes = sel.sizes()
    stages = _stages(spec, sizes)
    size = estimate_plan(spec, np.array([r.size for r in sel.rows]), sizes, stages[0][2])
    size.check_memory(spec.source)  # before the per-step arrays below are allocated
    weights = weight_matrix(spec.steps, stages)
    leaves = spec.leaves()
    total = step_total(spec.unit, spec.topology)
    qp = plan_quotas(weights, total, sizes, [leaf.on_exhausted for leaf in leaves], list(sel.names),
                     spec.unit, spec.source)
    index_hash = index_manifest_hash(index)
    fp = fingerprint(spec.to_dict(), index_hash, spec.topology, spec.seed)
    validation = None
    if held is not None:
        validation = _assemble(held.spec, index, held.selection, held.quotas, index_hash,
                               fingerprint(held.spec.to_dict(), index_hash, held.spec.topology, spec.seed,
                                           extra={"validation_of": fp}))
    return _assemble(spec, index, sel, qp, index_hash, fp, validation, size)


def _assemble(spec: MixtureSpec, index: IndexTables, sel: Selection, qp: QuotaPlan, index_hash: str,
              fp: str, validation: CompiledPlan | None = None,
              size: PlanEstimate | None = None) -> CompiledPlan:
    return CompiledPlan(
        spec=spec, topology=spec.topology, index_hash=index_hash, fingerprint=fp,
        components=_infos(spec, sel, qp), samples=_sample_table(index, sel, spec.image_tokens),
        quotas=qp.quotas,
        weights=qp.weights,
        streams=Streams(names=sel.names, doc_lengths=tuple(compact_lengths(s) for s in sel.spans),
                        seed=spec.seed, unit=spec.unit, whole=sel.whole),
        validation=validation, size=size)


def _stages(spec: MixtureSpec, sizes: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    stages = [(0, 0, leaf_weights(spec, spec.base_weights(), sizes))]
    for stage in spec.schedule:
        stages.append((stage.from_step, stage.ramp_steps,
                       leaf_weights(spec, spec.stage_weights(stage), sizes)))
    return stages


def _combined_where(spec: MixtureSpec, name: str) -> str | None:
    wheres = [node.where for node in spec.path_nodes(name) if node.where]
    if not wheres:
        return None
    return wheres[0] if len(wheres) == 1 else " and ".join(f"({w})" for w in wheres)


def _infos(spec: MixtureSpec, sel: Selection, qp: QuotaPlan) -> tuple[ComponentInfo, ...]:
    out, first = [], 0
    used = qp.quotas.sum(axis=0)
    for k, (leaf, rows, spans) in enumerate(zip(spec.leaves(), sel.rows, sel.spans, strict=True)):
        out.append(ComponentInfo(id=k, name=leaf.name, where=_combined_where(spec, leaf.name),
                                 on_exhausted=leaf.on_exhausted, first_row=first, rows=int(rows.size),
                                 size=int(spans.sum()), used=int(used[k]), dropped=sel.dropped[k],
                                 exhausted_at=qp.exhausted_at.get(k),
                                 whole=bool(sel.whole) and sel.whole[k]))
        first += int(rows.size)
    return tuple(out)


_TABLE_CHUNK = 1 << 18  # rows gathered at once: the temporaries stay in the CPU cache


def _sample_table(index: IndexTables, sel: Selection, image_tokens: int | None) -> np.ndarray:
    """The plan's sample rows; with ``image_tokens``, a sample's ``tokens`` count its images'
    placeholders too (its planned size, what the runtime's image path lays out)."""
    rows = np.concatenate(sel.rows)
    t = index.samples
    out = np.empty(rows.size, dtype=SAMPLE_DTYPE)

    def fill(field: str, values: np.ndarray) -> None:
        # Column by column, in chunks: a gather into a small temporary, then one strided copy.
        dest = out[field]
        for lo in range(0, rows.size, _TABLE_CHUNK):
            dest[lo: lo + _TABLE_CHUNK] = values[rows[lo: lo + _TABLE_CHUNK]]

    def col(name: str) -> np.ndarray:
        column = t.column(name)
        if column.null_count:
            column = pc.fill_null(column, 0)
        return column.to_numpy()

    for field, name in (("file", "file_id"), ("record", "record"), ("offset", "offset"),
                        ("length", "length"), ("tokens", "tokens")):
        fill(field, col(name))
    if image_tokens is not None and "images" in t.column_names:
        fill("tokens", col("tokens").astype(np.int64) + col("images").astype(np.int64) * image_tokens)
    offsets = t.column("token_offset")
    if offsets.null_count == len(offsets):
        out["token_offset"] = NO_TOKEN_OFFSET
    else:
        valid = pc.is_valid(offsets).to_numpy(zero_copy_only=False)
        fill("token_offset", np.where(valid, col("token_offset").astype(np.uint64), NO_TOKEN_OFFSET))
    return out
