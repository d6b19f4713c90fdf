"""`mixtera index s3://...` over WebDataset shards (a real S3 server on 127.0.0.1): each shard is
streamed once, and the index equals the index of the same files on a local disk."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtera.planner.index import build_index, parse_config
from mixtera.planner.index.corpus_files import HashingReader, _ForwardFile
from mixtera.runtime.errors import CorpusError
from mixtera.runtime.fingerprint import bytes_content_hash
from tests.helpers import SHARED
from tests.helpers.shards import image_samples, mixed_corpus, png_bytes, write_members, write_shard

pytest.importorskip("PIL", reason="needs the vision extra (pip install 'mixtera[vision]')")

CONFIG = '[index]\ntext = ["text", "txt"]\n'
_SHARED_SHARDS = SHARED / "corpora" / "image_text"


def _files(index: Path) -> list[dict[str, Any]]:
    """The manifest's file entries without what differs by nature between a folder and a bucket."""
    files = json.loads((index / "manifest.json").read_bytes())["files"]
    return [{k: v for k, v in f.items() if k not in ("mtime_ns", "etag")} for f in files]


def _assert_same_index(local: Path, remote: Path) -> None:
    assert (remote / "samples.parquet").read_bytes() == (local / "samples.parquet").read_bytes()
    assert _files(remote) == _files(local)  # sizes, formats and the content hashes of the bytes streamed
    manifest = json.loads((remote / "manifest.json").read_bytes())
    assert all(f["mtime_ns"] == 0 and f["etag"] for f in manifest["files"])


def _odd_corpus(root: Path) -> Path:
    """Shards that take tarfile's other paths: JPEGs, BMPs (sized by Pillow, not the header parser),
    a member far larger than one read (skipped while streaming), GNU long names, non-adjacent keys."""
    mixed_corpus(root, shards=2, per_shard=9, texts=12)
    write_shard(root / "img" / "jpeg.tar", image_samples(5, start=100, fmt="jpg"))
    payload = random.Random(7).randbytes(3 << 20)  # 3 MiB: several stream blocks
    folder = "deep/" + "long-folder-name-" * 8 + "/"  # > 100 characters: a GNU long-name header
    write_members(root / "img" / "odd.tar", [
        (f"{folder}a.bmp", png_bytes(21, 13, "blue", "BMP")),
        (f"{folder}a.txt", "a blue bitmap"),
        (f"{folder}a.bin", payload),
        ("b.png", png_bytes(30, 10)),
        ("b.txt", "a red square"),
        ("c.txt", "a caption without an image"),
        ("b.json", {"late": True}),  # a member of b after c: b's span covers c's member
    ])
    return root


@pytest.mark.slow
def test_shards_from_s3_index_as_the_local_files(s3_server: Any, tmp_path: Path) -> None:
    corpus = _odd_corpus(tmp_path / "corpus")
    url = s3_server.upload(corpus, "shards", "mixed")
    config = parse_config(CONFIG)
    local = build_index(corpus, tmp_path / "local", config, processes=1)
    gets = s3_server.app.ranged_gets
    remote = build_index(url, tmp_path / "remote", config, processes=2)
    assert s3_server.app.ranged_gets - gets == 5  # each object streamed once (one GET: under 8 MiB)
    assert str(remote.corpus_root) == "s3://shards/mixed"
    _assert_same_index(tmp_path / "local", tmp_path / "remote")
    assert (local.samples, local.bytes) == (remote.samples, remote.bytes)
    table = pq.read_table(tmp_path / "remote" / "samples.parquet").to_pylist()
    sizes = {(r["sample_id"], r["image_width"], r["image_height"]) for r in table
             if r["sample_id"].startswith("img/odd.tar")}
    assert ("img/odd.tar#0", 21, 13) in sizes and ("img/odd.tar#1", 30, 10) in sizes


@pytest.mark.slow
def test_the_shared_shards_from_s3_index_as_the_local_files(s3_server: Any, tmp_path: Path) -> None:
    if not _SHARED_SHARDS.is_dir():
        pytest.skip(f"needs {_SHARED_SHARDS} (the read-only ../shared beside the checkout is absent)")
    url = s3_server.upload(_SHARED_SHARDS, "shards", "shared")
    config = parse_config(CONFIG)
    build_index(_SHARED_SHARDS, tmp_path / "local", config, processes=1)
    remote = build_index(url, tmp_path / "remote", config, processes=2)
    _assert_same_index(tmp_path / "local", tmp_path / "remote")
    assert remote.samples == 32 + 385


def _members_end(shard: Path) -> int:
    """Where the end-of-archive blocks of ``shard`` start (the end of its last member's data)."""
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


_DAMAGE: dict[str, Callable[[Path], bytes]] = {
    "inside-a-member": lambda shard: shard.read_bytes()[:2500],  # cut in an image's data
    "at-a-member-boundary": lambda shard: shard.read_bytes()[: _members_end(shard)],  # no end blocks
    "garbage-after-a-member": lambda shard: shard.read_bytes()[: _members_end(shard)] + b"x" * 1024,
    "not-a-tar": lambda shard: b"this is a text file, not a tar archive\n" * 40,
    "empty": lambda shard: b"",
}


def _message(corpus: str | Path, out: Path) -> str:
    with pytest.raises(CorpusError) as info:
        build_index(corpus, out, parse_config(CONFIG), processes=1)
    return str(info.value)


@pytest.mark.parametrize("case", sorted(_DAMAGE))
def test_a_damaged_shard_in_s3_is_named_as_locally(s3_server: Any, tmp_path: Path, case: str) -> None:
    corpus = tmp_path / "corpus"
    shard = write_shard(corpus / "s.tar", image_samples(4))
    shard.write_bytes(_DAMAGE[case](shard))
    s3_server.upload(corpus, "damaged", case)
    url = f"s3://damaged/{case}/s.tar"
    local = _message(corpus, tmp_path / "local")
    remote = _message(f"s3://damaged/{case}/", tmp_path / "remote")
    assert url in remote and "tar" in remote
    assert remote == local.replace(str(shard), url)



@given(st.integers(0, 3 << 20), st.integers(0, 2**32),
       st.lists(st.tuples(st.integers(-_ForwardFile.REWIND, 2 << 20), st.integers(0, 70_000)), max_size=30))
@settings(max_examples=40, deadline=None)
def test_the_forward_file_reads_as_a_seekable_file_and_hashes_every_byte(
    size: int, seed: int, moves: list[tuple[int, int]]
) -> None:
    """Seeks forward (any distance) or back (at most REWIND behind the furthest position reached),
    then a read: the bytes a seekable file gives; the stream's hash is that of all its bytes,
    skipped ones too."""
    data = random.Random(seed).randbytes(size)
    src = HashingReader(io.BytesIO(data))
    stream = _ForwardFile(src)
    furthest = 0
    for step, n in moves:
        pos = max(stream.tell() + step, furthest - _ForwardFile.REWIND, 0)
        assert stream.seek(pos) == pos
        assert stream.read(n) == data[pos : pos + n]
        assert stream.tell() == min(pos + n, max(size, pos))
        furthest = max(furthest, stream.tell())
    assert src.drain() == bytes_content_hash(data)


def test_the_forward_file_refuses_a_seek_further_back() -> None:
    stream = _ForwardFile(HashingReader(io.BytesIO(bytes(4 << 20))))
    stream.seek(3 << 20)
    assert stream.read(10) == bytes(10)
    with pytest.raises(OSError, match="cannot seek back"):
        stream.seek((3 << 20) - 2 * _ForwardFile.REWIND)
