"""A step may touch more corpus or token files than the sources keep open at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format.token_file import write_token_file
from mixtera.runtime.readers import FileEntry
from mixtera.runtime.sources import _OPEN_TOKEN_FILES, PretokenizedSource, TextSource


def test_text_source_reads_a_step_over_more_files_than_its_open_readers(tmp_path: Path) -> None:
    files = {}
    for i in range(40):
        path = tmp_path / f"f{i}.jsonl"
        path.write_bytes(json.dumps({"text": f"doc {i}"}).encode() + b"\n")
        st = os.stat(path)
        files[i] = FileEntry(file_id=i, path=path, format="jsonl", size=st.st_size,
                             mtime_ns=st.st_mtime_ns, content_hash=file_content_hash(path))
    source = TextSource(files, "text", tmp_path / "cache")
    assert len(files) > source.pool.capacity
    ids = [*range(40), *range(39, -1, -1)]
    lengths = [files[i].size - 1 for i in ids]
    assert source.texts(ids, [0] * len(ids), lengths) == [f"doc {i}" for i in ids]
    source.close()


def test_pretokenized_source_reads_a_step_over_more_files_than_it_keeps_open(tmp_path: Path) -> None:
    n = _OPEN_TOKEN_FILES + 6
    for i in range(n):
        write_token_file(tmp_path / f"{i}.bin", [[i, i + 1]], 2)
    source = PretokenizedSource(tmp_path, eos_id=7)
    for order in (np.arange(n), np.arange(n)[::-1].copy()):
        cols = {"file": order, "tokens": np.full(n, 2), "token_offset": np.zeros(n, np.uint64)}
        got = source.flat(order, cols, np.zeros(n, np.int64), np.full(n, 3))
        expected = np.stack([order, order + 1, np.full(n, 7)], axis=1).ravel()
        assert got.tolist() == expected.tolist()
    source.close()
