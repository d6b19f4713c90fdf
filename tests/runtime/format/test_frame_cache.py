"""Frame-cache faults: a damaged `.mxz`, an empty one, a cache folder that is a file — each a
CacheError naming the file with the hint to delete it (the next read rebuilds it); never a
ZstdError, an mmap error or silently wrong bytes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from mixtera.runtime.errors import FileFormatError
from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format import frame_cache
from mixtera.runtime.format.frame_cache import CacheError, FramedFile, open_framed
from tests.helpers.runtime_plans import make_docs, write_corpus_file


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, bytes]:
    monkeypatch.setattr(frame_cache, "FRAME_BYTES", 4096)
    path = tmp_path / "c.jsonl.gz"
    write_corpus_file(path, make_docs(5, 80), "jsonl.gz")
    return path, file_content_hash(path), gzip.decompress(path.read_bytes())


def _cached(corpus: tuple[Path, str, bytes], cache: Path) -> Path:
    path, content, _ = corpus
    open_framed(path, "gz", content, cache).close()
    (mxz,) = cache.glob("*.mxz")
    return mxz


def _read_all(framed: FramedFile) -> bytes:
    return framed.read(0, framed.size)


def test_every_flipped_byte_of_a_frame_is_an_error_naming_the_file(corpus, tmp_path: Path) -> None:
    mxz = _cached(corpus, tmp_path / "cache")
    good = mxz.read_bytes()
    framed = FramedFile(mxz, corpus[1])
    assert _read_all(framed) == corpus[2]
    first, second = int(framed._offsets[0]), int(framed._offsets[1])
    framed.close()
    detected = 0
    for at in range(first, second):  # every byte of frame 0: header, blocks, checksum
        bad = bytearray(good)
        bad[at] ^= 0x10
        mxz.write_bytes(bytes(bad))
        try:  # never other bytes: an error, or a flip zstd ignores (e.g. the window size)
            assert FramedFile(mxz, corpus[1]).read(0, 4096) == corpus[2][:4096], f"byte {at}"
        except CacheError as err:
            assert str(mxz) in str(err) and "frame 0" in str(err) and f"delete {mxz}" in err.hint
            detected += 1
    assert detected >= second - first - 8


def test_an_empty_or_short_cache_file_is_an_error_naming_it(corpus, tmp_path: Path) -> None:
    mxz = _cached(corpus, tmp_path / "cache")
    for size in (0, 10, 60):
        mxz.write_bytes(mxz.read_bytes()[:size] if size else b"")
        with pytest.raises(FileFormatError, match=str(mxz)) as err:
            FramedFile(mxz, corpus[1])
        assert f"delete {mxz}" in err.value.hint


def test_a_seek_table_that_lies_is_refused_at_open(corpus, tmp_path: Path) -> None:
    mxz = _cached(corpus, tmp_path / "cache")
    data = bytearray(mxz.read_bytes())
    data[-16:-8] = data[-24:-16]  # two frames start at the same byte
    mxz.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="seek table"):
        FramedFile(mxz, corpus[1])


def test_deleting_a_damaged_cache_file_rebuilds_it(corpus, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mxz = _cached(corpus, cache)
    mxz.write_bytes(b"")
    with pytest.raises(FileFormatError):
        open_framed(corpus[0], "gz", corpus[1], cache)
    assert mxz.exists()  # mixtera never deletes it itself
    mxz.unlink()
    assert _read_all(open_framed(corpus[0], "gz", corpus[1], cache)) == corpus[2]


def test_a_cache_folder_that_is_a_regular_file_is_named(corpus, tmp_path: Path) -> None:
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    for where in (cache, cache / "sub"):
        with pytest.raises(CacheError, match=str(cache)) as err:
            open_framed(corpus[0], "gz", corpus[1], where)
        assert "MIXTERA_CACHE" in err.value.hint
    assert cache.read_text() == "not a folder"
