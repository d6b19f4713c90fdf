"""`mixtera inspect PLAN`: what a plan holds, its mixture over the steps, and any rank's entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mixtera.cli.console import out, print_json
from mixtera.cli.inspect_feedback import mark_decisions, render_feedback
from mixtera.planner.report import plan_report, rank_entries, replayed
from mixtera.runtime.errors import MixteraUserError
from mixtera.runtime.plan import Plan


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
    if r.get("validation"):
        v, names = r["validation"], [c["name"] for c in r["components"]]
        held = ", ".join(f"{n} {h:,}" for n, h in zip(names, v["held_out"], strict=True))
        head.add_row("validation", f"{v['dir']}/: {v['steps']:,} steps x batch {v['batch_size']}; held out "
                     f"({r['unit']}): {held}")
    if r.get("packing"):
        pk = r["packing"]
        head.add_row("packing", f"image-text samples whole ({escape(', '.join(pk['whole_components']))}; "
                     f"{pk['image_tokens']} tokens per image), the rest of every sequence "
                     f"{pk['filled_by']}; padding {pk['padding_share']:.1%} of tokens")
    out.print(head)
    out.print(_components_table(r))
    if r["schedule"]:
        sched = Table(title="schedule", title_justify="left")
        for col in ("from step", "ramp steps", "weights"):
            sched.add_column(col)
        for s in r["schedule"]:
            sched.add_row(str(s["from_step"]), str(s["ramp_steps"]),
                          escape(", ".join(f"{k}={v}" for k, v in s["weights"].items())))
        out.print(sched)
    render_feedback(r.get("feedback"), [c["name"] for c in r["components"]], out)


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
    console = out if out.is_terminal else Console(file=out.file, width=max(out.width, longest + 60),
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
