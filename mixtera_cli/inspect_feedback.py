"""The feedback part of `mixtera inspect PLAN`: recorded decisions, what the runtime replays, the trajectory.

"Replayed now" means: every segment from the version whose decision governs it; a segment whose
decision is not published yet from the version that holds it now (what a rank replays if that
decision ends as "keep"), marked undecided.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from runtime.plan import Plan
from runtime.versions import DecisionSchedule, read_decision, version_path

QUOTAS = "quotas.npy"
WEIGHTS = "weights.npy"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Replayed:
    """What the runtime replays now, per step and per segment."""

    quotas: np.ndarray  # (steps, K) int64: each step's tokens (or samples) per component
    weights: np.ndarray  # (steps, K) float64: each step's target weights
    versions: list[int]  # per segment: the version whose rank files hold it
    decided: list[bool]  # per segment: False while its decision is not published
    entries: int  # entries of all ranks in the replayed segments


def replayed(path: Path | str) -> Replayed:
    """Per-step quotas and targets of the published versions (the compiled plan where none rewrote)."""
    plan = Plan.open(path)
    seg, count = plan.segment_steps, plan.segment_count
    found = decisions(path)
    versions = [0] * count
    for d in found:  # decisions are in order: a later one overrides from its first segment on
        versions[int(d["first_segment"]):] = [int(d["data_version"])] * (count - int(d["first_segment"]))
    sched = DecisionSchedule.from_manifest(plan.manifest)
    decided = [sched is None or sched.decision_of_segment(k) <= len(found) for k in range(count)]
    first = {0: 0, **{int(d["version"]): int(d["first_step"]) for d in found}}
    out: dict[str, np.ndarray] = {}
    for name in (QUOTAS, WEIGHTS):
        arrays = {v: np.load((plan.path if v == 0 else version_path(plan.path, v)) / name)
                  for v in sorted(set(versions))}
        full = arrays[0].copy() if 0 in arrays else np.load(plan.path / name)
        for k, v in enumerate(versions):
            if v:
                lo, hi = k * seg, min((k + 1) * seg, plan.steps)
                full[lo:hi] = arrays[v][lo - first[v]: hi - first[v]]
        out[name] = full
    by_version = {0: plan.manifest["segments"], **{int(d["version"]): d["segments"] for d in found}}
    first_seg = {0: 0, **{int(d["version"]): int(d["first_segment"]) for d in found}}
    entries = sum(int(by_version[v][k - first_seg[v]].get("entries", 0)) for k, v in enumerate(versions))
    return Replayed(quotas=out[QUOTAS], weights=out[WEIGHTS], versions=versions, decided=decided,
                    entries=entries)


def effective_quotas(path: Path | str) -> np.ndarray:
    """(steps, K) quotas the plan replays now: published versions, the compiled plan elsewhere."""
    return replayed(path).quotas


def feedback_report(path: Path | str) -> dict[str, Any] | None:
    """Decisions (step, action, weights, fitted parameters) and per-segment shares; None if static."""
    plan = Plan.open(path)
    sched = DecisionSchedule.from_manifest(plan.manifest)
    if sched is None:
        return None
    found = decisions(path)
    rep = replayed(path)
    seg = plan.segment_steps
    shares = []
    for k in range(plan.segment_count):
        q = rep.quotas[k * seg: (k + 1) * seg].sum(axis=0)
        shares.append([round(float(x), 6) for x in q / max(q.sum(), 1)])
    rows = [{"version": d["version"], "action": d["action"], "refit_step": d["refit_step"],
             "first_step": d["first_step"], "data_version": d["data_version"],
             "weights": d.get("weights"), "mean_weights": d.get("mean_weights"),
             "fit": d.get("fit"), "reason": d.get("reason")} for d in found]
    waiting = [{"version": v, "refit_step": sched.refit_step(v),
                "first_step": sched.first_segment(v) * sched.segment_steps}
               for v in sched.versions()[len(found):]]
    return {"algorithm": plan.manifest["dynamic"]["algorithm"], "refit_every": sched.refit_every,
            "lookahead": sched.lookahead, "steps": plan.steps, "decisions": rows, "pending": waiting,
            "decisions_total": len(sched.versions()), "segment_shares": shares,
            "segment_versions": rep.versions, "segment_decided": rep.decided}


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
