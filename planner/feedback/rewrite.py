"""One decision: from the reported losses up to a refit step to a published plan version.

``decide`` (pure given the plan and the history) rebuilds the policy state at the refit step
``t_i`` (from the last recorded state, consuming the reported steps since), refits, rolls the policy
forward over the steps the plan already fixed (``[t_i, first_step)``, with their scheduled counts)
and then over every step from ``first_step`` to the end of the plan, turning the weights of each
step into exact integer quotas (largest remainder with carry). ``write_version`` packs those quotas
with the compiler's resumable core, continuing every component's stream from the start state of
the first rewritten segment, and publishes ``versions/vNNNNNN`` with one rename.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.compile.packing import PlanState, Streams, compact_lengths, plan_steps
from mixtera.planner.compile.placed import placed_tokens
from mixtera.planner.compile.quotas import largest_remainder
from mixtera.planner.compile.writer import npy_bytes
from mixtera.planner.feedback.algorithms import Algorithm, History, algorithms, consume
from mixtera.planner.mixture.dynamic import DynamicSpec, parse_dynamic, resolve_prior
from mixtera.runtime.atomic import FILE_MODE, write_atomic
from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import bytes_content_hash
from mixtera.runtime.format.json_file import json_file_bytes
from mixtera.runtime.format.plan_dir import (
    DECISION,
    MANIFEST,
    QUOTAS,
    WEIGHTS,
    rank_file_name,
    version_path,
)
from mixtera.runtime.format.rank_file import RankHeader, rank_file_bytes
from mixtera.runtime.format.rank_frames import BlockEncoder
from mixtera.runtime.plan import CHECKSUMS, checked_sample_table, read_checked_npy, read_manifest
from mixtera.runtime.shuffle import stream_samples
from mixtera.runtime.tokenizer import framing_tokens
from mixtera.runtime.versions import DECISION_KIND, DecisionSchedule, VersionResolver, publish_version


@dataclass(slots=True)
class PlanContext:
    """A plan opened for feedback: everything a decision needs that does not change between them."""

    path: Path
    manifest: dict[str, Any]
    dynamic: DynamicSpec
    schedule: DecisionSchedule
    algorithm: Algorithm
    mu: np.ndarray
    step_total: int
    resolver: VersionResolver
    _streams: Streams | None = None
    _arrays: dict[tuple[int, str], tuple[int, np.ndarray]] | None = None
    _samples: np.ndarray | None = None

    @classmethod
    def open(cls, plan_dir: Path | str) -> PlanContext:
        path = Path(plan_dir)
        manifest = read_manifest(path)  # the runtime's checked reader: kind, major version
        where = f"{path / MANIFEST}: dynamic"
        dyn = parse_dynamic(manifest.get("dynamic"), where, int(manifest["segment_steps"]))
        schedule = DecisionSchedule.from_manifest(manifest)
        if dyn is None or schedule is None:
            raise PlanError(f"{path}: the mixture has no rewriting [dynamic] algorithm "
                            f"({(manifest.get('dynamic') or {}).get('algorithm', 'none')})",
                            "add [dynamic] algorithm = \"ado\" (or \"loss_proportional\") to the mixture "
                            "and recompile")
        topo = manifest["topology"]
        total = int(topo["world_size"]) * int(topo["batch_size"])
        total *= int(topo["seq_len"]) if manifest["unit"] == "tokens" else 1
        comps = manifest["components"]
        initial = np.array([float(c.get("weight", 0.0)) for c in comps])
        mu = resolve_prior(dyn.prior, comps, initial, where)
        return cls(path, manifest, dyn, schedule, algorithms[dyn.algorithm], mu, total,
                   VersionResolver(path, manifest, who="mixtera feedback"))

    @property
    def domains(self) -> int:
        return len(self.manifest["components"])

    @property
    def framing(self) -> int:
        """Tokens a document's frame (end- and begin-of-document tokens) adds to its span."""
        return framing_tokens(self.manifest.get("tokenizer"))

    def samples(self) -> np.ndarray:
        if self._samples is None:
            self._samples = checked_sample_table(self.path, self.manifest)
        return self._samples

    def streams(self) -> Streams:
        if self._streams is None:
            samples, framing = self.samples(), self.framing
            lengths = []
            for c in self.manifest["components"]:
                rows = slice(int(c["first_row"]), int(c["first_row"]) + int(c["rows"]))
                if self.manifest["unit"] == "tokens":
                    lengths.append(samples["tokens"][rows].astype(np.int64) + framing)
                else:
                    lengths.append(np.ones(int(c["rows"]), np.int64))
            # The compiler's narrow lengths: the shuffle's random gathers stay in cache (same result).
            self._streams = Streams(names=tuple(c["stream"] for c in self.manifest["components"]),
                                    doc_lengths=tuple(compact_lengths(x) for x in lengths),
                                    seed=int(self.manifest["seed"]),
                                    unit=self.manifest["unit"],
                                    whole=_whole(self.manifest["components"]))
        return self._streams

    def version_quotas(self, version: int, name: str = QUOTAS) -> tuple[int, np.ndarray]:
        """(first step, per-step quotas or weights) that version ``version``'s files hold."""
        self._arrays = self._arrays or {}
        key = (version, name)
        if key not in self._arrays:
            if version == 0:
                self._arrays[key] = (0, read_checked_npy(self.path / name, self.manifest.get(CHECKSUMS),
                                                        where=self.path / MANIFEST))
            else:
                d = self.resolver.decision(version, wait=False)
                folder = version_path(self.path, version)
                self._arrays[key] = (int(d["first_step"]),
                                     read_checked_npy(folder / name, d.get(CHECKSUMS), where=folder))
        return self._arrays[key]

    def weights_at(self, step: int) -> np.ndarray:
        """The weights in effect at ``step`` in the published plan (0 for a dropped-out component)."""
        first, w = self.version_quotas(self.resolver.data_version(step // self.schedule.segment_steps,
                                                                  wait=False), WEIGHTS)
        return w[step - first]

    def scheduled_quotas(self, lo: int, hi: int) -> np.ndarray:
        """Per-step quotas of steps ``[lo, hi)`` as the currently published plan schedules them."""
        seg = self.schedule.segment_steps
        out = np.zeros((max(hi - lo, 0), self.domains), np.int64)
        s = lo
        while s < hi:
            end = min(hi, (s // seg + 1) * seg)
            first, q = self.version_quotas(self.resolver.data_version(s // seg, wait=False))
            out[s - lo: end - lo] = q[s - first: end - first]
            s = end
        return out

    def held_by(self, version: int) -> int:
        """The version whose files held the segments of decision ``version`` before it was made."""
        if version <= 1:
            return 0
        d = self.resolver.decision(version - 1, wait=False)
        if d is None:
            raise PlanError(f"{self.path}: decision {version - 1} is missing, decision {version} cannot "
                            "follow it", "decisions are made in order; run `mixtera feedback` again")
        return int(d["data_version"])

    def start_state(self, k: int, holder: int) -> PlanState:
        """Stream state at the start of segment ``k`` in version ``holder``'s files."""
        if holder == 0:
            return PlanState.from_json(self.manifest["segments"][k]["start_state"])
        d = self.resolver.decision(holder, wait=False)
        return PlanState.from_json(d["segments"][k - int(d["first_segment"])]["start_state"])

    def fixed_tokens(self, lo: int, hi: int) -> np.ndarray:
        """Per-step, per-domain tokens the published plan schedules in steps ``[lo, hi)``."""
        quotas = self.scheduled_quotas(lo, hi)
        if self.manifest["unit"] == "tokens":
            return quotas
        seg, out = self.schedule.segment_steps, np.zeros_like(quotas)
        st = None
        for s in range(lo, hi):
            if st is None or s % seg == 0:  # stream positions restart from each segment's start state
                k = s // seg
                st = self.start_state(k, self.resolver.data_version(k, wait=False))
                st.position = st.position + self.scheduled_quotas(k * seg, s).sum(axis=0)
            out[s - lo] = self.step_tokens(st, quotas[s - lo])
            st.position = st.position + quotas[s - lo]
        return out

    def step_tokens(self, state: PlanState, quota: np.ndarray) -> np.ndarray:
        """Tokens of one step's quota (= the quota with unit = tokens; the documents' tokens otherwise)."""
        if self.manifest["unit"] == "tokens":
            return quota
        samples, framing = self.samples(), self.framing
        out = np.zeros_like(quota)
        for k, c in enumerate(self.manifest["components"]):
            if quota[k]:
                pos = np.arange(state.position[k], state.position[k] + quota[k], dtype=np.int64)
                rows = int(c["first_row"]) + stream_samples(pos, int(c["rows"]), int(self.manifest["seed"]),
                                                            c["stream"])
                out[k] = int(samples["tokens"][rows].astype(np.int64).sum()) + framing * int(quota[k])
        return out


@dataclass(slots=True)
class Decision:
    version: int
    body: dict[str, Any]  # decision.json without the segment start states (added when packing)
    quotas: np.ndarray  # (steps from first_step to the end, K) int64
    weights: np.ndarray  # same shape, float64: the policy's weights of each step
    carries: np.ndarray  # same shape, float64: the quota rounding carry before each step
    start: PlanState


def base_state(ctx: PlanContext, version: int) -> tuple[Any, int]:
    """The newest recorded policy state before ``version`` and its version (0: the prior)."""
    for v in range(version - 1, 0, -1):
        d = ctx.resolver.decision(v, wait=False)
        if d is not None and d.get("action") == "rewrite":
            return ctx.algorithm.state_from_json(d["state"]), v
    return ctx.algorithm.initial(ctx.mu), 0


def decide(ctx: PlanContext, version: int, hist: History) -> Decision:
    """Decision ``version`` from the history of steps ``[0, t_i)``; nothing is written."""
    sched, alg, params = ctx.schedule, ctx.algorithm, ctx.dynamic.params
    t_i = sched.refit_step(version)
    f = sched.first_segment(version)
    first_step = f * sched.segment_steps
    state, based_on = base_state(ctx, version)
    state = consume(alg, params, state, hist, t_i)
    fit = alg.refit(params, state, hist.head(t_i), ctx.dynamic.refit_every)
    at_refit = state.to_json()
    start = ctx.start_state(f, ctx.held_by(version))
    for tokens in ctx.fixed_tokens(t_i, first_step):  # already fixed: the policy sees their counts
        state = alg.observe(params, state, tokens)
    quotas, weights, carries = _roll(ctx, state, start, sched.steps - first_step)
    body = {"kind": DECISION_KIND, "version": version, "fingerprint": ctx.manifest["fingerprint"],
            "action": "rewrite", "data_version": version, "algorithm": ctx.dynamic.algorithm,
            "refit_step": t_i, "first_segment": f, "first_step": first_step, "based_on": based_on,
            "log_steps": int(hist.present[:t_i].sum()), "fit": fit, "state": at_refit,
            "weights": [float(v) for v in weights[0]],
            "mean_weights": [float(v) for v in weights.mean(axis=0)]}
    return Decision(version, body, quotas, weights, carries, start)


def _roll(ctx: PlanContext, state: Any, start: PlanState, steps: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, quotas and carries of ``steps`` steps from ``start``, feeding each step's counts back.

    Components with ``on_exhausted`` other than "repeat" drop out (weight 0, the rest renormalised)
    from the first step whose quota would take them past one epoch.
    """
    alg, params, total = ctx.algorithm, ctx.dynamic.params, ctx.step_total
    comps = ctx.manifest["components"]
    capacity = np.array([int(c["size"]) for c in comps], np.int64)
    limited = np.array([c.get("on_exhausted", "repeat") != "repeat" for c in comps])
    used = ctx.scheduled_quotas(0, start.step).sum(axis=0) if limited.any() else np.zeros(len(comps))
    gone = limited & (ctx.weights_at(start.step - 1) == 0) if start.step else np.zeros(len(comps), bool)
    quotas = np.zeros((steps, ctx.domains), np.int64)
    weights = np.zeros((steps, ctx.domains), np.float64)
    carries = np.zeros((steps, ctx.domains), np.float64)
    carry = start.carry.copy()
    tracker = PlanState(step=start.step, position=start.position.copy(), consumed=start.consumed.copy(),
                        carry=carry)
    for s in range(steps):
        w = np.where(gone, 0.0, np.asarray(state.pi, dtype=np.float64))
        over = limited & ~gone & (used + w / w.sum() * total > capacity)
        if over.any():
            gone |= over
            if gone.all():
                raise PlanError(f"{ctx.path}: every component is exhausted at step {start.step + s} "
                                "(on_exhausted != 'repeat')", "add data or use on_exhausted = 'repeat'")
            w[gone] = 0.0
            carry = np.where(gone, 0.0, carry)
        w = w / w.sum()
        carries[s] = carry
        row, carry = largest_remainder((w * total)[None, :], carry, total)
        quotas[s], weights[s] = row[0], w
        used = used + row[0]
        state = alg.observe(params, state, ctx.step_tokens(tracker, row[0]))
        if ctx.manifest["unit"] != "tokens":
            tracker.position = tracker.position + row[0]
    return quotas, weights, carries


def write_version(ctx: PlanContext, decision: Decision) -> bool:
    """Pack and publish ``decision``; False when that version was already published by someone else."""
    sched, topo = ctx.schedule, ctx.manifest["topology"]
    world, seg = int(topo["world_size"]), sched.segment_steps
    f = int(decision.body["first_segment"])
    segments, state = [], decision.start
    # The quotas drive packing; with whole (image-text) samples the files record what the ranks
    # replay instead (mixtera.planner.compile.placed), as a compiled plan's quotas.npy does.
    quotas = decision.quotas.copy()
    whole = any(ctx.streams().whole)
    encoder = BlockEncoder(world, decision.version)  # compresses on threads while the next block packs
    try:
        for k in range(f, sched.segment_count):
            lo = k * seg - f * seg
            q = decision.quotas[lo: lo + min(seg, sched.steps - k * seg)]
            state.carry = decision.carries[lo].copy()
            entries, nxt = plan_steps(ctx.streams(), state, q, world_size=world,
                                      batch_size=int(topo["batch_size"]), seq_len=int(topo["seq_len"]))
            segments.append({"index": k, "first_step": k * seg, "steps": int(q.shape[0]),
                             "entries": int(entries.counts.sum()), "start_state": state.to_json()})
            encoder.submit(entries)
            if whole:
                quotas[lo: lo + q.shape[0]] = placed_tokens(ctx.streams(), entries)
            state = nxt
        frames = encoder.frames()
    finally:
        encoder.close()
    arrays = {QUOTAS: npy_bytes(quotas), WEIGHTS: npy_bytes(decision.weights)}
    body = dict(decision.body, segments=segments,
                checksums={name: bytes_content_hash(data) for name, data in arrays.items()})
    fp = bytes.fromhex(ctx.manifest["fingerprint"])

    def build(stage: Path) -> None:
        files = {stage / name: data for name, data in arrays.items()}
        for rank in range(world):
            header = RankHeader(rank=rank, world_size=world, steps=sched.steps, segment_steps=seg,
                                first_segment=f, segment_count=len(segments), fingerprint=fp)
            files[stage / rank_file_name(rank)] = rank_file_bytes(header, frames[rank])
        write_durably(files)
        write_atomic(stage / DECISION, json_file_bytes(body))

    return publish_version(ctx.path, decision.version, build)


def write_durably(files: dict[Path, bytes]) -> None:
    """Write files inside a staging folder and fsync them (in parallel: one journal flush, not 256).

    No temporary names are needed: nothing in the stage is visible until its one rename.
    """
    def put(item: tuple[Path, bytes]) -> None:
        path, data = item
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, files.items()))


def _whole(components: list[dict[str, Any]]) -> tuple[bool, ...]:
    """Per component: packed as whole samples (image-text; empty when none is)."""
    whole = tuple(bool(c.get("whole")) for c in components)
    return whole if any(whole) else ()
