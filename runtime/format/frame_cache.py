"""Random access to .gz / .zst corpus files through a zstd-framed cache built once per file.

A gzip stream cannot be entered in the middle, and a corpus .zst usually holds one large frame, so
reading a sample at uncompressed offset ``o`` would mean decompressing from the start of the file.
Instead, the first reader of such a file recompresses its uncompressed stream into independent zstd
frames of ``FRAME_BYTES`` uncompressed bytes each, plus a seek table, into a cache file
``<cache dir>/xxh3_128-<hex content hash of the corpus file>.mxz`` (:mod:`mixtera.runtime.fingerprint`).
A sample then costs the decompression of the one or two frames it lies in (a small LRU keeps recent
frames). The cache is keyed by the content hash that
the plan records, so a changed corpus file can never be served from a stale cache; it is built in a
temporary file under an exclusive lock and published with one rename, so concurrent workers and ranks
build it once and never see half a file.

Layout of a ``.mxz`` file (little-endian)::

    header   48 bytes: magic b"MXZFRAME", version u16, flags u16 (none defined), frame_bytes u32,
             source content hash (xxh3_128, 16 bytes raw), uncompressed size u64, frame count u64
    frames   one zstd frame per FRAME_BYTES of the uncompressed stream (the last may be shorter), each
             with its content size and zstd's content checksum (xxh64) in the frame
    table    (frame count + 1) u64: byte offset of every frame, then the end of the last frame

Damage is never served: the header, the seek table and the file size are checked at open, each
frame's declared size and checksum when it is decoded. A damaged cache file is an error naming it
(:class:`CacheError`) with the hint to delete it; mixtera does not delete it itself, because the
cache may be shared by other jobs and a damaged file there is a disk fault worth seeing. Deleting it
is always safe: the next reader rebuilds it from the corpus file.
"""

from __future__ import annotations

import gzip
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import zstandard

from mixtera.runtime.atomic import atomic_file, exclusive_lock, recover
from mixtera.runtime.errors import CorpusError, FileFormatError, PlanError
from mixtera.runtime.fingerprint import cache_name, content_digest
from mixtera.runtime.format.header import BinaryFormat, check_header, check_length, check_size
from mixtera.runtime.lru import LRU
from mixtera.runtime.storage import CorpusPath, open_stream

MAGIC = b"MXZFRAME"
VERSION = 2  # 2: the source fingerprint is the xxh3_128 content hash (1 held blake2b)
FRAME_BYTES = 128 * 1024  # small frames keep one random sample cheap (~0.1 ms to decode a frame)
_HEADER = struct.Struct("<8sHHI16sQQ")
_DECODED_FRAMES = 8


class CacheError(FileFormatError):
    """A frame-cache file is damaged, or the cache folder is not a usable folder."""


def _damaged_hint(path: Path) -> str:
    return f"the cache file is damaged (a disk fault?); delete {path}: the next read rebuilds it"


def _format(path: Path) -> BinaryFormat:
    hint = _damaged_hint(path)
    return BinaryFormat(name="frame cache", magic=MAGIC, major=VERSION, header_size=_HEADER.size, hint=hint,
                        version_hint=hint)


def _open_source(path: CorpusPath, codec: str) -> BinaryIO:
    """The uncompressed stream of a corpus file, local or an object (streamed once, sequentially)."""
    raw = open_stream(path)
    if codec == "gz":
        return _Closing(gzip.GzipFile(fileobj=raw, mode="rb"), raw)  # type: ignore[arg-type]
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)


class _Closing:
    """A gzip stream that also closes the file under it (GzipFile(fileobj=...) leaves it open)."""

    def __init__(self, stream: BinaryIO, raw: BinaryIO) -> None:
        self._stream, self._raw = stream, raw

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()
        self._raw.close()


def _write_frames(source: BinaryIO, out: BinaryIO, frame_bytes: int) -> tuple[int, list[int]]:
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    offsets, at, total = [], _HEADER.size, 0
    while True:
        chunk = source.read(frame_bytes)
        # stream readers may return short reads; fill the frame so every frame but the last is full
        while chunk and len(chunk) < frame_bytes:
            more = source.read(frame_bytes - len(chunk))
            if not more:
                break
            chunk += more
        if not chunk:
            break
        frame = cctx.compress(chunk)
        offsets.append(at)
        out.write(frame)
        at += len(frame)
        total += len(chunk)
    offsets.append(at)
    return total, offsets


def _digest(content_hash: str) -> bytes:
    digest = content_digest(content_hash)
    if digest is None:
        raise PlanError(
            f"{content_hash!r} is not a content hash this mixtera makes",
            "re-run `mixtera index` on the corpus and `mixtera compile` the mixture again",
        )
    return digest


def build_frame_cache(
    path: CorpusPath, codec: str, content_hash: str, dest: Path, frame_bytes: int | None = None
) -> None:
    """Recompress ``path`` (codec ``gz`` or ``zst``) into ``dest``; atomic, safe to race."""
    frame_bytes = frame_bytes or FRAME_BYTES
    digest = _digest(content_hash)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(dest.parent / ".build.lock"):  # one builder at a time per cache dir
        if dest.exists():
            return  # another worker or rank built it while we waited
        recover(dest)  # temporary files of builders that were killed
        with atomic_file(dest) as out:  # 0o666 & ~umask: a shared cache
            out.write(b"\0" * _HEADER.size)
            try:
                with _open_source(path, codec) as source:
                    total, offsets = _write_frames(source, out, frame_bytes)
            except (OSError, EOFError, zstandard.ZstdError) as exc:
                raise CorpusError(
                    f"{path}: cannot decompress ({exc})",
                    "the file is corrupt or truncated; restore it, re-index and recompile",
                ) from exc
            out.write(np.asarray(offsets, dtype="<u8").tobytes())
            out.seek(0)
            out.write(_HEADER.pack(MAGIC, VERSION, 0, frame_bytes, digest, total, len(offsets) - 1))


