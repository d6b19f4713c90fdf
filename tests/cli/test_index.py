"""`mixtera index` and `mixtera inspect INDEX` output, and the man page covering every option."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer

from mixtera.cli.app import app
from tests.helpers import ROOT
from tests.helpers.index_helpers import CONFIG, make_corpus, run_cli


@pytest.fixture()
def index_dir(tmp_path: Path) -> Path:
    make_corpus(tmp_path / "corpus")
    (tmp_path / "index.toml").write_text(CONFIG)
    result = run_cli(
        "index",
        tmp_path / "corpus",
        "--out",
        tmp_path / "idx",
        "--config",
        tmp_path / "index.toml",
        "--processes",
        "1",
    )
    assert result.exit_code == 0, result.stderr
    assert "samples" in result.stdout and "21" in result.stdout
    return tmp_path / "idx"


def test_index_json_summary(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    result = run_cli("index", tmp_path / "corpus", "--out", tmp_path / "idx", "--json", "-p", "1")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"] == {
        "files": 5,
        "samples": 21,
        "bytes": summary["counts"]["bytes"],
        "tokens": None,
    }
    assert len(summary["added"]) == 5 and summary["removed"] == [] and summary["skipped"] == []
    assert summary["properties"]["source"] == "string"


def test_inspect_json(index_dir: Path) -> None:
    result = run_cli("inspect", index_dir, "--json")
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["kind"] == "mixtera-index"
    assert stats["counts"]["samples"] == 21 and stats["counts"]["files"] == 5
    assert stats["formats"] == {"json.gz": 1, "jsonl": 1, "jsonl.gz": 1, "jsonl.zst": 1, "parquet": 1}
    lang = stats["properties"]["language"]
    assert lang["top"] == [["py", 7], ["en", 5], ["de", 4], ["fr", 3], ["unknown", 2]]
    assert lang["nulls"] == 0 and lang["distinct"] == 5
    score = stats["properties"]["score"]
    assert score["nulls"] == 21 - 9
    assert (score["min"], score["max"]) == (0.5, 1.0)
    assert score["mean"] == pytest.approx((5 * 0.5 + 4 * 1.0) / 9)


def test_inspect_table(index_dir: Path) -> None:
    result = run_cli("inspect", index_dir)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for needle in (
        "samples",
        "21",
        "property language: string from lang, meta.language",
        "unknown",
        "min 0.5, mean 0.722222, max 1",
        "12 null",
    ):
        assert needle in text, needle


def test_inspect_rejects_plan_options_on_an_index(index_dir: Path) -> None:
    result = run_cli("inspect", index_dir, "--rank", "0")
    assert result.exit_code == 1
    assert "--rank only apply to plans" in result.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "has no manifest.json"),
        ('{"kind": "something-else"}', "kind 'something-else', neither an index nor a plan"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_inspect_unknown_folder(tmp_path: Path, content: str | None, needle: str) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    result = run_cli("inspect", tmp_path)
    assert result.exit_code == 1
    assert needle in result.stderr and "hint:" in result.stderr


def test_inspect_missing_path(tmp_path: Path) -> None:
    result = run_cli("inspect", tmp_path / "nope")
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_man_page_documents_every_index_option() -> None:
    command = typer.main.get_command(app)
    params = command.commands["index"].params  # type: ignore[attr-defined]
    options = [o for p in params if p.param_type_name == "option" for o in p.opts if o.startswith("--")]
    assert {"--out", "--config", "--tokenizer", "--store-tokens", "--processes", "--json"} <= set(options)
    man = (ROOT / "man" / "mixtera-index.md").read_text()
    for opt in options:
        assert re.search(rf"`{re.escape(opt)}\b", man), f"{opt} is not documented in man/mixtera-index.md"
    for key in (
        "text",
        "on_error",
        "tokenizer",
        "eos",
        "eos_token",
        "function",
        "from",
        "type",
        "path",
        "default",
    ):
        assert f"`{key}`" in man, f"config key {key} is not documented"
