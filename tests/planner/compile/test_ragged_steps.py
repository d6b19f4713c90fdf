"""Any number of steps: the last segment may be shorter than ``segment_steps``.

Users derive steps from a token budget (1562 steps, not 1600), so compile, feedback rewrites, inspect
and elastic re-partitioning all have to handle a short last segment. The runtime's resume over a short
last segment is covered by tests/runtime/test_resume.py (its plan has 7 steps in segments of 3).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.elastic import repartition
from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.feedback.orchestrate import inprocess_rewriter
from mixtera.planner.mixture.spec import load_spec
from mixtera.planner.report import plan_report
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.format.plan_dir import version_path
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import read_decision
from tests.helpers.feedback_plans import Replay, make_plan, run_job
from tests.helpers.plan_checks import all_entries, assert_streams_contiguous, per_step_units, write_mixture
from tests.helpers.synthetic_index import write_synthetic_index

STEPS, SEG, REFIT = 1190, 50, 200  # 23 segments of 50 and a last one of 40


@pytest.fixture(scope="module")
def static_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ragged")
    index = write_synthetic_index(tmp / "index", 300, tokens=(5, 100), seed=3)
    compile_file(write_mixture(tmp / "mix.toml", index, steps=23, segment_steps=5), tmp / "plan")
    return tmp / "plan"


def test_the_last_segment_holds_the_remaining_steps(static_plan: Path) -> None:
    with Plan.open(static_plan) as plan:
        assert (plan.steps, plan.segment_count) == (23, 5)
        assert [s["steps"] for s in plan.manifest["segments"]] == [5, 5, 5, 5, 3]
        assert plan.segment(0, 4).first_step == 20
        units = per_step_units(plan)
        assert units.shape == (23, 4)  # web, code, rest.de, rest.other
        assert np.all(units.sum(axis=1) == plan.world_size * plan.batch_size * plan.seq_len)
        assert np.array_equal(units, np.load(static_plan / "quotas.npy"))
        assert_streams_contiguous(plan)


def test_inspect_reports_every_step(static_plan: Path) -> None:
    report = plan_report(static_plan)
    assert (report["steps"], report["segments"], report["segment_steps"]) == (23, 5, 5)


@pytest.mark.parametrize("from_step", [0, 21])
def test_elastic_repartition_keeps_the_short_last_segment(tmp_path: Path, static_plan: Path,
                                                          from_step: int) -> None:
    new = tmp_path / "new"
    repartition(static_plan, load_spec(static_plan.parent / "mix.toml"), new, world_size=2,
                from_step=from_step)
    with Plan.open(new) as plan, Plan.open(static_plan) as old:
        assert [s["steps"] for s in plan.manifest["segments"]] == [5, 5, 5, 5, 3]
        a, b = all_entries(old), all_entries(plan)
        for field in ("step", "component", "position", "token_start", "token_end"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field


@pytest.fixture(scope="module")
def dynamic_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    plan = make_plan(tmp_path_factory.mktemp("ragged-ado"), steps=STEPS, segment_steps=SEG, refit=REFIT)
    shutil.rmtree(plan.parent / "index")  # the plan holds all it needs
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        counts, _ = run_job(plan, range(STEPS), reporter=fb)
    return plan, counts


def test_feedback_rewrites_reach_the_short_last_segment(dynamic_job: tuple[Path, list[np.ndarray]]) -> None:
    plan, counts = dynamic_job
    decisions = [read_decision(plan, v) for v in range(1, 6)]
    assert [d["action"] for d in decisions] == ["rewrite"] * 5
    assert [d["first_step"] for d in decisions] == [250, 450, 650, 850, 1050]
    last = decisions[-1]["segments"][-1]
    assert (last["index"], last["first_step"], last["steps"]) == (23, 1150, 40)
    quotas = np.load(version_path(plan, 5) / "quotas.npy")
    assert quotas.shape[0] == STEPS - 1050 and np.all(quotas.sum(axis=1) == 2 * 2 * 64)
    # What the job replayed at every step, the short last segment included, is what governed it.
    assert len(counts) == STEPS
    assert np.array_equal(counts[-1], quotas[-1])
    with Plan.open(plan) as opened:
        replay = Replay(opened)
        for step in (1149, 1150, STEPS - 1):
            assert replay.step_tokens(step).sum() == 2 * 2 * 64
    report = plan_report(plan)
    assert report["segments"] == 24 and report["steps"] == STEPS
