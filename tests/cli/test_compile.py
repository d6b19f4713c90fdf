"""`mixtera compile` and `mixtera inspect PLAN` from the command line: output, JSON, exit codes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixtera.cli.app import app
from tests.helpers.plan_checks import write_mixture
from tests.helpers.synthetic_index import write_synthetic_index


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    index = write_synthetic_index(tmp / "index", 300, tokens=(5, 100))
    mix = write_mixture(tmp / "mix.toml", index)
    result = CliRunner().invoke(app, ["compile", str(mix), "--out", str(tmp / "plan"), "--json"])
    assert result.exit_code == 0, result.output
    return tmp / "plan"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_compile_json_summary(plan: Path, tmp_path: Path) -> None:
    code, out, _ = run("compile", str(plan.parent / "mix.toml"), "--out", str(tmp_path / "p2"), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["fingerprint"] == json.loads((plan / "manifest.json").read_text())["fingerprint"]
    assert [c["name"] for c in summary["components"]] == ["web", "code", "rest.de", "rest.other"]
    assert summary["entries"] > 0 and summary["bytes_per_entry"] > 0


def test_inspect_table_shows_components_and_deviation(plan: Path) -> None:
    code, out, _ = run("inspect", str(plan))
    assert code == 0
    for word in ("fingerprint", "bytes per entry", "rest.other", "realized", "max step dev", "epochs"):
        assert word in out


def test_inspect_json_reports_every_component(plan: Path) -> None:
    code, out, _ = run("inspect", str(plan), "--json")
    assert code == 0
    report = json.loads(out)
    web = report["components"][0]
    assert web["realized_share"] == pytest.approx(0.5) and web["max_step_deviation"] < 1 / 512
    assert web["initial_target"] == web["mean_target"] == pytest.approx(0.5)
    assert web["used"] == web["compiled_used"] and report["rewritten_from_step"] is None
    assert "entries_of_rank" not in report


def test_rank_entries_alone_in_json(plan: Path) -> None:
    code, out, _ = run("inspect", str(plan), "--json", "--rank", "1", "--steps", "2:4")
    assert code == 0
    entries = json.loads(out)  # only the entries: pipeable into jq
    assert isinstance(entries, list) and {e["step"] for e in entries} == {2, 3}
    assert {e["rank"] for e in entries} == {1} and {e["version"] for e in entries} == {0}
    per_step = {s: sum(e["token_end"] - e["token_start"] for e in entries if e["step"] == s) for s in (2, 3)}
    assert per_step == {2: 128, 3: 128}
    assert all("#" in e["sample_id"] for e in entries)


def test_rank_entries_alone_as_a_table(plan: Path) -> None:
    code, out, _ = run("inspect", str(plan), "--rank", "1", "--steps", "2:4")
    assert code == 0
    assert "fingerprint" not in out and "components" not in out and "realized" not in out
    _, js, _ = run("inspect", str(plan), "--json", "--rank", "1", "--steps", "2:4")
    rows = [line for line in out.splitlines() if "#" in line]
    assert len(rows) == len(json.loads(js))  # one line per entry
    assert out.splitlines()[0].startswith("rank 1, steps 2:4")


@pytest.mark.parametrize("source", ["another rank", "another plan"])
def test_rank_entries_refuse_a_rank_file_copied_from_elsewhere(plan: Path, tmp_path: Path,
                                                               source: str) -> None:
    copy = tmp_path / "plan"
    shutil.copytree(plan, copy)
    if source == "another rank":
        shutil.copyfile(copy / "rank-00001.bin", copy / "rank-00000.bin")
        expected = "rank-00000.bin: written for rank 1 of"
    else:
        other = write_mixture(tmp_path / "seed.toml", plan.parent / "index", seed=8)  # same shape, other plan
        code, _, _ = run("compile", str(other), "--out", str(tmp_path / "other"))
        assert code == 0
        shutil.copyfile(tmp_path / "other" / "rank-00000.bin", copy / "rank-00000.bin")
        expected = "rank-00000.bin: fingerprint .* does not match the manifest's"
    code, _, err = run("inspect", str(copy), "--rank", "0", "--steps", "0:1")
    assert code == 1
    assert re.search(expected, " ".join(err.split())), err


def test_inspect_plot_writes_a_png(plan: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code, _, _ = run("inspect", str(plan), "--plot", str(tmp_path / "mix.png"))
    assert code == 0
    assert (tmp_path / "mix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors_exit_1_with_hint(plan: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((plan.parent / "mix.toml").read_text().replace("weight = 0.3", "weight = 0.35"))
    code, _, err = run("compile", str(bad), "--out", str(tmp_path / "p"))
    assert code == 1
    assert "error:" in err and "sum to 1.05, not 1" in err and "hint:" in err
    assert not (tmp_path / "p").exists()
    code, _, err = run("inspect", str(plan), "--steps", "0:2")
    assert code == 1 and "add --rank R" in err
    code, _, err = run("compile", str(plan.parent / "mix.toml"), "--out", str(tmp_path / "p"),
                       "--world-size", "2")
    assert code == 1 and "go together" in err


def test_elastic_from_the_command_line(plan: Path, tmp_path: Path) -> None:
    code, out, _ = run("compile", str(plan.parent / "mix.toml"), "--out", str(tmp_path / "e"), "--from-plan",
                       str(plan), "--from-step", "5", "--world-size", "8", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["topology"]["world_size"] == 8 and summary["topology"]["batch_size"] == 1
    assert summary["elastic"]["from_step"] == 5


def test_compile_onto_feedback_state_needs_the_flag_and_says_what_goes(plan: Path, tmp_path: Path) -> None:
    mix = str(plan.parent / "mix.toml")
    target = tmp_path / "p3"
    assert run("compile", mix, "--out", str(target))[0] == 0
    (target / "feedback").mkdir()
    (target / "feedback" / "log.bin").write_bytes(b"losses")
    code, _, stderr = run("compile", mix, "--out", str(target))
    assert code == 1 and "error:" in stderr and "--replace-feedback-state" in stderr
    assert (target / "feedback" / "log.bin").exists()
    code, out, stderr = run("compile", mix, "--out", str(target), "--replace-feedback-state", "--json")
    assert code == 0 and "replaced the feedback state" in stderr and "feedback/log.bin" in stderr
    assert json.loads(out)["replaced_feedback_state"] == ["feedback/log.bin"]
