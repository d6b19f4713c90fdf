"""The rank-file frame layout, pinned byte for byte, and the rank file's container checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zstandard

from mixtera.runtime.errors import (
    FileSizeError,
    FormatVersionError,
    NotThisFormatError,
    PlanError,
    ReservedFlagsError,
)
from mixtera.runtime.format.rank_file import RankFileReader, RankHeader, seal_layout, write_rank_file
from mixtera.runtime.format.rank_frames import BlockEntries, Segment, decode_segment, frame_payloads

# Steps [0, 2): 2 entries then 1; positions 5, 7, 6 (deltas per component: 5, 7, 6 - 5 = 1).
SEG = Segment(0, np.array([2, 1], np.uint32), np.array([0, 1, 0], np.uint16), np.array([5, 7, 6], np.int64),
              np.array([0, 0, 300], np.uint32), np.array([0, 0, 0], np.uint32), 4)
PAYLOAD = bytes([0, 0, 0, 2, 0, 0, 0, 0,  # type codes: uint8 x3, uint16 (token_start), uint8, padding
                 2, 1,  # step_counts
                 0, 1, 0,  # component
                 5, 7, 1,  # position_delta
                 0, 0, 44, 0, 0, 1,  # token_start as byte planes: low bytes, then high bytes (300 = 0x12c)
                 0, 0, 0])  # token_end


def test_the_frame_layout_is_the_documented_one() -> None:
    assert frame_payloads(BlockEntries.of_segment(SEG)) == [PAYLOAD]
    frame = zstandard.ZstdCompressor(level=3).compress(PAYLOAD)
    got = decode_segment(frame, 0, 2, 3, 4, "test")
    for name in ("step_counts", "component", "position", "token_start", "token_end"):
        assert np.array_equal(getattr(got, name), getattr(SEG, name)), name
    assert got.version == 4


def _rank_file(tmp_path: Path) -> Path:
    path = tmp_path / "rank-00000.bin"
    write_rank_file(path, RankHeader(rank=0, world_size=1, steps=2, segment_steps=2, first_segment=0,
                                     segment_count=1, fingerprint=b"\1" * 16), [SEG])
    return path


def _patched(path: Path, at: int, value: bytes) -> Path:
    data = bytearray(path.read_bytes())
    data[at: at + len(value)] = value
    path.write_bytes(bytes(data))
    return path


def test_a_rank_file_reads_back_its_segment(tmp_path: Path) -> None:
    with RankFileReader(_rank_file(tmp_path)) as reader:
        assert np.array_equal(reader.segment(0).position, SEG.position)


def test_a_newer_minor_version_is_read(tmp_path: Path) -> None:
    path = _patched(_rank_file(tmp_path), 10, (7).to_bytes(2, "little"))
    path.write_bytes(seal_layout(path.read_bytes()))  # a newer writer sets the checksum for its header
    with RankFileReader(path) as reader:
        assert reader.header.segment_count == 1


@pytest.mark.parametrize("field", ["rank", "steps", "first_segment", "first_step", "entries", "offset",
                                   "table_at"])
def test_a_flipped_header_or_seek_table_field_is_refused(tmp_path: Path, field: str) -> None:
    path = _rank_file(tmp_path)
    size = path.stat().st_size
    table_at = size - 16 - 48
    at = {"rank": 12, "steps": 20, "first_segment": 32, "offset": table_at, "first_step": table_at + 16,
          "entries": table_at + 28, "table_at": size - 16}[field]
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PlanError, match=f"{path.name}: .*(checksum|size)") as err:
        RankFileReader(path)
    assert "recompile" in err.value.hint


@pytest.mark.parametrize(("at", "value", "error", "message"), [
    (0, b"NOTAPLAN", NotThisFormatError, "bad magic b'NOTAPLAN', not a mixtera rank file"),
    (8, (2).to_bytes(2, "little"), FormatVersionError, r"rank file format 2\.1, this mixtera reads 1\.x"),
    (56, (4).to_bytes(4, "little"), ReservedFlagsError, "reserved flag bits 0x4 are set"),
])
def test_a_bad_header_is_refused_with_a_hint(tmp_path: Path, at: int, value: bytes, error: type,
                                             message: str) -> None:
    path = _patched(_rank_file(tmp_path), at, value)
    with pytest.raises(error, match=message) as exc:
        RankFileReader(path)
    assert str(path) in exc.value.message and exc.value.hint


def test_sizes_name_what_declares_them(tmp_path: Path) -> None:
    path = _rank_file(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-16] + b"\0" * 8 + raw[-16:])  # bytes between the seek table and the footer
    with pytest.raises(FileSizeError, match=rf"size {len(raw) + 8} does not match its seek table .* makes "
                                            rf"it {len(raw)} bytes \(8 trailing bytes\)"):
        RankFileReader(path)
    path.write_bytes(raw + b"\0")  # the footer is no longer at the end
    with pytest.raises(FileSizeError, match="no seek table footer at its end"):
        RankFileReader(path)
    path.write_bytes(raw[:40])
    with pytest.raises(NotThisFormatError, match="40 bytes, too short for a rank file"):
        RankFileReader(path)
