"""Large plain JSON lines files indexed in byte spans: the index is that of whole-file tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixtera.planner.index import build_index, parse_config
from mixtera.planner.index.corpus_files import line_spans
from mixtera.planner.index.parts import build_tasks
from mixtera.runtime.errors import CorpusError
from tests.helpers.index_helpers import assert_same_index, make_span_corpus

WHOLE = 1 << 40  # a span size no test file reaches: every file is one task


def test_spans_cover_every_line_once_and_start_at_line_starts(tmp_path: Path) -> None:
    path = make_span_corpus(tmp_path / "c") / "big.jsonl"
    data = path.read_bytes()
    spans = line_spans(path, len(data), 1000)
    assert len(spans) > 10
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(data[start - 1 : start] == b"\n" for start, _ in spans[1:])


def test_a_line_longer_than_the_span_size_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"a" * 5000 + b"\n" + b"b\n")
    assert line_spans(path, 5002, 100) == [(0, 5001), (5001, 5002)]


def test_only_large_plain_json_lines_files_split(tmp_path: Path) -> None:
    from mixtera.planner.index.corpus_files import corpus_root, discover

    root = make_span_corpus(tmp_path / "c")
    files = discover([root], corpus_root([root])).files
    tasks = build_tasks(files, list(range(len(files))), root, None, span_bytes=1000)
    parts = {f.relpath: sum(t.file_id == i for t in tasks) for i, f in enumerate(files)}
    assert parts["big.jsonl"] > 10 and parts["small.jsonl"] == parts["packed.jsonl.gz"] == 1
    assert [t.size for t in tasks] == sorted((t.size for t in tasks), reverse=True)
    with_tokens = build_tasks(files, list(range(len(files))), root, tmp_path / "stage", span_bytes=1000)
    assert len(with_tokens) == len(files)  # token files are written by one task per file


@pytest.mark.parametrize("processes", [1, 2])
def test_spans_give_the_whole_file_index(tmp_path: Path, processes: int) -> None:
    root = make_span_corpus(tmp_path / "c")
    build_index([root], tmp_path / "whole", processes=1, span_bytes=WHOLE)
    build_index([root], tmp_path / "spans", processes=processes, span_bytes=700)
    assert_same_index(tmp_path / "whole", tmp_path / "spans")


def test_skipped_records_keep_their_file_lines(tmp_path: Path) -> None:
    root = make_span_corpus(tmp_path / "c", bad_lines=(3, 200, 390))
    cfg = parse_config('[index]\non_error = "skip"\n')
    whole = build_index([root], tmp_path / "whole", cfg, processes=1, span_bytes=WHOLE)
    spans = build_index([root], tmp_path / "spans", cfg, processes=2, span_bytes=700)
    assert [s["line"] for s in whole.skipped] == [3, 200, 390]
    assert spans.skipped == whole.skipped
    assert_same_index(tmp_path / "whole", tmp_path / "spans")


def _failure(root: Path, out: Path, **kw: object) -> str:
    with pytest.raises(CorpusError) as exc:
        build_index([root], out, **kw)  # type: ignore[arg-type]
    return f"{exc.value.message} | {exc.value.hint}"


@pytest.mark.parametrize("bad", [(390,), (200, 390), (3, 390)])
def test_a_bad_record_fails_as_in_a_whole_file_pass(tmp_path: Path, bad: tuple[int, ...]) -> None:
    root = make_span_corpus(tmp_path / "c", bad_lines=bad)
    whole = _failure(root, tmp_path / "whole", processes=1, span_bytes=WHOLE)
    assert f"big.jsonl:{bad[0]}: malformed JSON" in whole
    assert _failure(root, tmp_path / "spans", processes=2, span_bytes=700) == whole
