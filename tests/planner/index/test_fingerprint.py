"""The content hash of corpus files: what the index records, incremental use, older indexes refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import xxhash

from mixtera.planner.index import build_index, load_index, parse_config
from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import ContentHasher, content_digest, file_content_hash
from mixtera.runtime.readers import FileEntry
from tests.helpers.index_helpers import CONFIG, make_corpus


def test_content_hash_is_prefixed_xxh3_128_of_the_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20) + b"tail"  # several read blocks, and a partial one
    path.write_bytes(data)
    expected = "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()
    assert file_content_hash(path) == expected
    streamed = ContentHasher()
    for i in range(0, len(data), 7777):
        streamed.update(data[i : i + 7777])
    assert streamed.hexdigest() == expected
    assert content_digest(expected) == xxhash.xxh3_128(data).digest()
    assert content_digest(xxhash.xxh3_128(data).hexdigest()) is None  # unprefixed: not ours
    assert content_digest("xxh3_128:zz") is None


def test_index_records_the_content_hash_of_every_file(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    build_index([corpus], tmp_path / "idx", parse_config(CONFIG), processes=2)
    tables = load_index(tmp_path / "idx")
    files = pq.read_table(tmp_path / "idx" / "files.parquet").to_pylist()
    assert [f["content_hash"] for f in files] == [f["content_hash"] for f in tables.manifest["files"]]
    for f in files:
        raw = (corpus / f["path"]).read_bytes()  # the stored bytes, compressed or not
        assert f["content_hash"] == "xxh3_128:" + xxhash.xxh3_128(raw).hexdigest()


def test_same_size_new_bytes_and_new_mtime_is_reindexed(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    cfg, out = parse_config(CONFIG), tmp_path / "idx"
    build_index([corpus], out, cfg, processes=1)
    path = corpus / "web" / "a.jsonl"
    data = path.read_bytes()
    before = path.stat().st_mtime_ns
    path.write_bytes(data.replace(b"web document 0", b"web document X", 1))
    os.utime(path, ns=(before + 10**9, before + 10**9))
    assert path.stat().st_size == len(data)
    report = build_index([corpus], out, cfg, processes=1)
    assert report.changed == ["web/a.jsonl"]
    entry = next(f for f in load_index(out).manifest["files"] if f["path"] == "web/a.jsonl")
    assert entry["content_hash"] == file_content_hash(path)


def test_index_with_older_fingerprints_is_refused_and_rebuilt(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    cfg, out = parse_config(CONFIG), tmp_path / "idx"
    build_index([corpus], out, cfg, processes=1)
    manifest = json.loads((out / "manifest.json").read_text())
    for f in manifest["files"]:
        f["blake2b"] = f.pop("content_hash").split(":")[1]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PlanError, match="older form") as err:
        load_index(out)
    assert "mixtera index" in (err.value.hint or "")
    report = build_index([corpus], out, cfg, processes=1)  # not reusable: everything is re-read
    assert (len(report.added), report.unchanged) == (5, [])
    assert all(content_digest(f["content_hash"]) for f in load_index(out).manifest["files"])


def test_plan_file_entry_without_a_content_hash_is_refused(tmp_path: Path) -> None:
    entry = {"file_id": 0, "path": "a.jsonl", "format": "jsonl", "size": 1, "mtime_ns": 0}
    entry["blake2b"] = "0" * 32  # the form older mixtera wrote
    with pytest.raises(PlanError, match="a.jsonl: the plan records no content hash"):
        FileEntry.from_manifest(entry, tmp_path)
