"""Corpus files: discovery by suffix, hashing while reading, and the format reader table.

A corpus lives in a local folder or under an object-store prefix (`mixtera.runtime.storage`, the one
place that lists, stats and opens either kind); readers take a `CorpusPath` and stream its bytes.

A reader maps a path to an iterator of `Chunk`s. JSON lines readers hand out raw line bytes (parsed
in the indexer's hot loop); the Parquet reader hands out row dicts; the WebDataset reader hands out
one `{extension: value}` dict per tar sample (see `mixtera.runtime.webdataset`). Adding a format means
writing one function and adding one row to `READERS`.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard

from mixtera.runtime.errors import CorpusError
from mixtera.runtime.fingerprint import ContentHasher, file_content_hash
from mixtera.runtime.storage import (
    CorpusPath,
    FileStat,
    ObjectPath,
    corpus_location,
    list_objects,
    open_stream,
    read_range,
)
from mixtera.runtime.webdataset import (
    MemberError,
    decode_value,
    image_header_size,
    kind_of,
    put_value,
    split_name,
)

if TYPE_CHECKING:
    import pyarrow as pa

READ_BYTES = 1 << 20  # uncompressed bytes handed to the hot loop at once (fits in cache)
LONG_LINE = 512  # mean line bytes above which finding "\n" beats bytes.split (see `_find_lines`)


@dataclass(slots=True)
class Chunk:
    """Consecutive records of one file. ``raw``: items are JSON line bytes, else dicts."""

    items: list[Any]  # JSON lines: bytes or memoryview of one line (without "\n"); Parquet: dicts
    offsets: list[int]  # JSON lines: byte offset in the uncompressed stream; Parquet: row group
    lengths: list[int]  # JSON lines: bytes without "\n"; Parquet: row inside the row group
    lines: Sequence[int]  # JSON: 1-based line number; Parquet: 0-based row of the file (messages)
    raw: bool
    end: int = 0  # JSON lines: stream offset just after the chunk's last "\n"
    media: list[MediaInfo] | None = None  # tar samples: key, image count and first image size per item
    problems: dict[int, str] | None = None  # item -> why it is a bad record (found by the reader)

    def where(self, path: Path, i: int) -> str:
        """How messages name item ``i``: line of a JSON lines file, row of Parquet, sample of a tar."""
        if self.raw:
            return f"{path}:{self.lines[i]}"
        if self.media is not None:
            return f"{path} sample {self.lines[i]} (key {self.media[i].key!r})"
        return f"{path} row {self.lines[i]}"


@dataclass(slots=True)
class MediaInfo:
    """What the index records of a tar sample besides its record: key, images, first image's size."""

    key: str
    images: int = 0
    width: int | None = None
    height: int | None = None


