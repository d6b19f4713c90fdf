"""The mixture's ``[dynamic]`` table: which feedback algorithm, when it refits, and its parameters.

```toml
[dynamic]
algorithm = "ado"          # ado | loss_proportional | static
refit_every = 1000         # steps between refits (>= segment_steps)
lookahead = 100            # a decision from losses up to t covers segments starting at >= t + lookahead
                           # (default: one segment)
wait_timeout_s = 600       # how long a rank waits for a missing decision
on_missing = "keep"        # then: "keep" (first rank to time out records keep-the-weights) | "fail"
prior = "natural"          # natural | initial | { component = weight, ... }
# ado only: variant, ignore_steps, gamma (sets gamma_h and gamma_pi), gamma_h, gamma_pi, s, delta_min,
#           alpha_floor, unit_tokens, savgol_window, savgol_order, subsample, min_points,
#           lbfgs_iterations, huber_delta
# loss_proportional only: window, delta_min
```
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from mixtera.planner.feedback.ado import AdoParams
from mixtera.planner.feedback.loss_proportional import LossProportionalParams
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.versions import DEFAULT_REFIT_EVERY, DEFAULT_WAIT_TIMEOUT_S, ON_MISSING

COMMON_KEYS = ("algorithm", "refit_every", "lookahead", "wait_timeout_s", "on_missing", "prior")
_PARAMS = {"ado": AdoParams, "loss_proportional": LossProportionalParams, "static": None}


@dataclass(kw_only=True, slots=True)
class DynamicSpec:
    algorithm: str
    refit_every: int = DEFAULT_REFIT_EVERY
    lookahead: int | None = None  # steps; None = one segment
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    on_missing: str = "keep"
    prior: str | dict[str, float] = "natural"
    params: Any = None  # AdoParams (resolved) | LossProportionalParams | None

    def validate(self, where: str = "[dynamic]", segment_steps: int | None = None) -> None:
        if type(self.refit_every) is not int or self.refit_every < 1:
            raise ConfigError(f"{where}: refit_every = {self.refit_every!r} must be an integer >= 1")
        if segment_steps is not None and self.refit_every < segment_steps:
            raise ConfigError(f"{where}: refit_every = {self.refit_every} is smaller than segment_steps = "
                              f"{segment_steps}", "refit at most once per segment: raise refit_every")
        if self.lookahead is not None and (type(self.lookahead) is not int or self.lookahead < 0):
            raise ConfigError(f"{where}: lookahead = {self.lookahead!r} must be an integer >= 0 (steps)")
        if (isinstance(self.wait_timeout_s, bool) or not isinstance(self.wait_timeout_s, (int, float))
                or not 0 <= self.wait_timeout_s < math.inf):
            raise ConfigError(f"{where}: wait_timeout_s = {self.wait_timeout_s!r} must be a finite "
                              "number >= 0", "ranks wait this long for a decision before on_missing applies")
        if self.on_missing not in ON_MISSING:
            raise ConfigError(f"{where}: on_missing = {self.on_missing!r} is unknown",
                              f"use one of {', '.join(ON_MISSING)}")
        if not (self.prior in ("natural", "initial") or isinstance(self.prior, dict)):
            raise ConfigError(f"{where}: prior = {self.prior!r} is unknown",
                              "use \"natural\", \"initial\" or a table { component = weight, ... }")
        if self.params is not None:
            self.params.validate(where)


def parse_dynamic(table: dict[str, Any] | None, where: str = "[dynamic]",
                  segment_steps: int | None = None) -> DynamicSpec | None:
    """Validate a raw ``[dynamic]`` table (as stored in the plan manifest); None without one."""
    if not table:
        return None
    algo = table.get("algorithm")
    if algo not in _PARAMS:
        raise ConfigError(f"{where}: algorithm = {algo!r} is unknown", f"use one of {', '.join(_PARAMS)}")
    cls = _PARAMS[algo]
    own = [f.name for f in fields(cls)] if cls else []
    allowed = list(COMMON_KEYS) + own + (["gamma"] if algo == "ado" else [])
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: unknown key {key!r} for algorithm {algo!r}",
                              f"{guess}allowed keys: {', '.join(sorted(set(allowed)))}")
    kw = {k: table[k] for k in own if k in table}
    if algo == "ado" and "gamma" in table:
        kw.setdefault("gamma_h", table["gamma"])
        kw.setdefault("gamma_pi", table["gamma"])
    refit = table.get("refit_every", DEFAULT_REFIT_EVERY)
    if algo == "ado":
        kw["refit_every"] = refit
    params = cls(**kw) if cls else None
    spec = DynamicSpec(algorithm=algo, refit_every=refit, lookahead=table.get("lookahead"),
                       wait_timeout_s=table.get("wait_timeout_s", DEFAULT_WAIT_TIMEOUT_S),
                       on_missing=table.get("on_missing", "keep"), prior=table.get("prior", "natural"),
                       params=params)
    spec.validate(where, segment_steps)
    if algo == "ado":
        spec.params = params.resolved()
    return spec


def resolve_prior(prior: str | dict[str, float], components: list[dict[str, Any]],
                  initial: np.ndarray, where: str = "[dynamic]") -> np.ndarray:
    """The prior mu over the plan's leaf components (domain id = component id)."""
    if prior == "natural":
        sizes = np.array([float(c["size"]) for c in components])
        return sizes / sizes.sum()
    if prior == "initial":
        return np.asarray(initial, dtype=np.float64) / float(np.sum(initial))
    return prior_weights(prior, [c["name"] for c in components], where)


def prior_weights(prior: dict[str, Any], names: list[str], where: str = "[dynamic]") -> np.ndarray:
    """A ``prior = { component = weight, ... }`` table as a distribution over the leaf ``names``."""
    unknown = sorted(set(prior) - set(names))
    missing = [n for n in names if n not in prior]
    if unknown or missing:
        raise ConfigError(f"{where}: prior names {unknown or 'no unknown'} components and misses "
                          f"{missing or 'none'}", f"give a weight to each of: {', '.join(names)}")
    values = [prior[n] for n in names]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in values):
        raise ConfigError(f"{where}: prior weights must be finite numbers > 0, got {values}",
                          "write e.g. prior = { web = 0.7, code = 0.3 }")
    w = np.array(values, dtype=np.float64)
    if not math.isfinite(float(w.sum())):
        raise ConfigError(f"{where}: prior weights sum beyond the float64 range",
                          "scale them down: only their ratios matter")
    return w / w.sum()
