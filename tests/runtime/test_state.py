"""The runtime state dict: field types checked, and a resume refused when the plan's decisions changed."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixtera.runtime.dataset import PlanDataset
from mixtera.runtime.errors import MixteraUserError, PlanError, StateError
from mixtera.runtime.plan import read_manifest
from mixtera.runtime.state import RuntimeState
from mixtera.runtime.versions import DecisionSchedule, keep_decision, publish_version
from tests.helpers.feedback_plans import make_plan

GOOD = RuntimeState(plan_fingerprint="ab" * 16, world_size=2, rank=0, tokenizer_blake2b=None,
                    output="documents", next_step=5).to_dict()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("next_step", "5", "'next_step' is '5' (str), not an integer >= 0"),
    ("next_step", 5.5, "'next_step' is 5.5 (float), not an integer"),
    ("next_step", True, "'next_step' is True (bool)"),
    ("rank", "0", "'rank' is '0' (str)"),
    ("world_size", 0, "'world_size' is 0 (int), not an integer >= 1"),
    ("stride", -1, "'stride' is -1"),
    ("plan_fingerprint", 7, "'plan_fingerprint' is 7 (int), not a string"),
    ("decisions", {"1": 3}, "'decisions'"),
    ("decisions", {"x": "y"}, "'decisions'"),
])
def test_a_field_of_the_wrong_type_is_named(field: str, value: object, message: str) -> None:
    with pytest.raises(StateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RuntimeState.from_dict({**GOOD, field: value})


def test_a_missing_field_is_named() -> None:
    with pytest.raises(StateError, match="incomplete: next_step missing"):
        RuntimeState.from_dict({k: v for k, v in GOOD.items() if k != "next_step"})


def test_a_state_round_trips() -> None:
    assert RuntimeState.from_dict(GOOD).to_dict() == GOOD


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.text(max_size=3)))


@given(st.dictionaries(st.sampled_from(sorted(GOOD)), _VALUES, max_size=len(GOOD)), st.booleans())
def test_any_state_dict_is_a_state_or_a_user_error(fields: dict[str, object], on_good: bool) -> None:
    state = {**GOOD, **fields} if on_good else fields
    with contextlib.suppress(MixteraUserError):
        RuntimeState.from_dict(state)


@pytest.fixture(scope="module")
def dynamic_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plan(tmp_path_factory.mktemp("dyn"), steps=200, segment_steps=50, refit=50, samples=800)


def _publish_keep(plan: Path, version: int, reason: str) -> None:
    manifest = read_manifest(plan)
    sched = DecisionSchedule.from_manifest(manifest)
    assert sched is not None
    body = keep_decision(sched, version, version - 1, manifest["fingerprint"], reason)
    assert publish_version(plan, version,
                           lambda stage: (stage / "decision.json").write_text(json.dumps(body)))


def test_a_resume_is_refused_when_the_decisions_it_replayed_are_gone_or_differ(dynamic_plan: Path) -> None:
    _publish_keep(dynamic_plan, 1, "first")
    ds = PlanDataset(dynamic_plan, rank=0, world_size=2, output="documents")
    first = DecisionSchedule.from_manifest(read_manifest(dynamic_plan)).first_segment(1) * 50
    ds.load_state_dict({**ds.state_dict(), "next_step": first + 1})
    state = ds.state_dict()
    assert list(state["decisions"]) == ["1"]
    PlanDataset(dynamic_plan, rank=0, world_size=2, output="documents").load_state_dict(state)

    early = {**state, "next_step": first, "decisions": {}}  # before decision 1 governs: nothing to check
    shutil.rmtree(dynamic_plan / "versions")  # what a recompile onto the folder used to do
    PlanDataset(dynamic_plan, rank=0, world_size=2, output="documents").load_state_dict(early)
    with pytest.raises(StateError, match=r"v000001: decision 1, .* is gone") as err:
        PlanDataset(dynamic_plan, rank=0, world_size=2, output="documents").load_state_dict(state)
    assert "restore" in str(err.value)
    _publish_keep(dynamic_plan, 1, "another decision")
    with pytest.raises(StateError, match="differs from the one the job replayed"):
        PlanDataset(dynamic_plan, rank=0, world_size=2, output="documents").load_state_dict(state)


def test_a_rank_of_the_wrong_type_is_named(dynamic_plan: Path) -> None:
    with pytest.raises(PlanError, match=r"rank='0' \(str\) must be an integer"):
        PlanDataset(dynamic_plan, rank="0", world_size=2, output="documents")  # type: ignore[arg-type]
    from mixtera.runtime.feedback import FeedbackReporter

    with pytest.raises(MixteraUserError, match=r"FeedbackReporter\(rank='0'\)"):
        FeedbackReporter(dynamic_plan, rank="0")  # type: ignore[arg-type]


def test_a_killed_writer_s_version_stage_is_removed_by_the_next_publish(dynamic_plan: Path) -> None:
    import subprocess
    import sys

    from mixtera.runtime import atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = atomic._owner().rsplit(".", 1)[0]
    (dynamic_plan / "versions").mkdir(exist_ok=True)
    stale = dynamic_plan / "versions" / f".v000002.{host}.{dead}.{'e' * 12}.staging"
    stale.mkdir()
    (stale / "rank-00000.bin").write_bytes(b"x" * 100)
    _publish_keep(dynamic_plan, 2, "after a crash")
    assert not stale.exists() and (dynamic_plan / "versions" / "v000002" / "decision.json").is_file()


def test_a_version_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(StateError, match="runtime state version True"):
        RuntimeState.from_dict({**GOOD, "version": True})