class HashingReader:
    """A binary file that feeds every byte it reads into the content hash, in the same read pass.

    xxh3_128 hashes at memory speed (about 50 us per MB), so it runs inline: a helper thread would
    cost more to hand a block to than the hashing itself.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._hash = ContentHasher()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._hash.update(data)
        return data

    def drain(self) -> str:
        """Hash the bytes nobody read (trailing garbage of a compressed file); return the content hash."""
        while self.read(READ_BYTES):
            pass
        return self._hash.hexdigest()


# ---- uncompressed byte streams -------------------------------------------------------------


def _plain_blocks(src: HashingReader, path: Path) -> Iterator[bytes]:
    while block := src.read(READ_BYTES):
        yield block


def _gzip_blocks(src: HashingReader, path: Path) -> Iterator[bytes]:
    try:
        with gzip.GzipFile(fileobj=src, mode="rb") as g:  # type: ignore[arg-type]
            while block := g.read(READ_BYTES):
                yield block
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _broken(path, "gzip", exc) from None


def _zstd_blocks(src: HashingReader, path: Path) -> Iterator[bytes]:
    # decompressobj, not stream_reader: stream_reader reports a truncated frame as a clean end.
    dctx = zstandard.ZstdDecompressor()
    obj, fed = dctx.decompressobj(), False
    try:
        while raw := src.read(1 << 20):
            fed = True
            out = obj.decompress(raw)
            while obj.eof and obj.unused_data:  # the next frame starts in this block
                rest = obj.unused_data
                obj = dctx.decompressobj()
                out += obj.decompress(rest)
            if out:
                yield out
    except zstandard.ZstdError as exc:
        raise _broken(path, "zstd", exc) from None
    if fed and not obj.eof:
        raise _broken(path, "zstd", "the stream ends inside a frame")


def _broken(path: Path, codec: str, exc: object) -> CorpusError:
    return CorpusError(
        f"{path}: corrupt or truncated {codec} stream ({exc})",
        "re-download or re-compress the file, or remove it from the corpus",
    )


# ---- record readers -----------------------------------------------------------------------


def _json_lines(blocks: Iterator[bytes], base: int = 0) -> Iterator[Chunk]:
    """Split on b"\\n" only: U+2028/U+2029/U+0085 inside strings are data, not separators.

    ``base``: the stream offset of the first block; line numbers count from its first line."""
    carry, line_no, long_lines = b"", 0, False
    for block in blocks:
        lines, carry = (_find_lines if long_lines else _split_lines)(block, carry)
        long_lines = len(block) > LONG_LINE * (len(lines) + 1)  # the next block likely looks alike
        if lines:
            chunk = _chunk(lines, base, line_no)
            base = chunk.end
            line_no += len(lines)
            if chunk.items:
                yield chunk
    if carry:
        chunk = _chunk([carry], base, line_no)
        if chunk.items:
            yield chunk


def _split_lines(block: bytes, carry: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of ``carry + block`` and the unfinished rest, for short lines."""
    lines = block.split(b"\n")
    if carry:
        lines[0] = carry + lines[0]  # copies one partial line, not the whole block
    return lines, lines.pop()  # the rest is "" after a final "\n"


def _find_lines(block: bytes, carry: bytes) -> tuple[list[Any], bytes]:
    """`_split_lines` for long lines: bytes.split compares byte by byte (~3 GB/s) and copies every
    line; bytes.find runs memchr (~20 GB/s) and the lines are views, not copies. Per line it costs
    more Python, so short lines stay with `_split_lines`."""
    find, ends = block.find, []
    append = ends.append
    end = find(b"\n")
    while end >= 0:
        append(end)
        end = find(b"\n", end + 1)
    if not ends:
        return [], carry + block
    view = memoryview(block)
    starts = [0, *map((1).__add__, ends[:-1])]
    lines: list[Any] = [view[a:b] for a, b in zip(starts, ends, strict=True)]
    if carry:
        lines[0] = carry + block[: ends[0]]
    return lines, block[ends[-1] + 1 :]


def _chunk(lines: list[Any], base: int, line_no: int) -> Chunk:
    """Offsets and lengths of ``lines`` (each was followed by "\\n"); blank lines are not records."""
    lengths = list(map(len, lines))
    ends = list(accumulate(map((1).__add__, lengths), initial=base))  # C-speed running offsets
    offsets, end = ends[:-1], ends[-1]
    numbers: list[int] | range = range(line_no + 1, line_no + 1 + len(lines))
    if 0 in lengths:
        keep = [i for i, n in enumerate(lengths) if n]
        lines, offsets = [lines[i] for i in keep], [offsets[i] for i in keep]
        lengths, numbers = [lengths[i] for i in keep], [numbers[i] for i in keep]
    return Chunk(lines, offsets, lengths, numbers, True, end)  # type: ignore[arg-type]


def _stream_reader(blocks: Callable[[HashingReader, Path], Iterator[bytes]]) -> Reader:
    def read(path: CorpusPath, columns: list[str] | None, digest: list[str]) -> Iterator[Chunk]:
        with open_stream(path) as f:
            src = HashingReader(f)
            yield from _json_lines(blocks(src, path))
            digest.append(src.drain())

    return read


def read_jsonl_range(
    path: CorpusPath, span: tuple[int, int], digest: list[str], lines: list[int]
) -> Iterator[Chunk]:
    """The records of plain JSON lines in bytes ``span`` = [start, stop), both line starts (see
    `line_spans`); line numbers count from the span's first line. Appends the span's line count to
    ``lines``; the first span (start 0) also hashes the whole file into ``digest``, as a whole-file
    read does, so the hash costs one extra sequential read of the rest, at memory speed."""
    start, stop = span
    with open_stream(path, start) as f:
        src = HashingReader(f) if start == 0 else f
        newlines = [0]
        yield from _json_lines(_span_blocks(src, stop - start, newlines), base=start)
        lines.append(newlines[0])
        if start == 0:
            digest.append(src.drain())  # type: ignore[union-attr]


