"""Done-when: the real corpora, indexed with the shared config, against an independent count."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from mixtera.planner.index import build_index, load_index
from tests.helpers import ROOT

pytestmark = pytest.mark.shared


def _records(path: Path) -> list[dict]:
    """A deliberately separate reader: whole-file decompression, split on b"\\n"."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def _language(rec: dict) -> str:
    for outer, inner in ((None, "lang"), ("meta", "language"), ("stats", "lang"), ("metadata", "language")):
        value = rec.get(inner) if outer is None else (rec.get(outer) or {}).get(inner)
        if value is not None:
            return value
    return "unknown"


def test_shared_text_corpora_counts_match_an_independent_reader(shared_corpora: Path, tmp_path: Path) -> None:
    text = shared_corpora / "text"
    report = build_index(
        [text], tmp_path / "idx", ROOT / "examples" / "shared_corpora_index.toml", processes=2
    )
    assert report.samples == 42_517
    per_source, per_language = Counter(), Counter()
    for path in sorted(p for p in text.rglob("*") if p.is_file()):
        for rec in _records(path):
            per_source[path.relative_to(text).parts[0]] += 1
            per_language[_language(rec)] += 1
    samples = load_index(tmp_path / "idx").samples
    assert Counter(samples.column("source").to_pylist()) == per_source
    assert Counter(samples.column("language").to_pylist()) == per_language
    assert sum(per_source.values()) == 42_517
    # the language really comes from all four places (lang, meta.language, stats.lang, metadata.language)
    for lang_from in ("tldr", "arxiv", "stackexchange", "ccnet"):
        langs = {
            r["language"]
            for r in samples.filter(
                samples.column("source").to_numpy(zero_copy_only=False) == lang_from
            ).to_pylist()
        }
        assert langs - {"unknown"}, lang_from
