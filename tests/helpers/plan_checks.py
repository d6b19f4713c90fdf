"""Independent checks of compiled plans, from the decoded rank files (used by the compiler tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.runtime.plan import CHECKSUMS, Plan, ResolvedEntries, manifest_checksum

MIXTURE = """
[mixture]
index = "{index}"
seed = {seed}
unit = "{unit}"
steps = {steps}
segment_steps = {segment_steps}
{mixture_extra}
[topology]
world_size = {world_size}
batch_size = {batch_size}
seq_len = {seq_len}

[components.web]
where = "source == 'web'"
weight = 0.5
{web_extra}
[components.code]
where = "source == 'code'"
weight = 0.3

[components.rest]
weight = 0.2
[components.rest.components.de]
where = "source not in ['web', 'code'] and language == 'de'"
weight = "natural"
[components.rest.components.other]
where = "source not in ['web', 'code'] and language != 'de'"
weight = "natural"
{tail}
"""

DEFAULTS = {"seed": 7, "unit": "tokens", "steps": 20, "segment_steps": 5, "world_size": 4,
            "batch_size": 2, "seq_len": 64, "mixture_extra": "", "web_extra": "", "tail": ""}


def write_mixture(path: Path, index: Path, **overrides: object) -> Path:
    values = {**DEFAULTS, **overrides, "index": index}
    path.write_text(MIXTURE.format(**values))
    return path


def global_step(plan: Plan, step: int) -> ResolvedEntries:
    """All ranks' entries of ``step`` in global order (rank 0's part first)."""
    parts = [plan.step_entries(r, step) for r in range(plan.world_size)]
    return ResolvedEntries(**{name: np.concatenate([getattr(p, name) for p in parts])
                              for name in ResolvedEntries.__slots__})


def all_entries(plan: Plan) -> ResolvedEntries:
    parts = [global_step(plan, s) for s in range(plan.steps)]
    return ResolvedEntries(**{name: np.concatenate([getattr(p, name) for p in parts])
                              for name in ResolvedEntries.__slots__})


def per_step_units(plan: Plan) -> np.ndarray:
    """(steps, components) tokens (or samples) the decoded plan gives every component."""
    out = np.zeros((plan.steps, len(plan.components)), np.int64)
    for s in range(plan.steps):
        e = global_step(plan, s)
        units = e.token_end - e.token_start if plan.unit == "tokens" else np.ones(len(e), np.int64)
        np.add.at(out[s], e.component.astype(np.int64), units)
    return out


def assert_streams_contiguous(plan: Plan) -> None:
    """Per component, entries in global order continue exactly where the previous one stopped:
    no token is planned twice and none is skipped."""
    e = all_entries(plan)
    for k in range(len(plan.components)):
        sel = e.component == k
        pos, start, end, doc = e.position[sel], e.token_start[sel], e.token_end[sel], e.doc_tokens[sel]
        if plan.unit == "samples":
            assert np.array_equal(pos, np.arange(pos.size)), f"component {k}: positions skip or repeat"
            continue
        same_doc = pos[1:] == pos[:-1]
        assert np.all(start[1:][same_doc] == end[:-1][same_doc]), f"component {k}: split doc does not resume"
        nxt = ~same_doc
        assert np.all(pos[1:][nxt] == pos[:-1][nxt] + 1), f"component {k}: a position is skipped"
        assert np.all(end[:-1][nxt] == doc[:-1][nxt]), f"component {k}: a document is cut short"
        assert np.all(start[1:][nxt] == 0), f"component {k}: a document starts mid-way"
        assert pos[0] == 0 and start[0] == 0


def assert_sequences_exact(plan: Plan) -> None:
    """Every rank's step holds batch_size sequences of exactly seq_len tokens; no entry crosses one."""
    for s in range(plan.steps):
        for r in range(plan.world_size):
            e = plan.step_entries(r, s)
            stops = np.cumsum(e.token_end - e.token_start)
            assert stops[-1] == plan.batch_size * plan.seq_len
            boundaries = np.arange(1, plan.batch_size + 1) * plan.seq_len
            assert np.isin(boundaries, stops).all(), f"step {s} rank {r}: an entry crosses a sequence"


def plan_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


def edit_manifest(plan_dir: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Apply ``edit`` to a plan's manifest and record the checksum of the result, as a deliberate
    editor would (what is tested is then the check behind the checksum)."""
    path = plan_dir / "manifest.json"
    manifest = json.loads(path.read_bytes())
    edit(manifest)
    if CHECKSUMS in manifest:
        manifest[CHECKSUMS]["manifest"] = manifest_checksum(manifest)
    path.write_text(json.dumps(manifest))
