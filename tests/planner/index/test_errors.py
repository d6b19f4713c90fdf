"""Every bad input of `mixtera index`, through the CLI: exit code 1 and a message naming the problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.index_helpers import CONFIG, docs, jsonl, make_corpus, run_cli, write

BAD_JSON = b'{"text": "ok"}\n{"text": "broken"\n{"text": "ok again"}\n'


def _config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "index.toml"
    path.write_text(text)
    return path


def _fails(result, *needles: str) -> None:  # noqa: ANN001 - click's Result
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_malformed_json_fails_with_file_line_and_json_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "c" / "s" / "bad.jsonl", BAD_JSON)
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1")
    _fails(result, f"{bad}:2: malformed JSON", "hint:", 'on_error = "skip"')
    assert not (tmp_path / "idx").exists()


def test_malformed_json_with_skip_is_counted_and_listed(tmp_path: Path) -> None:
    write(tmp_path / "c" / "s" / "bad.jsonl", BAD_JSON)
    cfg = _config(tmp_path, '[index]\non_error = "skip"\n')
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--config", cfg, "--json", "-p", "1")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["samples"] == 2
    assert [(s["file"], s["line"]) for s in summary["skipped"]] == [("s/bad.jsonl", 2)]
    assert "malformed JSON" in summary["skipped"][0]["error"]
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert (manifest["files"][0]["records"], manifest["files"][0]["skipped"]) == (3, 1)
    table = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx2", "--config", cfg, "-p", "1")
    assert "skipped s/bad.jsonl:2: malformed JSON" in table.stdout


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_file_is_named(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / "c" / "s" / f"x{suffix}", jsonl(docs("d", 2000)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1")
    _fails(result, str(path), "truncated")


def test_missing_text_field(tmp_path: Path) -> None:
    path = write(tmp_path / "c" / "s" / "x.jsonl", jsonl([{"text": "a"}, {"body": "b"}]))
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1")
    _fails(result, f"{path}:2: missing text field 'text'")


def test_wrong_property_type_names_file_line_field_and_type(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c" / "s" / "x.jsonl", jsonl([{"text": "a", "score": 1.5}, {"text": "b", "score": "high"}])
    )
    result = run_cli(
        "index", tmp_path / "c", "--out", tmp_path / "idx", "--config", _config(tmp_path), "-p", "1"
    )
    _fails(result, f"{path}:2: field 'score' must be float, got str 'high'")


def test_unknown_config_key(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    cfg = _config(tmp_path, '[index]\ntext = "text"\n\n[properties.lang]\nfrom = ["lang"]\ndefualt = "en"\n')
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--config", cfg)
    _fails(result, str(cfg), "unknown key [properties.lang] 'defualt'", "hint: allowed keys")


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    cfg = _config(tmp_path, '[index]\ntext = "text\n')
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--config", cfg)
    _fails(result, str(cfg), "invalid TOML", "line 2, column")


def test_nonexistent_corpus_path(tmp_path: Path) -> None:
    result = run_cli("index", tmp_path / "nowhere", "--out", tmp_path / "idx")
    _fails(result, f"corpus path {tmp_path / 'nowhere'} does not exist")


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "c" / "s").mkdir(parents=True)
    (tmp_path / "c" / "s" / "readme.txt").write_text("not a corpus file")
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx")
    _fails(result, "holds no indexable files", "hint: mixtera indexes .jsonl")


def test_corpus_of_empty_files(tmp_path: Path) -> None:
    write(tmp_path / "c" / "s" / "x.jsonl", b"")
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1")
    _fails(result, "holds no records")


def test_out_dir_holding_something_else_is_refused(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not delete")
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "precious")
    _fails(result, "holds something other than a mixtera index", "thesis.tex")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "do not delete"


def test_failed_run_leaves_the_previous_index_intact(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    assert run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1").exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    write(tmp_path / "c" / "web" / "zz.jsonl", BAD_JSON)
    _fails(run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1"), "zz.jsonl:2")
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "idx"]  # no staging folder left behind


def test_worker_process_errors_keep_their_hint(tmp_path: Path) -> None:
    write(tmp_path / "c" / "s" / "a.jsonl", jsonl(docs("a", 3)))
    bad = write(tmp_path / "c" / "s" / "b.jsonl", BAD_JSON)
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "2")
    _fails(result, f"{bad}:2: malformed JSON", 'hint: fix the record, or set on_error = "skip"')


def test_store_tokens_without_tokenizer(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--store-tokens")
    _fails(result, "--store-tokens needs a tokenizer")


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--tokenizer", tmp_path / "tok.json")
    _fails(result, f"tokenizer {tmp_path / 'tok.json'} does not exist")


def test_failing_user_hook_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c" / "s" / "x.jsonl", jsonl([{"text": "a", "n": 1}, {"text": "b"}]))
    hook = "def extract(record, relpath):\n    return {'n2': record['n'] * 2}\n"
    (tmp_path / "broken_hook_props.py").write_text(hook)
    cfg = _config(tmp_path, '[index]\nfunction = "broken_hook_props:extract"\n')
    try:
        result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--config", cfg, "-p", "1")
    finally:
        sys.modules.pop("broken_hook_props", None)
    _fails(result, f"{path}:2: function raised KeyError: 'n'")
