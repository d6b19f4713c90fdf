"""`build_index` on generated corpora: locations, properties, determinism, incremental re-index."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from mixtera.planner.index import IndexReport, build_index, load_index, parse_config
from mixtera.planner.index.config import load_config
from mixtera.runtime.format.token_file import VERSION as TOKEN_FORMAT
from mixtera.runtime.format.token_file import TokenFile
from tests.helpers.index_helpers import CONFIG, docs, jsonl, make_corpus, write


def _stream(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def read_back(index_dir: Path, row: dict) -> str:
    """The text of a sample, read from its stored location only (no rescanning)."""
    tables = load_index(index_dir)
    entry = tables.manifest["files"][row["file_id"]]
    path = tables.corpus_root / entry["path"]
    if entry["format"] == "parquet":
        group = pq.ParquetFile(path).read_row_group(row["offset"], columns=["text"])
        return group.column("text")[row["length"]].as_py()
    line = _stream(path)[row["offset"] : row["offset"] + row["length"]]
    return json.loads(line)["text"]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus")


def test_every_sample_reads_back_from_its_location(corpus: Path, tmp_path: Path) -> None:
    report = build_index([corpus], tmp_path / "idx", parse_config(CONFIG), processes=1)
    assert (report.files, report.samples) == (5, 5 + 4 + 3 + 2 + 7)
    rows = load_index(tmp_path / "idx").samples.to_pylist()
    texts = {r["sample_id"]: read_back(tmp_path / "idx", r) for r in rows}
    assert texts["web/a.jsonl#3"] == docs("web", 5)[3]["text"]
    assert texts["web/b.jsonl.gz#1"] == docs("webgz", 4)[1]["text"]
    assert texts["arxiv/papers.jsonl.zst#2"] == "paper 2"
    assert texts["code/src.parquet#4"] == "code 4"  # row group 1, row 1
    assert all(r["text_bytes"] == len(texts[r["sample_id"]].encode()) for r in rows)


def test_properties_from_config(corpus: Path, tmp_path: Path) -> None:
    build_index([corpus], tmp_path / "idx", parse_config(CONFIG), processes=1)
    t = load_index(tmp_path / "idx")
    by_id = {r["sample_id"]: r for r in t.samples.to_pylist()}
    assert by_id["web/b.jsonl.gz#0"]["language"] == "de"
    assert by_id["web/b.jsonl.gz#0"]["score"] == 1.0  # an int widened to the declared float
    assert by_id["arxiv/papers.jsonl.zst#0"]["language"] == "fr"  # nested meta.language
    assert by_id["books/old.json.gz#0"]["language"] == "unknown"  # the default
    assert by_id["books/old.json.gz#0"]["score"] is None  # no default: null
    assert {r["source"] for r in by_id.values()} == {"web", "arxiv", "books", "code"}
    assert t.properties == {"language": "string", "score": "float", "source": "string"}
    assert t.samples.column_names[:8] == [
        "sample_id",
        "file_id",
        "record",
        "offset",
        "length",
        "text_bytes",
        "tokens",
        "token_offset",
    ]


def test_without_config_source_is_the_folder_and_scalars_become_properties(
    corpus: Path, tmp_path: Path
) -> None:
    build_index([corpus], tmp_path / "idx", processes=1)
    t = load_index(tmp_path / "idx")
    assert t.properties == {"lang": "string", "license": "string", "score": "float", "source": "string"}
    by_id = {r["sample_id"]: r for r in t.samples.to_pylist()}
    assert by_id["code/src.parquet#0"]["license"] == "MIT"
    assert by_id["web/a.jsonl#0"]["source"] == "web"
    assert by_id["arxiv/papers.jsonl.zst#0"]["lang"] is None  # `meta` is not a scalar


def test_line_separators_inside_strings_are_data(tmp_path: Path) -> None:
    texts = ["one\u2028two", "three\u2029four", "five\u0085six", "plain"]
    write(tmp_path / "c" / "s" / "x.jsonl", jsonl([{"text": t} for t in texts]))
    build_index([tmp_path / "c"], tmp_path / "idx", processes=1)
    rows = load_index(tmp_path / "idx").samples.to_pylist()
    assert [r["record"] for r in rows] == [0, 1, 2, 3]
    assert [read_back(tmp_path / "idx", r) for r in rows] == texts


def test_blank_lines_and_missing_final_newline(tmp_path: Path) -> None:
    write(tmp_path / "c" / "x.jsonl", b'{"text": "a"}\n\n{"text": "b"}\r\n{"text": "c"}')
    build_index([tmp_path / "c"], tmp_path / "idx", processes=1)
    rows = load_index(tmp_path / "idx").samples.to_pylist()
    assert [(r["record"], r["offset"]) for r in rows] == [(0, 0), (1, 15), (2, 30)]
    assert [read_back(tmp_path / "idx", r) for r in rows] == ["a", "b", "c"]


def test_same_corpus_gives_byte_identical_tables(corpus: Path, tmp_path: Path) -> None:
    build_index([corpus], tmp_path / "one", parse_config(CONFIG), processes=1)
    build_index([corpus], tmp_path / "two", parse_config(CONFIG), processes=2)
    for name in ("samples.parquet", "files.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    one, two = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert one == two


def test_incremental_reindex_reports_and_matches_a_fresh_build(corpus: Path, tmp_path: Path) -> None:
    cfg = parse_config(CONFIG)
    out = tmp_path / "idx"
    build_index([corpus], out, cfg, processes=1)
    again = build_index([corpus], out, cfg, processes=1)
    assert (again.added, again.changed, again.removed, len(again.unchanged)) == ([], [], [], 5)
    assert again.bytes_read == 0
    write(corpus / "aaa" / "new.jsonl", jsonl(docs("new", 3, lang="en")))  # shifts every file_id by one
    write(corpus / "web" / "a.jsonl", jsonl(docs("changed", 6, lang="en")))
    (corpus / "books" / "old.json.gz").unlink()
    os.utime(corpus / "code" / "src.parquet", ns=(1, 1))  # touched, same bytes: kept via its hash
    report = build_index([corpus], out, cfg, processes=1)
    assert report.added == ["aaa/new.jsonl"]
    assert report.changed == ["web/a.jsonl"]
    assert report.removed == ["books/old.json.gz"]
    assert report.unchanged == ["arxiv/papers.jsonl.zst", "code/src.parquet", "web/b.jsonl.gz"]
    build_index([corpus], tmp_path / "fresh", cfg, processes=1)
    for name in ("samples.parquet", "files.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    rows = load_index(out).samples.to_pylist()
    assert (
        read_back(out, next(r for r in rows if r["sample_id"] == "web/a.jsonl#5"))
        == docs("changed", 6)[5]["text"]
    )


def test_tokens_counted_and_stored(corpus: Path, tmp_path: Path, tiny_tokenizer: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_tokenizer))

    def index() -> IndexReport:
        cfg = parse_config(CONFIG)
        return build_index(
            [corpus], tmp_path / "idx", cfg, tokenizer=tiny_tokenizer, processes=1, store_tokens=True
        )

    report = index()
    t = load_index(tmp_path / "idx")
    assert t.manifest["tokenizer"]["eos_id"] == tok.token_to_id("<|endoftext|>")
    assert t.manifest["tokenizer"]["vocab_size"] == tok.get_vocab_size()
    rows = t.samples.to_pylist()
    for r in rows:
        ids = tok.encode(read_back(tmp_path / "idx", r), add_special_tokens=False).ids
        assert r["tokens"] == len(ids)
        stored = TokenFile(tmp_path / "idx" / "tokens" / f"{r['file_id']}.bin")
        assert stored.slice(r["token_offset"], r["token_offset"] + r["tokens"]).tolist() == ids
        stored.close()
    assert report.tokens == sum(r["tokens"] for r in rows)
    # incremental: a new file shifts file ids; the reused token files move with their rows
    write(corpus / "aaa" / "first.jsonl", jsonl(docs("first", 2)))
    index()
    moved = next(
        r for r in load_index(tmp_path / "idx").samples.to_pylist() if r["sample_id"] == "code/src.parquet#6"
    )
    stored = TokenFile(tmp_path / "idx" / "tokens" / f"{moved['file_id']}.bin")
    got = stored.slice(moved["token_offset"], moved["token_offset"] + moved["tokens"]).tolist()
    assert got == tok.encode("code 6", add_special_tokens=False).ids
    stored.close()


def test_token_files_of_an_older_format_are_rewritten_not_carried(
    corpus: Path, tmp_path: Path, tiny_tokenizer: Path
) -> None:
    """An index written before token files had checksums records no token_format: re-indexing
    tokenizes every file again instead of linking its old token files into the new index."""
    out = tmp_path / "idx"
    build_index([corpus], out, parse_config(CONFIG), tokenizer=tiny_tokenizer, processes=1, store_tokens=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["token_format"] == TOKEN_FORMAT
    del manifest["token_format"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    again = build_index([corpus], out, parse_config(CONFIG), tokenizer=tiny_tokenizer, processes=1,
                        store_tokens=True)
    assert (len(again.added), again.unchanged) == (5, [])
    assert load_index(out).manifest["token_format"] == TOKEN_FORMAT


def test_user_hook_maps_record_and_path(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "cfgdir" / "demo_hook_props.py").write_text(
        "def extract(record, relpath):\n"
        "    return {'top': relpath.split('/')[0].upper(), 'chars': len(record['text'])}\n"
    )
    cfg_path = tmp_path / "cfgdir" / "index.toml"
    cfg_path.write_text('[index]\nfunction = "demo_hook_props:extract"\n[properties.chars]\ntype = "float"\n')
    try:
        build_index([corpus], tmp_path / "idx", cfg_path, processes=1)
    finally:
        sys.modules.pop("demo_hook_props", None)
    t = load_index(tmp_path / "idx")
    assert t.properties == {"chars": "float", "top": "string"}
    row = next(r for r in t.samples.to_pylist() if r["sample_id"] == "code/src.parquet#0")
    assert (row["top"], row["chars"]) == ("CODE", 6.0)


def test_out_inside_the_corpus_is_not_indexed(corpus: Path) -> None:
    build_index([corpus], corpus / "index", processes=1)
    report = build_index([corpus], corpus / "index", processes=1)
    assert report.files == 5 and len(report.unchanged) == 5


def test_several_corpus_paths_share_their_parent_as_root(corpus: Path, tmp_path: Path) -> None:
    report = build_index([corpus / "web", corpus / "code"], tmp_path / "idx", processes=1)
    assert report.corpus_root == corpus.resolve()
    assert sorted({r["source"] for r in load_index(tmp_path / "idx").samples.to_pylist()}) == ["code", "web"]


def test_incremental_automatic_properties_match_a_fresh_build(corpus: Path, tmp_path: Path) -> None:
    build_index([corpus], tmp_path / "idx", processes=1)
    (corpus / "code" / "src.parquet").unlink()  # the only file with `license`
    write(corpus / "web" / "c.jsonl", jsonl([{"text": "x", "score": "n/a", "flag": True}]))  # score widens
    build_index([corpus], tmp_path / "idx", processes=1)
    build_index([corpus], tmp_path / "fresh", processes=1)
    assert load_index(tmp_path / "idx").properties == {
        "flag": "bool",
        "lang": "string",
        "score": "string",
        "source": "string",
    }
    for name in ("samples.parquet", "files.parquet"):
        assert (tmp_path / "idx" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_list_and_bool_properties_and_their_stats(tmp_path: Path) -> None:
    from mixtera.planner.index import index_stats

    rows = [
        {"text": "a", "tags": ["x", "y"], "ok": True},
        {"text": "b", "tags": ["y"], "ok": False},
        {"text": "c"},
    ]
    write(tmp_path / "c" / "s" / "x.jsonl", jsonl(rows))
    cfg = parse_config(
        '[properties.tags]\ntype = "list[string]"\n[properties.ok]\ntype = "bool"\ndefault = false\n'
    )
    build_index([tmp_path / "c"], tmp_path / "idx", cfg, processes=1)
    t = load_index(tmp_path / "idx")
    assert t.samples.column("tags").to_pylist() == [["x", "y"], ["y"], None]
    assert t.samples.column("ok").to_pylist() == [True, False, False]
    stats = index_stats(t)["properties"]
    assert stats["tags"]["top"] == [["y", 2], ["x", 1]] and stats["tags"]["nulls"] == 1
    assert stats["ok"]["top"] == [[False, 2], [True, 1]]


def test_three_processes_share_many_files_and_report_a_worker_error(tmp_path: Path) -> None:
    from mixtera.runtime.errors import CorpusError

    corpus = tmp_path / "c"
    for i in range(7):
        write(corpus / f"s{i % 2}" / f"f{i}.jsonl", jsonl(docs(f"f{i}", 20 * (i + 1))))
    one = build_index([corpus], tmp_path / "one", None, processes=1)
    three = build_index([corpus], tmp_path / "three", None, processes=3)
    assert (three.files, three.samples) == (one.files, one.samples) == (7, 20 * 28)
    assert (tmp_path / "one" / "samples.parquet").read_bytes() == (
        tmp_path / "three" / "samples.parquet"
    ).read_bytes()
    # the largest file goes to a worker first: its error travels back whole
    write(corpus / "s1" / "f6.jsonl", jsonl(docs("f6", 400)) + b"{bad\n")
    with pytest.raises(CorpusError, match=r"f6\.jsonl:401: malformed JSON"):
        build_index([corpus], tmp_path / "bad", None, processes=3)


@pytest.mark.parametrize("long_line", [0, 10**9])  # every block through `_find_lines`, or none
def test_line_splitting_matches_a_plain_split_at_any_block_boundary(monkeypatch, long_line: int) -> None:
    from mixtera.planner.index import corpus_files as scan

    monkeypatch.setattr(scan, "LONG_LINE", long_line)
    data = b'{"a":1}\n\n{"b":"x\xe2\x80\xa8y"}\n' + b'{"c":"' + b"z" * 300 + b'"}\n\n\n{"d":4}'
    expected = [(i + 1, line) for i, line in enumerate(data.split(b"\n")) if line]
    for size in (1, 2, 7, 64, len(data)):
        blocks = iter([data[i : i + size] for i in range(0, len(data), size)])
        got = [
            (number, bytes(item), offset, length)
            for chunk in scan._json_lines(blocks)
            for number, item, offset, length in zip(
                chunk.lines, chunk.items, chunk.offsets, chunk.lengths, strict=True
            )
        ]
        assert [(n, item) for n, item, _, _ in got] == expected
        assert all(data[o : o + n] == item for _, item, o, n in got)


def test_column_extraction_equals_the_per_record_rows() -> None:
    from mixtera.planner.index.properties import compile_extractor

    cfg = parse_config(
        '[properties.lang]\nfrom = ["lang", "meta.language", "a.b.c"]\ndefault = "unknown"\n'
        '[properties.q]\nfrom = ["meta.q"]\ntype = "float"\n'
        '[properties.tags]\nfrom = ["tags"]\ntype = "list[string]"\n'
        '[properties.source]\npath = "{source}/**"\n'
    )
    ex = compile_extractor(cfg, "web/x.jsonl", None)
    records = [
        {"lang": "en", "meta": {"q": 1}, "tags": ["a"]},
        {"meta": {"language": "de", "q": 0.5}},
        {"meta": "not a dict", "a": {"b": {"c": "fr"}}},
        {"lang": None, "tags": []},
    ]
    for chunk in (records, records[:1], records[1:2], records[2:], []):
        columns = ex.columns(chunk)
        assert columns is not None
        assert [tuple(col[i] for col in columns) for i in range(len(chunk))] == [ex.row(r) for r in chunk]
    assert ex.columns([{"lang": 3}]) is None  # a value to report: the per-record path names it
    assert ex.columns([{"meta": {"q": True}}]) is None


def test_after_a_worker_error_the_run_ends_with_no_worker_left(tmp_path: Path) -> None:
    """The largest file goes to a worker and fails at once while the other worker is busy: the
    error travels back whole, and no worker process outlives the run."""
    import multiprocessing

    from mixtera.runtime.errors import CorpusError

    corpus = tmp_path / "c"
    write(corpus / "a" / "bad.jsonl", b"{bad\n" + jsonl(docs("x", 20_000)))
    write(corpus / "b" / "slow.jsonl", jsonl(docs("y", 15_000)))
    for i in range(6):
        write(corpus / "c" / f"f{i}.jsonl", jsonl(docs(f"f{i}", 50)))
    before = set(multiprocessing.active_children())  # other tests' pools may still be alive
    with pytest.raises(CorpusError, match=r"bad\.jsonl:1: malformed JSON"):
        build_index([corpus], tmp_path / "idx", None, processes=3)
    ours = set(multiprocessing.active_children()) - before
    for child in ours:
        child.join(timeout=10)
    assert [c for c in ours if c.is_alive()] == []


def _hook_corpus(tmp_path: Path, hook: str) -> tuple[Path, Path]:
    """A corpus of one large file (a worker's) and small ones (this process's), and a config whose
    hook runs ``hook`` in worker processes only."""
    corpus = tmp_path / "c"
    write(corpus / "big" / "large.jsonl", jsonl(docs("large", 5_000)))
    for i in range(4):
        write(corpus / "small" / f"f{i}.jsonl", jsonl(docs(f"f{i}", 5)))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "worker_hook.py").write_text(
        "import multiprocessing, os, signal, time\n"
        "def extract(record, path):\n"
        "    if multiprocessing.parent_process() is not None:\n"
        f"        {hook}\n"
        "    return record\n"
    )
    cfg = tmp_path / "cfg" / "index.toml"
    cfg.write_text('[index]\nfunction = "worker_hook:extract"\n')
    return corpus, cfg


def test_a_worker_killed_for_memory_fails_the_run_naming_its_file(tmp_path: Path) -> None:
    """A worker that dies without reporting (the kernel's OOM killer sends SIGKILL) used to leave its
    task unanswered and the run waiting forever."""
    from mixtera.planner.index.parallel import WorkerDiedError

    corpus, cfg = _hook_corpus(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(WorkerDiedError, match=r"big/large\.jsonl: the index worker process .* died") as err:
        build_index([corpus], tmp_path / "idx", load_config(cfg), processes=2)
    assert "--processes" in err.value.hint
    assert not (tmp_path / "idx").exists()


def test_ctrl_c_ends_a_parallel_index_at_once_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT to the CLI while a worker is deep in a long task: the run stops within seconds (not
    after the task), exits 130 (the shell's code for SIGINT, as typer ends an interrupted command),
    and no worker prints a traceback."""
    import signal
    import subprocess
    import time

    corpus, cfg = _hook_corpus(tmp_path, "time.sleep(0.05)")  # 5,000 records: minutes in the worker
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixtera.cli.app", "index", str(corpus), "--out", str(tmp_path / "idx"),
         "--config", str(cfg), "--processes", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    time.sleep(4)  # the worker has started on the large file
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - t0 < 15
    assert proc.returncode == 130
    assert b"Traceback" not in err, err.decode()
    assert not (tmp_path / "idx").exists()


def test_a_stopped_queue_hands_out_nothing() -> None:
    from concurrent.futures import Future

    from mixtera.planner.index.parallel import _IDLE, _SharedQueue

    class Pool:
        submitted: list[Future] = []

        def submit(self, *args, **kw) -> Future:  # noqa: ANN002, ANN003
            Pool.submitted.append(Future())
            return Pool.submitted[-1]

    shared = _SharedQueue([object(), object()], Pool())  # type: ignore[arg-type]
    assert shared.feed_worker() and len(Pool.submitted) == 1
    shared.stop()
    Pool.submitted[0].set_result("result")  # the callback: the result, then no next task
    assert len(Pool.submitted) == 1
    assert [shared.results.get(), shared.results.get()] == ["result", _IDLE]
