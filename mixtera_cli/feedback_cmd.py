"""`mixtera feedback PLAN [--follow]`: rewrite future plan segments from losses (man/mixtera-feedback.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mixtera.cli.console import err, out, print_json, user_errors


@user_errors
def feedback(
    plan: Annotated[Path, typer.Argument(metavar="PLAN", help="The plan directory the job replays.",
                                               show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", help="Keep running beside the job and decide at each "
                                         "refit point until the plan's last decision.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.01, help="--follow: seconds between looks at the "
                                        "feedback log.")] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print decisions as JSON on stdout (one object "
                                           "per line with --follow).")] = False,
) -> None:
    """Run the mixture's dynamic algorithm (ADO, ...) on the job's losses and publish new plan versions."""
    from mixtera.planner.feedback.orchestrate import feedback_status, job_finished, run_pending
    from mixtera.planner.feedback.orchestrate import follow as follow_plan
    from mixtera.planner.feedback.rewrite import PlanContext

    ctx = PlanContext.open(plan)
    names = [c["name"] for c in ctx.manifest["components"]]
    err.print(f"{ctx.dynamic.algorithm} on {escape(str(plan))}: a decision every {ctx.schedule.refit_every} "
              f"steps, {len(ctx.schedule.versions())} in the plan", highlight=False)
    if follow:
        outcomes = follow_plan(plan, poll_s=poll, on_outcome=lambda o: _live(o, json_out, names),
                               stop=lambda: job_finished(ctx))
    else:
        outcomes, _ = run_pending(plan)
    status = feedback_status(plan)
    if json_out:
        if not follow:
            print_json({"decisions": [o.to_json() for o in outcomes], **status})
    else:
        _render(outcomes, status, names)


def _live(o: Any, json_out: bool, names: list[str]) -> None:
    if json_out:
        import json

        print(json.dumps(o.to_json(), sort_keys=True), flush=True)
        return
    from mixtera.cli.inspect_feedback import fit_status

    what = {"rewrite": f"rewrote the plan from step {o.first_step}",
            "keep": f"a rank timed out and published keep (steps from {o.first_step} keep the weights)",
            "lost": "already published by another writer"}.get(o.action, o.action)
    line = f"version {o.version} (losses of steps 0-{o.refit_step - 1}): {what}"
    if o.weights:
        line += "; weights there: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, o.weights, strict=True))
        line += f"; fit {fit_status(o.fit)}"
    err.print(escape(f"{line} ({o.seconds:.2f} s)"), highlight=False)


ACTIONS = {"rewrite": "rewrite", "keep": "keep (by a rank)", "lost": "taken by another writer"}


def _render(outcomes: list[Any], status: dict[str, Any], names: list[str]) -> None:
    from mixtera.cli.inspect_feedback import decision_cells, decision_table, fit_status

    if outcomes:
        table = decision_table("decisions published by this run", names, timed=True)
        for o in outcomes:
            cells = decision_cells(o.version, o.refit_step, o.first_step, ACTIONS.get(o.action, o.action),
                                   fit_status(o.fit) if o.fit else "-", o.weights, len(names))
            cells.insert(4, f"{o.seconds:.2f}")
            table.add_row(*cells)
        out.print(table)
    else:
        out.print("no decision published by this run", highlight=False)
    out.print(_status_line(status), highlight=False)


def _status_line(status: dict[str, Any]) -> str:
    logged = (f"feedback log: {status['log_steps']} steps reported" +
              (f" (last step {status['last_step']})" if status["last_step"] is not None else ""))
    nxt = status["next_refit_step"]
    if not status["pending"]:
        return f"{logged}; every decision of the plan is published"
    return (f"{logged}; {status['pending']} decisions pending, the next needs the losses of steps "
            f"0-{nxt - 1}")
