"""`mixtera compile --processes N`: the same plan bytes for any N, and start states from quotas alone."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.parallel import segment_starts
from mixtera.planner.compile.pipeline import compile_file, needed_columns
from mixtera.planner.compile.plan_arrays import compile_plan
from mixtera.planner.index import load_index
from mixtera.planner.mixture.spec import load_spec
from tests.helpers.synthetic_index import scale_mixture, write_scale_index

COMPONENTS = 5


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scale_index(tmp_path_factory.mktemp("idx") / "index", 150, components=COMPONENTS,
                             files=7, tokens=(3, 60))


def _mixture(tmp: Path, index: Path, unit: str) -> Path:
    # 60 steps of 3 ranks x 2 x 16 tokens (or samples) take every component through new shuffled
    # epochs (150 documents of ~32 tokens), and segments of 7 steps leave a shorter last one.
    extra = f'unit = "{unit}"\n' if unit == "samples" else ""
    text = scale_mixture(index, 60, components=COMPONENTS, world_size=3, batch_size=2, seq_len=16,
                         segment_steps=7).replace("seed = 1\n", "seed = 1\n" + extra)
    text = text.replace('weight = "natural"', 'weight = "natural"\non_exhausted = "repeat"')
    path = tmp / f"{unit}.toml"
    path.write_text(text)
    return path


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors


@pytest.mark.parametrize("unit", ["tokens", "samples"])
def test_any_process_count_writes_the_same_bytes(tmp_path: Path, index: Path, unit: str) -> None:
    mixture = _mixture(tmp_path, index, unit)
    _, one = compile_file(mixture, tmp_path / "p1")
    assert one.entries > 0
    for n in (2, 3):
        _, written = compile_file(mixture, tmp_path / f"p{n}", processes=n)
        assert written.entries == one.entries
        _same_tree(tmp_path / "p1", tmp_path / f"p{n}")


@pytest.mark.parametrize("unit", ["tokens", "samples"])
def test_segment_starts_from_quotas_match_sequential_packing(tmp_path: Path, index: Path, unit: str) -> None:
    spec = load_spec(_mixture(tmp_path, index, unit))
    plan = compile_plan(spec, load_index(index))
    assert min(c.epochs for c in plan.components) > 1.1
    sequential = [state for state, _ in plan.blocks()]
    computed = segment_starts(plan)
    assert len(computed) == len(sequential) == 9
    assert any(int(s.consumed.sum()) for s in sequential) == (unit == "tokens")  # documents cut at starts
    for a, b in zip(sequential, computed, strict=True):
        assert a.step == b.step
        np.testing.assert_array_equal(a.position, b.position)
        np.testing.assert_array_equal(a.consumed, b.consumed)
        np.testing.assert_array_equal(a.carry, b.carry)


def test_only_the_columns_a_where_names_are_read(tmp_path: Path, index: Path) -> None:
    mixture = _mixture(tmp_path, index, "tokens")
    assert "text_bytes" not in needed_columns(load_spec(mixture))
    mixture.write_text(mixture.read_text().replace("where = \"source == 'c00'\"",
                                                   "where = \"source == 'c00' and text_bytes > 50\""))
    assert "text_bytes" in needed_columns(load_spec(mixture))
    _, written = compile_file(mixture, tmp_path / "plan")  # the reserved filter column is loaded
    assert written.entries > 0
