"""Sample readers per format, the zstd-framed cache, fingerprint checks and token files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format import frame_cache as zframes
from mixtera.runtime.format.token_file import (
    BLOCK_BYTES,
    HEADER_SIZE,
    TokenFile,
    trailer_size,
    write_token_file,
)
from mixtera.runtime.readers import FileEntry, open_reader, verify_file
from tests.helpers.runtime_plans import make_docs, write_corpus_file

FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"]


def _entry(path: Path, fmt: str) -> FileEntry:
    st = os.stat(path)
    return FileEntry(
        file_id=0,
        path=path,
        format=fmt,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        content_hash=file_content_hash(path),
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_returns_the_text_of_every_sample_in_any_order(tmp_path: Path, fmt: str) -> None:
    docs = make_docs(11, 300, words=(50, 400))  # ~0.6 MB: several zstd frames
    path = tmp_path / f"c.{fmt}"
    locs = write_corpus_file(path, docs, fmt)
    reader = open_reader(_entry(path, fmt), "meta.text", tmp_path / "cache")
    order = np.random.default_rng(0).permutation(len(docs))
    got = reader.texts([locs[i][0] for i in order], [locs[i][1] for i in order])
    assert got == [docs[i] for i in order]
    reader.close()


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_frame_cache_is_built_once_and_keyed_by_content(tmp_path: Path, fmt: str, monkeypatch) -> None:
    monkeypatch.setattr(zframes, "FRAME_BYTES", 4096)
    path = tmp_path / f"c.{fmt}"
    locs = write_corpus_file(path, make_docs(5, 80), fmt)
    entry = _entry(path, fmt)
    builds: list[Path] = []
    cache = tmp_path / "cache"
    for _ in range(2):
        framed = zframes.open_framed(
            path, fmt.rsplit(".", 1)[1], entry.content_hash, cache, on_build=builds.append
        )
        framed.close()
    assert builds == [path]
    name = entry.content_hash.replace(":", "-") + ".mxz"
    assert sorted(p.name for p in cache.glob("*.mxz")) == [name]
    assert not list(cache.glob("*.tmp"))
    framed = zframes.FramedFile(cache / name, entry.content_hash)
    off, n = locs[-1]
    assert framed.read(off, n).startswith(b'{"id":79')
    with pytest.raises(PlanError, match="not a version"):
        zframes.FramedFile(cache / name, "xxh3_128:" + "0" * 32)


def test_truncated_compressed_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    write_corpus_file(path, make_docs(1, 50), "jsonl.gz")
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(Exception, match="c.jsonl.gz"):
        open_reader(_entry(path, "jsonl.gz"), "meta.text", tmp_path / "cache")


def test_changed_corpus_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    write_corpus_file(path, make_docs(1, 20), "jsonl")
    entry = _entry(path, "jsonl")
    os.utime(path, ns=(entry.mtime_ns + 10**9, entry.mtime_ns + 10**9))
    verify_file(entry)  # touched, same bytes: accepted through the content hash
    data = bytearray(path.read_bytes())
    data[5] = ord("X") if data[5] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))  # same size, other bytes
    with pytest.raises(PlanError, match=r"c\.jsonl: corpus file changed.*content hash xxh3_128:") as err:
        verify_file(entry)
    assert "mixtera index" in err.value.hint
    path.write_bytes(bytes(data) + b"\n")
    with pytest.raises(PlanError, match="size"):
        open_reader(entry, "meta.text", tmp_path)
    path.unlink()
    with pytest.raises(PlanError, match="missing"):
        verify_file(entry)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.avro"
    shutil.copy(__file__, path)
    with pytest.raises(PlanError, match="no reader for format 'avro'"):
        open_reader(_entry(path, "avro"), "text", tmp_path)


@pytest.mark.parametrize("code", [2, 4])
def test_token_file_round_trip_and_checks(tmp_path: Path, code: int) -> None:
    samples = [np.arange(5), np.array([], dtype=np.int64), np.array([7, 65535 if code == 2 else 100_000])]
    offsets = write_token_file(tmp_path / "0.bin", samples, code)
    assert offsets == [0, 5, 5]
    tf = TokenFile(tmp_path / "0.bin")
    assert (tf.samples, tf.tokens) == (3, 7)
    assert tf.slice(5, 7).tolist() == samples[2].tolist()
    with pytest.raises(PlanError, match="outside"):
        tf.slice(6, 8)
    tf.close()
    raw = (tmp_path / "0.bin").read_bytes()
    (tmp_path / "1.bin").write_bytes(raw[:-1])
    with pytest.raises(PlanError, match="does not match its header"):
        TokenFile(tmp_path / "1.bin")
    (tmp_path / "2.bin").write_bytes(b"NOTMXTOK" + raw[8:])
    with pytest.raises(PlanError, match="bad magic"):
        TokenFile(tmp_path / "2.bin")
    assert len(raw) == HEADER_SIZE + 7 * code + trailer_size(7 * code)


def _flipped(path: Path, at: int) -> Path:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    out = path.with_name(f"flipped-{at}.bin")
    out.write_bytes(bytes(data))
    return out


def test_token_file_block_checksums_catch_a_flipped_id(tmp_path: Path) -> None:
    """A large file (20 blocks of uint16 ids) is checked block by block as it is read: a bit flip in
    block 19 fails only the reads that touch it, named by block, and a range spanning blocks 0..2
    checks the middle block too."""
    per_block = BLOCK_BYTES // 2
    ids = np.arange(20 * per_block - 100) % 60_000
    write_token_file(tmp_path / "0.bin", [ids], 2)
    bad = TokenFile(_flipped(tmp_path / "0.bin", HEADER_SIZE + 19 * BLOCK_BYTES + 10))
    assert bad.slice(0, per_block).tolist() == ids[:per_block].tolist()
    with pytest.raises(PlanError, match=r"block 19 \(bytes .*\) fails its checksum"):
        bad.slice(19 * per_block, 19 * per_block + 8)
    bad.close()
    middle = TokenFile(_flipped(tmp_path / "0.bin", HEADER_SIZE + BLOCK_BYTES + 3))
    with pytest.raises(PlanError, match="block 1 "):
        middle.slice(10, 2 * per_block + 10)
    middle.close()


def test_a_small_token_file_is_checked_whole_when_opened(tmp_path: Path) -> None:
    write_token_file(tmp_path / "0.bin", [np.arange(3 * BLOCK_BYTES // 2) % 60_000], 2)
    with pytest.raises(PlanError, match=r"block 2 \(bytes .*\) fails its checksum"):
        TokenFile(_flipped(tmp_path / "0.bin", HEADER_SIZE + 2 * BLOCK_BYTES + 1))


@pytest.mark.parametrize("where", ["samples", "checksum table"])
def test_token_file_layout_checksum_covers_header_and_table(tmp_path: Path, where: str) -> None:
    write_token_file(tmp_path / "0.bin", [np.arange(10)], 4)
    at = 16 if where == "samples" else HEADER_SIZE + 40 + 2
    with pytest.raises(PlanError, match="layout checksum mismatch"):
        TokenFile(_flipped(tmp_path / "0.bin", at))


def test_token_file_of_version_1_asks_for_a_reindex(tmp_path: Path) -> None:
    write_token_file(tmp_path / "0.bin", [np.arange(10)], 2)
    data = bytearray((tmp_path / "0.bin").read_bytes())
    data[8] = 1
    (tmp_path / "0.bin").write_bytes(bytes(data))
    with pytest.raises(PlanError, match="format version 1, this mixtera reads version 2") as err:
        TokenFile(tmp_path / "0.bin")
    assert "--store-tokens" in err.value.hint
