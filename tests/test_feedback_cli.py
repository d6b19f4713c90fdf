"""`mixtera feedback` and the feedback part of `mixtera inspect`, through the CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from feedback_plans import make_plan, run_job
from typer.testing import CliRunner

import runtime.versions as versions
from mixtera_cli.app import app
from planner.feedback import feedback_lock
from runtime.versions import read_decision

runner = CliRunner()


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    versions._resolvers.clear()
    return make_plan(tmp_path, steps=600, segment_steps=50, refit=200, wait=60)


def test_feedback_decides_what_the_log_allows_and_says_what_is_pending(plan: Path) -> None:
    run_job(plan, range(240))
    res = runner.invoke(app, ["feedback", str(plan), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [d["version"] for d in report["decisions"]] == [1]
    assert report["decisions"][0]["action"] == "rewrite" and report["pending"] == 1
    assert report["next_refit_step"] == 400 and report["log_steps"] == 240
    again = json.loads(runner.invoke(app, ["feedback", str(plan), "--json"]).stdout)
    assert again["decisions"] == []  # idempotent: version 1 is published once


def test_a_second_feedback_process_exits_1_with_a_hint(plan: Path) -> None:
    with feedback_lock(plan):
        res = runner.invoke(app, ["feedback", str(plan)])
    assert res.exit_code == 1
    assert "another feedback process" in res.stderr and "hint:" in res.stderr


def test_follow_decides_beside_a_running_job_until_the_last_decision(plan: Path) -> None:
    job = threading.Thread(target=run_job, args=(plan, range(600)))
    job.start()
    res = runner.invoke(app, ["feedback", str(plan), "--follow", "--poll", "0.05", "--json"])
    job.join()
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(o["version"], o["action"]) for o in lines] == [(1, "rewrite"), (2, "rewrite")]
    assert read_decision(plan, 2)["first_step"] == 450


def test_inspect_shows_the_weight_trajectory_and_plots_it(plan: Path, tmp_path: Path) -> None:
    run_job(plan, range(240))
    runner.invoke(app, ["feedback", str(plan)])
    res = runner.invoke(app, ["inspect", str(plan), "--json", "--plot", str(tmp_path / "mix.png")])
    assert res.exit_code == 0, res.output
    fb = json.loads(res.stdout)["feedback"]
    assert fb["algorithm"] == "ado" and fb["decisions_total"] == 2
    assert fb["decisions"][0]["weights"] == read_decision(plan, 1)["weights"]
    assert fb["segment_shares"][0] == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=1e-3)
    assert fb["segment_shares"][5] == pytest.approx(read_decision(plan, 1)["weights"], abs=0.02)
    assert (tmp_path / "mix.png").stat().st_size > 1000
    text = runner.invoke(app, ["inspect", str(plan)], env={"NO_COLOR": "1", "COLUMNS": "200"}).stdout
    assert "feedback: ado" in text and "1 of 2 decisions" in text
