"""Loss-proportional weights (Mixtera's "simple averaging"): each domain's weight is proportional to
its mean training loss over the last ``window`` steps before a refit, held until the next refit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixtera.runtime.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class LossProportionalParams:
    window: int | None = None  # steps averaged at a refit; None = the refit interval
    delta_min: float = 0.0  # floor on every weight after normalising

    def validate(self, where: str = "[dynamic]") -> None:
        if self.window is not None and not (isinstance(self.window, int) and self.window >= 1):
            raise ConfigError(f"{where}: window = {self.window!r} must be an integer >= 1",
                              "omit `window` to average over the whole refit interval")
        if not 0 <= self.delta_min < 1:
            raise ConfigError(f"{where}: delta_min = {self.delta_min!r} must be in [0, 1)",
                              "use a small floor such as 0.01, or 0 for none")


@dataclass(kw_only=True, slots=True)
class LossProportionalState:
    mu: np.ndarray
    pi: np.ndarray
    step: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"mu": [float(v) for v in self.mu], "pi": [float(v) for v in self.pi], "step": self.step}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LossProportionalState:
        return cls(mu=np.array(obj["mu"], dtype=np.float64), pi=np.array(obj["pi"], dtype=np.float64),
                   step=int(obj["step"]))


def initial_state(mu: np.ndarray) -> LossProportionalState:
    mu = np.asarray(mu, dtype=np.float64)
    return LossProportionalState(mu=mu.copy(), pi=mu.copy())


def observe(p: LossProportionalParams, st: LossProportionalState, tokens: np.ndarray
            ) -> LossProportionalState:
    st.step += 1
    return st


def refit(p: LossProportionalParams, st: LossProportionalState, tokens: np.ndarray, loss_sum: np.ndarray,
          refit_every: int) -> dict[str, Any]:
    """New weights from the last window of (tokens, loss_sum) rows; keeps pi if a domain has no data."""
    window = p.window or refit_every
    tok = tokens[-window:].sum(axis=0).astype(np.float64)
    loss = loss_sum[-window:].sum(axis=0)
    if tok.size == 0 or np.any(tok <= 0):
        return {"accepted": False, "reason": "a domain got no tokens in the averaging window",
                "mean_loss": None}
    mean = loss / tok
    if not np.all(np.isfinite(mean)) or np.any(mean <= 0):
        return {"accepted": False, "reason": "non-finite or non-positive mean loss", "mean_loss": None}
    w = mean / mean.sum()
    w = np.maximum(w, p.delta_min)
    st.pi = w / w.sum()
    return {"accepted": True, "reason": "", "mean_loss": [float(v) for v in mean]}
