"""A damaged index manifest or a missing table is named precisely (field, file), never a KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtera.planner.index import load_index
from mixtera.runtime.errors import PlanError
from tests.helpers.synthetic_index import write_synthetic_index


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return write_synthetic_index(tmp_path / "index", 50)


def _edit(index: Path, edit) -> None:  # noqa: ANN001 - a function of the manifest dict
    manifest = json.loads((index / "manifest.json").read_text())
    edit(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("properties"), "field 'properties' is missing"),
    (lambda m: m.update(properties=[]), "field 'properties' is list, not dict"),
    (lambda m: m.update(properties={"x": {"type": "complex"}}), "property 'x' has no type among"),
    (lambda m: m["counts"].pop("samples"), "field counts.'samples' is missing"),
    (lambda m: m["files"][0].update(path=7), "field files[0].'path' is int, not str"),
    (lambda m: m["files"][0].update(size=True), "field files[0].'size' is bool, not int"),
    (lambda m: m.update(files=[1]), "files[0] is int, not an object"),
])
def test_a_damaged_manifest_names_the_field(index: Path, edit, message: str) -> None:  # noqa: ANN001
    _edit(index, edit)
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_index(index)
    assert str(index / "manifest.json") in err.value.message and "mixtera index" in (err.value.hint or "")


@pytest.mark.parametrize("table", ["samples.parquet", "files.parquet"])
def test_a_missing_table_is_named(index: Path, table: str) -> None:
    (index / table).unlink()
    with pytest.raises(PlanError, match=f"is incomplete: {table} is missing"):
        load_index(index)
