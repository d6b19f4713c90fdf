"""ADO's scaling-law fit: ``L(n) = eps + beta * n**-alpha`` per domain, from many starts at once.

Every (domain, grid start) pair is an independent 3-parameter problem. They run in lockstep in
one batched L-BFGS (two-loop recursion, memory 10, Armijo backtracking), so 8 domains x 512
starts cost a few hundred vectorised passes instead of 4096 Python-level optimiser runs. The best
start of each domain is then polished with scipy's L-BFGS-B (200 iterations) and the lower of the
two objectives is kept. The objective is the reference one (ADO.md): Huber(1e-3) on the log-space
residual of ``logsumexp(a - alpha * log n, e)`` plus the penalty terms that act as bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.signal import savgol_filter

_MEMORY = 10
_TOL = 1e-5
_ARMIJO = 1e-4
_MAX_HALVINGS = 30


@dataclass(frozen=True, slots=True)
class FitSettings:
    grid_a: tuple[float, ...]
    grid_e: tuple[float, ...]
    grid_alpha: tuple[float, ...]
    iterations: int = 200
    huber_delta: float = 1e-3
    savgol_window: int = 101
    savgol_order: int = 3
    subsample: int = 10
    min_points: int = 20


@dataclass(frozen=True, slots=True)
class FitResult:
    """``theta`` is (K, 3) of (log beta, log eps, alpha), or None when the fit is unusable."""

    theta: np.ndarray | None
    objective: np.ndarray  # (K,) best objective per domain (nan when not fitted)
    points: int
    reason: str  # "" on success, else why no theta was produced


def grid(settings: FitSettings) -> np.ndarray:
    """All starts as (G, 3), a-major then e then alpha (the reference's meshgrid 'ij' order)."""
    a, e, al = np.meshgrid(settings.grid_a, settings.grid_e, settings.grid_alpha, indexing="ij")
    return np.stack([a.ravel(), e.ravel(), al.ravel()], axis=1).astype(np.float64)


def fit_points(losses: np.ndarray, step_tokens: np.ndarray, ignore: int, unit: int,
               settings: FitSettings) -> tuple[np.ndarray, np.ndarray] | str:
    """Smoothed losses (K, P) and log n (P,) at steps ignore, ignore + subsample, ...

    ``losses`` is (T, K) per-step mean loss with nan where a domain got no tokens; ``step_tokens``
    is (T,) tokens of all domains per step. Returns a reason string when there is too little data.
    """
    steps = losses.shape[0]
    if steps < settings.savgol_window:
        return f"{steps} steps of losses, the smoothing window needs {settings.savgol_window}"
    filled = _forward_fill(losses)
    if not np.all(np.isfinite(filled)):
        return "a domain has no finite loss yet"
    idx = np.arange(ignore, steps, settings.subsample)
    if idx.size < settings.min_points:
        return f"{idx.size} fit points after ignoring {ignore} steps, need {settings.min_points}"
    smooth = savgol_filter(filled, settings.savgol_window, settings.savgol_order, axis=0)
    n = np.cumsum(step_tokens.astype(np.float64))[idx] / unit
    if np.any(smooth[idx] <= 0) or np.any(n <= 0):
        return "smoothed losses or sample counts are not positive"
    return np.log(smooth[idx]).T.copy(), np.log(n)


def _forward_fill(losses: np.ndarray) -> np.ndarray:
    """Missing values take the previous step's value; leading gaps take the first observed one."""
    out = np.array(losses, dtype=np.float64)
    for k in range(out.shape[1]):
        col = out[:, k]
        ok = np.isfinite(col)
        if not ok.any():
            continue
        idx = np.where(ok, np.arange(col.size), 0)
        np.maximum.accumulate(idx, out=idx)
        idx[: np.argmax(ok)] = np.argmax(ok)
        out[:, k] = col[idx]
    return out


def objective(x: np.ndarray, logn: np.ndarray, logl: np.ndarray, delta: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Objective (B,) and gradient (B, 3) for params ``x`` (B, 3) against targets ``logl`` (B, P)."""
    a, e, alpha = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # u = z1 - e with z1 = a - alpha log n; pred = logaddexp(z1, e) = e + softplus(u).
    u = np.multiply(alpha, logn[None, :])
    np.subtract(a - e, u, out=u)
    ex = np.exp(-np.abs(u))
    r = np.log1p(ex)
    r += np.maximum(u, 0.0)
    r += e
    r -= logl
    c = np.clip(r, -delta, delta)  # Huber derivative
    r -= 0.5 * c
    r *= c  # Huber value: c * (r - c / 2)
    # w = sigmoid(u) = d pred / d a, the weight of the power-law term.
    w = np.where(u >= 0, 1.0, ex)
    ex += 1.0
    w /= ex
    w *= c
    ga = np.sum(w, axis=1)
    ge = np.sum(c, axis=1) - ga
    w *= logn[None, :]
    gal = -np.sum(w, axis=1)
    a, e, alpha = x[:, 0], x[:, 1], x[:, 2]
    f = (np.sum(r, axis=1) + np.maximum(alpha - 0.8, 0) - np.minimum(alpha, 0.001)
         + np.maximum(a - 6.5, 0) - np.minimum(e - 0.5, 0))
    ga = ga + (a > 6.5)
    ge = ge - (e < 0.5)
    gal = gal + (alpha > 0.8) - (alpha < 0.001)
    return f, np.stack([ga, ge, gal], axis=1)


def _two_loop(g: np.ndarray, s: np.ndarray, y: np.ndarray, used: int, head: int) -> np.ndarray:
    """L-BFGS direction ``-H g`` for a batch; s, y are (m, B, 3) ring buffers, newest at head-1."""
    q = g.copy()
    order = [(head - 1 - i) % _MEMORY for i in range(used)]
    alphas = []
    for j in order:
        sy = np.sum(s[j] * y[j], axis=1)
        rho = np.where(sy > 0, 1.0 / np.where(sy > 0, sy, 1.0), 0.0)
        al = rho * np.sum(s[j] * q, axis=1)
        q -= al[:, None] * y[j]
        alphas.append((j, rho, al))
    if used:
        j = order[0]
        yy = np.sum(y[j] * y[j], axis=1)
        sy = np.sum(s[j] * y[j], axis=1)
        q *= np.where(yy > 0, sy / np.where(yy > 0, yy, 1.0), 1.0)[:, None]
    for j, rho, al in reversed(alphas):
        be = rho * np.sum(y[j] * q, axis=1)
        q += (al - be)[:, None] * s[j]
    return -q


def batched_lbfgs(x0: np.ndarray, logn: np.ndarray, logl: np.ndarray, delta: float,
                  iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimise each row of ``x0`` against its row of ``logl``; returns (x, f) per problem."""
    x = x0.copy()
    f, g = objective(x, logn, logl, delta)
    batch = x.shape[0]
    s_buf = np.zeros((_MEMORY, batch, 3))
    y_buf = np.zeros((_MEMORY, batch, 3))
    active = np.linalg.norm(g, axis=1) > _TOL
    for it in range(iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        used = min(it, _MEMORY)
        d = _two_loop(g[idx], s_buf[:, idx], y_buf[:, idx], used, it % _MEMORY)
        slope = np.sum(d * g[idx], axis=1)
        bad = ~(slope < 0)
        d[bad] = -g[idx][bad]
        slope[bad] = -np.sum(g[idx][bad] ** 2, axis=1)
        step, f_new, g_new, ok = _backtrack(x[idx], f[idx], d, slope, logn, logl[idx], delta)
        x_new = x[idx] + step[:, None] * d
        slot = it % _MEMORY
        s_buf[slot, idx] = np.where(ok[:, None], x_new - x[idx], 0.0)
        y_buf[slot, idx] = np.where(ok[:, None], g_new - g[idx], 0.0)
        # The reference's (jaxopt) stopping rule: gradient norm below 1e-5. No relative-decrease rule:
        # the objective is ~1e-3 in size, and scipy's ftol would stop the starts far too early.
        x[idx] = np.where(ok[:, None], x_new, x[idx])
        f[idx] = np.where(ok, f_new, f[idx])
        g[idx] = np.where(ok[:, None], g_new, g[idx])
        active[idx] = ok & (np.linalg.norm(g[idx], axis=1) > _TOL)
    return x, f


def _backtrack(x: np.ndarray, f: np.ndarray, d: np.ndarray, slope: np.ndarray, logn: np.ndarray,
               logl: np.ndarray, delta: float) -> tuple[np.ndarray, ...]:
    """Armijo backtracking from step 1, halving; ``ok`` is False where no step decreased f."""
    n = x.shape[0]
    step = np.ones(n)
    f_new = np.full(n, np.nan)
    g_new = np.zeros_like(x)
    ok = np.zeros(n, dtype=bool)
    todo = np.arange(n)
    for _ in range(_MAX_HALVINGS):
        ft, gt = objective(x[todo] + step[todo, None] * d[todo], logn, logl[todo], delta)
        good = np.isfinite(ft) & (ft <= f[todo] + _ARMIJO * step[todo] * slope[todo])
        done = todo[good]
        f_new[done], g_new[done], ok[done] = ft[good], gt[good], True
        todo = todo[~good]
        if todo.size == 0:
            break
        step[todo] *= 0.5
    return step, f_new, g_new, ok


def _polish(x: np.ndarray, logn: np.ndarray, logl: np.ndarray, delta: float,
            iterations: int) -> tuple[np.ndarray, float]:
    def fun(p: np.ndarray) -> tuple[float, np.ndarray]:
        fv, gv = objective(p[None, :], logn, logl[None, :], delta)
        return float(fv[0]), gv[0]

    res = minimize(fun, x, jac=True, method="L-BFGS-B",
                   options={"maxiter": iterations, "gtol": _TOL})
    return np.asarray(res.x, dtype=np.float64), float(res.fun)


def fit_domains(logn: np.ndarray, logl: np.ndarray, settings: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """Best (K, 3) parameters and (K,) objectives for targets ``logl`` (K, P) at ``logn`` (P,)."""
    starts = grid(settings)
    k, g = logl.shape[0], starts.shape[0]
    x0 = np.tile(starts, (k, 1))
    targets = np.repeat(logl, g, axis=0)
    x, f = batched_lbfgs(x0, logn, targets, settings.huber_delta, settings.iterations)
    f = np.where(np.isfinite(f) & np.all(np.isfinite(x), axis=1), f, np.inf).reshape(k, g)
    best = np.argmin(f, axis=1)
    theta = x.reshape(k, g, 3)[np.arange(k), best]
    obj = f[np.arange(k), best]
    for d in range(k):
        if not np.isfinite(obj[d]):
            continue
        px, pf = _polish(theta[d], logn, logl[d], settings.huber_delta, settings.iterations)
        if np.isfinite(pf) and np.all(np.isfinite(px)) and pf < obj[d]:
            theta[d], obj[d] = px, pf
    return theta, obj


def fit(losses: np.ndarray, step_tokens: np.ndarray, ignore: int, unit: int,
        settings: FitSettings) -> FitResult:
    """The whole refit of ADO.md: fill, smooth, subsample, fit; None theta when unusable."""
    points = fit_points(losses, step_tokens, ignore, unit, settings)
    k = losses.shape[1]
    if isinstance(points, str):
        return FitResult(None, np.full(k, np.nan), 0, points)
    logl, logn = points
    theta, obj = fit_domains(logn, logl, settings)
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(obj))):
        return FitResult(None, obj, logn.size, "the fit produced non-finite parameters")
    return FitResult(theta, obj, logn.size, "")
