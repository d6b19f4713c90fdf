"""Binary rank files of a plan: a fixed header, one zstd frame per segment, a seek table.

Layout (all little-endian)::

    header      64 bytes   see _HEADER
    segment 0   zstd frame columnar entries of steps [s0, s0 + n0) (see rank_frames)
    ...
    seek table  48 bytes per segment, see _SEEK
    footer      16 bytes   seek table offset (u64), b"MXSEEK\\0\\0"

The frames (what a segment holds and how its columns are stored) are
:mod:`mixtera.runtime.format.rank_frames`'; this module puts them in a file and finds them again.

Compatibility (checked by :mod:`mixtera.runtime.format.header`): readers refuse a different major
version and any flag bit they do not define; a minor bump only adds what older readers may ignore
(reserved header bytes).

Minor 1 adds ``layout_crc32`` (the header's last 4 bytes, once reserved): the crc32 of the header
with that field zeroed, the seek table and the footer. A flipped ``first_step``, rank or segment
count would otherwise replay other steps; every frame's own crc32 is in the seek table, so the
layout checksum and the frame checksums together cover every byte of the file. Readers check it
when the file is opened (minor >= 1; a minor-0 file has none).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from mixtera.runtime.atomic import write_atomic
from mixtera.runtime.errors import FileSizeError, PlanError
from mixtera.runtime.format.header import BinaryFormat, check_header, check_length, check_size
from mixtera.runtime.format.rank_frames import EncodedSegment, Segment, decode_segment, encode_rank_segment

MAGIC = b"MXPLAN\0\0"
FOOTER_MAGIC = b"MXSEEK\0\0"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1

# magic, major, minor, rank, world_size, total steps, segment_steps, first segment, segment count,
# fingerprint (16 bytes), flags, layout crc32 (minor >= 1; see above): 64 bytes.
_HEADER = struct.Struct("<8sHHIIQIII16sII")
_LAYOUT_CRC_AT = _HEADER.size - 4
HEADER_SIZE = 64
# offset, length, first step, steps, entries, version, crc32 of the compressed frame.
_SEEK = struct.Struct("<QQQIQII4x")
_FOOTER = struct.Struct("<Q8s")
FORMAT = BinaryFormat(name="rank file", magic=MAGIC, major=FORMAT_MAJOR, minor=FORMAT_MINOR,
                      header_size=HEADER_SIZE + _FOOTER.size,
                      hint="the file is corrupt, truncated or not a rank file; recompile the plan",
                      version_hint="recompile the plan with this version of mixtera")


@dataclass(frozen=True, slots=True)
class RankHeader:
    rank: int
    world_size: int
    steps: int
    segment_steps: int
    first_segment: int
    segment_count: int
    fingerprint: bytes  # 16 bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class SeekEntry:
    offset: int
    length: int
    first_step: int
    steps: int
    entries: int
    version: int
    crc32: int


def rank_file_bytes(header: RankHeader, encoded: list[EncodedSegment]) -> bytes:
    """The complete bytes of a rank file holding ``encoded`` segments in order."""
    if len(header.fingerprint) != 16:
        raise ValueError("fingerprint must be 16 bytes")
    head = _HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, header.rank, header.world_size,
                        header.steps, header.segment_steps, header.first_segment,
                        header.segment_count, header.fingerprint, header.flags, 0)
    parts = [head]
    seeks, offset = [], HEADER_SIZE
    for enc in encoded:
        seeks.append(_SEEK.pack(offset, len(enc.frame), enc.first_step, enc.steps, enc.entries,
                                enc.version, zlib.crc32(enc.frame)))
        parts.append(enc.frame)
        offset += len(enc.frame)
    parts.extend(seeks)
    parts.append(_FOOTER.pack(offset, FOOTER_MAGIC))
    return seal_layout(b"".join(parts))


def seal_layout(data: bytes) -> bytes:
    """``data`` (a complete rank file) with its layout crc32 set from its header, seek table and footer."""
    table_at, _ = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    crc = _layout_crc32(data[:HEADER_SIZE], data[table_at:len(data) - _FOOTER.size], data[-_FOOTER.size:])
    return data[:_LAYOUT_CRC_AT] + struct.pack("<I", crc) + data[HEADER_SIZE:]


def _layout_crc32(head: bytes, seeks: bytes, footer: bytes) -> int:
    """crc32 of the header (its checksum field zeroed), the seek table and the footer."""
    return zlib.crc32(footer, zlib.crc32(seeks, zlib.crc32(head[:_LAYOUT_CRC_AT] + b"\0\0\0\0")))


def write_rank_file(path: Path | str, header: RankHeader, segments: list[Segment]) -> int:
    """Write a complete rank file atomically; returns its size in bytes."""
    data = rank_file_bytes(header, [encode_rank_segment(seg) for seg in segments])
    write_atomic(path, data)
    return len(data)


class RankFileReader:
    """Random access to the segments of one rank file; checks magic, version, size and checksums."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for seeks, closed in close()
        except FileNotFoundError as exc:
            raise PlanError(f"{self.path}: rank file not found",
                            "check the plan directory and the rank / world size") from exc
        self.header, self.seek_table = self._read_layout()

    def _fail(self, what: str) -> PlanError:
        return PlanError(f"{self.path}: {what}", "the file is corrupt or truncated; recompile the plan")

    def _read_layout(self) -> tuple[RankHeader, list[SeekEntry]]:
        f = self._file
        size = f.seek(0, 2)
        check_length(self.path, FORMAT, size)
        f.seek(0)
        head = f.read(HEADER_SIZE)
        fields = _HEADER.unpack(head)
        check_header(self.path, FORMAT, size=size, magic=fields[0], major=fields[1], minor=fields[2],
                     flags=fields[10])
        header = RankHeader(*fields[3:11])
        f.seek(size - _FOOTER.size)
        footer = f.read(_FOOTER.size)
        table_at, magic = _FOOTER.unpack(footer)
        if magic != FOOTER_MAGIC:
            raise FileSizeError(f"{self.path}: no seek table footer at its end (bad footer magic "
                                f"{magic!r}): truncated or trailing bytes", FORMAT.hint)
        check_size(self.path, FORMAT, size=size,
                   declared=table_at + header.segment_count * _SEEK.size + _FOOTER.size,
                   by=f"its seek table ({header.segment_count} segments from byte {table_at})")
        f.seek(table_at)
        raw = f.read(header.segment_count * _SEEK.size)
        if fields[2] >= 1 and _layout_crc32(head, raw, footer) != fields[11]:
            raise self._fail("header or seek table checksum mismatch (layout crc32)")
        table = [SeekEntry(*_SEEK.unpack_from(raw, i * _SEEK.size)) for i in range(header.segment_count)]
        return header, table

    def segment(self, index: int) -> Segment:
        """Segment number ``index`` of the plan (global numbering, not position in this file)."""
        local = index - self.header.first_segment
        if not 0 <= local < len(self.seek_table):
            raise PlanError(f"{self.path}: holds segments {self.header.first_segment}.."
                            f"{self.header.first_segment + len(self.seek_table) - 1}, not {index}")
        seek = self.seek_table[local]
        self._file.seek(seek.offset)
        frame = self._file.read(seek.length)
        if len(frame) != seek.length or zlib.crc32(frame) != seek.crc32:
            raise self._fail(f"checksum mismatch in segment {index}")
        return decode_segment(frame, seek.first_step, seek.steps, seek.entries, seek.version,
                              f"{self.path} segment {index}")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RankFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
