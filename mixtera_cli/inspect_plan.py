"""`mixtera inspect PLAN`: what a plan holds, its mixture over the steps, and any rank's entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mixtera_cli.console import out, print_json
from mixtera_cli.inspect_feedback import (
    QUOTAS,
    Replayed,
    feedback_report,
    mark_decisions,
    render_feedback,
    replayed,
)
from runtime.errors import MixteraUserError, PlanError
from runtime.plan import Plan, rank_file_name
from runtime.plan_format import RankFileReader
from runtime.versions import version_path

WIDE = 160  # width of tables written to a file or a pipe (a terminal keeps its own width)


def wide() -> Console:
    """``out``, or on a non-terminal stdout a console that does not squeeze tables to 80 columns."""
    if out.is_terminal:
        return out
    return Console(file=out.file, width=WIDE, no_color=out.no_color, soft_wrap=True)


def plan_report(path: Path | str) -> dict[str, Any]:
    """Everything `inspect` shows about a plan except entries, as JSON-ready data."""
    plan = Plan.open(path)
    m = plan.manifest
    files = [p for p in plan.path.rglob("*") if p.is_file()]
    rank_bytes = sum(p.stat().st_size for p in plan.path.glob("rank-*.bin"))
    entries = int(m.get("entries") or sum(s.get("entries", 0) for s in m["segments"]))
    rep = replayed(plan.path)
    undecided = [k for k, ok in enumerate(rep.decided) if not ok]
    return {"path": str(plan.path), "fingerprint": plan.fingerprint, "created_by": m.get("created_by"),
            "unit": plan.unit, "steps": plan.steps, "segment_steps": plan.segment_steps,
            "segments": plan.segment_count, "topology": m["topology"], "seed": plan.seed,
            "entries": entries, "replayed_entries": rep.entries,
            "bytes_on_disk": sum(p.stat().st_size for p in files),
            "rank_bytes": rank_bytes, "bytes_per_entry": rank_bytes / max(entries, 1),
            "components": component_report(m["components"], rep, np.load(plan.path / QUOTAS)),
            "rewritten_from_step": next((k * plan.segment_steps for k, v in enumerate(rep.versions) if v),
                                        None),
            "undecided_from_step": undecided[0] * plan.segment_steps if undecided else None,
            "schedule": m.get("schedule", []), "dynamic": m.get("dynamic"),
            "elastic": m.get("elastic"), "index": m.get("index"), "feedback": feedback_report(path)}


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
                    "used": int(used[k]), "epochs": float(used[k] / size),
                    "epochs_started": -(-int(used[k]) // size),
                    "compiled_realized_share": float(compiled_used[k] / max(compiled_used.sum(), 1)),
                    "compiled_used": int(compiled_used[k]),
                    "compiled_epochs": float(compiled_used[k] / size)})
    return out


def parse_steps(text: str | None, steps: int) -> range:
    if text is None:
        return range(0, min(steps, 1))
    try:
        a, _, b = text.partition(":")
        lo = int(a) if a else 0
        hi = int(b) if b else (lo + 1 if ":" not in text else steps)
    except ValueError:
        raise MixteraUserError(f"--steps {text!r} is not a range A:B", "write e.g. --steps 0:10") from None
    if not 0 <= lo < hi <= steps:
        raise MixteraUserError(f"--steps {text!r} is outside the plan's steps 0..{steps}",
                               f"use a range inside 0:{steps}")
    return range(lo, hi)


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
            folder = plan.path if version == 0 else version_path(plan.path, version)
            with RankFileReader(folder / rank_file_name(rank)) as reader:
                seg = reader.segment(k)
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


def inspect_plan(path: Path, rank: int | None = None, steps: str | None = None, as_json: bool = False,
                 plot: Path | None = None) -> None:
    """The plan summary, or with --rank (and --steps) only that rank's entries (pipeable)."""
    if rank is None and steps is not None:
        raise MixteraUserError("--steps lists entries of one rank", "add --rank R")
    if plot is not None:
        plot_mixture(path, plot)
    if rank is not None:
        plan = Plan.open(path)
        span = parse_steps(steps, plan.steps)
        entries = rank_entries(path, rank, span)
        if as_json:
            print_json(entries)
        else:
            _render_entries(rank, span, entries)
        return
    report = plan_report(path)
    if plot is not None:
        report["plot"] = str(plot)
    if as_json:
        print_json(report)
    else:
        render(report)


