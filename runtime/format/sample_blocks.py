"""Block checksums of a plan's sample table, so that a rank checks only the bytes it reads.

``samples.npy`` is shared by every rank and holds 40 bytes per selected sample (4 GB for 100 M
samples). A whole-file hash would make every rank read all of it before its first batch; instead
the compiler records the xxh3_64 of every ``BLOCK_BYTES`` block of the file (``samples.npy``'s
bytes from offset 0, header included; the last block may be shorter) in ``samples.blocks.npy``,
a uint64 ``.npy`` array whose own content hash the manifest records (``checksums``). A rank
reads that small file whole (8 bytes per 4 KiB: 0.2 % of the table), then reads and checks only
the blocks that hold the rows it resolves.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xxhash

from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import READ_BYTES, ContentHasher

BLOCK_BYTES = 4096  # one page: a row gather touches one or two blocks
ALGORITHM = "xxh3_64"


def hash_file_blocks(path: Path | str) -> tuple[str, np.ndarray]:
    """(content hash of the whole file, xxh3_64 of every block) in one read of ``path``."""
    whole = ContentHasher()
    sums: list[int] = []
    digest = xxhash.xxh3_64_intdigest
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):  # READ_BYTES is a multiple of BLOCK_BYTES
            whole.update(chunk)
            view = memoryview(chunk)
            sums.extend(digest(view[at: at + BLOCK_BYTES]) for at in range(0, len(view), BLOCK_BYTES))
    return whole.hexdigest(), np.array(sums, dtype="<u8")


class BlockReader:
    """Rows of a ``.npy`` sample table read with ``pread``, block by block, each block checked.

    Only the blocks holding the rows are read (no memory map: a map's fault-around and readahead
    would touch far more of a table than the rows a rank replays, and count in its RSS), and the
    rows are taken from the very bytes that were checked.
    """

    def __init__(self, path: Path, header_bytes: int, dtype: np.dtype, sums: np.ndarray, hint: str) -> None:
        self.path, self.hint, self.dtype = path, hint, dtype
        self._fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if sums.size != -(-size // BLOCK_BYTES):
            os.close(self._fd)
            raise PlanError(f"{path}: {size} bytes make {-(-size // BLOCK_BYTES)} blocks of {BLOCK_BYTES}, "
                            f"its block checksums count {sums.size}", hint)
        self._first, self._sums = header_bytes, sums
        self.bytes_read = 0

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the table (a PlanError names the first block whose bytes are damaged)."""
        item = self.dtype.itemsize
        start = self._first + rows.astype(np.int64) * item
        blocks = np.unique(np.concatenate([start // BLOCK_BYTES, (start + item - 1) // BLOCK_BYTES]))
        buf = np.empty(blocks.size * BLOCK_BYTES, np.uint8)
        for i, b in enumerate(blocks.tolist()):
            data = os.pread(self._fd, BLOCK_BYTES, b * BLOCK_BYTES)
            if xxhash.xxh3_64_intdigest(data) != int(self._sums[b]):
                raise PlanError(f"{self.path}: bytes {b * BLOCK_BYTES}..{b * BLOCK_BYTES + len(data) - 1} "
                                f"differ from their checksum ({ALGORITHM} block {b}): the sample table is "
                                "damaged", self.hint)
            buf[i * BLOCK_BYTES: i * BLOCK_BYTES + len(data)] = np.frombuffer(data, np.uint8)
            self.bytes_read += len(data)
        # A row's second block, if any, is the next one in ``blocks``: its bytes are contiguous in buf.
        at = np.searchsorted(blocks, start // BLOCK_BYTES) * BLOCK_BYTES + start % BLOCK_BYTES
        return buf[at[:, None] + np.arange(item)].reshape(-1).view(self.dtype)

    def close(self) -> None:
        os.close(self._fd)
