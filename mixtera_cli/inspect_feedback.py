"""The feedback part of `mixtera inspect PLAN`: recorded decisions and the weight trajectory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from mixtera_cli.console import out
from runtime.plan import Plan
from runtime.versions import DecisionSchedule, read_decision, version_path


def decisions(path: Path | str) -> list[dict[str, Any]]:
    """Published decisions in version order (a gap ends the list: later ones cannot exist)."""
    plan = Plan.open(path)
    sched = DecisionSchedule.from_manifest(plan.manifest)
    found = []
    for v in sched.versions() if sched else []:
        d = read_decision(plan.path, v)
        if d is None:
            break
        found.append(d)
    return found


def effective_quotas(path: Path | str) -> np.ndarray:
    """(steps, K) quotas the plan replays now: published versions, the compiled plan elsewhere."""
    plan = Plan.open(path)
    quotas = np.load(plan.path / "quotas.npy").copy()
    for d in decisions(path):
        if d["action"] == "rewrite":
            q = np.load(version_path(plan.path, d["version"]) / "quotas.npy")
            quotas[d["first_step"]: d["first_step"] + q.shape[0]] = q
    return quotas


def feedback_report(path: Path | str) -> dict[str, Any] | None:
    """Decisions (step, action, weights, fitted parameters) and per-segment shares; None if static."""
    plan = Plan.open(path)
    sched = DecisionSchedule.from_manifest(plan.manifest)
    if sched is None:
        return None
    found = decisions(path)
    quotas = effective_quotas(path)
    seg = plan.segment_steps
    shares = []
    for k in range(plan.segment_count):
        q = quotas[k * seg: (k + 1) * seg].sum(axis=0)
        shares.append([round(float(x), 6) for x in q / max(q.sum(), 1)])
    rows = [{"version": d["version"], "action": d["action"], "refit_step": d["refit_step"],
             "first_step": d["first_step"], "data_version": d["data_version"],
             "weights": d.get("weights"), "mean_weights": d.get("mean_weights"),
             "fit": d.get("fit"), "reason": d.get("reason")} for d in found]
    return {"algorithm": plan.manifest["dynamic"]["algorithm"], "refit_every": sched.refit_every,
            "lookahead": sched.lookahead, "decisions": rows, "decisions_total": len(sched.versions()),
            "segment_shares": shares}


def render_feedback(r: dict[str, Any] | None, names: list[str]) -> None:
    if not r:
        return
    table = Table(title=f"feedback: {r['algorithm']}, refit every {r['refit_every']} steps, "
                  f"{len(r['decisions'])} of {r['decisions_total']} decisions", title_justify="left")
    for col in ("version", "losses to", "from step", "action", "fit", *names):
        table.add_column(escape(col), justify="right")
    for d in r["decisions"]:
        fit = d["fit"] or {}
        status = "ok" if fit.get("accepted") else (fit.get("reason") or d.get("reason") or "-")
        weights = d["weights"] or [None] * len(names)
        table.add_row(str(d["version"]), str(d["refit_step"]), str(d["first_step"]), d["action"],
                      escape(str(status))[:40], *("-" if w is None else f"{w:.4f}" for w in weights))
    out.print(table)


def mark_decisions(ax: Any, path: Path | str) -> None:
    """Vertical lines where a rewrite takes effect (for the --plot figure)."""
    for d in decisions(path):
        style = "-" if d["action"] == "rewrite" else ":"
        ax.axvline(d["first_step"], color="black", linewidth=0.6, linestyle=style, alpha=0.7)
