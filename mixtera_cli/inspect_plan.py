"""`mixtera inspect PLAN`: what a plan holds, its mixture over the steps, and any rank's entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mixtera_cli.console import out, print_json
from mixtera_cli.inspect_feedback import effective_quotas, feedback_report, mark_decisions, render_feedback
from planner.plan_writer import QUOTAS, WEIGHTS
from runtime.errors import MixteraUserError, PlanError
from runtime.plan import Plan

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
    quotas = np.load(plan.path / QUOTAS)
    weights = np.load(plan.path / WEIGHTS)
    total = quotas.sum(axis=1, keepdims=True)
    share = quotas / np.maximum(total, 1)
    files = [p for p in plan.path.rglob("*") if p.is_file()]
    rank_bytes = sum(p.stat().st_size for p in plan.path.glob("rank-*.bin"))
    entries = int(m.get("entries") or sum(s.get("entries", 0) for s in m["segments"]))
    comps = []
    for c in m["components"]:
        k = c["id"]
        dev = np.abs(share[:, k] - weights[:, k]) if quotas.size else np.zeros(1)
        comps.append({**c, "target_weight": c["weight"],
                      "realized_share": float(quotas[:, k].sum() / max(quotas.sum(), 1)),
                      "max_step_deviation": float(dev.max()), "max_deviation_step": int(dev.argmax())})
    return {"path": str(plan.path), "fingerprint": plan.fingerprint, "created_by": m.get("created_by"),
            "unit": plan.unit, "steps": plan.steps, "segment_steps": plan.segment_steps,
            "segments": plan.segment_count, "topology": m["topology"], "seed": plan.seed,
            "entries": entries, "bytes_on_disk": sum(p.stat().st_size for p in files),
            "rank_bytes": rank_bytes, "bytes_per_entry": rank_bytes / max(entries, 1),
            "components": comps, "schedule": m.get("schedule", []), "dynamic": m.get("dynamic"),
            "elastic": m.get("elastic"), "index": m.get("index"), "feedback": feedback_report(path)}


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
    plan = Plan.open(path)
    names = [c.name for c in plan.components]
    rows = []
    with plan:
        for step in steps:
            e = plan.step_entries(rank, step)
            for i in range(len(e)):
                rows.append({"step": step, "sample_id": plan.sample_id(int(e.row[i])),
                             "component": names[int(e.component[i])], "position": int(e.position[i]),
                             "token_start": int(e.token_start[i]), "token_end": int(e.token_end[i])})
    return rows


def inspect_plan(path: Path, rank: int | None = None, steps: str | None = None, as_json: bool = False,
                 plot: Path | None = None) -> None:
    report = plan_report(path)
    if rank is not None:
        if rank >= report["topology"]["world_size"]:
            raise PlanError(f"--rank {rank}: the plan has ranks 0..{report['topology']['world_size'] - 1}")
        report["entries_of_rank"] = {"rank": rank,
                                     "entries": rank_entries(path, rank, parse_steps(steps, report["steps"]))}
    elif steps is not None:
        raise MixteraUserError("--steps lists entries of one rank", "add --rank R")
    if plot is not None:
        plot_mixture(path, plot)
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
    head.add_row("entries", f"{r['entries']:,}")
    head.add_row("size on disk", f"{r['bytes_on_disk']:,} bytes; rank files {r['bytes_per_entry']:.3f} "
                 "bytes per entry")
    if r.get("elastic"):
        e = r["elastic"]
        head.add_row("elastic", f"from {e['from_plan']} ({e['old_world_size']} ranks), resume at step "
                     f"{e['from_step']}")
    out.print(head)
    table = Table(title="components", title_justify="left")
    for col in ("id", "component", "target", "realized", "max step dev", r["unit"], "samples", "epochs"):
        table.add_column(col, justify="left" if col == "component" else "right", no_wrap=True)
    for c in r["components"]:
        table.add_row(str(c["id"]), escape(c["name"]), f"{c['target_weight']:.4f}",
                      f"{c['realized_share']:.4f}", f"{c['max_step_deviation']:.2e}",
                      f"{c['used']:,}", f"{c['rows']:,}", f"{c['epochs']:.3f}")
    wide().print(table)
    if r["schedule"]:
        sched = Table(title="schedule", title_justify="left")
        for col in ("from step", "ramp steps", "weights"):
            sched.add_column(col)
        for s in r["schedule"]:
            sched.add_row(str(s["from_step"]), str(s["ramp_steps"]),
                          escape(", ".join(f"{k}={v}" for k, v in s["weights"].items())))
        wide().print(sched)
    render_feedback(r.get("feedback"), [c["name"] for c in r["components"]])
    if "entries_of_rank" in r:
        _render_entries(r["entries_of_rank"])


def _render_entries(er: dict[str, Any]) -> None:
    table = Table(title=f"rank {er['rank']} entries", title_justify="left")
    for col in ("step", "sample id", "tokens", "component"):
        table.add_column(col)
    for e in er["entries"]:
        table.add_row(str(e["step"]), escape(e["sample_id"]), f"[{e['token_start']}, {e['token_end']})",
                      escape(e["component"]))
    wide().print(table)


def plot_mixture(path: Path | str, target: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MixteraUserError("--plot needs matplotlib, which is not installed",
                               "pip install 'mixtera[plot]' (or pip install matplotlib)") from None
    plan = Plan.open(path)
    quotas = effective_quotas(plan.path)  # with feedback: the published versions' quotas
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
