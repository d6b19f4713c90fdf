"""What `Plan.open` checks before anything is replayed: a damaged or edited plan is refused there,
with the file and field named, never replayed as other data or an IndexError later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.index.schema import load_index
from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import PlanError
from mixtera.runtime.plan import CHECKSUMS, Plan
from tests.helpers.plan_checks import write_mixture
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


@pytest.mark.parametrize("value", [10**9, 1, -1, "0", 2.0, None, "not a component"])
def test_a_corrupted_first_row_is_refused_at_open(plan: Path, value: object) -> None:
    if value == "not a component":
        _edit_manifest(plan, lambda m: m["components"].__setitem__(1, value))
    else:
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


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compiled")
    index = write_synthetic_index(root / "index", 400, tokens=(5, 100))
    compile_file(write_mixture(root / "mix.toml", index), root / "plan")
    return root / "plan"


def _copy(plan: Path, tmp: Path) -> Path:
    shutil.copytree(plan, tmp / "plan")
    return tmp / "plan"


@pytest.mark.parametrize("edit", ["seed", "rows", "format_version", "files"])
def test_an_edited_manifest_is_refused_at_open(compiled: Path, tmp_path: Path, edit: str) -> None:
    """Edits that the fingerprint or the layout checks cannot see (a seed, rows moved between
    components) would replay other data: the manifest's checksum refuses them."""
    plan = _copy(compiled, tmp_path)
    def move_row(m: dict) -> None:  # the layout still tiles the table
        a, b = m["components"][0], m["components"][1]
        a["rows"], b["first_row"], b["rows"] = a["rows"] - 1, b["first_row"] - 1, b["rows"] + 1

    changes = {"seed": lambda m: m.__setitem__("seed", m["seed"] + 1), "rows": move_row,
               "format_version": lambda m: m.__setitem__("format_version", "1.0"),
               "files": lambda m: m["files"][0].__setitem__("size", m["files"][0]["size"] + 1)}
    _edit_manifest(plan, changes[edit])
    with pytest.raises(PlanError, match="manifest.json: its content hash .* differs") as err:
        Plan.open(plan)
    assert "recompile" in err.value.hint


def test_a_manifest_that_drops_its_checksums_is_refused(compiled: Path, tmp_path: Path) -> None:
    plan = _copy(compiled, tmp_path)
    _edit_manifest(plan, lambda m: m.pop(CHECKSUMS))
    with pytest.raises(PlanError, match="records no valid checksums"):
        Plan.open(plan)


def test_a_flipped_bit_in_the_sample_table_is_refused_before_anything_is_resolved(compiled: Path,
                                                                                   tmp_path: Path) -> None:
    plan = _copy(compiled, tmp_path)
    data = bytearray((plan / "samples.npy").read_bytes())
    data[len(data) // 2] ^= 0x04  # e.g. a record offset: the wrong bytes of a corpus file
    (plan / "samples.npy").write_bytes(bytes(data))
    bad = r"samples.npy: bytes \d+\.\.\d+ differ from their checksum"
    with Plan.open(plan) as p, pytest.raises(PlanError, match=bad):
        p.step_entries(0, 0)
    with Plan.open(compiled) as p:  # the intact plan resolves
        assert len(p.step_entries(0, 0)) > 0


@pytest.mark.parametrize("name", ["quotas.npy", "weights.npy"])
def test_a_flipped_bit_in_a_step_array_is_refused_by_every_reader(compiled: Path, tmp_path: Path,
                                                                  name: str) -> None:
    """inspect and feedback plan from quotas and weights: a flipped bit there would report, and
    rewrite from, other numbers."""
    from mixtera.planner.report import plan_report

    plan = _copy(compiled, tmp_path)
    data = bytearray((plan / name).read_bytes())
    data[-3] ^= 0x10
    (plan / name).write_bytes(bytes(data))
    with Plan.open(plan) as p, pytest.raises(PlanError, match=rf"{name}: its content hash differs"):
        p.step_array(name)
    with pytest.raises(PlanError, match=rf"{name}: its content hash differs"):
        plan_report(plan)
    with Plan.open(compiled) as p:
        assert p.step_array(name).shape[0] == p.steps


def test_a_format_1_1_plan_without_step_array_checksums_still_opens(compiled: Path, tmp_path: Path) -> None:
    """1.1 recorded checksums of the manifest and samples.npy only; 1.2 must record all four."""
    from mixtera.runtime.plan import manifest_checksum

    plan = _copy(compiled, tmp_path)

    def without_step_array_sums(version: str):
        def edit(m: dict) -> None:
            m["format_version"] = version
            for name in ("quotas.npy", "weights.npy"):
                m[CHECKSUMS].pop(name, None)
            m[CHECKSUMS]["manifest"] = manifest_checksum(m)
        return edit

    _edit_manifest(plan, without_step_array_sums("1.1"))
    with Plan.open(plan) as p:
        assert p.step_array("quotas.npy").shape[0] == p.steps
    _edit_manifest(plan, without_step_array_sums("1.2"))
    with pytest.raises(PlanError, match="records no valid checksums"):
        Plan.open(plan)
