"""`mixtera feedback` and the feedback part of `mixtera inspect`, through the CLI."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import mixtera.runtime.versions as versions
from mixtera.cli.app import app
from mixtera.cli.inspect_feedback import render_feedback
from mixtera.planner.feedback.orchestrate import feedback_lock
from mixtera.runtime.format.plan_dir import version_path
from mixtera.runtime.format.rank_file import RankFileReader
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import read_decision
from tests.helpers.feedback_plans import make_plan, run_job

runner = CliRunner()


@pytest.fixture
def plan(tmp_path: Path) -> Path:
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
    assert "feedback: ado" in text and "1 of 2 published" in text


def _replayed_tokens(plan: Path) -> tuple[np.ndarray, int]:
    """Per-step, per-domain tokens decoded from the rank files each segment is replayed from."""
    manifest = json.loads((plan / "manifest.json").read_bytes())
    seg, k_dom = manifest["segment_steps"], len(manifest["components"])
    resolver = versions.VersionResolver(plan, manifest)
    out = np.zeros((manifest["steps"], k_dom), np.int64)
    v, entries = 0, 0
    for k in range(manifest["steps"] // seg):
        decided = resolver.data_version(k, wait=False)
        v = v if decided is None else decided  # undecided: the version that holds it now
        folder = plan if v == 0 else version_path(plan, v)
        for rank in range(manifest["topology"]["world_size"]):
            with RankFileReader(folder / f"rank-{rank:05d}.bin") as reader:
                s = reader.segment(k)
            e = Plan.open(plan).resolve(s)
            np.add.at(out, (e.step, e.component.astype(np.int64)), e.token_end - e.token_start)
            entries += len(e)
    return out, entries


def test_inspect_realized_shares_and_deviation_follow_the_rewrites(plan: Path) -> None:
    run_job(plan, range(240))
    runner.invoke(app, ["feedback", str(plan)])  # decision 1 rewrites from step 250; 2 is pending
    res = runner.invoke(app, ["inspect", str(plan), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["rewritten_from_step"] == 250 and report["undecided_from_step"] == 450
    tokens, entries = _replayed_tokens(plan)
    assert report["replayed_entries"] == entries
    realized = tokens.sum(axis=0) / tokens.sum()
    compiled = np.load(plan / "weights.npy")
    targets = np.concatenate([compiled[:250], np.load(version_path(plan, 1) / "weights.npy")])
    compiled_dev = np.abs(tokens / tokens.sum(axis=1, keepdims=True) - compiled).max(axis=0)
    for c in report["components"]:
        k = c["id"]
        assert c["realized_share"] == pytest.approx(realized[k], abs=1e-12)
        assert c["used"] == tokens[:, k].sum()
        assert c["initial_target"] == pytest.approx([0.4, 0.3, 0.2, 0.1][k])
        assert c["mean_target"] == pytest.approx(targets[:, k].mean())
        assert c["max_step_deviation"] < 2 / 256  # exact per step against the rewritten targets
        assert c["compiled_realized_share"] == pytest.approx(c["initial_target"], abs=1e-3)
    assert max(compiled_dev) > 0.05  # ADO moved the mixture: the compiled targets would be stale
    assert abs(report["components"][1]["realized_share"] - 0.3) > 0.02
    text = runner.invoke(app, ["inspect", str(plan)], env={"NO_COLOR": "1", "COLUMNS": "200"}).stdout
    assert "rewritten by feedback from step 250" in text and "steps from 450 await decisions" in text
    assert "initial" in text and "mean" in text and "pending" in text


def test_rank_entries_cross_versions_without_waiting_or_publishing(plan: Path) -> None:
    run_job(plan, range(240))
    runner.invoke(app, ["feedback", str(plan)])
    res = runner.invoke(app, ["inspect", str(plan), "--rank", "1", "--steps", "240:460", "--json"])
    assert res.exit_code == 0, res.output
    entries = json.loads(res.stdout)
    assert read_decision(plan, 2) is None  # inspect neither waited for nor published decision 2
    by_step = {(e["step"], e["version"], e["decided"]) for e in entries}
    assert {(s, v, d) for s, v, d in by_step if s in (249, 250, 449, 450)} == {
        (249, 0, True), (250, 1, True), (449, 1, True), (450, 1, False)}
    with Plan.open(plan) as p:
        for step in (245, 250, 300):
            expect = p.step_entries(1, step)
            got = [e for e in entries if e["step"] == step]
            assert [e["position"] for e in got] == expect.position.tolist()
            assert [e["token_end"] for e in got] == expect.token_end.tolist()


def test_feedback_tables_say_what_each_column_means(plan: Path) -> None:
    run_job(plan, range(240))
    env = {"NO_COLOR": "1", "COLUMNS": "200"}
    text = runner.invoke(app, ["feedback", str(plan)], env=env).stdout
    for words in ("losses of steps", "takes effect at step", "0-199", "250", "ok, ", "points",
                  "1 decisions pending, the next needs the losses of steps 0-399"):
        assert words in text
    again = runner.invoke(app, ["feedback", str(plan)], env=env).stdout
    assert "no decision published by this run" in again


def test_a_long_fit_reason_is_shown_whole() -> None:
    reason = "12 fit points after ignoring 50 steps, need 20 (more reported steps are needed)"
    report = {"algorithm": "ado", "refit_every": 200, "lookahead": 50, "decisions_total": 1, "pending": [],
              "decisions": [{"version": 1, "action": "rewrite", "refit_step": 200, "first_step": 250,
                             "data_version": 1, "weights": [0.5, 0.5], "reason": None,
                             "fit": {"accepted": False, "reason": reason, "points": 12}}]}
    console = Console(file=io.StringIO(), width=120, no_color=True)
    render_feedback(report, ["web", "code"], console)
    shown = " ".join(console.file.getvalue().replace("│", " ").split())
    assert all(word in shown for word in f"not used: {reason}".split())


def test_inspect_shows_a_plan_whose_rank_published_keep(tmp_path: Path) -> None:
    """A late decision ends as "keep" (the documented default): inspect reads it like any other."""
    plan = make_plan(tmp_path, steps=600, segment_steps=50, refit=200, wait=0.05)
    run_job(plan, range(240))
    runner.invoke(app, ["feedback", str(plan)])  # decision 1: rewrite
    run_job(plan, range(240, 460))  # nobody decides 2: the ranks wait, then publish keep of version 1
    assert read_decision(plan, 2)["action"] == "keep" and read_decision(plan, 2)["data_version"] == 1
    res = runner.invoke(app, ["inspect", str(plan), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [d["action"] for d in report["feedback"]["decisions"]] == ["rewrite", "keep"]
    assert report["feedback"]["segment_versions"][9:] == [1, 1, 1]
    with Plan.open(plan) as p:
        assert report["replayed_entries"] == sum(
            len(p.segment(r, k, v).position) for r in range(p.world_size)
            for k, v in enumerate(report["feedback"]["segment_versions"]))
    text = runner.invoke(app, ["inspect", str(plan)], env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert text.exit_code == 0 and "keep" in text.stdout
    ranked = runner.invoke(app, ["inspect", str(plan), "--rank", "0", "--steps", "440:460", "--json"])
    assert ranked.exit_code == 0, ranked.output
    assert {e["version"] for e in json.loads(ranked.stdout) if e["step"] >= 450} == {1}
