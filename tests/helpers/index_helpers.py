"""Small generated corpora and a CLI runner for the `mixtera index` tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from typer.testing import CliRunner

from mixtera.cli.app import app


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def write(path: Path, data: bytes) -> Path:
    """Write ``data`` (uncompressed JSON lines or raw bytes), compressed by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    if name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def docs(prefix: str, n: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"text": f"{prefix} document {i} " + "word " * (i % 7), **fields} for i in range(n)]


def make_corpus(root: Path) -> Path:
    """Four sources, every format, metadata at the top level, nested, and only in the folder name."""
    write(root / "web" / "a.jsonl", jsonl(docs("web", 5, lang="en", score=0.5)))
    write(root / "web" / "b.jsonl.gz", jsonl(docs("webgz", 4, lang="de", score=1)))
    write(
        root / "arxiv" / "papers.jsonl.zst",
        jsonl([{"text": f"paper {i}", "meta": {"language": "fr"}} for i in range(3)]),
    )
    write(root / "books" / "old.json.gz", jsonl(docs("book", 2)))
    table = pa.table(
        {"text": [f"code {i}" for i in range(7)], "lang": ["py"] * 7, "license": ["MIT"] * 3 + ["BSD"] * 4}
    )
    (root / "code").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "code" / "src.parquet", row_group_size=3)
    return root


CONFIG = """
[index]
text = "text"

[properties.source]
path = "{source}/**"

[properties.language]
from = ["lang", "meta.language"]
default = "unknown"

[properties.score]
type = "float"
"""


def run_cli(*args: str) -> Any:
    """Invoke `mixtera ARGS`; the result has exit_code, stdout and stderr."""
    return CliRunner(env={"NO_COLOR": "1", "COLUMNS": "200"}).invoke(app, [str(a) for a in args])


def make_span_corpus(root: Path, bad_lines: tuple[int, ...] = ()) -> Path:
    """A corpus whose plain JSON lines file splits into many spans (index with a small ``span_bytes``):
    blank lines, non-ASCII text, automatic fields whose type changes along the file (int, then text;
    bool, then int) or that appear only late, no final newline; plus small files of other formats.
    ``bad_lines``: 1-based lines of big.jsonl replaced by malformed JSON."""
    lines: list[bytes] = []
    for i in range(400):
        rec: dict[str, Any] = {"text": f"doc {i} " + "wörd " * (i % 11), "n": i if i < 250 else f"n{i}"}
        rec["flag"] = (i % 2 == 0) if i < 100 else i
        if i > 330:
            rec["late"] = i / 4
        lines.append(json.dumps(rec, ensure_ascii=False).encode())
        if i % 37 == 0:
            lines.append(b"")  # a blank line: no record, but a line
    for line in bad_lines:
        lines[line - 1] = b'{"text": broken'
    write(root / "big.jsonl", b"\n".join(lines))  # no final newline
    write(root / "small.jsonl", jsonl(docs("small", 6, late=1)))
    write(root / "packed.jsonl.gz", jsonl(docs("gz", 5, flag=True)))
    return root


def assert_same_index(one: Path, two: Path) -> None:
    """The two index folders hold byte-identical tables and manifests."""
    for name in ("samples.parquet", "files.parquet", "manifest.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
