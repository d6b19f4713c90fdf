"""Pre-tokenized token files ``tokens/<file_id>.bin`` (see man/mixtera-formats.md).

Layout (little-endian)::

    magic       8 bytes  b"MXTOK\\0\\0\\0"
    version     u16      2
    dtype code  u16      2 = uint16, 4 = uint32 (the item size in bytes)
    flags       u32      0 (no flag is defined; a set bit is refused)
    samples     u64      indexed samples of the corpus file
    tokens      u64      token ids that follow
    ids         tokens * dtype code bytes, every sample's ids in record order, no end-of-document tokens
    blocks      u64 each xxh3_64 of every 64 KiB block of the ids (the last block may be shorter)
    layout      u64      xxh3_64 of the header and the block checksums

The index writes one per corpus file (``mixtera index --store-tokens``) through :class:`TokenFileWriter`;
the runtime maps it read-only with :class:`TokenFile` and slices ids without tokenizing. Opening checks
the header and the layout checksum (a few bytes per MiB), and every block of a file of up to 1 MiB of
ids; in a larger file a block's checksum is checked the first time a slice touches it, so a rank
hashes only the blocks it reads, once (xxh3: ~10 GB/s).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xxhash

from mixtera.runtime.atomic import fsync_path, temp_file
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.header import BinaryFormat, check_header, check_length, check_size

MAGIC = b"MXTOK\0\0\0"
VERSION = 2  # 2: block checksums
HEADER = struct.Struct("<8sHHIQQ")
HEADER_SIZE = 32
BLOCK_SHIFT = 16
BLOCK_BYTES = 1 << BLOCK_SHIFT
_CHECK_AT_OPEN = 16  # blocks: files up to 1 MiB of ids are checked whole when opened (~0.2 ms)
_CHECKSUM = np.dtype("<u8")
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_HINT = "re-run `mixtera index --store-tokens` and recompile the plan"
FORMAT = BinaryFormat(name="token file", magic=MAGIC, major=VERSION, header_size=HEADER_SIZE, hint=_HINT,
                      version_hint=_HINT)


def trailer_size(id_bytes: int) -> int:
    """Bytes after the ids: one checksum per block, then the layout checksum."""
    return _CHECKSUM.itemsize * (-(-id_bytes // BLOCK_BYTES) + 1)


def layout_checksum(header: bytes | memoryview, blocks: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(bytes(header) + bytes(blocks))


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
        self._block = xxhash.xxh3_64()
        self._block_fill = 0  # bytes of the current block hashed so far
        self._sums: list[int] = []
        fd, self._tmp = temp_file(self.path.parent, prefix=f".{self.path.name}.")  # 0o666 & ~umask
        self._file = os.fdopen(fd, "wb")
        self._file.write(b"\0" * HEADER_SIZE)

    def add(self, ids: Iterable[int] | np.ndarray) -> int:
        """Append one sample's ids; returns its token offset in the file."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= 1 << (8 * self.dtype_code)):
            raise ValueError(f"{self.path}: token id out of range for uint{8 * self.dtype_code}")
        offset = self.tokens
        data = arr.astype(self.dtype).tobytes()
        self._file.write(data)
        self._hash(memoryview(data))
        self.samples += 1
        self.tokens += int(arr.size)
        return offset

    def _hash(self, data: memoryview) -> None:
        """Feed ``data`` to the block checksums, closing each block at BLOCK_BYTES."""
        while data:
            take = min(BLOCK_BYTES - self._block_fill, len(data))
            self._block.update(data[:take])
            self._block_fill += take
            data = data[take:]
            if self._block_fill == BLOCK_BYTES:
                self._sums.append(self._block.intdigest())
                self._block.reset()
                self._block_fill = 0

    def close(self) -> None:
        if self._block_fill:
            self._sums.append(self._block.intdigest())
        header = HEADER.pack(MAGIC, VERSION, self.dtype_code, 0, self.samples, self.tokens)
        blocks = np.array(self._sums, dtype=_CHECKSUM).tobytes()
        f = self._file
        f.write(blocks + struct.pack("<Q", layout_checksum(header, blocks)))
        f.seek(0)
        f.write(header)
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
    """A read-only memory map of one token file; checks magic, version, size and checksums.

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
        self._code = code
        self._bytes = np.frombuffer(self._map, dtype=np.uint8, count=self.tokens * code, offset=HEADER_SIZE)
        self._checked = np.zeros(len(self._sums), dtype=bool)
        self._unchecked = len(self._sums)
        if self._unchecked <= _CHECK_AT_OPEN:  # small: whole now, and the loader's checks are free
            try:
                for b in range(self._unchecked):
                    self._check_block(b)
            except PlanError:
                self.close()
                raise

    def _check(self) -> int:
        """The dtype code, after the header check; sets ``samples`` and ``tokens``."""
        size = len(self._map)
        check_length(self.path, FORMAT, size)
        magic, version, code, flags, self.samples, self.tokens = HEADER.unpack_from(self._map, 0)
        check_header(self.path, FORMAT, size=size, magic=magic, major=version, flags=flags)
        if code not in _DTYPES:
            raise PlanError(f"{self.path}: token file dtype code {code}, this mixtera reads 2 (uint16) "
                            "or 4 (uint32)", _HINT)
        id_bytes = self.tokens * code
        check_size(self.path, FORMAT, size=size, declared=HEADER_SIZE + id_bytes + trailer_size(id_bytes),
                   by=f"its header ({self.tokens} tokens of {code} bytes, and their block checksums)")
        at = HEADER_SIZE + id_bytes
        table = self._map[at : size - _CHECKSUM.itemsize]
        (recorded,) = struct.unpack_from("<Q", self._map, size - _CHECKSUM.itemsize)
        if layout_checksum(self._map[:HEADER_SIZE], table) != recorded:
            raise PlanError(f"{self.path}: header or block checksums damaged (layout checksum mismatch)",
                            _HINT)
        self._sums = np.frombuffer(table, dtype=_CHECKSUM)
        return code

    def check_ranges(self, start: np.ndarray, stop: np.ndarray) -> None:
        """Check the blocks that id ranges ``[start, stop)`` touch and were not checked before.

        Call before reading ``ids`` directly (``slice`` calls it); a damaged block is an error naming
        the file and the block, never ids read as other data. Once every block is checked this is one
        comparison; before, a handful of array operations per call (the loader calls it once per file
        and step).
        """
        if self._unchecked == 0 or not len(start):
            return
        first = (start * self._code) >> BLOCK_SHIFT
        last = np.maximum((stop * self._code - 1) >> BLOCK_SHIFT, first)
        checked = self._checked
        if int((last - first).max()) <= 1 and checked[first].all() and checked[last].all():
            return
        counts = last - first + 1
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        blocks = np.repeat(first, counts) + within  # every block of every range
        for b in np.unique(blocks[~checked[blocks]]).tolist():
            self._check_block(b)

    def _check_block(self, b: int) -> None:
        lo = b * BLOCK_BYTES
        hi = min(lo + BLOCK_BYTES, len(self._bytes))
        # No named view of the map: one held by an exception's frame would keep the map from closing.
        if xxhash.xxh3_64_intdigest(self._bytes[lo:hi]) != int(self._sums[b]):
            at = HEADER_SIZE + lo
            raise PlanError(f"{self.path}: block {b} (bytes {at}..{at + hi - lo}) fails its checksum: the "
                            "token file is damaged", _HINT)
        self._checked[b] = True
        self._unchecked -= 1

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Ids ``[start, stop)`` of the file, as a view of the map."""
        if not 0 <= start <= stop <= self.tokens:
            raise PlanError(
                f"{self.path}: token range [{start}, {stop}) outside its {self.tokens} tokens",
                "the plan and the token files disagree; re-index and recompile",
            )
        self.check_ranges(np.array([start]), np.array([stop]))
        return self.ids[start:stop]

    def close(self) -> None:
        self.ids = None  # drop the views before closing the map
        self._sums = self._bytes = None
        self._map.close()
