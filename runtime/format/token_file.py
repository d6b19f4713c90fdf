"""Pre-tokenized token files ``tokens/<file_id>.bin`` (see man/mixtera-formats.md).

Layout (little-endian)::

    magic       8 bytes  b"MXTOK\\0\\0\\0"
    version     u16      1
    dtype code  u16      2 = uint16, 4 = uint32 (the item size in bytes)
    flags       u32      0 (no flag is defined; a set bit is refused)
    samples     u64      indexed samples of the corpus file
    tokens      u64      token ids that follow
    ids         tokens * dtype code bytes, every sample's ids in record order, no end-of-document tokens

The index writes one per corpus file (``mixtera index --store-tokens``) through :class:`TokenFileWriter`;
the runtime maps it read-only with :class:`TokenFile` and slices ids without tokenizing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mixtera.runtime.atomic import fsync_path, temp_file
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.header import BinaryFormat, check_header, check_length, check_size

MAGIC = b"MXTOK\0\0\0"
VERSION = 1
HEADER = struct.Struct("<8sHHIQQ")
HEADER_SIZE = 32
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_HINT = "re-run `mixtera index --store-tokens` and recompile the plan"
FORMAT = BinaryFormat(name="token file", magic=MAGIC, major=VERSION, header_size=HEADER_SIZE, hint=_HINT,
                      version_hint=_HINT)


def dtype_code_for_vocab(vocab_size: int) -> int:
    """2 (uint16) when every id fits in 16 bits, else 4 (uint32)."""
    return 2 if vocab_size <= 1 << 16 else 4


class TokenFileWriter:
    """Streams the ids of one corpus file's samples into a token file, published atomically on close.

    Usage: ``with TokenFileWriter(path, dtype_code) as w: w.add(ids)`` per sample, in record order.
    """

    def __init__(self, path: Path | str, dtype_code: int) -> None:
        if dtype_code not in _DTYPES:
            raise ValueError(f"dtype code must be 2 or 4, not {dtype_code}")
        self.path = Path(path)
        self.dtype = _DTYPES[dtype_code]
        self.dtype_code = dtype_code
        self.samples = 0
        self.tokens = 0
        fd, self._tmp = temp_file(self.path.parent, prefix=f".{self.path.name}.")  # 0o666 & ~umask
        self._file = os.fdopen(fd, "wb")
        self._file.write(b"\0" * HEADER_SIZE)

    def add(self, ids: Iterable[int] | np.ndarray) -> int:
        """Append one sample's ids; returns its token offset in the file."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= 1 << (8 * self.dtype_code)):
            raise ValueError(f"{self.path}: token id out of range for uint{8 * self.dtype_code}")
        offset = self.tokens
        self._file.write(arr.astype(self.dtype).tobytes())
        self.samples += 1
        self.tokens += int(arr.size)
        return offset

    def close(self) -> None:
        f = self._file
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, self.dtype_code, 0, self.samples, self.tokens))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self._tmp, self.path)
        fsync_path(self.path.parent)

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_token_file(path: Path | str, samples: Iterable[Iterable[int]], dtype_code: int) -> list[int]:
    """Write every sample's ids; returns each sample's token offset."""
    with TokenFileWriter(path, dtype_code) as w:
        return [w.add(ids) for ids in samples]


class TokenFile:
    """A read-only memory map of one token file; checks magic, version and size.

    A map beats one ``pread`` per range here: ranges are a few hundred bytes, neighbouring samples
    share pages, and touched pages are clean page cache (RssFile, reclaimable), not worker heap.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError as exc:
            raise PlanError(f"{self.path}: token file not found", _HINT) from exc
        except ValueError as exc:  # mmap of an empty file
            raise PlanError(f"{self.path}: empty token file", _HINT) from exc
        try:
            code = self._check()
        except PlanError:
            self._map.close()
            raise
        self.ids = np.frombuffer(self._map, dtype=_DTYPES[code], count=self.tokens, offset=HEADER_SIZE)

    def _check(self) -> int:
        """The dtype code, after the header check; sets ``samples`` and ``tokens``."""
        size = len(self._map)
        check_length(self.path, FORMAT, size)
        magic, version, code, flags, self.samples, self.tokens = HEADER.unpack_from(self._map, 0)
        check_header(self.path, FORMAT, size=size, magic=magic, major=version, flags=flags)
        if code not in _DTYPES:
            raise PlanError(f"{self.path}: token file dtype code {code}, this mixtera reads 2 (uint16) "
                            "or 4 (uint32)", _HINT)
        check_size(self.path, FORMAT, size=size, declared=HEADER_SIZE + self.tokens * code,
                   by=f"its header ({self.tokens} tokens of {code} bytes)")
        return code

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Ids ``[start, stop)`` of the file, as a view of the map."""
        if not 0 <= start <= stop <= self.tokens:
            raise PlanError(
                f"{self.path}: token range [{start}, {stop}) outside its {self.tokens} tokens",
                "the plan and the token files disagree; re-index and recompile",
            )
        return self.ids[start:stop]

    def close(self) -> None:
        self.ids = None  # drop the view before closing the map
        self._map.close()
