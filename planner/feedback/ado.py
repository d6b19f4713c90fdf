"""ADO (Adaptive Data Optimization): the per-step policy and its state, as specified in ADO.md.

Everything here is a pure function of (parameters, state, reported counts and losses). The state
is a small dataclass that round-trips through JSON bit for bit (Python floats print as their
shortest exact repr), so a decision recorded in a plan can be continued by a fresh process.

Two variants: ``"reference"`` (the ADO paper's code, the default) and ``"mixtera"`` (Mixtera's
re-implementation: clips pi instead of rho and only for domains already sampled, updates h as an
EMA of pi after computing pi, no alpha floor, a 384-point start grid, ignores 500 steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixtera.planner.feedback.ado_fit import FitSettings, fit
from mixtera.runtime.errors import ConfigError

VARIANTS = ("reference", "mixtera")


@dataclass(kw_only=True, slots=True)
class AdoParams:
    """Every knob of ADO; ``None`` means the variant's default (see :meth:`resolved`)."""

    variant: str = "reference"
    refit_every: int = 1000
    ignore_steps: int | None = None  # reference 1000, mixtera 500
    gamma_h: float = 0.1
    gamma_pi: float = 0.1
    s: float = 0.5
    delta_min: float = 0.01
    alpha_floor: float | None = None  # reference 0.05, mixtera 0 (no floor)
    unit_tokens: int = 1024
    savgol_window: int = 101
    savgol_order: int = 3
    subsample: int = 10
    min_points: int = 20
    lbfgs_iterations: int = 200
    huber_delta: float = 1e-3

    def resolved(self) -> AdoParams:
        mixtera = self.variant == "mixtera"
        ignore = self.ignore_steps if self.ignore_steps is not None else (500 if mixtera else 1000)
        floor = self.alpha_floor if self.alpha_floor is not None else (0.0 if mixtera else 0.05)
        out = AdoParams(**{name: getattr(self, name) for name in AdoParams.__slots__})
        out.ignore_steps, out.alpha_floor = ignore, floor
        return out

    def validate(self, where: str = "[dynamic]") -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"{where}: {name} = {getattr(self, name)!r} must be {rule}",
                               f"fix `{name}` in the mixture's [dynamic] table")

        if self.variant not in VARIANTS:
            raise bad("variant", f"one of {', '.join(VARIANTS)}")
        for name in ("refit_every", "unit_tokens", "subsample", "min_points", "lbfgs_iterations"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "an integer >= 1")
        ignore = self.ignore_steps
        if ignore is not None and not (isinstance(ignore, int) and ignore >= 0):
            raise bad("ignore_steps", "an integer >= 0")
        for name in ("gamma_h", "gamma_pi"):
            if not 0 < getattr(self, name) <= 1:
                raise bad(name, "in (0, 1]")
        if not 0 <= self.s < 1:
            raise bad("s", "in [0, 1)")
        if not 0 <= self.delta_min < 1:
            raise bad("delta_min", "in [0, 1)")
        if self.alpha_floor is not None and not 0 <= self.alpha_floor < 1:
            raise bad("alpha_floor", "in [0, 1)")
        if not (self.savgol_window % 2 == 1 and self.savgol_window > self.savgol_order >= 0):
            raise bad("savgol_window", f"odd and larger than savgol_order ({self.savgol_order})")
        if not self.huber_delta > 0:
            raise bad("huber_delta", "> 0")

    def fit_settings(self) -> FitSettings:
        es = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
        if self.variant == "mixtera":
            es = tuple(e for e in es if e not in (0.0, 0.5))
        return FitSettings(grid_a=tuple(float(a) for a in range(-2, 6)), grid_e=es,
                           grid_alpha=tuple(round(0.1 * i, 1) for i in range(8)),
                           iterations=self.lbfgs_iterations, huber_delta=self.huber_delta,
                           savgol_window=self.savgol_window, savgol_order=self.savgol_order,
                           subsample=self.subsample, min_points=self.min_points)


