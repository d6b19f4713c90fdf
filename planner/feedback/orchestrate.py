"""`mixtera feedback`: turn the job's reported losses into new plan versions, one per refit point.

``run_pending`` takes the plan's feedback lock (a second feedback process on the same plan is
refused), reads the log, and for every refit point whose losses are complete and whose decision is
not yet published, decides and publishes it (see
:mod:`mixtera.planner.feedback.rewrite`), in order. A version that
a rank already published as "keep" (it timed out waiting) is left as it is; the next decision
continues from the last recorded policy state as if that refit had kept the previous parameters.

In-process use (no side process): ``FeedbackReporter(plan, on_refit=inprocess_rewriter(plan))``
on every rank; rank 0 calls the rewriter at each refit point with the same lock and atomicity.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.planner.feedback.algorithms import History
from mixtera.planner.feedback.rewrite import PlanContext, decide, write_version
from mixtera.runtime.atomic import open_lock
from mixtera.runtime.errors import StateError
from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import lock_path, log_path


@contextlib.contextmanager
def feedback_lock(plan_dir: Path | str) -> Iterator[None]:
    """Exclusive, non-blocking lock on ``PLAN/feedback/lock``; released by the kernel on any exit."""
    path = lock_path(plan_dir)
    path.parent.mkdir(exist_ok=True)
    fd = open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StateError(f"{path}: another feedback process (pid {holder}) is working on this plan",
                             "run one `mixtera feedback` per plan: stop the other one, or use either "
                             "the side process or the in-process rewrite, not both") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def read_history(ctx: PlanContext, until: int) -> History:
    """Steps ``[0, until)`` of the log (the last record of a step wins; absent steps are zero)."""
    recs = read_log(log_path(ctx.path), ctx.domains, ctx.manifest["fingerprint"])
    tokens = np.zeros((until, ctx.domains), np.int64)
    loss = np.zeros((until, ctx.domains), np.float64)
    present = np.zeros(until, bool)
    keep = recs.step < until
    idx = recs.step[keep]
    tokens[idx] = recs.tokens[keep]  # fancy assignment: later duplicates overwrite earlier ones
    loss[idx] = recs.loss_sum[keep]
    present[idx] = True
    return History(tokens, loss, present)


@dataclass(frozen=True, slots=True)
class Outcome:
    version: int
    refit_step: int
    first_step: int
    action: str  # "rewrite" | "keep" (published by a rank) | "lost" (someone published first)
    seconds: float
    fit: dict[str, Any] | None
    weights: list[float] | None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "refit_step": self.refit_step, "first_step": self.first_step,
                "action": self.action, "seconds": round(self.seconds, 4), "fit": self.fit,
                "weights": self.weights}


def pending(ctx: PlanContext) -> list[int]:
    return [v for v in ctx.schedule.versions() if ctx.resolver.decision(v, wait=False) is None]


def _run(ctx: PlanContext) -> tuple[list[Outcome], bool]:
    """Publish every decision whose losses are in; returns (outcomes, whether any is still pending)."""
    outcomes: list[Outcome] = []
    hist: History | None = None
    for v in ctx.schedule.versions():
        existing = ctx.resolver.decision(v, wait=False)
        if existing is not None:
            continue
        t_i = ctx.schedule.refit_step(v)
        if hist is None:  # the whole log, once per pass: it covers every refit step
            hist = read_history(ctx, ctx.schedule.steps)
        if not hist.present[:t_i].all():
            return outcomes, True
        start = time.perf_counter()
        dec = decide(ctx, v, hist)
        won = write_version(ctx, dec)
        published = ctx.resolver.decision(v, wait=False)
        action = "rewrite" if won else ("keep" if published and published["action"] == "keep" else "lost")
        outcomes.append(Outcome(v, t_i, int(dec.body["first_step"]), action,
                                time.perf_counter() - start, dec.body["fit"] if won else None,
                                dec.body["weights"] if won else None))
    return outcomes, False


def run_pending(plan_dir: Path | str) -> tuple[list[Outcome], bool]:
    """One pass under the lock: decide what the log allows. Returns (outcomes, more to come)."""
    with feedback_lock(plan_dir):
        return _run(PlanContext.open(plan_dir))


def follow(plan_dir: Path | str, *, poll_s: float = 2.0,
           on_outcome: Callable[[Outcome], None] | None = None,
           stop: Callable[[], bool] | None = None) -> list[Outcome]:
    """Keep deciding at each refit point until every decision of the plan is published."""
    done: list[Outcome] = []
    with feedback_lock(plan_dir):
        ctx = PlanContext.open(plan_dir)
        while True:
            outcomes, more = _run(ctx)
            for o in outcomes:
                done.append(o)
                if on_outcome:
                    on_outcome(o)
            if not more or (stop and stop()):
                return done
            time.sleep(poll_s)


def inprocess_rewriter(plan_dir: Path | str) -> Callable[[int], list[Outcome]]:
    """A callable for ``FeedbackReporter(on_refit=...)``: rank 0 decides at each refit point."""
    plan_dir = Path(plan_dir)

    def on_refit(refit_step: int) -> list[Outcome]:
        outcomes, _ = run_pending(plan_dir)
        return outcomes

    return on_refit


def job_finished(ctx: PlanContext) -> bool:
    """True once the job reported the plan's last step (``--follow`` stops then)."""
    return bool(read_history(ctx, ctx.schedule.steps).present[-1])


def feedback_status(plan_dir: Path | str) -> dict[str, Any]:
    """How far the job's feedback log got and which decisions are still pending."""
    ctx = PlanContext.open(plan_dir)
    hist = read_history(ctx, ctx.schedule.steps)
    left = pending(ctx)
    return {"log_steps": int(hist.present.sum()),
            "last_step": int(hist.present.nonzero()[0].max()) if hist.present.any() else None,
            "pending": len(left),
            "next_refit_step": ctx.schedule.refit_step(left[0]) if left else None}
