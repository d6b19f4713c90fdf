"""Per-step integer quotas: largest remainder with carry, schedules with ramps, exhaustion policies.

Component ``k`` targets ``D_k(s) = carry_k + sum_{s' <= s} w_k(s') * T`` units after step ``s``. The
plan gives it ``A_k(s)``: ``floor(D_k(s))`` plus one for the ``R(s)`` components with the largest
fractional parts (ties to the lower component id), ``R(s)`` chosen so that the ``A_k(s)`` sum to
``(s + 1) * T``. Step quotas are ``A_k(s) - A_k(s - 1)``, so every prefix of steps is within one
unit of its target (no drift), and the carry ``D - A`` in ``(-1, 1)`` resumes the rounding exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixtera.runtime.errors import ConfigError


def weight_matrix(steps: int, stages: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    """Leaf weights per step from ``(from_step, ramp_steps, weights)`` stages (the first at step 0).

    A ramp moves linearly from the previous weights to the new ones, reaching them at
    ``from_step + ramp_steps``.
    """
    out = np.empty((steps, stages[0][2].size), np.float64)
    prev = stages[0][2]
    for i, (start, ramp, w) in enumerate(stages):
        stop = stages[i + 1][0] if i + 1 < len(stages) else steps
        out[start:stop] = w
        if ramp > 0:
            alpha = (np.arange(start, min(start + ramp, stop)) - start)[:, None] / ramp
            out[start:start + alpha.shape[0]] = prev + alpha * (w - prev)
        prev = w
    return out


def largest_remainder(targets: np.ndarray, carry: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Quotas for ``targets`` (steps x k, rows summing to ``total``) from rounding carry ``carry``.

    Returns (quotas as int64, carry after the last step).
    """
    cum = carry[None, :] + np.cumsum(targets, axis=0)
    base = np.floor(cum)
    frac = cum - base
    rows = np.arange(1, targets.shape[0] + 1)
    # Integer totals: the allocation after step s must hold exactly s * total units (plus the
    # units the carry stood for, which sum to 0).
    need = np.rint(rows * total + carry.sum()).astype(np.int64) - base.sum(axis=1).astype(np.int64)
    order = np.argsort(-frac, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
    alloc = base.astype(np.int64) + (rank < need[:, None])
    quotas = np.diff(alloc, axis=0, prepend=np.zeros((1, alloc.shape[1]), np.int64))
    if quotas.size and quotas.min() < 0:
        # Targets below one unit per step can make the cumulative rounding step back; walk the
        # steps one by one instead, never going below zero.
        return _sequential(targets, carry, total)
    return quotas, cum[-1] - alloc[-1] if len(cum) else carry


def _sequential(targets: np.ndarray, carry: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    quotas = np.zeros(targets.shape, np.int64)
    carry = carry.copy()
    for s in range(targets.shape[0]):
        ideal = targets[s] + carry
        q = np.maximum(np.floor(ideal), 0).astype(np.int64)
        rest = total - int(q.sum())
        order = np.argsort(-(ideal - q), kind="stable")
        if rest < 0:
            order = [i for i in order[::-1] if q[i] > 0]
        for i in order[: abs(rest)]:
            q[i] += 1 if rest > 0 else -1
        quotas[s] = q
        carry = ideal - q
    return quotas, carry


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaPlan:
    quotas: np.ndarray  # (steps, k) int64
    weights: np.ndarray  # (steps, k) float64: the weights in effect (after redistribution)
    exhausted_at: dict[int, int]  # component -> step where `redistribute` took its weight away


def plan_quotas(weights: np.ndarray, total: int, capacity: np.ndarray, policy: list[str],
                names: list[str], unit: str, file: str = "<spec>") -> QuotaPlan:
    """Quotas for every step, applying `error` and `redistribute` against ``capacity`` (one epoch)."""
    steps, k = weights.shape
    weights = weights.copy()
    active = np.ones(k, bool)
    quotas = np.zeros((steps, k), np.int64)
    carry = np.zeros(k, np.float64)
    exhausted: dict[int, int] = {}
    s0 = 0
    while s0 < steps:
        w = weights[s0:][:, active]
        w = w / w.sum(axis=1, keepdims=True)
        weights[s0:] = 0
        weights[s0:, active] = w
        block, _ = largest_remainder(w * total, carry[active], total)
        quotas[s0:, active] = block
        used = np.cumsum(quotas, axis=0)
        _check_errors(used, capacity, policy, names, unit, file)
        over = [(int(np.argmax(used[:, c] > capacity[c])), c) for c in range(k)
                if policy[c] == "redistribute" and active[c] and used[-1, c] > capacity[c]]
        if not over:
            break
        s_star = min(s for s, _ in over)
        gone = [c for s, c in over if s == s_star]
        carry = _carry_before(weights, quotas, s_star, total)
        s0 = _redistribute_step(s_star, gone, active, weights, quotas, carry, capacity, total, names, file)
        exhausted.update({c: s_star for c in gone})
    return QuotaPlan(quotas=quotas, weights=weights, exhausted_at=exhausted)


def _carry_before(weights: np.ndarray, quotas: np.ndarray, s: int, total: int) -> np.ndarray:
    target = (weights[:s] * total).sum(axis=0)
    return target - quotas[:s].sum(axis=0)


def _redistribute_step(s: int, gone: list[int], active: np.ndarray, weights: np.ndarray,
                       quotas: np.ndarray, carry: np.ndarray, capacity: np.ndarray, total: int,
                       names: list[str], file: str) -> int:
    """Step ``s``: exhausted components get what is left of their epoch, the rest goes to the others."""
    left = {c: int(capacity[c] - quotas[:s, c].sum()) for c in gone}
    for c in gone:
        active[c] = False
    if not active.any():
        raise ConfigError(f"{file}: every component is exhausted at step {s} (on_exhausted = "
                          f"'redistribute' for {', '.join(names[c] for c in gone)})",
                          "add data, lower `steps`, or use on_exhausted = 'repeat' for some component")
    quotas[s:] = 0
    for c, n in left.items():
        quotas[s, c] = n
    w = weights[s, active] / weights[s, active].sum()
    rest = total - sum(left.values())
    row, _ = largest_remainder((w * rest)[None, :], carry[active], rest)
    quotas[s, active] = row[0]
    weights[s] = quotas[s] / total
    return s + 1


def _check_errors(used: np.ndarray, capacity: np.ndarray, policy: list[str], names: list[str],
                  unit: str, file: str) -> None:
    for c, p in enumerate(policy):
        if p == "error" and used[-1, c] > capacity[c]:
            step = int(np.argmax(used[:, c] > capacity[c]))
            missing = int(used[-1, c] - capacity[c])
            raise ConfigError(
                f"{file}: component {names[c]!r} runs out of data at step {step}: the plan needs "
                f"{int(used[-1, c])} {unit} from it, it holds {int(capacity[c])} ({missing} {unit} missing)",
                "set on_exhausted = 'repeat' (new shuffled epoch) or 'redistribute', add data, "
                "or lower its weight or `steps`")
