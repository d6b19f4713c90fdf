"""Done-when: a plan over the real corpora in ../shared, indexed with the gpt-neox tokenizer.

Checks from the decoded plan: every step's per-component token counts meet the targets, no (sample,
token range) repeats within an epoch, two compiles are byte-identical, elastic re-partitioning
preserves the global order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.elastic import repartition
from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.mixture.spec import load_spec
from mixtera.runtime.plan import Plan
from tests.helpers import ROOT
from tests.helpers.plan_checks import (
    all_entries,
    assert_sequences_exact,
    assert_streams_contiguous,
    per_step_units,
    plan_bytes,
)

MIXTURES = ROOT / "examples" / "mixtures"
pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_mixture(tmp_path_factory: pytest.TempPathFactory, shared_corpora: Path,
                   neox_tokenizer: Path) -> Path:
    from mixtera.planner.index import build_index

    tmp = tmp_path_factory.mktemp("shared")
    build_index([shared_corpora / "text"], tmp / "index", ROOT / "examples" / "shared_corpora_index.toml",
                tokenizer=neox_tokenizer, processes=2)
    text = (MIXTURES / "shared_corpora.toml").read_text()
    mix = tmp / "mix.toml"
    mix.write_text(text.replace('index = "../../build/shared_index"', f'index = "{tmp / "index"}"'))
    return mix


@pytest.fixture(scope="module")
def shared_plan(shared_mixture: Path) -> Path:
    compile_file(shared_mixture, shared_mixture.parent / "plan")
    return shared_mixture.parent / "plan"


def test_every_step_meets_the_targets(shared_plan: Path) -> None:
    with Plan.open(shared_plan) as plan:
        assert plan.manifest["tokenizer"]["name"] and plan.eos
        units = per_step_units(plan)
        weights = np.load(shared_plan / "weights.npy")
        total = plan.world_size * plan.batch_size * plan.seq_len
        assert (units.sum(axis=1) == total).all()
        assert np.abs(units - weights * total).max() < 2  # each step within rounding
        assert np.abs(np.cumsum(units, axis=0) - np.cumsum(weights * total, axis=0)).max() < 1
        assert_sequences_exact(plan)


def test_no_sample_token_range_repeats_within_an_epoch(shared_plan: Path) -> None:
    with Plan.open(shared_plan) as plan:
        assert_streams_contiguous(plan)
        e = all_entries(plan)
        for c in plan.components:
            sel = e.component == c.id
            epoch = e.position[sel] // c.rows
            for ep in np.unique(epoch):
                m = epoch == ep
                rows, starts, ends = e.row[sel][m], e.token_start[sel][m], e.token_end[sel][m]
                keys = set(zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True))
                assert len(keys) == int(m.sum()), f"{c.name}: a (sample, token range) repeats in epoch {ep}"


def test_two_compiles_are_byte_identical(shared_mixture: Path, shared_plan: Path) -> None:
    compile_file(shared_mixture, shared_mixture.parent / "again")
    assert plan_bytes(shared_mixture.parent / "again") == plan_bytes(shared_plan)


def test_elastic_preserves_the_global_order(shared_mixture: Path, shared_plan: Path) -> None:
    new = shared_mixture.parent / "elastic"
    repartition(shared_plan, load_spec(shared_mixture), new, world_size=8, from_step=10)
    with Plan.open(shared_plan) as old, Plan.open(new) as plan:
        a, b = all_entries(old), all_entries(plan)
        for f in ("step", "component", "position", "row", "token_start", "token_end"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert plan.world_size == 8 and plan.batch_size == 1