def render(r: dict[str, Any]) -> None:
    head = Table(title=f"plan {escape(r['path'])}", show_header=False, title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    t = r["topology"]
    head.add_row("fingerprint", r["fingerprint"])
    head.add_row("ranks", f"{t['world_size']} x batch {t['batch_size']}"
                 + (f" x seq_len {t['seq_len']}" if r["unit"] == "tokens" else " samples"))
    head.add_row("steps", f"{r['steps']:,} in {r['segments']} segments of {r['segment_steps']}")
    head.add_row("entries", f"{r['entries']:,}" + ("" if r["replayed_entries"] == r["entries"] else
                                                    f" compiled, {r['replayed_entries']:,} replayed now"))
    head.add_row("size on disk", f"{r['bytes_on_disk']:,} bytes; rank files {r['bytes_per_entry']:.3f} "
                 "bytes per entry")
    if r.get("elastic"):
        e = r["elastic"]
        head.add_row("elastic", f"from {e['from_plan']} ({e['old_world_size']} ranks), resume at step "
                     f"{e['from_step']}")
    out.print(head)
    wide().print(_components_table(r))
    if r["schedule"]:
        sched = Table(title="schedule", title_justify="left")
        for col in ("from step", "ramp steps", "weights"):
            sched.add_column(col)
        for s in r["schedule"]:
            sched.add_row(str(s["from_step"]), str(s["ramp_steps"]),
                          escape(", ".join(f"{k}={v}" for k, v in s["weights"].items())))
        wide().print(sched)
    render_feedback(r.get("feedback"), [c["name"] for c in r["components"]], wide())


def _components_table(r: dict[str, Any]) -> Table:
    unit = r["unit"]
    where = "the compiled plan"
    if r["rewritten_from_step"] is not None:
        where += f", rewritten by feedback from step {r['rewritten_from_step']}"
    if r["undecided_from_step"] is not None:
        where += f"; steps from {r['undecided_from_step']} await decisions and count as the version now there"
    table = Table(title="components", title_justify="left", caption_justify="left",
                  caption=f"Over what the runtime replays now: {where}.\ntarget = weight of a step "
                  f"(initial: step 0, mean: all steps); realized = share of all {unit}; max step dev = "
                  "max over steps of |share - target|.")
    cols = ("id", "component", "initial\ntarget", "mean\ntarget", "realized", "max step\ndev",
            f"{unit}\nused", "samples\nmatched", "epochs")
    for col in cols:
        table.add_column(col, justify="left" if col == "component" else "right", no_wrap=True)
    for c in r["components"]:
        table.add_row(str(c["id"]), escape(c["name"]), f"{c['initial_target']:.4f}",
                      f"{c['mean_target']:.4f}", f"{c['realized_share']:.4f}",
                      f"{c['max_step_deviation']:.2e}", f"{c['used']:,}", f"{c['rows']:,}",
                      f"{c['epochs']:.3f}")
    return table


def _render_entries(rank: int, span: range, entries: list[dict[str, Any]]) -> None:
    table = Table(title=f"rank {rank}, steps {span.start}:{span.stop}: {len(entries):,} entries",
                  title_justify="left")
    for col in ("step", "sample id", "tokens", "component", "version"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("step", "version") else "left")
    for e in entries:
        version = f"v{e['version']}" + ("" if e["decided"] else " (undecided)")
        table.add_row(str(e["step"]), escape(e["sample_id"]), f"[{e['token_start']}, {e['token_end']})",
                      escape(e["component"]), version)
    longest = max((len(e["sample_id"]) + len(e["component"]) for e in entries), default=0)
    console = out if out.is_terminal else Console(file=out.file, width=max(WIDE, longest + 60),
                                                  no_color=out.no_color, soft_wrap=True)
    console.print(table)


def plot_mixture(path: Path | str, target: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MixteraUserError("--plot needs matplotlib, which is not installed",
                               "pip install 'mixtera[plot]' (or pip install matplotlib)") from None
    plan = Plan.open(path)
    quotas = replayed(plan.path).quotas  # with feedback: the published versions' quotas
    share = quotas / np.maximum(quotas.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    mark_decisions(ax, plan.path)
    ax.stackplot(np.arange(quotas.shape[0]), share.T, labels=[c.name for c in plan.components])
    ax.set_xlabel("step")
    ax.set_ylabel(f"share of the step's {plan.unit}")
    ax.set_xlim(0, max(quotas.shape[0] - 1, 1))
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"plan {plan.fingerprint[:12]}")
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    plt.close(fig)
