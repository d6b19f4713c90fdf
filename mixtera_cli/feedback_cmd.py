"""`mixtera feedback PLAN [--follow]`: rewrite future plan segments from losses (man/mixtera-feedback.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mixtera_cli.console import err, out, print_json, user_errors


@user_errors
def feedback(
    plan: Annotated[Path, typer.Argument(help="The plan directory the job replays.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", help="Keep running beside the job and decide at each "
                                         "refit point until the plan's last decision.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.01, help="--follow: seconds between looks at the "
                                        "feedback log.")] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print decisions as JSON on stdout (one object "
                                           "per line with --follow).")] = False,
) -> None:
    """Run the mixture's dynamic algorithm (ADO, ...) on the job's losses and publish new plan versions."""
    from planner.feedback import follow as follow_plan
    from planner.feedback import run_pending
    from planner.rewrite import PlanContext

    ctx = PlanContext.open(plan)
    err.print(f"{ctx.dynamic.algorithm} on {escape(str(plan))}: refit every {ctx.schedule.refit_every} "
              f"steps, {len(ctx.schedule.versions())} decisions in the plan", highlight=False)
    if follow:
        outcomes = follow_plan(plan, poll_s=poll, on_outcome=lambda o: _live(o, json_out),
                               stop=lambda: _job_finished(ctx))
    else:
        outcomes, _ = run_pending(plan)
    status = _status(plan)
    if json_out:
        if not follow:
            print_json({"decisions": [o.to_json() for o in outcomes], **status})
    else:
        _render(outcomes, status, [c["name"] for c in ctx.manifest["components"]])


def _job_finished(ctx: Any) -> bool:
    from planner.feedback import read_history

    hist = read_history(ctx, ctx.schedule.steps)
    return bool(hist.present[-1])


def _status(plan: Path) -> dict[str, Any]:
    from planner.feedback import pending, read_history
    from planner.rewrite import PlanContext

    ctx = PlanContext.open(plan)
    hist = read_history(ctx, ctx.schedule.steps)
    left = pending(ctx)
    nxt = left[0] if left else None
    return {"log_steps": int(hist.present.sum()),
            "last_step": int(hist.present.nonzero()[0].max()) if hist.present.any() else None,
            "pending": len(left),
            "next_refit_step": ctx.schedule.refit_step(nxt) if nxt else None}


def _live(o: Any, json_out: bool) -> None:
    if json_out:
        import json

        print(json.dumps(o.to_json(), sort_keys=True), flush=True)
    else:
        err.print(f"version {o.version}: losses up to step {o.refit_step} -> {o.action} from step "
                  f"{o.first_step} ({o.seconds:.2f} s)", highlight=False)


def _render(outcomes: list[Any], status: dict[str, Any], names: list[str]) -> None:
    table = Table(title="decisions published now", title_justify="left")
    for col in ("version", "losses to", "from step", "action", "seconds", "fit", *names):
        table.add_column(escape(col), justify="right")
    for o in outcomes:
        fit = o.fit or {}
        ok = "ok" if fit.get("accepted") else escape(str(fit.get("reason") or "-"))[:40]
        weights = o.weights or [None] * len(names)
        table.add_row(str(o.version), str(o.refit_step), str(o.first_step), o.action, f"{o.seconds:.2f}",
                      ok, *("-" if w is None else f"{w:.4f}" for w in weights))
    out.print(table)
    nxt = status["next_refit_step"]
    out.print(f"log: {status['log_steps']} steps (last {status['last_step']}); {status['pending']} "
              "decisions pending" + (f", next needs the losses of steps 0..{nxt - 1}" if nxt else ""),
              highlight=False)
