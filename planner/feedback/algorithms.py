"""The feedback algorithms as a name-to-functions table, and the history they learn from.

Each algorithm is a policy with a JSON-serialisable state: ``observe`` consumes one step's
per-domain token counts (the weights for the next step are ``state.pi``), ``refit`` looks at the
whole loss history up to ``state.step`` and may change the state. ``static`` never rewrites.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixtera.planner.feedback import ado, loss_proportional


@dataclass(frozen=True, slots=True)
class History:
    """What the job reported for steps ``[0, T)``: rows of absent steps are zero."""

    tokens: np.ndarray  # (T, K) int64
    loss_sum: np.ndarray  # (T, K) float64
    present: np.ndarray  # (T,) bool

    @property
    def steps(self) -> int:
        return int(self.present.size)

    def head(self, steps: int) -> History:
        return History(self.tokens[:steps], self.loss_sum[:steps], self.present[:steps])

    def mean_losses(self) -> np.ndarray:
        """(T, K) per-step mean loss, nan where a domain got no tokens or the step is absent."""
        ok = (self.tokens > 0) & self.present[:, None]
        out = np.full(self.tokens.shape, np.nan)
        np.divide(self.loss_sum, self.tokens, out=out, where=ok)
        return out


@dataclass(frozen=True, slots=True)
class Algorithm:
    name: str
    rewrites: bool
    initial: Callable[[np.ndarray], Any]
    observe: Callable[[Any, Any, np.ndarray], Any]
    refit: Callable[[Any, Any, History, int], dict[str, Any]]
    state_from_json: Callable[[dict[str, Any]], Any]


def _ado_refit(p: ado.AdoParams, st: ado.AdoState, hist: History, refit_every: int) -> dict[str, Any]:
    return ado.refit(p, st, hist.mean_losses(), hist.tokens.sum(axis=1))


def _lp_refit(p: loss_proportional.LossProportionalParams, st: Any, hist: History,
              refit_every: int) -> dict[str, Any]:
    present = hist.present
    return loss_proportional.refit(p, st, hist.tokens[present], hist.loss_sum[present], refit_every)


def _static_initial(mu: np.ndarray) -> loss_proportional.LossProportionalState:
    return loss_proportional.initial_state(mu)


def _static_refit(p: Any, st: Any, hist: History, refit_every: int) -> dict[str, Any]:
    return {"accepted": False, "reason": "static schedule: the compiled plan is kept"}


algorithms: dict[str, Algorithm] = {
    "ado": Algorithm("ado", True, ado.initial_state, ado.observe, _ado_refit, ado.AdoState.from_json),
    "loss_proportional": Algorithm("loss_proportional", True, loss_proportional.initial_state,
                                   loss_proportional.observe, _lp_refit,
                                   loss_proportional.LossProportionalState.from_json),
    "static": Algorithm("static", False, _static_initial, loss_proportional.observe, _static_refit,
                        loss_proportional.LossProportionalState.from_json),
}


def consume(alg: Algorithm, params: Any, state: Any, hist: History, until: int) -> Any:
    """Advance ``state`` through the reported steps ``[state.step, until)``."""
    if until > hist.steps:
        raise ValueError(f"history holds {hist.steps} steps, cannot consume up to {until}")
    zero = np.zeros(hist.tokens.shape[1], dtype=np.int64)
    for t in range(state.step, until):
        state = alg.observe(params, state, hist.tokens[t] if hist.present[t] else zero)
    return state
