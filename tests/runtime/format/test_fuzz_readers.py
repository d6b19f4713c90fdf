"""Fuzz targets for the binary readers: any bytes give a result or a MixteraUserError, never another
exception (no struct.error, IndexError, ZstdError, mmap ValueError, MemoryError ...).

Each reader gets arbitrary bytes and mutations of a valid file (flipped bytes, cuts, insertions,
overwritten runs), which reach much deeper than random bytes that fail the magic. The example
count is the hypothesis profile's (tests/conftest.py: 100 in CI); run longer with
``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/runtime/format/test_fuzz_readers.py``.
"""

from __future__ import annotations

import atexit
import gzip
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixtera.runtime.errors import MixteraUserError
from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format import frame_cache
from mixtera.runtime.format.feedback_log import LogWriter, read_log
from mixtera.runtime.format.rank_file import RankFileReader, RankHeader, write_rank_file
from mixtera.runtime.format.rank_frames import Segment
from mixtera.runtime.format.token_file import TokenFile, write_token_file

FP = "ab" * 16
DOMAINS = 3
_DIR = Path(tempfile.mkdtemp(prefix="mixtera-fuzz-"))  # module-level: hypothesis examples share it
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _rank_seed() -> bytes:
    rng = np.random.default_rng(1)
    segs = []
    for k in range(3):
        counts = rng.integers(0, 6, 4).astype(np.uint32)
        n = int(counts.sum())
        segs.append(Segment(k * 4, counts, rng.integers(0, 3, n).astype(np.uint16),
                            np.sort(rng.integers(0, 10**6, n)).astype(np.int64),
                            rng.integers(0, 500, n).astype(np.uint32), np.zeros(n, np.uint32), 0))
    path = _DIR / "seed-rank.bin"
    write_rank_file(path, RankHeader(rank=0, world_size=1, steps=12, segment_steps=4, first_segment=0,
                                     segment_count=3, fingerprint=b"\1" * 16), segs)
    return path.read_bytes()


def _token_seed() -> bytes:
    path = _DIR / "seed-tokens.bin"
    write_token_file(path, [[1, 2, 3], [70000, 5], []], 4)
    return path.read_bytes()


def _log_seed() -> bytes:
    path = _DIR / "seed-log.bin"
    with LogWriter(path, DOMAINS, FP, fsync=False) as w:
        for s in range(4):
            w.append(s, 0, np.arange(DOMAINS) + s, np.full(DOMAINS, 0.5 * s))
    return path.read_bytes()


_CORPUS = _DIR / "corpus.jsonl.gz"
_CORPUS.write_bytes(gzip.compress(b"".join(b'{"t": "%d %s"}\n' % (i, b"x" * (i % 97)) for i in range(400))))
_CONTENT = file_content_hash(_CORPUS)


def _cache_seed() -> bytes:
    path = _DIR / "seed.mxz"
    frame_cache.build_frame_cache(_CORPUS, "gz", _CONTENT, path, frame_bytes=2048)
    return path.read_bytes()


def _read_rank(path: Path) -> None:
    with RankFileReader(path) as reader:
        for k in range(reader.header.first_segment, reader.header.first_segment + len(reader.seek_table)):
            reader.segment(k)


def _read_tokens(path: Path) -> None:
    tf = TokenFile(path)
    tf.slice(0, tf.tokens).sum()
    tf.close()


def _read_log(path: Path) -> None:
    read_log(path, DOMAINS, FP)


def _read_cache(path: Path) -> None:
    framed = frame_cache.FramedFile(path, _CONTENT)
    try:
        framed.read(0, framed.size)
        framed.read(framed.size // 3, 1000)
    finally:
        framed.close()


READERS: dict[str, tuple[Callable[[Path], None], bytes]] = {
    "rank file": (_read_rank, _rank_seed()),
    "token file": (_read_tokens, _token_seed()),
    "feedback log": (_read_log, _log_seed()),
    "frame cache": (_read_cache, _cache_seed()),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with up to four edits: flip a byte, cut the file, insert bytes, overwrite a run."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            run = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(run)] = run
    return bytes(data)


def _only_user_errors(read: Callable[[Path], None], data: bytes, name: str) -> None:
    path = _DIR / f"case-{name.replace(' ', '-')}"
    path.write_bytes(data)
    try:
        read(path)
    except MixteraUserError as exc:
        assert str(path) in str(exc), exc  # every error names the file
    # anything else propagates and fails the example


_FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)


@pytest.mark.parametrize("name", READERS)
@_FUZZ
@given(data=st.data())
def test_arbitrary_bytes_give_a_result_or_a_user_error(name: str, data: st.DataObject) -> None:
    read, _ = READERS[name]
    _only_user_errors(read, data.draw(st.binary(max_size=512)), name)


@pytest.mark.parametrize("name", READERS)
@_FUZZ
@given(data=st.data())
def test_mutated_files_give_a_result_or_a_user_error(name: str, data: st.DataObject) -> None:
    read, seed = READERS[name]
    _only_user_errors(read, data.draw(mutated(seed)), name)


@pytest.mark.parametrize("name", READERS)
def test_the_seed_files_read(name: str) -> None:
    read, seed = READERS[name]
    path = _DIR / f"intact-{name.replace(' ', '-')}"
    path.write_bytes(seed)
    read(path)  # the mutations start from valid files
