"""Every binary format runs the one header check: magic, major version, flags, size, each with a hint."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mixtera.runtime.errors import (
    FileFormatError,
    FileSizeError,
    FormatVersionError,
    NotThisFormatError,
    ReservedFlagsError,
)
from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format import frame_cache
from mixtera.runtime.format.feedback_log import LogWriter, read_log
from mixtera.runtime.format.token_file import TokenFile, write_token_file

FP = "cd" * 16


def _token_file(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
    path = tmp_path / "0.bin"
    write_token_file(path, [np.arange(4)], 2)
    return path, TokenFile


def _frame_cache(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
    src = tmp_path / "c.jsonl.gz"
    src.write_bytes(gzip.compress(b'{"text": "hello"}\n' * 50))
    content = file_content_hash(src)
    dest = tmp_path / "c.mxz"
    frame_cache.build_frame_cache(src, "gz", content, dest)
    return dest, lambda p: frame_cache.FramedFile(p, content)


def _feedback_log(tmp_path: Path) -> tuple[Path, Callable[[Path], object]]:
    path = tmp_path / "log.bin"
    with LogWriter(path, 2, FP, fsync=False) as w:
        w.append(0, 0, np.ones(2), np.ones(2))
    return path, lambda p: read_log(p, 2, FP)


# (builder, offset of the major version, offset of the flags or None, whether the size is declared)
FORMATS = {"token file": (_token_file, 8, 12, True), "frame cache": (_frame_cache, 8, 10, True),
           "feedback log": (_feedback_log, 8, None, False)}


def _patched(raw: bytes, at: int, value: int) -> bytes:
    """``raw`` with the u16 at ``at`` set to ``value``."""
    return raw[:at] + value.to_bytes(2, "little") + raw[at + 2:]


@pytest.mark.parametrize("name", FORMATS)
def test_each_header_failure_names_the_file_and_gives_a_hint(tmp_path: Path, name: str) -> None:
    build, major_at, flags_at, sized = FORMATS[name]
    path, read = build(tmp_path)
    read(path)  # the good file reads
    good = path.read_bytes()
    checks: list[tuple[bytes, type, str]] = [
        (b"XXXXXXXX" + good[8:], NotThisFormatError, f"bad magic b'XXXXXXXX', not a mixtera {name}"),
        (good[:10], NotThisFormatError, f"10 bytes, too short for a {name}"),
        (_patched(good, major_at, 9), FormatVersionError, f"{name} format (9|version 9)")]
    if flags_at is not None:
        checks.append((_patched(good, flags_at, 1), ReservedFlagsError, "reserved flag bits 0x1 are set"))
    if sized:
        checks.append((good + b"\0\0", FileSizeError, rf"size {len(good) + 2} does not match its"))
    for raw, error, message in checks:
        path.write_bytes(raw)
        with pytest.raises(error, match=message) as exc:
            read(path)
        assert isinstance(exc.value, FileFormatError)
        assert str(path) in exc.value.message and exc.value.hint, exc.value


def test_a_newer_minor_version_of_the_feedback_log_is_read(tmp_path: Path) -> None:
    path, read = _feedback_log(tmp_path)
    path.write_bytes(_patched(path.read_bytes(), 10, 3))
    assert list(read(path).step) == [0]
