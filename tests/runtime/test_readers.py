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
from mixtera.runtime.format.token_file import HEADER_SIZE, TokenFile, write_token_file
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
    path = tmp_path / "c.tar"
    shutil.copy(__file__, path)
    with pytest.raises(PlanError, match="no reader for format 'tar'"):
        open_reader(_entry(path, "tar"), "text", tmp_path)


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
    assert len(raw) == HEADER_SIZE + 7 * code