class FramedFile:
    """Reads byte ranges of a corpus file's uncompressed stream from its ``.mxz`` cache."""

    def __init__(self, cache_path: Path, content_hash: str) -> None:
        self.path = cache_path
        fmt = _format(cache_path)
        try:
            with open(cache_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                check_length(cache_path, fmt, size)  # before mmap, which refuses an empty file
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise CacheError(f"{cache_path}: cannot read the frame cache ({exc.strerror or exc})",
                             "check its permissions, or point MIXTERA_CACHE at a readable folder") from None
        try:
            self._check_layout(cache_path, content_hash, fmt, size)
        except BaseException:
            self._map.close()
            raise
        self._dctx = zstandard.ZstdDecompressor()
        self._frames: LRU[int, bytes] = LRU(_DECODED_FRAMES)

    def _check_layout(self, cache_path: Path, content_hash: str, fmt: BinaryFormat, size: int) -> None:
        magic, version, flags, self.frame_bytes, digest, self.size, frames = _HEADER.unpack_from(self._map, 0)
        check_header(cache_path, fmt, size=size, magic=magic, major=version, flags=flags)
        if digest != _digest(content_hash):
            raise PlanError(f"{cache_path}: not a version {VERSION} frame cache of {content_hash}", fmt.hint)
        table_at = size - (frames + 1) * 8
        if table_at < _HEADER.size:
            raise PlanError(f"{cache_path}: its header declares {frames} frames, more than its {size} "
                            "bytes hold", fmt.hint)
        # a copy (8 bytes per frame; slicing a map copies), so that no view pins the map
        self._offsets = np.frombuffer(self._map[table_at:], dtype="<u8").astype(np.int64)
        check_size(cache_path, fmt, size=size, declared=int(self._offsets[-1]) + (frames + 1) * 8,
                   by=f"its seek table ({frames} frames ending at byte {int(self._offsets[-1])})")
        if self.frame_bytes == 0 or frames != -(-self.size // self.frame_bytes):
            raise CacheError(f"{cache_path}: its header declares {frames} frames of {self.frame_bytes} bytes "
                             f"for a {self.size}-byte stream", fmt.hint)
        if self._offsets[0] != _HEADER.size or np.any(np.diff(self._offsets) <= 0):
            raise CacheError(f"{cache_path}: its seek table does not list increasing frame offsets from byte "
                             f"{_HEADER.size}", fmt.hint)

    def _frame_size(self, i: int) -> int:
        return min(self.frame_bytes, self.size - i * self.frame_bytes)

    def _decode(self, i: int) -> bytes:
        """Frame ``i``, checked: its declared size and zstd's content checksum."""
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        frame, want = self._map[start:end], self._frame_size(i)
        where = f"{self.path}: frame {i} (bytes {start}..{end})"
        try:
            declared = zstandard.frame_content_size(frame)
            if declared != want:  # checked before decoding, which allocates the declared size
                raise CacheError(f"{where} declares {declared} uncompressed bytes, not {want}",
                                 _damaged_hint(self.path))
            data = self._dctx.decompress(frame)
        except zstandard.ZstdError as exc:
            raise CacheError(f"{where} cannot be decoded ({exc})", _damaged_hint(self.path)) from None
        if len(data) != want:
            raise CacheError(f"{where} decodes to {len(data)} bytes, not {want}", _damaged_hint(self.path))
        return data

    def _frame(self, i: int) -> bytes:
        data = self._frames.get(i)
        if data is None:
            data = self._frames.put(i, self._decode(i))
        return data

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self.size:
            raise PlanError(
                f"{self.path}: bytes [{offset}, {offset + length}) beyond the stream's {self.size}",
                "the plan does not match this corpus file; re-index and recompile",
            )
        fb = self.frame_bytes
        first, last = offset // fb, (offset + max(length, 1) - 1) // fb
        start = offset - first * fb
        if first == last:
            return self._frame(first)[start : start + length]
        return b"".join([self._frame(i) for i in range(first, last + 1)])[start : start + length]

    def close(self) -> None:
        self._offsets = None
        self._frames.clear()
        self._map.close()


def open_framed(
    path: CorpusPath, codec: str, content_hash: str, cache_dir: Path,
    on_build: Callable[[CorpusPath], None] | None = None,
) -> FramedFile:
    """The framed view of a compressed corpus file, building its cache on first use."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise CacheError(f"{cache_dir}: the frame-cache folder (for {path}) is not a folder",
                         "point MIXTERA_CACHE (or cache_dir=) at a folder, or remove that file")
    dest = cache_dir / f"{cache_name(content_hash)}.mxz"
    if not dest.exists():
        if on_build:
            on_build(path)
        try:
            build_frame_cache(path, codec, content_hash, dest)
        except (PermissionError, NotADirectoryError, FileExistsError) as exc:
            raise CacheError(
                f"{cache_dir}: cannot write the frame cache of {path} ({exc})",
                "point MIXTERA_CACHE (or cache_dir=) at a writable folder",
            ) from exc
    return FramedFile(dest, content_hash)
