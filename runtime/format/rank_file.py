"""Binary rank files of a plan: a fixed header, one zstd frame per segment, a seek table.

Layout (all little-endian)::

    header      64 bytes   see _HEADER
    segment 0   zstd frame columnar entries of steps [s0, s0 + n0)
    ...
    seek table  48 bytes per segment, see _SEEK
    footer      16 bytes   seek table offset (u64), b"MXSEEK\\0\\0"

A segment decodes to a :class:`Segment`: for each step of the segment, how many entries this
rank replays, and per entry its component, its position in that component's shuffled stream
(:mod:`mixtera.runtime.shuffle` maps it to a sample) and the token range ``[token_start, token_end)`` of
that document that the entry covers. ``token_end == 0`` means "to the end of the document,
end-of-document token included", which keeps the column almost all zeros. Positions are stored
as differences to the previous entry of the same component, which are nearly always small. A
frame holds 8 bytes of column type codes (narrowest integer type per column, see ``_NARROW``),
then the columns step_counts, component, position_delta, token_start, token_end, each as byte
planes (all first bytes, then all second bytes, ...).

Compatibility: readers refuse a different major version; a minor bump only adds fields that
older readers may ignore (flag bits, reserved header bytes).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from mixtera.runtime.atomic import write_atomic
from mixtera.runtime.errors import PlanError

MAGIC = b"MXPLAN\0\0"
FOOTER_MAGIC = b"MXSEEK\0\0"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

# magic, major, minor, rank, world_size, total steps, segment_steps, first segment, segment count,
# fingerprint (16 bytes), flags; padded to 64 bytes.
_HEADER = struct.Struct("<8sHHIIQIII16sI")
HEADER_SIZE = 64
# offset, length, first step, steps, entries, version, crc32 of the compressed frame.
_SEEK = struct.Struct("<QQQIQII4x")
_FOOTER = struct.Struct("<Q8s")
_COLUMNS = (("step_counts", np.uint32), ("component", np.uint16), ("position_delta", np.int64),
            ("token_start", np.uint32), ("token_end", np.uint32))


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


@dataclass(slots=True)
class Segment:
    """The entries one rank replays in steps ``[first_step, first_step + len(step_counts))``."""

    first_step: int
    step_counts: np.ndarray  # uint32 per step: entries of this rank in that step
    component: np.ndarray  # uint16 per entry
    position: np.ndarray  # int64 per entry: position in the component's stream
    token_start: np.ndarray  # uint32 per entry
    token_end: np.ndarray  # uint32 per entry; 0 = to the end of the document
    version: int = 0

    @property
    def steps(self) -> int:
        return len(self.step_counts)

    def step_slices(self) -> np.ndarray:
        """Entry offsets: entries of step ``first_step + i`` are ``[off[i], off[i + 1])``."""
        return np.concatenate([[0], np.cumsum(self.step_counts, dtype=np.int64)])


@dataclass(frozen=True, slots=True)
class SeekEntry:
    offset: int
    length: int
    first_step: int
    steps: int
    entries: int
    version: int
    crc32: int


def _group_key(component: np.ndarray) -> np.ndarray:
    """Components as uint16 (they are < 2**16): numpy's stable argsort of 16-bit keys is a radix sort."""
    return component if component.dtype == np.uint16 else component.astype(np.uint16)


def _delta_encode(component: np.ndarray, position: np.ndarray) -> np.ndarray:
    delta = np.empty_like(position)
    order = np.argsort(_group_key(component), kind="stable")
    pos = position[order]
    comp = component[order]
    d = np.diff(pos, prepend=0)
    starts = np.flatnonzero(np.diff(comp, prepend=-1) != 0)
    d[starts] = pos[starts]
    delta[order] = d
    return delta


def _delta_decode(component: np.ndarray, delta: np.ndarray) -> np.ndarray:
    order = np.argsort(_group_key(component), kind="stable")
    running = np.cumsum(delta[order])
    starts = np.flatnonzero(np.diff(component[order], prepend=-1) != 0)
    # Each component's running sum restarts at its first entry (which holds an absolute position).
    before = np.where(starts > 0, running[starts - 1], 0)
    sizes = np.diff(np.append(starts, running.size))
    out = np.empty_like(running)
    out[order] = running - np.repeat(before, sizes)
    return out


