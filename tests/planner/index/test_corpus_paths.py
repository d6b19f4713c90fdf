"""Links, unreadable paths, foreign files in --out and hooks that exit: counted, reported or refused."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mixtera.planner.index import corpus_files
from tests.helpers.index_helpers import docs, jsonl, make_corpus, run_cli, write


def _fails(result, *needles: str) -> None:  # noqa: ANN001 - click's Result
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def _index_json(corpus: Path, out: Path, *extra: object) -> dict:
    result = run_cli("index", corpus, "--out", out, "--json", "-p", "1", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _skip_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "index.toml"
    cfg.write_text('[index]\non_error = "skip"\n')
    return cfg


def test_linked_folders_are_followed_and_a_second_way_in_is_reported(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    write(corpus / "real" / "a.jsonl", jsonl(docs("a", 3)))
    write(tmp_path / "elsewhere" / "b.jsonl", jsonl(docs("b", 2)))
    (corpus / "linked").symlink_to(tmp_path / "elsewhere")  # a folder outside: indexed through the link
    (corpus / "again").symlink_to(corpus / "real")  # the same folder twice
    (corpus / "real" / "loop").symlink_to(corpus)  # a cycle
    (corpus / "real" / "a2.jsonl").symlink_to(corpus / "real" / "a.jsonl")  # the same file twice
    rep = _index_json(corpus, tmp_path / "idx")
    assert rep["counts"]["files"] == 2 and rep["counts"]["samples"] == 5
    assert rep["added"] == ["linked/b.jsonl", "real/a.jsonl"]
    assert [(s["path"], s["reason"]) for s in rep["skipped_paths"]] == [
        ("again", "a link to the folder real, which is indexed under its own path"),
        ("real/a2.jsonl", "a link to the file real/a.jsonl, which is indexed under its own path"),
        ("real/loop", "a link to the folder ., which is indexed under its own path")]
    (corpus / "twice").symlink_to(tmp_path / "elsewhere")  # a second link to the same outside folder
    rep = _index_json(corpus, tmp_path / "idx")
    assert rep["counts"]["files"] == 2
    assert rep["skipped_paths"][-1] == {"path": "twice",
                                        "reason": "a link to the same folder as linked, indexed once"}


def test_a_dangling_link_fails_unless_skipped(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    write(corpus / "s" / "a.jsonl", jsonl(docs("a", 3)))
    (corpus / "s" / "gone.jsonl").symlink_to(tmp_path / "nothing.jsonl")
    _fails(run_cli("index", corpus, "--out", tmp_path / "idx", "-p", "1"), "s/gone.jsonl: cannot be read: "
           "dangling symbolic link", 'on_error = "skip"')
    rep = _index_json(corpus, tmp_path / "idx", "--config", _skip_config(tmp_path))
    assert rep["counts"]["files"] == 1
    assert [s["path"] for s in rep["skipped_paths"]] == ["s/gone.jsonl"]


def _deny(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make ``path`` unreadable: chmod for a user, the system calls' answer for root (who reads all)."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    real_open, real_scandir = os.open, os.scandir

    def guarded_open(p: object, *args: object, **kw: object) -> int:
        if Path(os.fsdecode(p)) == path:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *args, **kw)  # type: ignore[arg-type]

    def guarded_scandir(p: object = ".") -> object:
        if Path(os.fsdecode(p)) == path:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(p))
        return real_scandir(p)  # type: ignore[arg-type]

    monkeypatch.setattr(corpus_files.os, "open", guarded_open)
    monkeypatch.setattr(corpus_files.os, "scandir", guarded_scandir)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_unreadable_path_fails_unless_skipped_and_is_then_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    corpus = tmp_path / "c"
    write(corpus / "s" / "a.jsonl", jsonl(docs("a", 3)))
    locked = write(corpus / "locked" / "b.jsonl", jsonl(docs("b", 2)))
    if what == "folder":
        locked = locked.parent
    _deny(monkeypatch, locked)
    try:
        _fails(run_cli("index", corpus, "--out", tmp_path / "idx", "-p", "1"),
               f"{locked}: cannot be read: Permission denied", 'on_error = "skip"')
        rep = _index_json(corpus, tmp_path / "idx", "--config", _skip_config(tmp_path))
    finally:
        locked.chmod(0o755)
    assert rep["added"] == ["s/a.jsonl"]
    assert rep["skipped_paths"] == [{"path": locked.relative_to(corpus).as_posix(),
                                     "reason": "Permission denied"}]


def test_files_we_did_not_write_in_an_index_are_named_and_kept(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c")
    assert run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1").exit_code == 0
    (tmp_path / "idx" / "README.md").write_text("my notes")
    _fails(run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "-p", "1"),
           "files mixtera did not write (README.md)")
    assert (tmp_path / "idx" / "README.md").read_text() == "my notes"


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_hook_that_exits_is_an_error_naming_it(tmp_path: Path, processes: str) -> None:
    write(tmp_path / "c" / "s" / "a.jsonl", jsonl(docs("a", 3)))
    path = write(tmp_path / "c" / "s" / "b.jsonl", jsonl(docs("b", 3)))
    (tmp_path / "exiting_hook.py").write_text("import sys\ndef extract(record, relpath):\n    sys.exit(3)\n")
    cfg = tmp_path / "index.toml"
    cfg.write_text('[index]\nfunction = "exiting_hook:extract"\n')
    try:
        result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--config", cfg, "-p", processes)
    finally:
        sys.modules.pop("exiting_hook", None)
    _fails(result, ":1: function exiting_hook:extract called sys.exit(3)")
    assert str(path.parent) in result.stderr


def test_a_hook_module_that_exits_on_import_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "c" / "s" / "a.jsonl", jsonl(docs("a", 3)))
    (tmp_path / "exit_on_import.py").write_text("import sys\nsys.exit(3)\n")
    cfg = tmp_path / "index.toml"
    cfg.write_text('[index]\nfunction = "exit_on_import:extract"\n')
    try:
        result = run_cli("index", tmp_path / "c", "--out", tmp_path / "idx", "--config", cfg, "-p", "1")
    finally:
        sys.modules.pop("exit_on_import", None)
    _fails(result, "importing module 'exit_on_import' raised SystemExit: 3")
