"""Compiling onto an existing plan: only what a compile wrote is replaced, feedback state only on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixtera.planner.compile.pipeline import compile_file
from mixtera.runtime.errors import PlanError
from tests.helpers.plan_checks import plan_bytes, write_mixture
from tests.helpers.synthetic_index import write_synthetic_index


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_index(tmp_path_factory.mktemp("idx") / "index", 300, tokens=(5, 100))


def _compile(tmp: Path, index: Path, **kw: bool) -> Path:
    compile_file(write_mixture(tmp / "mix.toml", index), tmp / "plan", **kw)
    return tmp / "plan"


def _with_feedback_state(plan: Path) -> None:
    (plan / "feedback").mkdir()
    (plan / "feedback" / "log.bin").write_bytes(b"losses")
    (plan / "versions" / "v000001").mkdir(parents=True)
    (plan / "versions" / "v000001" / "decision.json").write_text("{}")


def test_feedback_state_is_kept_unless_replacing_it_is_asked_for(tmp_path: Path, index: Path) -> None:
    plan = _compile(tmp_path, index)
    _with_feedback_state(plan)
    before = plan_bytes(plan)
    with pytest.raises(PlanError, match=r"feedback state \(feedback/log.bin, versions/v000001\)") as err:
        _compile(tmp_path, index)
    assert "--replace-feedback-state" in str(err.value)
    assert plan_bytes(plan) == before and (plan / "feedback" / "log.bin").read_bytes() == b"losses"
    _, written = compile_file(tmp_path / "mix.toml", plan, replace_feedback_state=True)
    assert written.replaced_state == ("feedback/log.bin", "versions/v000001")
    assert not (plan / "feedback").exists() and not (plan / "versions").exists()


def test_files_mixtera_did_not_write_are_named_and_kept(tmp_path: Path, index: Path) -> None:
    plan = _compile(tmp_path, index)
    (plan / "notes.txt").write_text("mine")
    with pytest.raises(PlanError, match=r"files mixtera did not write \(notes.txt\)"):
        _compile(tmp_path, index, replace_feedback_state=True)
    assert (plan / "notes.txt").read_text() == "mine"


def test_the_frame_cache_moves_into_the_new_plan(tmp_path: Path, index: Path) -> None:
    plan = _compile(tmp_path, index)
    (plan / ".cache").mkdir()
    (plan / ".cache" / "ab.mxz").write_bytes(b"frames")
    (plan / "feedback").mkdir()
    (plan / "feedback" / "lock").write_text("12\n")  # a lock alone is no feedback state
    _compile(tmp_path, index)
    assert (plan / ".cache" / "ab.mxz").read_bytes() == b"frames"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
