"""ADO against the checks of ADO.md: fit recovery, prior until a valid fit, floor, fixed point, replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixtera.planner.feedback import ado
from mixtera.planner.feedback.ado_fit import FitSettings, fit, objective
from mixtera.planner.feedback.algorithms import History, algorithms, consume
from mixtera.runtime.errors import ConfigError

UNIT = 1024


def _curves(steps: int, eps: np.ndarray, beta: np.ndarray, alpha: np.ndarray, per_step: int
            ) -> tuple[np.ndarray, np.ndarray]:
    step_tokens = np.full(steps, per_step, dtype=np.int64)
    n = np.cumsum(step_tokens) / UNIT
    return eps + beta * n[:, None] ** (-alpha), step_tokens


def _settings(**kw: object) -> FitSettings:
    return ado.AdoParams(**kw).resolved().fit_settings()


def test_noiseless_curves_with_eps_at_least_1_7_are_recovered_within_1_percent() -> None:
    eps = np.array([1.7, 2.3, 3.5])
    beta = np.array([4.0, 30.0, 120.0])
    alpha = np.array([0.15, 0.4, 0.65])
    losses, step_tokens = _curves(1600, eps, beta, alpha, per_step=16 * UNIT)
    res = fit(losses, step_tokens, ignore=1000, unit=UNIT, settings=_settings())
    assert res.reason == "" and res.points == 60
    got = np.stack([np.exp(res.theta[:, 1]), np.exp(res.theta[:, 0]), res.theta[:, 2]])
    np.testing.assert_allclose(got, np.stack([eps, beta, alpha]), rtol=0.01)


def test_log_eps_stops_on_its_bound_when_the_data_pull_eps_below_e_to_the_half() -> None:
    # ADO.md's penalty -min(log eps - 0.5, 0) acts as the bound eps >= e^0.5: curves whose true
    # eps lies below it (here a pure power law and eps = 1.0, losses 3.9-18) fit log eps = 0.5
    # exactly, while a curve with eps above the bound keeps its own (man/mixtera-feedback.md).
    eps = np.array([0.0, 1.0, 2.5])
    beta = np.array([30.0, 30.0, 30.0])
    alpha = np.array([0.2, 0.2, 0.2])
    losses, step_tokens = _curves(1600, eps, beta, alpha, per_step=16 * UNIT)
    assert losses.min() > 2.5
    res = fit(losses, step_tokens, ignore=1000, unit=UNIT, settings=_settings())
    np.testing.assert_allclose(res.theta[:2, 1], 0.5, atol=1e-6)
    assert np.exp(res.theta[2, 1]) == pytest.approx(2.5, rel=0.01)


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    logn = np.log(np.arange(100, 200, 5, dtype=np.float64))
    logl = np.log(2 + 3 * np.exp(logn) ** -0.3)[None, :]
    x = np.array([[1.2, 0.9, 0.35]]) + rng.normal(0, 0.05, (1, 3))
    _, g = objective(x, logn, logl, 1e-3)
    for j in range(3):
        d = np.zeros((1, 3))
        d[0, j] = 1e-7
        num = (objective(x + d, logn, logl, 1e-3)[0] - objective(x - d, logn, logl, 1e-3)[0]) / 2e-7
        assert num[0] == pytest.approx(g[0, j], rel=1e-4, abs=1e-9)


def test_too_few_points_gives_no_theta() -> None:
    losses, step_tokens = _curves(1150, np.array([2.0]), np.array([5.0]), np.array([0.3]), UNIT)
    res = fit(losses, step_tokens, ignore=1000, unit=UNIT, settings=_settings())
    assert res.theta is None and "need 20" in res.reason


def _run(params: ado.AdoParams, mu: np.ndarray, hist: History, refit_every: int
         ) -> tuple[list[np.ndarray], list[dict]]:
    """Drive the policy over a history with refits every ``refit_every`` steps; weights of every step."""
    alg = algorithms["ado"]
    st = alg.initial(mu)
    weights, fits = [st.pi.copy()], []
    for t in range(hist.steps):
        if t and t % refit_every == 0:
            fits.append(alg.refit(params, st, hist.head(t), refit_every))
        st = alg.observe(params, st, hist.tokens[t])
        weights.append(st.pi.copy())
    return weights, fits


def _synthetic_history(steps: int, mu: np.ndarray, seed: int = 0) -> History:
    rng = np.random.default_rng(seed)
    k = mu.size
    tokens = np.rint(np.outer(np.ones(steps), mu) * 32 * UNIT).astype(np.int64)
    n = np.cumsum(tokens.sum(axis=1)) / UNIT
    eps = np.linspace(1.8, 3.0, k)
    beta = np.linspace(5, 40, k)
    mean = eps + beta * n[:, None] ** -np.linspace(0.2, 0.5, k)
    mean = mean * (1 + rng.normal(0, 0.01, mean.shape))
    return History(tokens, mean * tokens, np.ones(steps, dtype=bool))


FAST = dict(refit_every=300, ignore_steps=100, lbfgs_iterations=60)


def test_weights_equal_the_prior_until_the_first_valid_fit_then_sum_to_one_above_the_floor() -> None:
    mu = np.array([0.5, 0.3, 0.15, 0.05])
    params = ado.AdoParams(**FAST).resolved()
    weights, fits = _run(params, mu, _synthetic_history(900, mu), refit_every=300)
    # The refit at step 300 has (300 - 100) / 10 = 20 points: the first valid fit.
    assert [f["accepted"] for f in fits] == [True, True]
    for w in weights[:301]:
        assert np.array_equal(w, mu)
    assert not np.array_equal(weights[302], mu)
    floor = params.delta_min / (1 + mu.size * params.delta_min)
    for w in weights:
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(w >= min(floor, mu.min()) - 1e-15)


def test_prior_kept_while_fits_are_invalid() -> None:
    mu = np.array([0.6, 0.4])
    params = ado.AdoParams(refit_every=100, ignore_steps=1000).resolved()  # never enough points
    weights, fits = _run(params, mu, _synthetic_history(400, mu), refit_every=100)
    assert fits and not any(f["accepted"] for f in fits)
    assert all(np.array_equal(w, mu) for w in weights)


def test_with_theta_held_fixed_weights_converge_to_the_closed_form() -> None:
    mu = np.array([0.4, 0.35, 0.25])
    beta = np.array([3.0, 12.0, 6.0])
    params = ado.AdoParams(s=0.5).resolved()
    st = ado.initial_state(mu)
    st.theta = np.stack([np.log(beta), np.full(3, 0.7), np.full(3, 0.3)], axis=1)  # equal alphas
    g = beta  # with equal alphas and a shared n, g is proportional to beta
    target = (mu * g) ** (1 / (1 - params.s))
    target /= target.sum()
    assert target.min() > params.delta_min  # the floor does not bind here
    errors = []
    for steps in (10000, 30000):  # the batch follows the weights, as a plan's quotas do
        for _ in range(steps):
            st = ado.observe(params, st, np.rint(st.pi * 64 * UNIT).astype(np.int64))
        errors.append(np.abs(st.pi - target).max())
    # pi_bar is a running mean, so the error shrinks like t ** -(1 - s): halves from 10k to 40k steps.
    assert errors[1] < 0.6 * errors[0] and errors[1] < 3e-3


def test_fixed_point_respects_the_floor_when_it_binds() -> None:
    mu = np.array([0.9, 0.1])
    params = ado.AdoParams(s=0.5, delta_min=0.05).resolved()
    st = ado.initial_state(mu)
    st.theta = np.stack([np.log([50.0, 0.01]), np.full(2, 0.7), np.full(2, 0.3)], axis=1)
    for _ in range(20000):
        st = ado.observe(params, st, np.rint(st.pi * 64 * UNIT).astype(np.int64))
    clipped = np.array([1.0, params.delta_min]) / (1 + params.delta_min)
    np.testing.assert_allclose(st.pi, clipped, atol=2e-3)


@pytest.mark.parametrize("variant", ["reference", "mixtera"])
def test_same_log_into_a_fresh_instance_gives_bit_identical_weights(variant: str) -> None:
    mu = np.array([0.5, 0.3, 0.2])
    hist = _synthetic_history(800, mu, seed=7)
    params = ado.AdoParams(variant=variant, **FAST).resolved()
    first, _ = _run(params, mu, hist, 300)
    second, _ = _run(params, mu, hist, 300)
    assert b"".join(w.tobytes() for w in first) == b"".join(w.tobytes() for w in second)
    # A state that went through JSON continues exactly like the one that stayed in memory.
    alg = algorithms["ado"]
    st = consume(alg, params, alg.initial(mu), hist, 300)
    alg.refit(params, st, hist.head(300), 300)
    copy = alg.state_from_json(json.loads(json.dumps(st.to_json())))
    a, b = consume(alg, params, st, hist, 600), consume(alg, params, copy, hist, 600)
    alg.refit(params, a, hist.head(600), 300)
    alg.refit(params, b, hist.head(600), 300)
    a, b = consume(alg, params, a, hist, 800), consume(alg, params, b, hist, 800)
    assert a.to_json() == b.to_json() and a.pi.tobytes() == b.pi.tobytes()
    assert a.pi.tobytes() == first[-1].tobytes()


def test_mixtera_variant_uses_the_smaller_grid_and_no_alpha_floor() -> None:
    p = ado.AdoParams(variant="mixtera").resolved()
    s = p.fit_settings()
    assert len(s.grid_a) * len(s.grid_e) * len(s.grid_alpha) == 384
    assert p.alpha_floor == 0.0 and p.ignore_steps == 500
    r = ado.AdoParams().resolved()
    assert len(r.fit_settings().grid_e) == 8 and r.alpha_floor == 0.05 and r.ignore_steps == 1000


@pytest.mark.parametrize(("field", "value"), [("s", 1.0), ("gamma_h", 0.0), ("delta_min", -0.1),
                                               ("variant", "fancy"), ("savgol_window", 100),
                                               ("refit_every", 0)])
def test_invalid_parameters_are_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ado.AdoParams(**{field: value}).validate()


def test_dynamic_table_keys_are_checked_with_a_suggestion() -> None:
    from mixtera.planner.mixture.dynamic import parse_dynamic

    spec = parse_dynamic({"algorithm": "ado", "gamma": 0.2, "refit_every": 500, "s": 0.3}, segment_steps=100)
    assert spec.params.gamma_h == 0.2 and spec.params.gamma_pi == 0.2 and spec.params.s == 0.3
    assert spec.params.ignore_steps == 1000 and spec.refit_every == spec.params.refit_every == 500
    with pytest.raises(ConfigError, match="did you mean 'subsample'"):
        parse_dynamic({"algorithm": "ado", "subsampel": 2})
    with pytest.raises(ConfigError, match="smaller than segment_steps"):
        parse_dynamic({"algorithm": "loss_proportional", "refit_every": 50}, segment_steps=100)
    with pytest.raises(ConfigError, match="on_missing"):
        parse_dynamic({"algorithm": "ado", "on_missing": "retry"})
