"""Rendering of the feedback part of `mixtera inspect PLAN`: decisions and the weight trajectory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from mixtera.planner.report import decisions


def fit_status(fit: dict[str, Any] | None, reason: str | None = None) -> str:
    """One cell: 'ok, N points', or why the fit was not used (never truncated)."""
    fit = fit or {}
    if fit.get("accepted"):
        return f"ok, {fit['points']} points" if fit.get("points") is not None else "ok"
    why = fit.get("reason") or reason or "-"
    return f"not used: {why}" if fit else str(why)


def decision_table(title: str, names: list[str], *, timed: bool = False) -> Table:
    """The columns `mixtera inspect` and `mixtera feedback` share for decisions."""
    table = Table(title=title, title_justify="left", caption_justify="left",
                  caption="losses of steps: what the decision used; takes effect at step: the first "
                  "step it governs;\ncomponent columns: the new weights at that step (ADO moves them every "
                  "step after; --json has their mean).")
    table.add_column("version", justify="right", no_wrap=True)
    table.add_column("losses of steps", justify="right", no_wrap=True)
    table.add_column("takes effect at step", justify="right", no_wrap=True)
    table.add_column("action", no_wrap=True)
    if timed:
        table.add_column("took (s)", justify="right", no_wrap=True)
    table.add_column("fit", overflow="fold", min_width=12, max_width=36)
    for name in names:
        table.add_column(escape(name), justify="right", no_wrap=True)
    return table


def decision_cells(version: int, refit_step: int, first_step: int, action: str, status: str,
                   weights: list[float] | None, k: int) -> list[str]:
    shown = weights or [None] * k
    return [str(version), f"0-{refit_step - 1}", str(first_step), action, escape(status),
            *("-" if w is None else f"{w:.4f}" for w in shown)]


def render_feedback(r: dict[str, Any] | None, names: list[str], console: Any) -> None:
    if not r:
        return
    done, total = len(r["decisions"]), r["decisions_total"]
    table = decision_table(f"feedback: {r['algorithm']}, a decision every {r['refit_every']} steps "
                           f"(lookahead {r['lookahead']}): {done} of {total} published", names)
    for d in r["decisions"]:
        action = d["action"] if d["action"] == "rewrite" else f"keep v{d['data_version']}"
        cells = decision_cells(d["version"], d["refit_step"], d["first_step"], action,
                               fit_status(d["fit"], d.get("reason")), d["weights"], len(names))
        table.add_row(*cells)
    for p in r["pending"]:
        table.add_row(*decision_cells(p["version"], p["refit_step"], p["first_step"], "pending",
                                      "-", None, len(names)), style="dim")
    console.print(table)


def mark_decisions(ax: Any, path: Path | str) -> None:
    """Vertical lines where a rewrite takes effect (for the --plot figure)."""
    for d in decisions(path):
        style = "-" if d["action"] == "rewrite" else ":"
        ax.axvline(d["first_step"], color="black", linewidth=0.6, linestyle=style, alpha=0.7)
