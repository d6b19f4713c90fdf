"""What `Plan.open` checks before anything is replayed: a damaged or edited plan is refused there,
with the file and field named, never replayed as other data or an IndexError later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mixtera.planner.index.schema import load_index
from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import PlanError
from mixtera.runtime.plan import Plan
from tests.helpers.small_plan import WORLD, small_plan
from tests.helpers.synthetic_index import write_synthetic_index


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


@pytest.mark.parametrize("crafted", ["../outside/a.jsonl", "web/../../outside/a.jsonl", "ABS"])
def test_a_corpus_path_outside_the_corpus_root_is_never_read(tmp_path: Path, tiny_tokenizer: Path,
                                                             crafted: str) -> None:
    """A crafted plan naming a file outside the corpus (a copy of a real one, so that its size,
    mtime and hash match) is refused, not read and returned."""
    plan = small_plan(tmp_path, tiny_tokenizer).path
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(tmp_path / "corpus" / "web" / "a.jsonl", outside / "a.jsonl")
    path = str(outside / "a.jsonl") if crafted == "ABS" else crafted
    _edit_manifest(plan, lambda m: next(f for f in m["files"] if f["path"] == "web/a.jsonl")
                   .__setitem__("path", path))
    ds = PlanDataset(plan, rank=0, world_size=WORLD, output="documents")
    with pytest.raises(PlanError, match=r"manifest.json: file \d+: corpus file path .* leaves the corpus"):
        list(ds.loader(num_workers=0))


@pytest.mark.parametrize(("field", "value"), [("corpus_root", "relative/corpus"),
                                              ("corpus_root", "/a/../b"),
                                              ("token_files", {"dir": "/somewhere/else"}),
                                              ("token_files", {"dir": "/x/../tokens"})])
def test_recorded_folders_must_be_absolute_without_dotdot(tmp_path: Path, tiny_tokenizer: Path,
                                                          field: str, value: object) -> None:
    plan = small_plan(tmp_path, tiny_tokenizer).path
    _edit_manifest(plan, lambda m: m.__setitem__(field, value))
    with pytest.raises(PlanError, match=f"manifest.json: {field}"):
        ds = PlanDataset(plan, rank=0, world_size=WORLD, tokenizer=tiny_tokenizer, pretokenized=True)
        list(ds.loader(num_workers=0))


def test_an_index_whose_paths_leave_the_corpus_root_is_refused_by_compile(tmp_path: Path) -> None:
    index = tmp_path / "index"
    write_synthetic_index(index, 50, seed=1)
    manifest = json.loads((index / "manifest.json").read_bytes())
    manifest["files"][0]["path"] = "../../x/secret.jsonl"
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PlanError, match=r"files\[0\]: corpus file path '../../x/secret.jsonl' leaves"):
        load_index(index)
