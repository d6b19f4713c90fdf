"""The rewrite's batched block encoder writes exactly the frames of the one-segment-at-a-time encoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtera.runtime.format.rank_frames import BlockEncoder, BlockEntries, encode_rank_segment, frame_payloads


def _block(rng: np.random.Generator, world: int, steps: int, *, big: bool) -> BlockEntries:
    counts = rng.integers(0, 40, size=(steps, world)).astype(np.uint32)
    counts[:, rng.integers(0, world)] = 0  # a rank with no entries in this block
    n = int(counts.sum())
    top = 2**40 if big else 500
    return BlockEntries(first_step=steps * 3, counts=counts,
                        component=rng.integers(0, 300 if big else 4, n).astype(np.uint16),
                        position=rng.integers(0, top, n).astype(np.int64),
                        token_start=rng.integers(0, 70_000 if big else 200, n).astype(np.uint32),
                        token_end=rng.integers(0, 2**32 - 1 if big else 3, n).astype(np.uint32))


def _check(block: BlockEntries, version: int) -> None:
    world = block.counts.shape[1]
    payloads = frame_payloads(block)
    assert payloads == [frame_payloads(BlockEntries.of_segment(block.rank_segment(rank, version)))[0]
                        for rank in range(world)]
    encoder = BlockEncoder(world, version, workers=3)
    encoder.submit(block)
    encoder.submit(block)
    frames = encoder.frames()
    for rank in range(world):
        one = encode_rank_segment(block.rank_segment(rank, version))
        assert frames[rank] == [one, one]


@pytest.mark.parametrize("big", [False, True])
def test_block_frames_equal_the_per_segment_encoder(big: bool) -> None:
    _check(_block(np.random.default_rng(5), world=9, steps=4, big=big), version=3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), world=st.integers(1, 12), steps=st.integers(1, 5), big=st.booleans())
def test_block_frames_equal_the_per_segment_encoder_for_any_block(seed: int, world: int, steps: int,
                                                                  big: bool) -> None:
    _check(_block(np.random.default_rng(seed), world, steps, big=big), version=1)


def test_an_all_empty_block_encodes() -> None:
    block = BlockEntries(first_step=0, counts=np.zeros((2, 3), np.uint32),
                         component=np.zeros(0, np.uint16), position=np.zeros(0, np.int64),
                         token_start=np.zeros(0, np.uint32), token_end=np.zeros(0, np.uint32))
    _check(block, version=2)