def _span_blocks(src: HashingReader | BinaryIO, size: int, newlines: list[int]) -> Iterator[bytes]:
    """``size`` bytes of ``src`` in blocks, counting their b"\\n" (memchr speed) into ``newlines[0]``."""
    while size > 0 and (block := src.read(min(READ_BYTES, size))):
        size -= len(block)
        newlines[0] += block.count(b"\n")
        yield block


def line_spans(
    path: CorpusPath, size: int, span_bytes: int, etag: str | None = None
) -> list[tuple[int, int]]:
    """Split a plain JSON lines file into byte spans of about ``span_bytes``, each starting at a line
    start: every line lies in exactly one span. Reads only the bytes up to the next "\\n" after each
    nominal boundary (ranged GETs of an object, refused if its ETag is no longer ``etag``)."""
    starts = [0]
    while starts[-1] + span_bytes < size:
        # a line starts at the nominal boundary if a "\\n" ends just before it
        nxt = _after_newline(path, starts[-1] + span_bytes - 1, size, etag)
        if nxt >= size:
            break
        starts.append(nxt)
    return list(zip(starts, [*starts[1:], size], strict=True))


def _after_newline(path: CorpusPath, pos: int, size: int, etag: str | None) -> int:
    """The offset just after the first b"\\n" at or after ``pos``, or ``size``."""
    while pos < size:
        block = _read_at(path, pos, min(pos + (1 << 16), size), etag)
        if not block:  # the file shrank since it was listed
            return size
        at = block.find(b"\n")
        if at >= 0:
            return pos + at + 1
        pos += len(block)
    return size


def _read_at(path: CorpusPath, start: int, end: int, etag: str | None) -> bytes:
    if isinstance(path, ObjectPath):
        return read_range(path, start, end, etag)
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _read_parquet(path: CorpusPath, columns: list[str] | None, digest: list[str]) -> Iterator[Chunk]:
    """Row groups of a Parquet file; ``columns``: top-level columns to read (None: scalar ones)."""
    if isinstance(path, ObjectPath):
        yield from _read_remote_parquet(path, columns, digest)
        return
    yield from _parquet_chunks(path, path, columns)
    digest.append(file_content_hash(path))


def _read_remote_parquet(path: ObjectPath, columns: list[str] | None, digest: list[str]) -> Iterator[Chunk]:
    """An object's bytes are downloaded once, hashed on the way into a local temporary file, which
    Parquet then reads at random (footer first): one pass over the network instead of two."""
    import tempfile

    with tempfile.TemporaryFile(prefix="mixtera-") as tmp:
        with open_stream(path) as f:
            src = HashingReader(f)
            while block := src.read(READ_BYTES):
                tmp.write(block)
            content_hash = src.drain()
        tmp.seek(0)
        yield from _parquet_chunks(tmp, path, columns)
        digest.append(content_hash)


def _parquet_chunks(source: Any, path: CorpusPath, columns: list[str] | None) -> Iterator[Chunk]:
    import pyarrow as pa  # here, not at the top: workers indexing JSON lines never load pyarrow
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = pf.schema_arrow
    present = [c for c in (columns or _scalar_columns(schema)) if c in schema.names]
    row = 0
    for group in range(pf.metadata.num_row_groups):
        try:
            items = pf.read_row_group(group, columns=present).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorpusError(f"{path}: row group {group} cannot be read ({exc})") from None
        n = len(items)
        yield Chunk(items, [group] * n, list(range(n)), list(range(row, row + n)), False)
        row += n


def _scalar_columns(schema: pa.Schema) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if not pa.types.is_nested(f.type)]


# ---- WebDataset tar shards -----------------------------------------------------------------

TAR_CHUNK = 4096  # samples handed to the hot loop at once
_BLOCK = tarfile.BLOCKSIZE
_TAR_HINT = ("re-download or re-create the shard (it must be an uncompressed tar), or remove it from "
             "the corpus")


