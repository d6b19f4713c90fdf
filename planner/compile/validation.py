"""Validation splits: a fixed amount per component, held out from the training plan at every epoch.

``[validation]`` asks for ``per_component`` tokens (or samples) of every leaf component, replayed
``batch_size`` sequences per rank and step. Validation is a static plan of its own
(``PLAN/validation/``) with equal weights over the components, so every step mixes all of them and
each component gets exactly its share of every prefix of steps. Its length is the fewest whole steps
that give every component at least ``per_component``: ``steps = ceil(C * per_component / step_total)``,
and the share each component really gets (its quota over those steps) is what it holds out.

Which samples are held out is decided by a seeded permutation of each component's members that is
independent of the training stream's: members are taken in that order until their sizes cover the
component's validation quota. They are removed from the component before the training plan is
compiled, so no epoch of training ever sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mixtera.planner.compile.quotas import QuotaPlan, plan_quotas
from mixtera.planner.compile.selection import Selection
from mixtera.planner.mixture.spec import MixtureSpec, Topology
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.shuffle import epoch_key, permute


@dataclass(frozen=True, slots=True)
class HeldOut:
    spec: MixtureSpec  # the validation plan's spec: equal weights, no schedule, no [dynamic]
    selection: Selection  # the held-out members
    quotas: QuotaPlan


def validation_spec(spec: MixtureSpec) -> MixtureSpec:
    """The spec of ``spec``'s validation plan (its steps follow from the amount and the topology)."""
    val = spec.validation
    assert val is not None
    topo = Topology(world_size=spec.topology.world_size, batch_size=val.batch_size,
                    seq_len=spec.topology.seq_len)
    steps = -(-len(spec.leaves()) * val.per_component // topo.step_units(spec.unit))
    return replace(spec, steps=steps, segment_steps=steps, topology=topo, schedule=(), dynamic=None)


def hold_out(spec: MixtureSpec, sel: Selection) -> tuple[Selection, HeldOut]:
    """(the training selection without the held-out members, the validation plan's inputs)."""
    vspec = validation_spec(spec)
    count = len(sel.names)
    weights = np.full((vspec.steps, count), 1.0 / count)
    # "repeat": no exhaustion error here, _held_members says precisely what is missing
    quotas = plan_quotas(weights, vspec.topology.step_units(spec.unit), sel.sizes(), ["repeat"] * count,
                         list(sel.names), spec.unit, spec.source)
    need = quotas.quotas.sum(axis=0)
    train_rows, train_spans, val_rows, val_spans = [], [], [], []
    for k in range(len(sel.names)):
        held = _held_members(spec, sel, k, int(need[k]))
        keep = np.ones(sel.rows[k].size, bool)
        keep[held] = False
        train_rows.append(sel.rows[k][keep])
        train_spans.append(sel.spans[k][keep])
        val_rows.append(sel.rows[k][held])
        val_spans.append(sel.spans[k][held])
    train = Selection(names=sel.names, rows=tuple(train_rows), spans=tuple(train_spans), dropped=sel.dropped,
                      whole=sel.whole)
    val = Selection(names=sel.names, rows=tuple(val_rows), spans=tuple(val_spans),
                    dropped=(0,) * count, whole=sel.whole)
    return train, HeldOut(spec=vspec, selection=val, quotas=quotas)


def _held_members(spec: MixtureSpec, sel: Selection, k: int, need: int) -> np.ndarray:
    """Member indices (ascending) of component ``k`` that cover ``need`` units, in a seeded order."""
    spans = sel.spans[k]
    n = spans.size
    order = permute(np.arange(n, dtype=np.int64), n, epoch_key(spec.seed, f"{sel.names[k]}#validation", 0))
    covered = np.cumsum(spans[order])
    taken = int(np.searchsorted(covered, need)) + 1  # the fewest members whose sizes reach `need`
    unit = "tokens" if spec.unit == "tokens" else "samples"
    if taken >= n:  # every member would go to validation (or they do not even cover its share)
        have = int(covered[-1]) if n else 0
        raise ConfigError(
            f"{spec.source}: component {sel.names[k]!r} has {have:,} {unit} in {n:,} samples; its "
            f"validation share of {need:,} {unit} would leave no sample for training",
            "lower [validation] tokens_per_component / samples_per_component or batch_size, or widen "
            "the component's `where`")
    return np.sort(order[:taken])
