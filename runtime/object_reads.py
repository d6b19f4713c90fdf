"""Reading planned samples from objects in a store: ranged GETs into a fixed-size block cache.

A step's samples that fall in one object are read together: the blocks (``BLOCK_BYTES`` each) their
byte ranges cover are fetched in runs, one ranged GET per run, where two runs separated by at most
``MAX_GAP_BLOCKS`` blocks nobody asked for become one (a bounded over-read: fewer requests matter
more than a few extra bytes when each request costs tens of milliseconds). The GETs run on
background threads; `fetch` only schedules them, so the runtime schedules the next steps' blocks
(read-ahead) before it waits for the current step's, and a training step does not wait on storage
latency. Every GET carries the plan's ETag (``If-Match``): an object replaced since indexing fails
with its URL instead of serving other bytes.

Blocks live in one byte-bounded LRU per process; a block being fetched is shared by whoever needs it
(one request, however many steps or readers want the block). A loader worker builds its own cache:
threads do not survive a fork, so the cache is keyed by the process id.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mixtera.runtime.lru import LRU
from mixtera.runtime.storage import ObjectPath, store

BLOCK_BYTES = 64 << 10  # small next to a request's latency cost, large next to a typical document
CACHE_BYTES = 256 << 20
MAX_GAP_BLOCKS = 4  # at most 256 KiB fetched between two needed runs in place of a second request
FETCH_THREADS = 16


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """One object as the plan recorded it: what every ranged GET of it is checked against."""

    path: ObjectPath
    size: int
    etag: str | None


@dataclass(slots=True)
class ReadStats:
    """What the store was asked for in this process: GETs, bytes fetched, bytes the samples needed."""

    requests: int = 0
    bytes_fetched: int = 0
    bytes_wanted: int = 0

    def snapshot(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_fetched": self.bytes_fetched,
                "bytes_wanted": self.bytes_wanted}


_Key = tuple[ObjectPath, int]


class BlockCache:
    """Fixed-size blocks of objects, fetched by coalesced ranged GETs on a thread pool."""

    def __init__(self, *, block_bytes: int = BLOCK_BYTES, cache_bytes: int = CACHE_BYTES,
                 max_gap_blocks: int = MAX_GAP_BLOCKS, threads: int = FETCH_THREADS) -> None:
        self.block_bytes = block_bytes
        self.max_gap_blocks = max_gap_blocks
        self._blocks: LRU[_Key, bytes] = LRU(cache_bytes, cost=len)
        self._pending: dict[_Key, Future[dict[int, bytes]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mixtera-fetch")
        self.stats = ReadStats()

    def _blocks_of(self, ranges: list[tuple[int, int]]) -> list[int]:
        b = self.block_bytes
        spans = (range(start // b, (end - 1) // b + 1) for start, end in ranges if end > start)
        return sorted({i for span in spans for i in span})

    def fetch(self, wants: dict[RemoteObject, list[tuple[int, int]]]) -> dict[_Key, Future[dict[int, bytes]]]:
        """Schedule GETs for the blocks of ``wants`` that are neither cached nor on their way; returns
        the futures of every such block (new or already in flight)."""
        futures: dict[_Key, Future[dict[int, bytes]]] = {}
        with self._lock:
            for obj, ranges in wants.items():
                missing = []
                for i in self._blocks_of(ranges):
                    key = (obj.path, i)
                    if key in futures or self._blocks.get(key) is not None:
                        continue
                    pending = self._pending.get(key)
                    if pending is not None:
                        futures[key] = pending
                    else:
                        missing.append(i)
                for first, last in _runs(missing, self.max_gap_blocks):
                    fut = self._pool.submit(self._get, obj, first, last)
                    for i in range(first, last + 1):
                        self._pending[(obj.path, i)] = futures[(obj.path, i)] = fut
        return futures

    def _get(self, obj: RemoteObject, first: int, last: int) -> dict[int, bytes]:
        b = self.block_bytes
        start, end = first * b, min((last + 1) * b, obj.size)
        try:
            data = store(obj.path).read_ranges(obj.path, [(start, end)], obj.etag)[0]
            blocks = {i: data[(i - first) * b : (i - first + 1) * b] for i in range(first, last + 1)}
            with self._lock:
                self.stats.requests += 1
                self.stats.bytes_fetched += len(data)
                for i, block in blocks.items():
                    self._blocks.put((obj.path, i), block)
            return blocks
        finally:
            with self._lock:
                for i in range(first, last + 1):
                    self._pending.pop((obj.path, i), None)

    def read(self, obj: RemoteObject, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``[start, end)`` of ``obj``, from the cache or GETs (waited for here)."""
        futures = self.fetch({obj: ranges})
        blocks: dict[int, bytes] = {}
        for i in self._blocks_of(ranges):
            blocks[i] = self._block(obj, i, futures)
        with self._lock:
            self.stats.bytes_wanted += sum(max(end - start, 0) for start, end in ranges)
        b, out = self.block_bytes, []
        for start, end in ranges:
            if end <= start:
                out.append(b"")
                continue
            first, last = start // b, (end - 1) // b
            joined = blocks[first] if first == last else b"".join(blocks[i] for i in range(first, last + 1))
            out.append(joined[start - first * b : end - first * b])
        return out

    def _block(self, obj: RemoteObject, i: int, futures: dict[_Key, Future[dict[int, bytes]]]) -> bytes:
        key = (obj.path, i)
        fut = futures.get(key)
        if fut is not None:
            return fut.result()[i]  # raises the GET's error (a StorageError naming the URL)
        with self._lock:
            block = self._blocks.get(key)
        # evicted between scheduling and now (a cache smaller than the read-ahead): fetch it again
        return block if block is not None else self._get(obj, i, i)[i]

    def clear(self) -> None:
        """Drop every cached block (a benchmark's cold start); blocks in flight still arrive."""
        with self._lock:
            self._blocks.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _runs(blocks: list[int], max_gap: int) -> list[tuple[int, int]]:
    """Sorted block numbers as ``(first, last)`` runs, joining runs at most ``max_gap`` blocks apart."""
    runs: list[tuple[int, int]] = []
    for i in blocks:
        if runs and i - runs[-1][1] - 1 <= max_gap:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


_CACHE: tuple[int, BlockCache] | None = None
_CACHE_LOCK = threading.Lock()


def block_cache() -> BlockCache:
    """This process's block cache (a forked loader worker gets its own: threads do not fork)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None or _CACHE[0] != os.getpid():
            _CACHE = (os.getpid(), BlockCache())
        return _CACHE[1]


def read_stats() -> dict[str, int]:
    """Requests, bytes fetched and bytes wanted by this process's remote reads so far."""
    return block_cache().stats.snapshot()


class BlockFile(io.RawIOBase):
    """An object as a seekable read-only file over the block cache (what Parquet reads its footer and
    row groups through: each read is one or a few coalesced ranged GETs, or none when read ahead)."""

    def __init__(self, obj: RemoteObject) -> None:
        super().__init__()
        self._obj, self._pos = obj, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._obj.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), max(self._obj.size - self._pos, 0))
        if n == 0:
            return 0
        data = block_cache().read(self._obj, [(self._pos, self._pos + n)])[0]
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