@dataclass(slots=True)
class _TarSample:
    start: int  # first header block of the sample's first member
    end: int  # end of its last member's data, padded to the block size
    record: dict[str, Any]
    info: MediaInfo
    exts: set[str] = field(default_factory=set)
    problem: str | None = None


def _read_tar(path: CorpusPath, columns: list[str] | None, digest: list[str]) -> Iterator[Chunk]:
    """The samples of a WebDataset shard in order of their key's first appearance.

    Reads every member header, the JSON and text members, and the header of each sample's first image;
    other member data is skipped (seek). The content hash of a local shard is a second, sequential
    pass; an object is streamed once (`_ForwardFile`), hashed on the way.
    """
    if isinstance(path, ObjectPath):
        with open_stream(path) as f:
            src = HashingReader(f)
            items = list(_tar_samples(path, _ForwardFile(src)).values())
            content_hash = src.drain()
    else:
        items = list(_tar_samples(path).values())
        content_hash = None
    for lo in range(0, len(items), TAR_CHUNK):
        part = items[lo : lo + TAR_CHUNK]
        problems = {i: s.problem for i, s in enumerate(part) if s.problem is not None}
        yield Chunk([s.record for s in part], [s.start for s in part], [s.end - s.start for s in part],
                    range(lo, lo + len(part)), False, media=[s.info for s in part], problems=problems)
    digest.append(content_hash or file_content_hash(path))  # type: ignore[arg-type]


def _tar_samples(path: CorpusPath, stream: _ForwardFile | None = None) -> dict[str, _TarSample]:
    """The samples of the shard at ``path``, read from ``stream`` when given (an object), else from
    the local file (which tarfile seeks in)."""
    try:
        # closed by the `with` below
        source: dict[str, Any] = {"name": path} if stream is None else {"fileobj": stream}
        tf = tarfile.open(mode="r:", **source)  # noqa: SIM115
    except tarfile.ReadError as exc:
        raise CorpusError(f"{path}: not a tar archive ({exc})", _TAR_HINT) from None
    samples: dict[str, _TarSample] = {}
    with tf:
        try:
            for info in tf:
                if info.isfile():
                    _add_member(tf, info, samples, seekable=stream is None)
        except tarfile.ReadError as exc:
            raise _truncated(path, samples, f"it ends inside a member ({exc})") from None
        _check_end(path, tf, samples)
    return samples


class _ForwardFile:
    """A shard streamed from a store as the seekable file tarfile wants. It reads the stream in
    `READ_BYTES` blocks (tarfile asks for 512-byte headers: one store read each would cost far more
    than the bytes) and keeps what a seek back may want: tarfile steps back one byte before a header
    and one block at the archive's end, so a seek back to at most `REWIND` before the furthest
    position reached is served, and one further back is an error. A seek forward reads past the bytes
    in between (they are still hashed). Memory: a block and the kept tail, whatever the shard's size
    (and a member asked for whole, while it is read)."""

    REWIND = 1 << 16

    def __init__(self, src: HashingReader) -> None:
        self._src = src
        self._pos = 0
        self._buf = bytearray()  # stream bytes [_start, _start + len(_buf)): read, not yet dropped
        self._start = 0

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        pos = offset + (self._pos if whence == os.SEEK_CUR else 0)
        if whence == os.SEEK_END or pos < self._start:
            raise OSError(f"the stream cannot seek back to byte {pos} (it keeps bytes from {self._start} on)")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        """``n`` bytes from the position (fewer only at the stream's end; n < 0: the rest)."""
        self._fill(self._pos + n if n >= 0 else None)
        at = self._pos - self._start
        out = bytes(self._buf[at : at + n] if n >= 0 else self._buf[at:])
        self._pos += len(out)
        return out

    def _fill(self, upto: int | None) -> None:
        """Read blocks until the buffer reaches stream offset ``upto`` (None: the end), dropping what lies
        more than `REWIND` before the position."""
        while upto is None or self._start + len(self._buf) < upto:
            block = self._src.read(READ_BYTES)
            if not block:
                return
            keep = self._pos - self.REWIND
            end = self._start + len(self._buf) + len(block)
            if end <= keep:  # all of it skipped: hashed, then dropped
                self._buf, self._start = bytearray(), end
                continue
            self._buf += block
            if keep > self._start:
                del self._buf[: keep - self._start]
                self._start = keep


