"""What `Plan.open` checks before anything is replayed: a damaged or edited plan is refused there,
with the file and field named, never replayed as other data or an IndexError later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtera.runtime.errors import PlanError
from mixtera.runtime.plan import Plan
from tests.helpers.small_plan import small_plan


@pytest.fixture
def plan(tmp_path: Path, tiny_tokenizer: Path) -> Path:
    return small_plan(tmp_path, tiny_tokenizer).path


def _edit_manifest(plan: Path, edit) -> None:
    path = plan / "manifest.json"
    manifest = json.loads(path.read_bytes())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("value", [10**9, 1, -1, "0", 2.0, None])
def test_a_corrupted_first_row_is_refused_at_open(plan: Path, value: object) -> None:
    _edit_manifest(plan, lambda m: m["components"][1].__setitem__("first_row", value))
    with pytest.raises(PlanError, match=r"manifest.json: component 1 .*first_row") as err:
        Plan.open(plan)
    assert "recompile" in err.value.hint


def test_components_that_do_not_cover_the_sample_table_are_refused(plan: Path) -> None:
    _edit_manifest(plan, lambda m: m["components"][-1].__setitem__("rows", m["components"][-1]["rows"] - 1))
    with pytest.raises(PlanError, match=r"own \d+ rows, .*samples.npy holds"):
        Plan.open(plan)
