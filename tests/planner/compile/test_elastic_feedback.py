"""Elastic re-partitioning of a plan with [dynamic]: no waiting, the old plan untouched, feedback goes on.

The old plan's job ran to step 250 with in-process rewrites: decisions 1 and 2 are published, 3 to 5
are pending (wait_timeout_s = 600). Re-partitioning must not wait for them (``time.sleep`` raises
here, so any wait fails the test instead of slowing it), must leave every byte of the old plan as it
was, and the new plan must replay the same global stream and go on deciding from the job's log
exactly as the old plan would have.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mixtera.cli.app import app
from mixtera.planner.compile.elastic import repartition
from mixtera.planner.feedback.orchestrate import inprocess_rewriter
from mixtera.planner.mixture.spec import load_spec
from mixtera.runtime import versions
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import DECISION, QUOTAS, WEIGHTS, log_path, version_path
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import read_decision
from tests.helpers.feedback_plans import make_plan, run_job
from tests.helpers.plan_checks import all_entries

STEPS, SEG, REFIT, STOP = 600, 50, 100, 250
FIELDS = ("step", "component", "position", "token_start", "token_end")


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A dynamic plan whose job stopped at step STOP; returns it and the job's tokens seen so far."""
    plan = make_plan(tmp_path_factory.mktemp("dyn"), steps=STEPS, segment_steps=SEG, refit=REFIT, wait=600)
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        _, seen = run_job(plan, range(STOP), reporter=fb)
    assert [read_decision(plan, v) is not None for v in range(1, 6)] == [True, True, False, False, False]
    return plan, seen


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(seconds: float) -> None:
        raise AssertionError(f"waited {seconds} s for a decision")

    monkeypatch.setattr(versions.time, "sleep", refuse)


def _stream(plan_dir: Path) -> dict[str, np.ndarray]:
    with Plan.open(plan_dir) as plan:
        e = all_entries(plan)
        return {f: getattr(e, f) for f in FIELDS}


def test_repartition_does_not_wait_and_leaves_the_old_plan_unchanged(
        old: tuple[Path, np.ndarray], tmp_path: Path, no_waiting: None) -> None:
    plan, _ = old
    before = _tree_digest(plan)
    new = tmp_path / "new"
    repartition(plan, load_spec(plan.parent / "mixture.toml"), new, world_size=4, from_step=STOP)
    assert _tree_digest(plan) == before
    with Plan.open(new) as p, Plan.open(plan) as o:
        assert p.world_size == 4 and p.manifest["dynamic"] == o.manifest["dynamic"]
        assert p.manifest["elastic"]["from_step"] == STOP
        for v in (1, 2):  # the published decisions, re-addressed to the new plan
            d, od = read_decision(new, v), read_decision(plan, v)
            assert d["fingerprint"] == p.fingerprint
            assert {**d, "fingerprint": None} == {**od, "fingerprint": None}
            for name in (QUOTAS, WEIGHTS):
                mine, theirs = version_path(new, v) / name, version_path(plan, v) / name
                assert mine.read_bytes() == theirs.read_bytes()
        assert not version_path(new, 3).exists()
        recs = read_log(log_path(new), len(p.components), p.fingerprint)
        assert list(recs.step) == list(range(STOP))
    for f, values in _stream(plan).items():  # every segment in the version that holds it now
        assert np.array_equal(values, _stream(new)[f]), f


def test_the_cli_re_partitions_without_waiting(old: tuple[Path, np.ndarray], tmp_path: Path,
                                                no_waiting: None) -> None:
    plan, _ = old
    before = _tree_digest(plan)
    args = ["compile", str(plan.parent / "mixture.toml"), "--from-plan", str(plan), "--from-step", str(STOP),
            "--world-size", "1", "--out", str(tmp_path / "new")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _tree_digest(plan) == before
    assert (version_path(tmp_path / "new", 2) / DECISION).is_file()


def test_feedback_goes_on_in_the_new_plan_as_in_the_old(old: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    plan, seen = old
    new = tmp_path / "new"
    repartition(plan, load_spec(plan.parent / "mixture.toml"), new, world_size=1, from_step=STOP)
    same = shutil.copytree(plan, tmp_path / "old")  # the job had it gone on in the old plan
    for target in (new, same):
        with FeedbackReporter(target, rank=0, on_refit=inprocess_rewriter(target), fsync=False) as fb:
            run_job(target, range(STOP, 3 * REFIT), reporter=fb, seen=seen.copy())
    mine, theirs = read_decision(new, 3), read_decision(same, 3)
    assert mine is not None and theirs is not None and mine["action"] == "rewrite"
    assert json.dumps({**mine, "fingerprint": None}, sort_keys=True) == \
        json.dumps({**theirs, "fingerprint": None}, sort_keys=True)
    for name in (QUOTAS, WEIGHTS):
        assert np.array_equal(np.load(version_path(new, 3) / name), np.load(version_path(same, 3) / name))
    for f, values in _stream(same).items():
        assert np.array_equal(values, _stream(new)[f]), f