@dataclass(kw_only=True, slots=True)
class AdoState:
    """Policy state after consuming steps ``[0, step)``; ``pi`` are the weights of step ``step``."""

    mu: np.ndarray
    h: np.ndarray
    pi: np.ndarray
    pi_bar: np.ndarray
    theta: np.ndarray | None = None  # (K, 3): log beta, log eps, alpha
    step: int = 0
    tokens_total: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # tokens per domain

    def to_json(self) -> dict[str, Any]:
        def floats(a: np.ndarray) -> list[float]:
            return [float(v) for v in a]

        return {"mu": floats(self.mu), "h": floats(self.h), "pi": floats(self.pi),
                "pi_bar": floats(self.pi_bar), "step": self.step, "tokens_total": self.tokens_total,
                "seen": [int(v) for v in self.seen],
                "theta": None if self.theta is None else [floats(row) for row in self.theta]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AdoState:
        def arr(v: list[float]) -> np.ndarray:
            return np.array(v, dtype=np.float64)

        theta = None if obj["theta"] is None else np.array(obj["theta"], dtype=np.float64)
        return cls(mu=arr(obj["mu"]), h=arr(obj["h"]), pi=arr(obj["pi"]), pi_bar=arr(obj["pi_bar"]),
                   theta=theta, step=int(obj["step"]), tokens_total=int(obj["tokens_total"]),
                   seen=np.array(obj["seen"], dtype=np.int64))


def initial_state(mu: np.ndarray) -> AdoState:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 1 or mu.size == 0 or np.any(mu < 0) or not math.isclose(mu.sum(), 1.0, rel_tol=1e-9):
        raise ConfigError(f"ADO prior {mu.tolist()} is not a distribution", "prior weights must sum to 1")
    return AdoState(mu=mu.copy(), h=mu.copy(), pi=mu.copy(), pi_bar=mu.copy(),
                    seen=np.zeros(mu.size, dtype=np.int64))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / x.sum()


def _gain(p: AdoParams, st: AdoState, n: float) -> np.ndarray:
    """Predicted loss reduction per sample, ``max(alpha, floor) * (L_hat - eps) / n``."""
    a, alpha = st.theta[:, 0], st.theta[:, 2]
    reducible = np.exp(a) * n ** (-alpha)  # L_hat - eps
    return np.maximum(alpha, p.alpha_floor) * reducible / n


def observe(p: AdoParams, st: AdoState, tokens: np.ndarray) -> AdoState:
    """Consume step ``st.step`` whose per-domain token counts are ``tokens``; pi is for the next step.

    ``p`` must be :meth:`AdoParams.resolved`. Mutates and returns ``st``.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    t = st.step
    st.step += 1
    st.tokens_total += int(tokens.sum())
    st.seen = st.seen + tokens
    c = tokens / p.unit_tokens
    if p.variant == "reference" and c.sum() > 0:
        st.h = (1 - p.gamma_h) * st.h + p.gamma_h * (c / c.sum())
    if st.theta is None or st.tokens_total == 0:
        st.pi = st.mu.copy()
        return st
    n = st.tokens_total / p.unit_tokens
    g = _gain(p, st, n)
    if p.variant == "reference":
        rho = _normalize(st.mu * st.h ** p.s * g)
        rho = _normalize(np.maximum(rho, p.delta_min))
        st.pi = (1 - p.gamma_pi) * st.pi_bar + p.gamma_pi * rho
        st.pi_bar = (1 - 1 / (t + 1)) * st.pi_bar + rho / (t + 1)
        return st
    return _observe_mixtera(p, st, g, t)


def _observe_mixtera(p: AdoParams, st: AdoState, g: np.ndarray, t: int) -> AdoState:
    num = np.maximum(st.mu * st.h ** p.s * g, 0.0)
    rho = num / num.sum() if num.sum() > 0 else st.mu / st.mu.size
    pi = _normalize(p.gamma_pi * rho + (1 - p.gamma_pi) * st.pi_bar)
    sampled = st.seen > 0
    pi[sampled] = np.maximum(pi[sampled], p.delta_min)
    st.pi = _normalize(pi)
    st.h = p.gamma_h * st.pi + (1 - p.gamma_h) * st.h
    w = 1.0 / (t + 1.0)
    st.pi_bar = _normalize(w * rho + (1 - w) * st.pi_bar)
    return st


def refit(p: AdoParams, st: AdoState, losses: np.ndarray, step_tokens: np.ndarray) -> dict[str, Any]:
    """Refit theta from per-step mean losses ``(st.step, K)``; keeps theta when the fit is unusable.

    Mutates ``st.theta``; returns what to record (fitted parameters, objectives, points, reason).
    """
    if losses.shape[0] != st.step:
        raise ValueError(f"refit at step {st.step} got {losses.shape[0]} steps of losses")
    res = fit(losses, step_tokens, p.ignore_steps, p.unit_tokens, p.fit_settings())
    if res.theta is not None:
        st.theta = res.theta
    return {"accepted": res.theta is not None, "reason": res.reason, "points": res.points,
            "objective": [float(v) if np.isfinite(v) else None for v in res.objective],
            "theta": None if st.theta is None else [[float(v) for v in row] for row in st.theta]}