# Column storage: each column in the narrowest integer type that holds its values (code below),
# written as byte planes (all lowest bytes, then all second bytes, ...) so zstd sees long runs of
# zeros in the high planes. The frame starts with one type code per column.
_NARROW = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64)
_LIMITS = tuple((int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in _NARROW)


def _code_of(lo: int, hi: int) -> int:
    for code, (low, high) in enumerate(_LIMITS):
        if low <= lo and hi <= high:
            return code
    raise ValueError(f"column values [{lo}, {hi}] do not fit 64 bits")


def _narrow(values: np.ndarray) -> tuple[int, np.ndarray]:
    if values.size == 0:
        return 0, values.astype(np.uint8)
    code = _code_of(int(values.min()), int(values.max()))
    return code, values.astype(_NARROW[code], copy=False)


def _planes(values: np.ndarray) -> bytes:
    width = values.dtype.itemsize
    if width == 1:
        return values.tobytes()
    return np.ascontiguousarray(values.view(np.uint8).reshape(-1, width).T).tobytes()


def _unplanes(raw: bytes, at: int, code: int, n: int) -> np.ndarray:
    dt = np.dtype(_NARROW[code]).newbyteorder("<")
    width = dt.itemsize
    planes = np.frombuffer(raw, dtype=np.uint8, count=n * width, offset=at).reshape(width, n)
    return np.ascontiguousarray(planes.T).view(dt).reshape(n)


def _segment_bytes(seg: Segment) -> bytes:
    cols = {"step_counts": seg.step_counts, "component": seg.component,
            "position_delta": _delta_encode(seg.component, seg.position.astype(np.int64)),
            "token_start": seg.token_start, "token_end": seg.token_end}
    codes, parts = [], []
    for name, _ in _COLUMNS:
        code, values = _narrow(np.asarray(cols[name]))
        codes.append(code)
        parts.append(_planes(values))
    return bytes(codes).ljust(8, b"\0") + b"".join(parts)


def decode_segment(frame: bytes, seek: SeekEntry, where: str) -> Segment:
    try:
        raw = zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise PlanError(f"{where}: segment does not decompress ({exc})", "recompile the plan") from exc
    codes = raw[:8]
    if len(raw) < 8 or any(c >= len(_NARROW) for c in codes[: len(_COLUMNS)]):
        raise PlanError(f"{where}: segment has bad column types", "recompile the plan")
    arrays, at = {}, 8
    for i, (name, dt) in enumerate(_COLUMNS):
        n = seek.steps if name == "step_counts" else seek.entries
        size = n * np.dtype(_NARROW[codes[i]]).itemsize
        if at + size > len(raw):
            raise PlanError(f"{where}: segment holds {len(raw)} bytes, too few for its columns",
                            "recompile the plan")
        arrays[name] = _unplanes(raw, at, codes[i], n).astype(dt, copy=False)
        at += size
    if at != len(raw):
        raise PlanError(f"{where}: segment holds {len(raw)} bytes, expected {at}", "recompile the plan")
    component = arrays["component"]
    return Segment(seek.first_step, arrays["step_counts"], component,
                   _delta_decode(component, arrays["position_delta"]),
                   arrays["token_start"], arrays["token_end"], seek.version)


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """A segment compressed for a rank file (what the seek table needs besides its offset)."""

    frame: bytes
    first_step: int
    steps: int
    entries: int
    version: int = 0


def encode_rank_segment(seg: Segment, compressor: zstandard.ZstdCompressor | None = None) -> EncodedSegment:
    """Compress ``seg``; pass a reused ``compressor`` (level 3) to save its set-up per segment."""
    frame = (compressor or zstandard.ZstdCompressor(level=3)).compress(_segment_bytes(seg))
    return EncodedSegment(frame, seg.first_step, seg.steps, int(seg.component.size), seg.version)


def rank_file_bytes(header: RankHeader, encoded: list[EncodedSegment]) -> bytes:
    """The complete bytes of a rank file holding ``encoded`` segments in order."""
    if len(header.fingerprint) != 16:
        raise ValueError("fingerprint must be 16 bytes")
    head = _HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, header.rank, header.world_size,
                        header.steps, header.segment_steps, header.first_segment,
                        header.segment_count, header.fingerprint, header.flags)
    parts = [head.ljust(HEADER_SIZE, b"\0")]
    seeks, offset = [], HEADER_SIZE
    for enc in encoded:
        seeks.append(_SEEK.pack(offset, len(enc.frame), enc.first_step, enc.steps, enc.entries,
                                enc.version, zlib.crc32(enc.frame)))
        parts.append(enc.frame)
        offset += len(enc.frame)
    parts.extend(seeks)
    parts.append(_FOOTER.pack(offset, FOOTER_MAGIC))
    return b"".join(parts)


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
        if size < HEADER_SIZE + _FOOTER.size:
            raise self._fail(f"only {size} bytes, too short for a rank file")
        f.seek(0)
        fields = _HEADER.unpack(f.read(HEADER_SIZE)[: _HEADER.size])
        if fields[0] != MAGIC:
            raise self._fail("bad magic, not a mixtera rank file")
        if fields[1] != FORMAT_MAJOR:
            raise PlanError(f"{self.path}: plan format {fields[1]}.{fields[2]}, this mixtera reads "
                            f"{FORMAT_MAJOR}.x", "recompile the plan with this version of mixtera")
        header = RankHeader(*fields[3:])
        f.seek(size - _FOOTER.size)
        table_at, magic = _FOOTER.unpack(f.read(_FOOTER.size))
        expected = table_at + header.segment_count * _SEEK.size + _FOOTER.size
        if magic != FOOTER_MAGIC or expected != size:
            raise self._fail(f"size {size} does not match its seek table (expected {expected})")
        f.seek(table_at)
        raw = f.read(header.segment_count * _SEEK.size)
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
        return decode_segment(frame, seek, f"{self.path} segment {index}")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RankFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