def _add_member(
    tf: tarfile.TarFile, info: tarfile.TarInfo, samples: dict[str, _TarSample], *, seekable: bool
) -> None:
    key, ext = split_name(info.name)
    end = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
    sample = samples.get(key)
    if sample is None:
        sample = samples[key] = _TarSample(info.offset, end, {}, MediaInfo(key))
    sample.end = max(sample.end, end)
    if sample.problem is not None:
        return
    kind = kind_of(ext)
    try:
        if not ext:
            raise MemberError(f"member {info.name!r} has no extension (no dot in its file name)")
        if ext in sample.exts:
            raise MemberError(f"member .{ext} occurs twice for this key")
        sample.exts.add(ext)
        if kind in ("json", "text"):
            put_value(sample.record, ext, decode_value(ext, _member_bytes(tf, info)))
        elif kind == "image":
            sample.info.images += 1
            if sample.info.images == 1:
                # the header reader seeks back in the member: a streamed one is read whole first
                image = tf.extractfile(info) if seekable else io.BytesIO(_member_bytes(tf, info))
                sample.info.width, sample.info.height = image_header_size(image)
    except MemberError as exc:
        sample.problem = str(exc)


def _member_bytes(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(info)
    assert f is not None  # a regular file
    return f.read()


def _check_end(path: CorpusPath, tf: tarfile.TarFile, samples: dict[str, _TarSample]) -> None:
    """A tar ends with zero blocks; without them the file was cut at a member boundary (or holds a
    damaged header there, which tarfile reads as the end)."""
    assert tf.fileobj is not None
    tf.fileobj.seek(tf.offset)
    block = tf.fileobj.read(_BLOCK)
    if block == bytes(_BLOCK):
        return
    if len(block) < _BLOCK:
        raise _truncated(path, samples, f"it ends at byte {tf.offset + len(block)} without the "
                         "end-of-archive blocks")
    raise _truncated(path, samples, f"the header at byte {tf.offset} is not a tar header")


def _truncated(path: CorpusPath, samples: dict[str, _TarSample], reason: str) -> CorpusError:
    """The error for a damaged shard, naming the last sample whose members all lie before the damage."""
    keys = list(samples)
    good = (f"the last complete sample is #{len(keys) - 2} (key {keys[-2]!r})" if len(keys) > 1
            else "no sample is complete")
    return CorpusError(f"{path}: truncated or damaged tar archive: {reason}; {good}", _TAR_HINT)


Reader = Callable[[CorpusPath, "list[str] | None", "list[str]"], Iterator[Chunk]]

# suffix -> (format name in the index, reader). Longest suffix wins.
READERS: dict[str, tuple[str, Reader]] = {
    ".jsonl": ("jsonl", _stream_reader(_plain_blocks)),
    ".jsonl.gz": ("jsonl.gz", _stream_reader(_gzip_blocks)),
    ".json.gz": ("json.gz", _stream_reader(_gzip_blocks)),
    ".jsonl.zst": ("jsonl.zst", _stream_reader(_zstd_blocks)),
    ".json.zst": ("json.zst", _stream_reader(_zstd_blocks)),
    ".parquet": ("parquet", _read_parquet),
    ".tar": ("tar", _read_tar),
}


def format_of(path: Path | str) -> str | None:
    """The format name for a file name, or None when no reader handles it."""
    name = str(path).lower()
    for suffix in sorted(READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return READERS[suffix][0]
    return None


def reader_for(fmt: str) -> Reader:
    return next(reader for name, reader in READERS.values() if name == fmt)


# ---- discovery ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CorpusFile:
    relpath: str  # "/"-separated, relative to the corpus root
    format: str
    size: int
    mtime_ns: int  # 0 for objects in a store, whose version is the ETag
    etag: str | None = None  # objects only: the ETag (and "@version id" in a versioned bucket)


def corpus_root(paths: list[CorpusPath]) -> CorpusPath:
    """The folder all ``paths`` live under: the folder itself for one folder, else the common parent."""
    if any(isinstance(p, ObjectPath) for p in paths):
        return _object_root(paths)
    resolved = [p.resolve() for p in paths]  # type: ignore[union-attr]
    for p in resolved:
        if not p.exists():
            raise CorpusError(
                f"corpus path {p} does not exist", "check the path (it must be a file or folder)"
            )
    if len(resolved) == 1 and resolved[0].is_dir():
        return resolved[0]
    common = Path(os.path.commonpath([str(p) for p in resolved]))
    return common if common.is_dir() else common.parent


@dataclass(slots=True)
class Discovery:
    """What a corpus walk found: files to index, files without a reader, paths left out and why."""

    files: list[CorpusFile]
    ignored: list[str]  # files without a reader
    skipped: list[dict[str, str]]  # {"path", "reason"}: unreadable (with on_error = "skip"), duplicates


def discover(
    paths: list[CorpusPath], root: CorpusPath, *, exclude: Path | None = None, on_error: str = "fail"
) -> Discovery:
    """Indexable files under ``paths`` sorted by relative path, the ignored files, and what was left out.

    Symbolic links to files and folders are followed, except those whose target is walked anyway (a
    link within the corpus, a cycle): every file is indexed once, under its own path or, outside the
    corpus, under the first link to it; the other ways in are listed as skipped. An unreadable folder
    or file, or a dangling link, stops the walk with an error unless ``on_error = "skip"``: then it is
    left out and listed. ``exclude`` (the index being
    written, when it lies inside the corpus) is not walked. Under an object-store root the listing
    is the walk (`_discover_objects`).
    """
    if isinstance(root, ObjectPath):
        return _discover_objects(paths, root)  # type: ignore[arg-type]
    tops = [p.resolve() for p in paths]
    walk = _Walk(root, tops, exclude, on_error)
    for path in tops:
        walk.top(path)
    walk.raise_problems()
    return Discovery(
        [walk.found[k] for k in sorted(walk.found)],
        sorted(walk.ignored),
        sorted(walk.skipped, key=lambda s: s["path"]),
    )


class _Walk:
    def __init__(self, root: Path, tops: list[Path], exclude: Path | None, on_error: str) -> None:
        self.root, self.tops, self.exclude, self.on_error = root, tops, exclude, on_error
        self.found: dict[str, CorpusFile] = {}
        self.ignored: set[str] = set()
        self.skipped: list[dict[str, str]] = []
        self.problems: list[tuple[str, str]] = []  # (path, reason) of unreadable paths
        self._seen: dict[str, str] = {}  # real path -> the relative path it was first reached by

    def top(self, path: Path) -> None:
        if not path.is_dir():
            fmt = format_of(path)
            if fmt is None:
                raise CorpusError(
                    f"{path}: no reader for this file type",
                    f"mixtera indexes {', '.join(sorted(READERS))} files",
                )
            self._file(path, fmt)
            return
        if self._first(path):
            for dirpath, dirnames, filenames in os.walk(path, onerror=self._unreadable, followlinks=True):
                dirnames[:] = [d for d in sorted(dirnames) if self._enter(Path(dirpath, d))]
                for name in sorted(filenames):
                    self._entry(Path(dirpath) / name)

    def _enter(self, folder: Path) -> bool:
        if folder.name.startswith(".") or folder.resolve() == self.exclude:
            return False
        return self._first(folder)

    def _entry(self, full: Path) -> None:
        if full.name.startswith("."):
            return
        if not full.is_file():
            if full.is_symlink():
                self._problem(full, "dangling symbolic link (its target does not exist)")
            return  # a FIFO, socket or device is no corpus file
        fmt = format_of(full.name)
        if fmt is None:
            self.ignored.add(_rel(full, self.root))
        else:
            self._file(full, fmt)

    def _file(self, full: Path, fmt: str) -> None:
        if not self._first(full):
            return
        try:
            os.close(os.open(full, os.O_RDONLY | os.O_NONBLOCK))
        except OSError as exc:
            self._problem(full, exc.strerror or str(exc))
            return
        self.found[_rel(full, self.root)] = _describe(full, self.root, fmt)

    def _first(self, path: Path) -> bool:
        """True when ``path`` is the way its real path is indexed; else it is listed as skipped."""
        real, rel = Path(os.path.realpath(path)), _rel(path, self.root)
        kind = "folder" if path.is_dir() else "file"
        if real != path and self._walked(real):
            target = _rel(real, self.root)
            self.skipped.append({"path": rel, "reason": f"a link to the {kind} {target}, which is indexed "
                                 "under its own path"})
            return False
        first = self._seen.setdefault(str(real), rel)
        if first != rel:
            reason = f"a link to the same {kind} as {first}, indexed once"
            self.skipped.append({"path": rel, "reason": reason})
            return False
        return True

    def _walked(self, real: Path) -> bool:
        """Whether the walk reaches ``real`` without following a link (so a link to it is redundant)."""
        if self.exclude is not None and real.is_relative_to(self.exclude):
            return False
        for top in self.tops:
            if real == top or (real.is_relative_to(top) and top.is_dir()
                               and not any(p.startswith(".") for p in real.relative_to(top).parts)):
                return True
        return False

    def _unreadable(self, exc: OSError) -> None:
        self._problem(Path(exc.filename or self.root), exc.strerror or str(exc))

    def _problem(self, path: Path, reason: str) -> None:
        rel = _rel(path, self.root) if path.is_relative_to(self.root) else str(path)
        if self.on_error == "skip":
            self.skipped.append({"path": rel, "reason": reason})
        else:
            self.problems.append((rel, reason))

    def raise_problems(self) -> None:
        if not self.problems:
            return
        path, reason = self.problems[0]
        more = f" (and {len(self.problems) - 1} more unreadable paths)" if len(self.problems) > 1 else ""
        raise CorpusError(
            f"{self.root / path}: cannot be read: {reason}{more}",
            'fix the permissions or the link, or set [index] on_error = "skip" to index the rest '
            "(the paths left out are listed in the summary)",
        )


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _describe(path: Path, root: Path, fmt: str) -> CorpusFile:
    st = path.stat()
    return CorpusFile(relpath=_rel(path, root), format=fmt, size=st.st_size, mtime_ns=st.st_mtime_ns)


# ---- objects in a store ---------------------------------------------------------------------


def _object_root(paths: list[CorpusPath]) -> ObjectPath:
    """The prefix all object ``paths`` live under (a prefix given alone is the root itself)."""
    protocols = {p.protocol if isinstance(p, ObjectPath) else "" for p in paths}
    if len(protocols) != 1:
        raise CorpusError(f"corpus paths {', '.join(map(str, paths))} mix local paths and URLs, or stores",
                          "index one store (or local folders) at a time")
    objs: list[ObjectPath] = paths  # type: ignore[assignment]
    if len({p.bucket for p in objs}) != 1:
        raise CorpusError(f"corpus paths {', '.join(map(str, objs))} lie in different buckets",
                          "index one bucket at a time (or copy the files under one prefix)")
    if len(objs) == 1:
        _, is_prefix = list_objects(objs[0])
        return objs[0] if is_prefix else objs[0].parent
    common = ObjectPath(objs[0].protocol, os.path.commonpath([p.key for p in objs]))
    return common.parent if common in objs else common


def _discover_objects(paths: list[ObjectPath], root: ObjectPath) -> Discovery:
    """Objects under ``paths`` sorted by key: names starting with "." (in any part) are left out, as
    hidden files and folders are locally; objects without a reader are listed as ignored."""
    found: dict[str, CorpusFile] = {}
    ignored: set[str] = set()
    for top in paths:
        listing, is_prefix = list_objects(top)
        for obj, st in listing:
            rel = obj.relative_to(root)
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            fmt = format_of(obj.name)
            if fmt is None and not is_prefix:
                raise CorpusError(f"{obj}: no reader for this file type",
                                  f"mixtera indexes {', '.join(sorted(READERS))} files")
            if fmt is None:
                ignored.add(rel)
            else:
                found[rel] = _object_file(rel, fmt, st)
    return Discovery([found[k] for k in sorted(found)], sorted(ignored), [])


def _object_file(rel: str, fmt: str, st: FileStat) -> CorpusFile:
    return CorpusFile(relpath=rel, format=fmt, size=st.size, mtime_ns=st.mtime_ns, etag=st.etag)


def as_corpus_paths(paths: list[Path | str]) -> list[CorpusPath]:
    """Command-line corpus arguments: URLs (``s3://...``) as objects, anything else as local paths."""
    return [corpus_location(p) for p in paths]
