"""`mixtera compile MIXTURE.toml --out PLAN`: a mixture into per-rank plans (man/mixtera-compile.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mixtera.cli.console import err, out, print_json, user_errors
from mixtera.runtime.errors import ConfigError


@user_errors
def compile_mixture(
    mixture: Annotated[Path, typer.Argument(metavar="MIXTURE", help="Mixture TOML file.",
                                                  show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Plan directory to write (replaced "
                                          "atomically if it holds a plan).", show_default=False)],
    from_plan: Annotated[Path | None, typer.Option("--from-plan", help="Elastic: re-partition this "
                                                   "plan's global order over --world-size ranks.")] = None,
    from_step: Annotated[int | None, typer.Option("--from-step", min=0, help="Elastic: the step the job "
                                                  "resumes at.")] = None,
    world_size: Annotated[int | None, typer.Option("--world-size", min=1, max=2**32 - 1,
                                                   help="Elastic: the new number of data-parallel "
                                                   "ranks.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on "
                                           "stdout.")] = False,
    replace_feedback_state: Annotated[bool, typer.Option(
        "--replace-feedback-state", help="Replace a plan at --out even though it holds feedback state "
        "(the loss log and published decisions), which is deleted.")] = False,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, max=256, help="Pack and encode "
                                           "segments in this many processes (the same plan for any "
                                           "number; one process already keeps about 1.5 cores busy, "
                                           "so more help only where cores are idle).")] = 1,
) -> None:
    """Compile a mixture into a plan: exact per-step quotas, one binary plan file per rank."""
    from mixtera.planner.mixture.spec import load_spec

    started = time.perf_counter()
    elastic = [from_plan is not None, from_step is not None, world_size is not None]
    if any(elastic) and not all(elastic):
        raise ConfigError("--from-plan, --from-step and --world-size go together",
                          "pass all three to re-partition a plan, or none to compile from scratch")
    if all(elastic):
        from mixtera.planner.compile.elastic import repartition

        err.print(f"re-partitioning {escape(str(from_plan))} over {world_size} ranks", highlight=False)
        written = repartition(from_plan, load_spec(mixture), out_dir, world_size=int(world_size or 0),
                              from_step=int(from_step or 0), replace_feedback_state=replace_feedback_state)
    else:
        from mixtera.planner.compile.pipeline import compile_file

        with Progress(TextColumn(f"compiling {escape(str(mixture))}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("segments"), TimeElapsedColumn(), console=err, transient=True,
                      disable=not err.is_terminal) as bar:  # a log gets no bar, not even a blank line
            task = bar.add_task("compile", total=None)
            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            _, written = compile_file(mixture, out_dir, progress=advance,
                                      replace_feedback_state=replace_feedback_state, processes=processes)
    if written.replaced_state:
        gone = escape(", ".join(written.replaced_state))
        err.print(f"replaced the feedback state of the previous plan: {gone}", highlight=False)
    summary = _summary(written.path, time.perf_counter() - started)
    summary["replaced_feedback_state"] = list(written.replaced_state)
    if json_out:
        print_json(summary)
    else:
        _render(summary)


def _summary(path: Path, seconds: float) -> dict[str, Any]:
    from mixtera.planner.report import plan_report

    report = plan_report(path)
    report["seconds"] = round(seconds, 3)
    return report


def _render(s: dict[str, Any]) -> None:
    head = Table(title=f"plan {escape(s['path'])}", show_header=False, title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("fingerprint", s["fingerprint"])
    t = s["topology"]
    head.add_row("topology", f"{t['world_size']} ranks x {t['batch_size']} "
                 f"{'sequences of ' + str(t['seq_len']) + ' tokens' if s['unit'] == 'tokens' else 'samples'}")
    head.add_row("steps", f"{s['steps']:,} in {s['segments']} segments of {s['segment_steps']}")
    head.add_row("entries", f"{s['entries']:,}")
    head.add_row("size", f"{s['bytes_on_disk']:,} bytes ({s['bytes_per_entry']:.2f} bytes per entry in "
                 "rank files)")
    head.add_row("time", f"{s['seconds']:.2f} s")
    out.print(head)
    table = Table(title="components", title_justify="left")
    for col in ("id", "component", "weight", "samples", s["unit"], "epochs"):
        table.add_column(col, justify="left" if col == "component" else "right", no_wrap=True)
    for c in s["components"]:
        table.add_row(str(c["id"]), escape(c["name"]), f"{c['weight']:.4f}", f"{c['rows']:,}",
                      f"{c['used']:,}", f"{c['epochs']:.3f}")
    out.print(table)
