"""The rank-file frame layout, pinned byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zstandard

from mixtera.runtime.format.rank_file import RankFileReader, RankHeader, write_rank_file
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


def test_a_rank_file_reads_back_its_segment(tmp_path: Path) -> None:
    with RankFileReader(_rank_file(tmp_path)) as reader:
        assert np.array_equal(reader.segment(0).position, SEG.position)
