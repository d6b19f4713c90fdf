"""Rank splits: elastic re-partitioning keeps the global order; any split covers every entry once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixtera.planner.compile.elastic import repartition
from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.compile.quotas import largest_remainder
from mixtera.planner.mixture.spec import load_spec
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.plan import Plan
from tests.helpers.plan_checks import all_entries, global_step, write_mixture
from tests.helpers.synthetic_index import write_synthetic_index

FIELDS = ("component", "position", "row", "token_start", "token_end")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_index(tmp_path_factory.mktemp("idx") / "index", 300, tokens=(5, 100), seed=3)


@pytest.fixture(scope="module")
def old_plan(tmp_path_factory: pytest.TempPathFactory, index: Path) -> Path:
    tmp = tmp_path_factory.mktemp("old")
    compile_file(write_mixture(tmp / "mix.toml", index, world_size=4, batch_size=4), tmp / "plan")
    return tmp / "plan"


def stream(plan_dir: Path) -> dict[str, np.ndarray]:
    with Plan.open(plan_dir) as plan:
        e = all_entries(plan)
        return {f: getattr(e, f) for f in (*FIELDS, "step")}


@pytest.mark.parametrize("world_size", [1, 2, 8, 16])
def test_elastic_keeps_the_global_order(tmp_path: Path, old_plan: Path, world_size: int) -> None:
    new = tmp_path / "new"
    repartition(old_plan, load_spec(old_plan.parent / "mix.toml"), new, world_size=world_size, from_step=7)
    old_stream, new_stream = stream(old_plan), stream(new)
    for f in (*FIELDS, "step"):
        assert np.array_equal(old_stream[f], new_stream[f]), f
    with Plan.open(new) as plan, Plan.open(old_plan) as old:
        assert plan.world_size == world_size and plan.batch_size == 16 // world_size
        assert plan.manifest["elastic"]["from_step"] == 7
        assert plan.fingerprint != old.fingerprint
        assert plan.manifest["segments"][1]["start_state"] == old.manifest["segments"][1]["start_state"]
        for s in range(plan.steps):  # every rank still gets batch_size full sequences
            for r in range(world_size):
                e = plan.step_entries(r, s)
                assert (e.token_end - e.token_start).sum() == plan.batch_size * plan.seq_len


def test_elastic_refuses_an_indivisible_global_batch(tmp_path: Path, old_plan: Path) -> None:
    with pytest.raises(ConfigError, match="global batch of 16 sequences .* is not divisible by it"):
        repartition(old_plan, load_spec(old_plan.parent / "mix.toml"), tmp_path / "new", world_size=3,
                    from_step=0)
    assert not (tmp_path / "new").exists()


def test_elastic_refuses_another_mixture(tmp_path: Path, old_plan: Path, index: Path) -> None:
    other = write_mixture(tmp_path / "other.toml", index, seed=99, world_size=4, batch_size=4)
    with pytest.raises(ConfigError, match=r"differs from the one .* was compiled from \(in seed\)"):
        repartition(old_plan, load_spec(other), tmp_path / "new", world_size=2, from_step=0)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([(1, 8), (2, 4), (4, 2), (8, 1)]), st.sampled_from(["tokens", "samples"]))
def test_any_rank_split_covers_every_planned_entry_once(tmp_path_factory: pytest.TempPathFactory, index: Path,
                                                         split: tuple[int, int], unit: str) -> None:
    """Compiling for W ranks x B per rank gives the same global stream for every W * B = 8, and the
    ranks' entries of a step are exactly that step's stream, each once."""
    tmp = tmp_path_factory.mktemp("split")
    world, batch = split
    plans = {}
    for w, b in ((1, 8), (world, batch)):
        mix = write_mixture(tmp / f"m{w}.toml", index, world_size=w, batch_size=b, unit=unit,
                            seq_len=64 if unit == "tokens" else 0, steps=10)
        compile_file(mix, tmp / f"p{w}")
        plans[w] = tmp / f"p{w}"
    ref, got = stream(plans[1]), stream(plans[world])
    with Plan.open(plans[world]) as plan:
        for s in range(plan.steps):
            step = global_step(plan, s)
            sel = ref["step"] == s
            for f in FIELDS:
                assert np.array_equal(getattr(step, f), ref[f][sel]), (s, f)
    for f in FIELDS:
        assert np.array_equal(got[f], ref[f])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=8), st.integers(1, 5000), st.integers(1, 40))
def test_largest_remainder_is_exact_and_never_drifts(raw: list[float], total: int, steps: int) -> None:
    w = np.array(raw) / sum(raw)
    targets = np.tile(w * total, (steps, 1))
    q, carry = largest_remainder(targets, np.zeros(w.size), total)
    assert (q >= 0).all() and (q.sum(axis=1) == total).all()
    drift = np.abs(np.cumsum(q, axis=0) - np.cumsum(targets, axis=0))
    assert drift.max() < (1 + 1e-6 if (w * total >= 1).all() else 2 + 1e-6)
    assert np.abs(carry).max() < 2
